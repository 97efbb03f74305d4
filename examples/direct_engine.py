"""The engine on its own: batched generation, chat, and token streaming from asyncio.

* `LLMEngine.from_pretrained(name)` loads a model onto the paged-KV engine (CPU by default).
* `generate(prompts, SamplingParams(...))` runs a batch of prompts (text or token ids) together.
* `chat(conversations, params)` does the same for chat messages, through the model's chat template.
* `AsyncLLMEngine(engine)` is the asyncio front the runtime uses: `stream()` yields the output as it
  grows (each item is cumulative). The prefix cache keeps computed KV blocks, so a second prompt
  that starts like an earlier one reuses them: `num_cached_tokens` says how many prompt tokens.

Run: python examples/direct_engine.py [--model tiny-random-llama]
"""
import argparse
import asyncio
import time

from agentrt import AsyncLLMEngine, LLMEngine, SamplingParams

SYSTEM = ("You are a guide at a science museum. You answer visitors' questions about the exhibits "
          "(dinosaurs, planets, the human body) in one or two friendly sentences.")


def batch_and_chat(engine: LLMEngine) -> None:
    prompts = ["The capital of France is", "def add(a, b):\n    return"]
    greedy = SamplingParams(max_tokens=16, temperature=0.0, stop=["\n\n"])
    for prompt, out in zip(prompts, engine.generate(prompts, greedy)):
        print(f"generate {prompt!r} -> {out.text!r} ({len(out.token_ids)} tokens, {out.finish_reason})")

    sampled = SamplingParams(max_tokens=40, temperature=0.7, top_p=0.9, seed=1)
    conversations = [[{"role": "user", "content": "Name three primary colors."}],
                     [{"role": "user", "content": "What is a haiku?"}]]
    for conv, out in zip(conversations, engine.chat(conversations, sampled)):
        print(f"chat {conv[-1]['content']!r} -> {out.text.strip()!r}")


async def stream_with_shared_prefix(engine: LLMEngine) -> None:
    front = AsyncLLMEngine(engine)                    # same model, same KV cache
    params = SamplingParams(max_tokens=40)
    for question in ("Where are the dinosaurs?", "What can I learn about the planets?"):
        ids = engine.apply_chat_template([{"role": "system", "content": SYSTEM},
                                          {"role": "user", "content": question}])
        print(f"\nstream {question!r}\n  ", end="")
        shown, t0 = "", time.perf_counter()
        async for partial in front.stream(ids, params):
            print(partial.text[len(shown):], end="", flush=True)   # only the new text
            shown = partial.text
        print(f"\n  [{len(partial.prompt_token_ids)} prompt tokens, {partial.num_cached_tokens} from the "
              f"prefix cache; {len(partial.token_ids)} tokens in {time.perf_counter() - t0:.2f} s]")
    await front.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Use the engine directly.")
    parser.add_argument("--model", default="smollm2-135m", help="model alias or local HF directory")
    args = parser.parse_args()
    engine = LLMEngine.from_pretrained(args.model)
    batch_and_chat(engine)
    asyncio.run(stream_with_shared_prefix(engine))
    print(f"\nengine: {engine.stats()['steps']} steps, prefix hit rate {engine.stats()['prefix_hit_rate']:.0%}")
