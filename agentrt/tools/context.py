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
