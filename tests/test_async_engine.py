"""The asyncio front: concurrent requests, streaming, metadata, aborts, bad input, step failures."""
import asyncio

import pytest

from agentrt.engine import AsyncLLMEngine, EngineDeadError, RequestMeta, SamplingParams


@pytest.fixture
def async_engine(make_engine):
    engine = AsyncLLMEngine(make_engine())
    yield engine
    asyncio.run(engine.close())


def run(coro):
    return asyncio.run(coro)


def test_concurrent_generate_matches_sync_batch(async_engine, check_blocks, make_engine):
    prompts = [[(i * 13 + j) % 250 for j in range(10 + 7 * i)] for i in range(5)]
    params = SamplingParams(max_tokens=8, ignore_eos=True)
    expected = [o.token_ids for o in make_engine().generate(prompts, params)]

    async def main():
        return await asyncio.gather(*(async_engine.generate(p, params) for p in prompts))

    outs = run(main())
    assert [o.token_ids for o in outs] == expected
    assert all(o.finished and o.finish_reason == "length" for o in outs)
    check_blocks(async_engine.engine)


def test_stream_yields_growing_outputs_then_finishes(async_engine):
    async def main():
        seen = []
        async for out in async_engine.stream([5, 6, 7, 8], SamplingParams(max_tokens=6, ignore_eos=True)):
            seen.append(out)
        return seen

    seen = run(main())
    assert [len(o.token_ids) for o in seen] == [1, 2, 3, 4, 5, 6]
    assert [o.finished for o in seen] == [False] * 5 + [True]
    assert seen[-1].text == async_engine.tokenizer.decode(seen[-1].token_ids, skip_special_tokens=True)


def test_metadata_reaches_the_scheduler(async_engine):
    from agentrt.engine.observe import EngineObserver
    meta = RequestMeta(program_id="p7", agent_id="planner", step_id="s1", program_arrival=3.5)
    seen = []

    class Steps(EngineObserver):
        def on_step(self, batch, in_use):
            seen.extend(r.meta for r in batch.requests)

    observer = Steps()
    async_engine.add_observer(observer)
    try:
        run(async_engine.generate([1, 2, 3], SamplingParams(max_tokens=2), meta=meta))
    finally:
        async_engine.engine.remove_observer(observer)
    assert seen and all(m == meta for m in seen)


def test_bad_request_raises_at_submit_and_others_complete(async_engine):
    async def main():
        good = async_engine.submit([9, 8, 7], SamplingParams(max_tokens=5, ignore_eos=True))
        with pytest.raises(ValueError, match="empty"):
            async_engine.submit([], None)
        with pytest.raises(ValueError):
            async_engine.submit([1, 2], {"temperature": -1})
        return await good.result()

    out = run(main())
    assert len(out.token_ids) == 5 and out.finished


def test_abort_cancels_the_waiter_and_frees_blocks(async_engine, check_blocks):
    async def main():
        stream = async_engine.submit([3] * 40, SamplingParams(max_tokens=10_000, ignore_eos=True))
        other = async_engine.submit([4] * 10, SamplingParams(max_tokens=4, ignore_eos=True))
        await asyncio.sleep(0.05)
        async_engine.abort(stream.request_id)
        with pytest.raises(asyncio.CancelledError):
            await stream.result()
        return await other.result()

    other = run(main())
    assert len(other.token_ids) == 4
    check_blocks(async_engine.engine)


def test_cancelling_the_awaiting_task_aborts_the_request(async_engine, check_blocks):
    async def main():
        task = asyncio.create_task(async_engine.generate([2] * 30, SamplingParams(max_tokens=10_000, ignore_eos=True)))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await async_engine.generate([1], SamplingParams(max_tokens=1))   # one more step applies the abort

    run(main())
    check_blocks(async_engine.engine)


def test_a_failing_step_fails_requests_in_flight_and_the_engine_recovers(async_engine, check_blocks, monkeypatch):
    runner = async_engine.engine.runner
    real_run = runner.run
    state = {"fail": True}

    def flaky(batch):
        if state["fail"]:
            state["fail"] = False
            raise RuntimeError("boom")
        return real_run(batch)

    monkeypatch.setattr(runner, "run", flaky)

    async def main():
        with pytest.raises(EngineDeadError, match="boom"):
            await async_engine.generate([1, 2, 3], SamplingParams(max_tokens=3))
        return await async_engine.generate([1, 2, 3], SamplingParams(max_tokens=3, ignore_eos=True))

    out = run(main())
    assert len(out.token_ids) == 3
    check_blocks(async_engine.engine)


def test_close_aborts_running_and_queued_requests_and_frees_blocks(async_engine, check_blocks):
    async def main():
        running = async_engine.submit([5] * 30, SamplingParams(max_tokens=10_000, ignore_eos=True))
        await asyncio.sleep(0.05)                     # it is in the engine and holds blocks
        assert async_engine.engine.pool.num_in_use > 0
        queued = async_engine.submit([6] * 30, SamplingParams(max_tokens=8))
        await async_engine.close()
        for stream in (running, queued):
            with pytest.raises(asyncio.CancelledError):
                await stream.result()
        await async_engine.close()                    # idempotent

    run(main())
    check_blocks(async_engine.engine)
