"""Minimal embedding: a two-agent workflow defined inline and run from plain synchronous code.

What it shows:
  * the state of a program is a pydantic model; every field has a default or comes from the input
  * an Agent is a persona (system prompt + sampling parameters)
  * an `llm` step is one agent turn: its prompt is a template over the state, its reply goes
    to the `output` field; an edge says which step runs next
  * `agentrt.run(workflow, inputs)` loads the model, runs the programs on the embedded engine
    and returns their results (one input -> one result, a list -> a list, all run at once)

Run it:
    python examples/minimal_embedding.py                              # SmolLM2-135M
    python examples/minimal_embedding.py --model tiny-random-llama    # seconds, random text
"""
from __future__ import annotations

import argparse

from pydantic import BaseModel

import agentrt
from agentrt import Agent, SamplingParams, Workflow


class QA(BaseModel):                    # the program's state
    question: str = "Why is the sky blue?"
    draft: str = ""                     # written by the writer
    answer: str = ""                    # written by the editor: the workflow's output


writer = Agent("writer", "You answer questions in two or three plain sentences.",
               params=SamplingParams(max_tokens=80))
editor = Agent("editor", "You are an editor. You rewrite text to be shorter and clearer.",
               params=SamplingParams(max_tokens=48))

workflow = Workflow("qa", QA, output="answer")
workflow.llm("draft", writer, "Question: {question}", output="draft")
workflow.llm("edit", editor, "Rewrite this answer as one clear sentence:\n\n{draft}", output="answer")
workflow.edge("draft", "edit")          # draft -> edit -> (no edge: the program ends)

QUESTIONS = ["Why is the sky blue?", "Why do cats purr?"]


def main() -> None:
    parser = argparse.ArgumentParser(description="Run a two-agent workflow with agentrt.run().")
    parser.add_argument("--model", default="smollm2-135m", help="model alias or local HF directory")
    args = parser.parse_args()

    # Two programs at once on one engine. The second finds both system prompts (and the chat
    # template around them) in the prefix cache: that is the hit rate printed below.
    results = agentrt.run(workflow, [{"question": q} for q in QUESTIONS], model=args.model)

    for r in results:
        print(f"--- {r.program_id}: {r.status} in {r.jct:.2f} s" + (f" ({r.error})" if r.error else ""))
        print(f"question: {r.state.question}")
        print(f"draft:    {r.state.draft.strip()}")
        print(f"answer:   {r.output.strip()}")
        print(f"{r.llm_calls} LLM calls, {r.tokens_in} prompt tokens, {r.cached_tokens} from the "
              f"prefix cache: hit rate {r.hit_rate:.0%}")
    total_in = sum(r.tokens_in for r in results)
    total_cached = sum(r.cached_tokens for r in results)
    print(f"overall prefix hit rate: {total_cached / max(total_in, 1):.0%} "
          f"({total_cached}/{total_in} prompt tokens)")
    raise SystemExit(0 if all(r.status == "done" for r in results) else 1)


if __name__ == "__main__":
    main()
