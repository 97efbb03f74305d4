"""A research team: a planner splits a topic into questions, researchers look each one up in a
small bundled corpus at the same time, a writer drafts a report from their notes, and a reviewer
sends it back for revision (at most twice) until it approves.

    agentrt run workflows/research_team.py
    agentrt run workflows/research_team.py --input '{"topic": "How do honeybees make honey?"}'
    agentrt run workflows/research_team.py:fixed_shape -n 8     # fixed lengths, for benchmarks
    agentrt graph workflows/research_team.py --png research_team.png
"""
from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, Field

from agentrt import END, Agent, SamplingParams, Workflow, append, tool
from agentrt.tools.search import Corpus

CORPUS = Corpus.from_jsonl(Path(__file__).parent / "data" / "research_corpus.jsonl")


class Research(BaseModel):
    topic: str = "How does a KV cache make LLM inference faster?"
    questions: list[str] = Field(default_factory=list)
    notes: Annotated[list[str], append] = Field(default_factory=list)
    draft: str = ""
    review: str = ""


@tool(expected_duration=0.01)
def search(query: str, k: int = 2) -> str:
    """Search the team's library for passages about a query."""
    return CORPUS.search_text(query, k)


def questions_from(text: str, limit: int = 3) -> list[str]:
    """The planner's lines as questions: numbering and bullets stripped, short lines dropped."""
    lines = (re.sub(r"^\s*(?:\d+[.)]|[-*•])\s*", "", line).strip() for line in text.splitlines())
    return [q for q in lines if len(q.split()) >= 3][:limit]


def plan_or_topic(state: Research) -> dict:
    """A planner that wrote no usable question still leaves the team one: the topic itself."""
    return {} if state.questions else {"questions": [state.topic]}


def approved(state: Research) -> str:
    return "revise" if "REVISE" in state.review.upper() else END


def build(*, fixed_shape: bool = False, researchers: int = 3, output_tokens: int = 48,
          search_seconds: float = 0.5, review_rounds: int = 1) -> Workflow:
    """The workflow. `fixed_shape=True` makes every turn exactly `output_tokens` long, the search
    a `search_seconds` sleep, and the reviewer ask for exactly `review_rounds` revisions, so the
    program's shape does not depend on what the model writes (for benchmarks)."""
    def params(tokens: int) -> SamplingParams:
        return SamplingParams(max_tokens=output_tokens if fixed_shape else tokens, ignore_eos=fixed_shape)

    planner = Agent("planner", "You plan research. You write short, concrete questions, one per line.",
                    params=params(72))
    researcher = Agent("researcher", "You are a careful researcher. You answer from the sources you are "
                                     "given, in two or three sentences.", params=params(96))
    writer = Agent("writer", "You write clear, short reports for a general reader.", params=params(200))
    reviewer = Agent("reviewer", "You review reports. You are strict but brief.", params=params(48))

    wf = Workflow("research_team", Research, output="draft",
                  description="planner -> researchers (search, in parallel) -> writer <-> reviewer")
    wf.llm("plan", planner, f"Write {researchers} questions that together answer: {{topic}}",
           output="questions", parse=lambda text: questions_from(text, researchers))
    wf.python("check_plan", fixed_questions(researchers) if fixed_shape else plan_or_topic)
    wf.tool("lookup", sleeping_search(search_seconds) if fixed_shape else search,
            {"query": "{question}"}, output="sources")
    wf.llm("research", researcher, "Sources:\n{sources}\n\nQuestion: {question}\nAnswer from the sources.",
           output="notes")
    wf.llm("write", writer, "Write a one-paragraph report on: {topic}\n\nUse these notes:\n{notes}",
           output="draft")
    wf.llm("review", reviewer, "Report:\n{draft}\n\nIf the report answers \"{topic}\" clearly, reply APPROVE. "
                               "Otherwise reply REVISE and say in one sentence what to fix.", output="review")
    wf.llm("revise", writer, "A reviewer said: {review}\nRewrite the report with that fixed.", output="draft")

    wf.sequence("plan", "check_plan")
    wf.fan_out("check_plan", over="questions", item="question", to="lookup", join="write")
    wf.sequence("lookup", "research")
    wf.sequence("write", "review")
    if fixed_shape:     # always asks for a revision: the loop bound makes it exactly review_rounds
        wf.branch("review", lambda s: "revise" if review_rounds else END, to=["revise", END],
                  max_loops=max(review_rounds, 1))
    else:
        wf.branch("review", approved, to=["revise", END], max_loops=2)
    wf.edge("revise", "review")
    return wf


def fixed_questions(n: int):
    def plan(state: Research) -> dict:
        return {"questions": [f"{state.topic} (part {i + 1} of {n})" for i in range(n)]}
    return plan


def sleeping_search(seconds: float):
    @tool(name="search", expected_duration=seconds)
    async def search_stub(query: str, k: int = 2) -> str:
        """Search the team's library (a fixed-time stand-in)."""
        await asyncio.sleep(seconds)
        return CORPUS.search_text(query, k)
    return search_stub


workflow = build()
fixed_shape = build(fixed_shape=True)
