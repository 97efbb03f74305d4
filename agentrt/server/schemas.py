"""The OpenAI request bodies `agentrt serve` accepts (pydantic), with agentrt's program fields.

Unknown fields are accepted and ignored (clients send many: `user`, `metadata`, `store`, ...);
fields that would change the answer but that agentrt cannot honour (`n` > 1, `logprobs`,
`response_format` other than text) are rejected with a 400 rather than silently dropped.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow")


class FunctionDef(_Lenient):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=dict)


class ToolDef(_Lenient):
    type: Literal["function"] = "function"
    function: FunctionDef


class NamedFunction(_Lenient):
    name: str


class NamedToolChoice(_Lenient):
    type: Literal["function"] = "function"
    function: NamedFunction


class ToolCallFunction(_Lenient):
    name: str
    arguments: str | dict[str, Any] = "{}"


class AssistantToolCall(_Lenient):
    id: str = ""
    type: Literal["function"] = "function"
    function: ToolCallFunction


class ContentPart(_Lenient):
    type: str
    text: str | None = None


class Message(_Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[AssistantToolCall] | None = None
    tool_call_id: str | None = None

    def text(self) -> str:
        """The message's text; image and audio parts are refused by `ChatRequest`'s validator."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text or "" for p in self.content)


class StreamOptions(_Lenient):
    include_usage: bool = False


class ProgramFields(_Lenient):
    """agentrt's program fields, in the body (`extra_body` in the openai client); the
    X-Program-Id / X-Agent-Id / X-Is-Last-Step headers say the same."""
    program_id: str | None = Field(None, min_length=1, max_length=256)
    job_id: str | None = Field(None, min_length=1, max_length=256, description="Continuum's name for program_id")
    agent_id: str | None = Field(None, min_length=1, max_length=256)
    is_last_step: bool = False
    program_graph: dict[str, Any] | None = Field(
        None, description="the program's node graph, on its first request: {entry, edges: [[a, b], ...], "
                          "agents: [...]} (see agentrt.server.graphs.NodeGraph)")
    cache_salt: str | None = Field(None, min_length=1, max_length=256,
                                   description="share the prefix cache only with requests of the same salt "
                                               "(vLLM's field; see agentrt.server.tenancy)")


class _SamplingFields(ProgramFields):
    model: str
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=-1)
    seed: int | None = Field(None, ge=0)
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: bool | int | None = None
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)

    @field_validator("n")
    @classmethod
    def _one_choice(cls, v: int) -> int:
        if v != 1:
            raise ValueError("only n=1 is supported (send n requests instead; they share the prefix cache)")
        return v

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, v):
        if v not in (None, False, 0):
            raise ValueError("logprobs are not supported")
        return v

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        if any(not s for s in stops):
            raise ValueError("stop sequences must be non-empty")
        return stops

    @property
    def program(self) -> str | None:
        return self.program_id or self.job_id

    def sampling(self) -> dict[str, Any]:
        """SamplingParams fields (max_tokens is decided by the service: it knows the context)."""
        out: dict[str, Any] = {"temperature": 1.0 if self.temperature is None else self.temperature,
                               "stop": list(self.stop or []), "ignore_eos": self.ignore_eos}
        if self.top_p is not None:
            out["top_p"] = self.top_p
        if self.top_k is not None and self.top_k > 0:
            out["top_k"] = self.top_k
        if self.seed is not None:
            out["seed"] = self.seed
        if self.stop_token_ids:
            out["stop_token_ids"] = list(self.stop_token_ids)
        return out

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class ChatRequest(_SamplingFields):
    messages: list[Message] = Field(min_length=1)
    tools: list[ToolDef] | None = None
    tool_choice: Literal["auto", "none", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _check(self) -> "ChatRequest":
        for i, m in enumerate(self.messages):
            if isinstance(m.content, list) and any(p.type != "text" for p in m.content):
                raise ValueError(f"messages[{i}]: only text content parts are supported")
        if self.response_format and self.response_format.get("type", "text") != "text":
            raise ValueError("response_format: only {'type': 'text'} is supported")
        if isinstance(self.tool_choice, NamedToolChoice):
            names = {t.function.name for t in self.tools or []}
            if self.tool_choice.function.name not in names:
                raise ValueError(f"tool_choice names {self.tool_choice.function.name!r}, which is not in tools")
        if self.tool_choice == "required" and not self.tools:
            raise ValueError("tool_choice 'required' needs tools")
        return self


class CompletionRequest(_SamplingFields):
    prompt: str | list[int] | list[str] | list[list[int]]
    echo: bool = False
    suffix: str | None = None

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v):
        if isinstance(v, list) and v and isinstance(v[0], (str, list)):
            if len(v) != 1:
                raise ValueError("only one prompt per request is supported (send several requests)")
            v = v[0]
        if not v:
            raise ValueError("prompt is empty")
        return v

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, v):
        if v:
            raise ValueError("suffix (fill-in-the-middle) is not supported")
        return v
