"""Map-reduce summarization: fetch a document, split it into sections, summarize every section at
the same time, then combine the summaries into one.

    agentrt run workflows/map_reduce.py                      # the bundled article
    agentrt run workflows/map_reduce.py --input '{"path": "notes.md"}'
    agentrt run workflows/map_reduce.py:fixed_shape -n 4     # fixed lengths, for benchmarks
"""
from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, Field

from agentrt import Agent, SamplingParams, Workflow, append, tool

ARTICLE = Path(__file__).parent / "data" / "map_reduce_document.md"
MAX_CHUNK_WORDS = 320


class Digest(BaseModel):
    path: str = str(ARTICLE)
    document: str = ""
    chunks: list[str] = Field(default_factory=list)
    summaries: Annotated[list[str], append] = Field(default_factory=list)
    summary: str = ""


@tool(expected_duration=0.01)
def fetch(path: str) -> str:
    """Read a text document."""
    return Path(path).read_text(encoding="utf-8")


def split_sections(state: Digest) -> dict:
    """Sections under "## " headings (or paragraphs), each cut to MAX_CHUNK_WORDS words."""
    parts = re.split(r"\n(?=## )", state.document.strip())
    if len(parts) == 1:
        parts = [p for p in state.document.split("\n\n") if p.strip()]
    chunks = []
    for part in parts:
        words = part.split()
        chunks += [" ".join(words[i:i + MAX_CHUNK_WORDS]) for i in range(0, len(words), MAX_CHUNK_WORDS)]
    return {"chunks": chunks}


def build(*, fixed_shape: bool = False, chunks: int = 6, chunk_words: int = 180, output_tokens: int = 48,
          fetch_seconds: float = 0.5) -> Workflow:
    """The workflow. `fixed_shape=True` fetches with a `fetch_seconds` sleep, cuts exactly `chunks`
    chunks of `chunk_words` words, and makes every summary exactly `output_tokens` long."""
    def params(tokens: int) -> SamplingParams:
        return SamplingParams(max_tokens=output_tokens if fixed_shape else tokens, ignore_eos=fixed_shape)

    summarizer = Agent("summarizer", "You summarize text faithfully in two sentences.", params=params(80))
    editor = Agent("editor", "You combine section summaries into one clear paragraph.", params=params(200))
    wf = Workflow("map_reduce", Digest, output="summary",
                  description="fetch -> split -> summarize each section (in parallel) -> combine")
    wf.tool("fetch", sleeping_fetch(fetch_seconds) if fixed_shape else fetch, {"path": "{path}"},
            output="document", on_error="fail")
    wf.python("split", fixed_chunks(chunks, chunk_words) if fixed_shape else split_sections)
    wf.llm("summarize", summarizer, "Summarize this section:\n\n{chunk}", output="summaries")
    wf.llm("combine", editor, "Section summaries, in order:\n{summaries}\n\nCombine them into one paragraph.",
           output="summary")
    wf.edge("fetch", "split")
    wf.fan_out("split", over="chunks", item="chunk", to="summarize", join="combine")
    return wf


def fixed_chunks(n: int, words: int):
    def split(state: Digest) -> dict:
        text = state.document.split() or ["memory"]
        return {"chunks": [" ".join(text[(i * words + j) % len(text)] for j in range(words)) for i in range(n)]}
    return split


def sleeping_fetch(seconds: float):
    @tool(name="fetch", expected_duration=seconds)
    async def fetch_stub(path: str) -> str:
        """Read a text document (after a fixed delay)."""
        await asyncio.sleep(seconds)
        return ARTICLE.read_text(encoding="utf-8")
    return fetch_stub


workflow = build()
fixed_shape = build(fixed_shape=True)
