"""An agent's conversation within one program: append-only, so that every turn's prompt starts
with the previous turn's prompt and reply, and the engine serves that part from its prefix cache."""
from __future__ import annotations

from dataclasses import dataclass, field

from agentrt.tools import TOOL_CALL_CLOSE, TOOL_CALL_OPEN


@dataclass(slots=True)
class Conversation:
    messages: list[dict[str, str]] = field(default_factory=list)

    @classmethod
    def start(cls, system: str) -> "Conversation":
        return cls([{"role": "system", "content": system}] if system else [])

    def fork(self) -> "Conversation":
        """A copy for a fan-out branch: it shares everything said so far (and so its cache)."""
        return Conversation(list(self.messages))

    def add_user(self, text: str) -> None:
        self.messages.append({"role": "user", "content": text})

    def add_assistant(self, text: str) -> None:
        if TOOL_CALL_OPEN in text and TOOL_CALL_CLOSE not in text.split(TOOL_CALL_OPEN, 1)[1]:
            text += TOOL_CALL_CLOSE        # generation stopped on the close tag, which is cut off
        self.messages.append({"role": "assistant", "content": text})

    def add_observation(self, tool: str | None, text: str) -> None:
        """A tool's result (or a parse error) goes back to the agent as a user message: every
        chat template accepts that role, not every one knows a "tool" role."""
        head = f"Result of {tool}:" if tool else "Tool call error:"
        self.messages.append({"role": "user", "content": f"{head}\n{text}"})

    def prompt_ids(self, tokenizer) -> list[int]:
        text = tokenizer.apply_chat_template(self.messages, tokenize=False, add_generation_prompt=True)
        return tokenizer.encode(text, add_special_tokens=False)
