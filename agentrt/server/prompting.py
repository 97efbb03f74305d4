"""From OpenAI messages and tools to a prompt, and from a reply back to `content` + `tool_calls`.

Tools are described in the system message and called in agentrt's documented format,
`<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, read back by the project's lenient
parser (agentrt.tools.calls). `tool_choice`: `none` leaves the tools out; `required` and a named
function open the assistant's reply with the call (`<tool_call>{"name": "` or the whole head up to
the arguments), so the model only writes the rest. A reply that does not parse is returned as
text, never an error.
"""
from __future__ import annotations

import json
import re
import uuid
from typing import Any, NamedTuple

from agentrt.server.schemas import ChatRequest, NamedToolChoice
from agentrt.tools.calls import TOOL_CALL_CLOSE, TOOL_CALL_OPEN, parse_tool_call

_OPEN = re.compile(r"<\s*tool_call\s*>", re.IGNORECASE)
_OPEN_TEXT = TOOL_CALL_OPEN.lower()


class ChatPrompt(NamedTuple):
    messages: list[dict[str, str]]   # for the chat template
    prefix: str                      # the reply's forced opening (appended after the template)
    tool_names: frozenset[str]       # tools the reply may call (empty: do not parse tool calls)


def _schema_text(params: dict[str, Any]) -> str:
    props = params.get("properties") or {}
    required = set(params.get("required") or [])
    parts = []
    for name, p in props.items():
        kind = p.get("type", "any") if isinstance(p, dict) else "any"
        parts.append(f"{name}: {kind}{'' if name in required else ' (optional)'}")
    return ", ".join(parts)


def tool_instructions(req: ChatRequest) -> str:
    lines = ["You can use these tools:"]
    for t in req.tools or []:
        f = t.function
        lines.append(f"- {f.name}({_schema_text(f.parameters)}){': ' + f.description if f.description else ''}")
    first = req.tools[0].function
    example = {"name": first.name, "arguments": {k: "..." for k in (first.parameters.get("required") or [])}}
    lines += ["To use a tool, reply with one call in this exact format, then stop and wait:",
              f"{TOOL_CALL_OPEN}{json.dumps(example)}{TOOL_CALL_CLOSE}",
              "The result comes back in the next message. When you have the answer, reply normally, "
              "without a tool call."]
    if req.tool_choice == "required" or isinstance(req.tool_choice, NamedToolChoice):
        lines.append("You must call a tool now.")
    return "\n".join(lines)


def _call_text(name: str, arguments: Any) -> str:
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except ValueError:
            pass
    return f"{TOOL_CALL_OPEN}{json.dumps({'name': name, 'arguments': arguments})}{TOOL_CALL_CLOSE}"


def chat_prompt(req: ChatRequest) -> ChatPrompt:
    """Messages for the chat template: system/developer as system, a tool result as a user message
    (every template accepts that role), an assistant's tool calls in the call format."""
    use_tools = bool(req.tools) and req.tool_choice != "none"
    call_names: dict[str, str] = {}
    out: list[dict[str, str]] = []
    for m in req.messages:
        text = m.text()
        if m.role in ("system", "developer"):
            out.append({"role": "system", "content": text})
        elif m.role == "assistant":
            calls = m.tool_calls or []
            for c in calls:
                call_names[c.id] = c.function.name
            body = "\n".join([text] * bool(text) + [_call_text(c.function.name, c.function.arguments) for c in calls])
            out.append({"role": "assistant", "content": body})
        elif m.role in ("tool", "function"):
            name = m.name or call_names.get(m.tool_call_id or "", "the tool")
            out.append({"role": "user", "content": f"Result of {name}:\n{text}"})
        else:
            out.append({"role": "user", "content": text})
    prefix = ""
    if use_tools:
        instructions = tool_instructions(req)
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{instructions}".strip()}
        else:
            out.insert(0, {"role": "system", "content": instructions})
        if isinstance(req.tool_choice, NamedToolChoice):
            prefix = f'{TOOL_CALL_OPEN}{{"name": "{req.tool_choice.function.name}", "arguments": '
        elif req.tool_choice == "required":
            prefix = f'{TOOL_CALL_OPEN}{{"name": "'
    names = frozenset(t.function.name for t in req.tools or []) if use_tools else frozenset()
    return ChatPrompt(out, prefix, names)


class Reply(NamedTuple):
    content: str | None
    tool_calls: list[dict[str, Any]]


def split_reply(text: str, tool_names: frozenset[str]) -> Reply:
    """The reply's content and tool calls (OpenAI shape). Only declared tools become calls; a
    call that does not parse, or names another tool, leaves the whole text as content."""
    if not tool_names:
        return Reply(text, [])
    parsed = parse_tool_call(text)
    if parsed.call is None or parsed.call.name not in tool_names:
        return Reply(text, [])
    call = {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
            "function": {"name": parsed.call.name, "arguments": json.dumps(parsed.call.arguments)}}
    return Reply(parsed.content or None, [call])


class StreamSplitter:
    """Streams content deltas while holding back anything that may open a tool call; the rest is
    decided at the end (`finish`): tool calls, or the held text as content."""

    def __init__(self, tool_names: frozenset[str], prefix: str = ""):
        self.tool_names = tool_names
        self.text = prefix
        self.sent = 0            # characters of self.text already streamed as content
        self.holding = bool(prefix)

    def feed(self, delta: str) -> str:
        self.text += delta
        if not self.tool_names:
            out, self.sent = self.text[self.sent:], len(self.text)
            return out
        if self.holding:
            return ""
        m = _OPEN.search(self.text, max(0, self.sent - 16))
        safe = m.start() if m else self._partial_open(self.text)
        if m:
            self.holding = True
        out = self.text[self.sent:safe] if safe > self.sent else ""
        self.sent = max(self.sent, safe)
        return out

    @staticmethod
    def _partial_open(text: str) -> int:
        """Where a possibly unfinished `<tool_call>` starts at the end of text (else len(text))."""
        i = text.rfind("<", max(0, len(text) - 16))
        if i >= 0 and _OPEN_TEXT.startswith(re.sub(r"\s+", "", text[i:]).lower()):
            return i
        return len(text)

    def finish(self) -> tuple[str, list[dict[str, Any]]]:
        """(the content still to stream, the tool calls)."""
        reply = split_reply(self.text, self.tool_names)
        if reply.tool_calls:
            m = _OPEN.search(self.text)
            end = m.start() if m else len(self.text)
            return (self.text[self.sent:end].rstrip() if end > self.sent else ""), reply.tool_calls
        return self.text[self.sent:], []
