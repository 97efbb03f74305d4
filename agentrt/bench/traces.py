"""Workload traces (TraceLab sessions, Mooncake requests) as programs of rounds of synthetic tokens.

Both parsers produce one form, a `Trace` of `Program`s of `Round`s, that a replay benchmark drives
through the engine. Token ids are synthetic but reproduce the prefix sharing the trace describes:

* TraceLab: round i+1's prompt starts with exactly round i's prompt + round i's output. Those output
  ids are synthetic (`Round.output_tokens`): a replay either forces them as the generated tokens, or
  accepts that the next prompt holds these ids instead of what the model generated; what matters
  is the prefix shared between rounds, not the ids. Sessions share no token, not even the first.
* Mooncake: hash id h is a block of synthetic ids determined by h; a prompt is its blocks, cut to
  its length. Two requests whose `hash_ids` share exactly their first k ids share exactly their
  first min(k*block, len_a, len_b) tokens: the first ids of sibling blocks (distinct ids after the
  same path of ids) are made distinct, so prompts part where their id lists part.

The data files live outside the project, in `../shared/workloads/` (see `workloads_dir`).
"""
from __future__ import annotations

import csv
import json
import math
import os
import zlib
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

TRACELAB_FILE = "tracelab_multi_session_large.csv"
MOONCAKE_FILE = "mooncake_format_sample.jsonl"
TRACELAB_COLUMNS = ("session_id", "arrival_time", "round_idx", "prefix_len", "input_len", "output_len",
                    "tool_wait_after_ms")
_SESSION, _HASH_BLOCK, _TAIL_BLOCK, _OUTPUT = 1, 2, 3, 4     # seed domains of the synthetic ids


class Round(NamedTuple):
    """One LLM call of a program."""
    arrival_s: float | None       # absolute arrival; None = after the previous round + its pause
    prompt_tokens: list[int]      # synthetic token ids, the full prompt
    output_len: int
    pause_after_s: float          # tool wait before the next round (0 for the last)
    output_tokens: list[int] | None = None   # the synthetic output the trace assumes (len output_len)


class Program(NamedTuple):
    """One session (TraceLab) or one request (Mooncake)."""
    program_id: str
    rounds: list[Round]


class Trace(NamedTuple):
    """A parsed trace; `notes` reports what the parser found in the data (inconsistencies, conflicts)."""
    name: str
    format: str
    programs: list[Program]
    notes: tuple[str, ...] = ()

    def num_requests(self) -> int:
        return sum(len(p.rounds) for p in self.programs)

    def total_prompt_tokens(self) -> int:
        return sum(len(r.prompt_tokens) for p in self.programs for r in p.rounds)

    def total_output_tokens(self) -> int:
        return sum(r.output_len for p in self.programs for r in p.rounds)


def workloads_dir() -> Path | None:
    """`$AGENTRT_WORKLOADS`, else the repo root's `../shared/workloads`; None when it is not a folder."""
    env = os.environ.get("AGENTRT_WORKLOADS")
    path = Path(env) if env else Path(__file__).resolve().parents[2].parent / "shared" / "workloads"
    return path if path.is_dir() else None


def load_trace(path: str | Path, **kw: Any) -> Trace:
    """Load by suffix: `.csv` is TraceLab, `.jsonl` is Mooncake."""
    path = Path(path)
    return load_tracelab(path, **kw) if path.suffix == ".csv" else load_mooncake(path, **kw)


# ------------------------------------------------------------------------------------------ helpers
class _Ids:
    """Deterministic synthetic ids: a keyed random stream and first ids that differ among siblings."""
    __slots__ = ("seed", "vocab", "conflicts")

    def __init__(self, seed: int, vocab: int) -> None:
        self.seed, self.vocab, self.conflicts = seed, vocab, 0

    def rng(self, *key: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, *key])

    def draw(self, n: int, *key: int) -> list[int]:
        return self.rng(*key).integers(0, self.vocab, n).tolist() if n > 0 else []

    def distinct(self, tok: int, used: set[int]) -> int:
        """`tok`, or the next id not in `used` (the set of first ids already taken by siblings)."""
        if len(used) >= self.vocab:
            self.conflicts += 1
            return tok
        while tok in used:
            tok = (tok + 1) % self.vocab
        used.add(tok)
        return tok


def _bad(path: Path, line: int, problem: str) -> ValueError:
    return ValueError(f"{path}:{line}: {problem}")


def _num(path: Path, line: int, field: str, value: Any, *, integer: bool = True) -> Any:
    """A non-negative number from a CSV cell / JSON value (a whole one for lengths)."""
    try:
        x = math.nan if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        x = math.nan
    if not math.isfinite(x) or x < 0 or (integer and x != int(x)):
        raise _bad(path, line, f"{field} must be a{' whole' if integer else ''} number >= 0, got {value!r}")
    return int(x) if integer else x


def _check(seed: int, vocab: int, scale: float, speedup: float, limit: int | None) -> None:
    if seed < 0 or vocab < 2 or not scale > 0 or not speedup > 0 or (limit is not None and limit < 0):
        raise ValueError(f"need seed >= 0, vocab >= 2, scale > 0, speedup > 0, limit >= 0 or None "
                         f"(got {seed}, {vocab}, {scale}, {speedup}, {limit})")


# ----------------------------------------------------------------------------------------- TraceLab
class _Row(NamedTuple):
    line: int
    arrival_ms: float
    round_idx: int
    prefix: int
    input: int
    output: int
    wait_ms: float


def _read_tracelab(path: Path) -> dict[str, list[_Row]]:
    """Rows grouped by session (first-appearance order), each session's rounds sorted and checked."""
    sessions: dict[str, list[_Row]] = {}
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        missing = [c for c in TRACELAB_COLUMNS if c not in header]
        if missing:
            raise _bad(path, 1, f"header lacks column(s) {missing}; expected {list(TRACELAB_COLUMNS)}")
        col = {c: header.index(c) for c in TRACELAB_COLUMNS}
        for cells in reader:
            line = reader.line_num
            if not any(c.strip() for c in cells):
                continue                              # blank line
            if len(cells) != len(header):
                raise _bad(path, line, f"{len(cells)} fields, the header has {len(header)}")
            v = {c: cells[i].strip() for c, i in col.items()}
            if not v["session_id"]:
                raise _bad(path, line, "empty session_id")
            sessions.setdefault(v["session_id"], []).append(_Row(
                line, _num(path, line, "arrival_time", v["arrival_time"], integer=False),
                *(_num(path, line, c, v[c]) for c in TRACELAB_COLUMNS[2:6]),
                _num(path, line, "tool_wait_after_ms", v["tool_wait_after_ms"], integer=False)))
    for sid, rows in sessions.items():
        rows.sort(key=lambda r: r.round_idx)
        for i, r in enumerate(rows):
            if r.round_idx != i:
                raise _bad(path, r.line, f"session {sid}: round_idx {r.round_idx} where {i} was expected "
                                         "(rounds must be 0..n-1, each once)")
    return sessions


def load_tracelab(path: str | Path, *, scale: float = 1.0, limit: int | None = None, speedup: float = 1.0,
                  vocab: int = 49152, seed: int = 0) -> Trace:
    """A TraceLab multi-session CSV: one program per session, one round per row.

    Round i's prompt = the session's context (`prefix_len` tokens) + `input_len` new tokens; the
    context after it = that prompt + its `output_len` synthetic output tokens. Where the data is
    not cumulative (prefix_len(i+1) != prefix+input+output of round i, or round 0's != 0) the
    prompt takes the context's first prefix_len tokens (padded with new ids); `notes` says so. `scale` maps the
    cumulative token positions (x -> round(x*scale)), so the scaled trace stays cumulative; input and
    output keep >= 1 token. The first `limit` sessions by arrival; `speedup` divides all times.
    """
    path, ids = Path(path), _Ids(seed, vocab)
    _check(seed, vocab, scale, speedup, limit)
    sessions = _read_tracelab(path)
    order = sorted(sessions, key=lambda s: sessions[s][0].arrival_ms)      # stable: ties by appearance
    notes: list[str] = []
    ends = {s: [0] + [r.prefix + r.input + r.output for r in sessions[s][:-1]] for s in order}
    noncumulative = [f"{s}:{r.round_idx}" for s in order for r, end in zip(sessions[s], ends[s]) if r.prefix != end]
    if noncumulative:
        notes.append(f"{len(noncumulative)} round(s) whose prefix_len is not the session's context so far "
                     f"(0, then the previous prompt + output), as session:round: {noncumulative[:8]}")
    if any(len({r.arrival_ms for r in sessions[s]}) > 1 for s in order):
        notes.append("arrival_time varies within a session; the first round's is used")
    first_ids: set[int] = set()
    programs: list[Program] = []
    for sid in order[:limit]:
        rows = sessions[sid]
        rng = ids.rng(_SESSION, zlib.crc32(sid.encode()))
        ctx: list[int] = []
        ctx_end = 0                                   # the context's length in the data's tokens
        rounds: list[Round] = []
        for i, r in enumerate(rows):
            p = len(ctx) if i > 0 and r.prefix == ctx_end else round(r.prefix * scale)
            prompt = ctx[:p] + rng.integers(0, vocab, max(0, p - len(ctx))).tolist()
            prompt += rng.integers(0, vocab, max(1, round((r.prefix + r.input) * scale) - p)).tolist()
            if i == 0:                                # sessions differ from their first id on
                prompt[0] = ids.distinct(prompt[0], first_ids)
            out = rng.integers(0, vocab, max(1, round((r.prefix + r.input + r.output) * scale) - len(prompt))).tolist()
            last = i == len(rows) - 1
            rounds.append(Round(r.arrival_ms / 1000 / speedup if i == 0 else None, prompt, len(out),
                                0.0 if last else r.wait_ms / 1000 / speedup, out))
            ctx, ctx_end = prompt + out, r.prefix + r.input + r.output
        programs.append(Program(sid, rounds))
    if ids.conflicts:
        notes.append(f"{ids.conflicts} session(s) share a first id (more sessions than vocab)")
    return Trace(path.stem, "tracelab", programs, tuple(notes))


# ----------------------------------------------------------------------------------------- Mooncake
def _read_mooncake(path: Path) -> list[tuple[float, int, int, list[int]]]:
    reqs = []
    with open(path) as f:
        for line, text in enumerate(f, 1):
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                raise _bad(path, line, f"not JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise _bad(path, line, f"expected a JSON object, got {type(obj).__name__}")
            missing = [k for k in ("timestamp", "input_length", "output_length", "hash_ids") if k not in obj]
            if missing:
                raise _bad(path, line, f"missing key(s) {missing}")
            hashes = obj["hash_ids"]
            if not isinstance(hashes, list) or not all(isinstance(h, int) and not isinstance(h, bool)
                                                       and h >= 0 for h in hashes):
                raise _bad(path, line, f"hash_ids must be a list of non-negative integers, got {hashes!r}")
            reqs.append((_num(path, line, "timestamp", obj["timestamp"], integer=False),
                         _num(path, line, "input_length", obj["input_length"]),
                         _num(path, line, "output_length", obj["output_length"]), hashes))
    return reqs


def load_mooncake(path: str | Path, *, block_tokens: int = 512, scale: float = 1.0, limit: int | None = None,
                  speedup: float = 1.0, vocab: int = 49152, seed: int = 0) -> Trace:
    """A Mooncake trace (one request per line): each request is a one-round program.

    Blocks are `round(block_tokens*scale)` tokens; input lengths scale by that block ratio, so a
    length keeps its place among the blocks (output lengths by `scale`; both >= 1). Position p is
    in block p // block, whose ids are its hash id's; blocks past the end of `hash_ids` are unique
    to the request, ids past the length unused. A partial last block is the start of its id's
    block: requests listing the same id share it as far as both reach (in the sample one request's
    partial last block is another's full block). Sibling blocks get distinct first ids (in file
    order), so prompts part right where their `hash_ids` part; an id seen after two different id
    paths keeps its first ids (`notes` counts clashes). The first `limit` requests of the file.
    """
    path, ids = Path(path), _Ids(seed, vocab)
    _check(seed, vocab, scale, speedup, limit)
    if block_tokens < 1:
        raise ValueError(f"block_tokens must be >= 1, got {block_tokens}")
    bs = max(1, round(block_tokens * scale))
    reqs = _read_mooncake(path)
    blocks: dict[tuple[int, ...], list[int]] = {}
    nodes: dict[tuple[int, tuple[int, ...]], int] = {}       # (parent node, block key) -> node
    used: dict[int, set[int]] = {0: set()}                      # node -> first ids of its children
    programs: list[Program] = []
    mismatched = clashes = 0
    for idx, (ts, n_in, n_out, hashes) in enumerate(reqs[:limit]):
        mismatched += len(hashes) != math.ceil(n_in / block_tokens)
        length = max(1, round(n_in * bs / block_tokens))
        keys = [(_HASH_BLOCK, h) for h in hashes[:math.ceil(length / bs)]]
        keys += [(_TAIL_BLOCK, idx, j) for j in range(len(keys), math.ceil(length / bs))]
        prompt: list[int] = []
        node = 0
        for key in keys:
            child = nodes.get((node, key))
            if child is None:
                child = nodes[(node, key)] = len(used)
                used[child] = set()
                if key in blocks:                                   # the same id after another path
                    clashes += blocks[key][0] in used[node]
                    used[node].add(blocks[key][0])
                else:
                    block = blocks[key] = ids.draw(bs, *key)
                    block[0] = ids.distinct(block[0], used[node])
            prompt += blocks[key]
            node = child
        del prompt[length:]
        out = ids.draw(max(1, round(n_out * scale)), _OUTPUT, idx)
        programs.append(Program(f"req{idx}", [Round(ts / 1000 / speedup, prompt, len(out), 0.0, out)]))
    notes: list[str] = []
    if mismatched:
        notes.append(f"{mismatched} request(s) with len(hash_ids) != ceil(input_length / {block_tokens})")
    if clashes or ids.conflicts:
        notes.append(f"{clashes + ids.conflicts} block(s) whose first id equals a sibling's "
                     "(an id under two paths, or more siblings than vocab)")
    return Trace(path.stem, "mooncake", programs, tuple(notes))
