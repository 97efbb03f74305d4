"""The wire protocol of remote tools: topics and the JSON messages on them (pydantic models).

Topics, under the broker URL's prefix P (default `agentrt`):

    P/tools/v1/adverts/<worker>   retained WorkerAdvert; the worker's will empties it when it dies
    P/tools/v1/call/<tool>        CallRequest, QoS 1; workers subscribe `$share/<group>/...` to share the load
    P/tools/v1/reply/<client>     Reply (accepted / heartbeat / progress / result), the MQTT v5
                                  response topic of every call, correlation data = the call id
    P/tools/v1/direct/<worker>    a call resent after a reconnect, to the worker that had accepted it
    P/tools/v1/cancel/all         Cancel, to every worker (the one running the call stops it)

Events (`agentrt.tools.mqtt.stream`) use exactly three levels under P: `P/<run>/<program>/<kind>`,
so `P/+/+/+` never matches tool traffic.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

VERSION = 1
MAX_PAYLOAD = 1 << 20          # bytes a call or a reply may take on the wire (both sides check)
DEFAULT_GROUP = "agentrt"


class ProtocolError(ValueError):
    """A message that is not a valid call or reply (bad JSON, wrong fields, too large)."""


class _Msg(BaseModel):
    model_config = ConfigDict(extra="ignore")
    v: int = VERSION


class ToolSpec(BaseModel):
    """What a worker says about one tool: the schema its signature gives, and its settings."""
    name: str
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    expected_duration: float | None = None
    timeout: float | None = 30.0
    retries: int = 0
    idempotent: bool = True


class WorkerAdvert(_Msg):
    worker: str
    group: str = DEFAULT_GROUP
    tools: list[ToolSpec]
    concurrency: int = 1
    heartbeat: float = 0.5                 # seconds between heartbeats of a running call
    protection: str = ""                   # the code jail in force on the worker, in words
    pid: int = 0
    host: str = ""
    started: float = 0.0                   # wall clock (epoch seconds)


class CallRequest(_Msg):
    id: str                                # this attempt's call id (also the MQTT correlation data)
    tool: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    key: str | None = None                 # the durable run's idempotency key (current_call().key)
    attempt: int = 1
    program: str | None = None
    step: str | None = None
    caller: str = ""                       # the client id: its reply topic, and a scope for per-program state
    deadline: float | None = None          # wall clock (epoch seconds) after which the answer is useless
    resend: bool = False                   # sent again after a reconnect: a finished call answers again


class Reply(_Msg):
    id: str
    kind: Literal["accepted", "heartbeat", "progress", "result"]
    worker: str = ""
    fraction: float | None = None          # progress: done so far, 0..1
    eta_seconds: float | None = None       # progress: seconds still needed
    message: str | None = None
    ok: bool | None = None                 # result
    value: Any = None
    error_type: str | None = None          # result: the exception's class name on the worker
    error_message: str | None = None
    duration: float | None = None          # result: seconds the tool ran on the worker


class Cancel(_Msg):
    id: str


class Topics:
    def __init__(self, prefix: str):
        self.root = f"{prefix}/tools/v{VERSION}"

    def advert(self, worker: str) -> str:
        return f"{self.root}/adverts/{worker}"

    @property
    def adverts(self) -> str:
        return f"{self.root}/adverts/+"

    def call(self, tool: str) -> str:
        return f"{self.root}/call/{tool}"

    def shared_call(self, group: str, tool: str) -> str:
        return f"$share/{group}/{self.root}/call/{tool}"

    def reply(self, client: str) -> str:
        return f"{self.root}/reply/{client}"

    def direct(self, worker: str) -> str:
        """One worker's own call topic: a call resent after a reconnect goes back to its worker."""
        return f"{self.root}/direct/{worker}"

    @property
    def cancel(self) -> str:
        return f"{self.root}/cancel/all"


def decode(model: type[_Msg], payload: bytes | bytearray | str, limit: int = MAX_PAYLOAD):
    """The message, or ProtocolError saying what is wrong with it."""
    size = len(payload)
    if size > limit:
        raise ProtocolError(f"payload of {size} bytes is over the {limit}-byte limit")
    try:
        return model.model_validate_json(payload)
    except ValueError as exc:
        first = str(exc).splitlines()
        raise ProtocolError(f"malformed {model.__name__}: {' '.join(first[:3])[:300]}") from None


def encode(message: BaseModel) -> bytes:
    """JSON bytes; values JSON cannot hold (a tool's odd return value) are sent as their str()."""
    import pydantic_core
    return pydantic_core.to_json(message, fallback=str)
