"""What a tool can know about the call it is serving: `current_call()`.

In a durable run (`Runtime(checkpoint=...)`) every tool call has an idempotency key, the same on
every resume: `<run>/<program>/<lane>/<step>#<visit>/<call index>`. A tool with side effects
dedupes on it (a payment id, a file name, a ticket number). `execution` counts how many times the
call has been started across the run's lives (2 after a crash re-made it); `attempt` counts the
tool's own retries within one execution.

>>> @tool
... def charge(amount: int) -> str:
...     call = current_call()
...     return payments.charge(amount, idempotency_key=call.key)
"""
from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import NamedTuple


class CallInfo(NamedTuple):
    key: str | None                    # None outside a durable run
    execution: int = 1
    attempt: int = 1


_CALL: contextvars.ContextVar[CallInfo] = contextvars.ContextVar("agentrt_tool_call")


def current_call() -> CallInfo:
    """The call the running tool serves (outside a tool call: no key, first attempt)."""
    return _CALL.get(CallInfo(None))


def set_call(info: CallInfo) -> contextvars.Token:
    return _CALL.set(info)


def reset_call(token: contextvars.Token) -> None:
    _CALL.reset(token)


class CallSite(NamedTuple):
    """Where a tool call comes from, and where its progress goes: set by the runtime around every
    call (and by a remote worker around the call it serves, from what the caller sent)."""
    program: str | None = None
    step: str | None = None
    tool: str | None = None
    progress: Callable[[float | None, float | None, str | None], None] | None = None
    caller: str | None = None          # on a worker: the client that sent the call


_SITE: contextvars.ContextVar[CallSite] = contextvars.ContextVar("agentrt_tool_site")


def current_site() -> CallSite:
    """The program and step the running tool serves (empty outside a tool call)."""
    return _SITE.get(CallSite())


def set_site(site: CallSite) -> contextvars.Token:
    return _SITE.set(site)


def reset_site(token: contextvars.Token) -> None:
    _SITE.reset(token)


def report_progress(fraction: float | None = None, eta_seconds: float | None = None,
                    message: str | None = None) -> None:
    """Tell the runtime how far the running tool is (`fraction` done, 0..1) and/or how long it
    still needs (`eta_seconds`): agentrt's prefetch brings the next agent's KV back in time. A
    remote tool's report travels back to the caller. Outside a call: does nothing."""
    hook = _SITE.get(CallSite()).progress
    if hook is not None:
        hook(fraction, eta_seconds, message)
