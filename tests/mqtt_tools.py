"""Tools the MQTT tests serve from workers (a thread in the test process, or `agentrt worker
tests/mqtt_tools.py` processes). State the tests inspect lives in module globals (thread workers)
or in files under the directory a call names (process workers)."""
from __future__ import annotations

import asyncio
import builtins
import time
from pathlib import Path

from agentrt.tools import current_call, current_site, report_progress, tool

RUNS: dict[str, int] = {}            # tag -> times `counted` ran
CANCELLED: list[str] = []            # tags of `slow` calls that saw their cancellation
SEEN: list[dict] = []                # what `whoami` saw


@tool(expected_duration=0.001, timeout=10.0)
async def add(a: int, b: int = 1) -> int:
    """Add two numbers."""
    return a + b


@tool(timeout=10.0)
async def fail(kind: str, message: str) -> str:
    """Raise the builtin exception named kind."""
    raise getattr(builtins, kind)(message)


@tool(timeout=30.0, retries=2, backoff=0.05)
async def slow(seconds: float, tag: str = "", mark_dir: str = "") -> str:
    """Sleep in small steps, reporting progress; files under mark_dir record start / cancel / end."""
    mark = Path(mark_dir) if mark_dir else None
    if mark:
        (mark / f"{tag}.started").write_text(str(time.time()))
    began = time.monotonic()
    try:
        while (done := time.monotonic() - began) < seconds:
            report_progress(done / seconds, seconds - done)
            await asyncio.sleep(min(0.05, seconds - done))
    except asyncio.CancelledError:
        CANCELLED.append(tag)
        if mark:
            (mark / f"{tag}.cancelled").write_text("1")
        raise
    if mark:
        (mark / f"{tag}.done").write_text("1")
    return f"slept {seconds} s ({tag})"


@tool(timeout=10.0)
def big(n: int) -> str:
    """A result of n characters."""
    return "x" * n


@tool(timeout=10.0)
async def counted(tag: str) -> int:
    """Count calls per tag."""
    await asyncio.sleep(0.2)
    RUNS[tag] = RUNS.get(tag, 0) + 1
    return RUNS[tag]


@tool(timeout=10.0)
def whoami() -> dict:
    """What the tool sees of the call."""
    call, site = current_call(), current_site()
    seen = {"key": call.key, "attempt": call.attempt, "program": site.program, "step": site.step,
            "caller": site.caller}
    SEEN.append(seen)
    return seen
