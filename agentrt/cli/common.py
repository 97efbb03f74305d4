"""What every `agentrt` command shares: the typer app, consoles, options and error handling."""
from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from pydantic import ValidationError
from rich.console import Console

from agentrt import __version__

if TYPE_CHECKING:
    from agentrt.engine import LLMEngine

DEFAULT_MODEL = "smollm2-135m"

app = typer.Typer(name="agentrt", no_args_is_help=True, add_completion=False, rich_markup_mode="rich",
                  pretty_exceptions_enable=False,
                  help="A runtime for multi-agent LLM programs on an embedded paged-KV engine.",
                  epilog="Examples: agentrt run workflows/research_team.py · agentrt graph workflows/map_reduce.py "
                         "· agentrt generate 'What is the capital of France?'")
bench_app = typer.Typer(no_args_is_help=True, rich_markup_mode="rich",
                        help="Benchmarks: the engine against transformers and llama.cpp; the KV policies "
                             "on workflows and trace replays.",
                        epilog="Example: agentrt bench engine --cases decode1,prefill512")
app.add_typer(bench_app, name="bench")

# stdout: results; when piped (logs, CI) rich would wrap tables at 80 columns
out = Console(highlight=False, width=None if sys.stdout.isatty() else 132)
err = Console(stderr=True, highlight=False)  # stderr: progress and logs

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="model alias (see `agentrt models`) or a local HF directory")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON object to stdout instead of text")]
EngineDTypeOpt = Annotated[str, typer.Option("--dtype", help="auto (float32 on CPU), float32 or bfloat16 "
                                                            "(2-3x faster on CPUs with AVX512-BF16)")]
WeightsOpt = Annotated[str, typer.Option("--weights", help="auto (q4 on CPU for a GGUF model when --dtype is auto), "
                                                         "q4 (the GGUF's 4-bit weights in torch's int4 kernels), "
                                                         "bf16 or fp32 (dense, dequantized)")]
KVDiskOpt = Annotated[str | None, typer.Option("--kv-disk-dir", metavar="DIR", help="share computed KV blocks "
                                               "across runs in this directory ('auto': under the user cache dir)")]


def disk_options(weights: str, kv_disk_dir: str | None) -> dict[str, Any]:
    """EngineConfig fields for --weights and --kv-disk-dir (defaults left out)."""
    opts: dict[str, Any] = {} if weights == "auto" else {"weights": weights}
    if kv_disk_dir:
        opts["kv_disk_dir"] = kv_disk_dir
    return opts


_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
          "kib": 1024, "mib": 1024**2, "gib": 1024**3}


def parse_size(text: str) -> int:
    """Bytes from a size such as `64MiB`, `1.5GB`, `500k` or `1048576` (ValueError otherwise)."""
    import re
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise ValueError(f"cannot read {text!r} as a size; write e.g. 64MiB, 1.5GB, 500kB or a number of bytes")
    return int(float(match.group(1)) * _UNITS[unit])


def fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


@contextmanager
def user_errors() -> Iterator[None]:
    """Bad models and bad parameters end in one line on stderr and exit code 2, not a traceback."""
    try:
        yield
    except ValidationError as e:
        fail(f"invalid {e.title}: " + "; ".join(
            f"{'.'.join(map(str, x['loc'])) or 'value'}: {x['msg']} (got {x.get('input')!r})" for x in e.errors()))
    except ValueError as e:  # ModelNotFoundError and UnsupportedModelError are ValueErrors
        fail(str(e).splitlines()[0] if str(e) else type(e).__name__)


def emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
    sys.stdout.flush()


def load_engine(model: str, **config: Any) -> LLMEngine:
    from agentrt.engine import LLMEngine     # torch: only for the commands that run a model
    with err.status(f"loading {model} ..."):
        return LLMEngine.from_pretrained(model, **config)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"agentrt {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version_callback, is_eager=True,
                                                help="print the version and exit")] = False) -> None:
    """A runtime for multi-agent LLM programs on an embedded paged-KV engine."""
