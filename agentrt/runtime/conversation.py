"""An agent's conversation within one program: append-only, so that every turn's prompt starts
with the previous turn's prompt and reply, and the engine serves that part from its prefix cache."""
from __future__ import annotations

from dataclasses import dataclass, field

from agentrt.tools import TOOL_CALL_CLOSE, TOOL_CALL_OPEN


@dataclass(slots=True)
class Conversation:
    messages: list[dict[str, str]] = field(default_factory=list)
    # the last prompt's token ids up to its last special token, and that text: the next prompt
    # extends it, so only what follows is tokenized again (contexts of 50k tokens, every turn)
    _head: tuple[str, list[int]] = field(default=("", []), repr=False, compare=False)

    @classmethod
    def start(cls, system: str) -> "Conversation":
        return cls([{"role": "system", "content": system}] if system else [])

    def fork(self) -> "Conversation":
        """A copy for a fan-out branch: it shares everything said so far (and so its cache)."""
        return Conversation(list(self.messages), self._head)

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
        """The chat template's rendering, tokenized. The part up to the previous prompt's last
        special token is reused: special tokens are split off before anything else is tokenized,
        so the ids of the text before one do not depend on what follows it."""
        text = tokenizer.apply_chat_template(self.messages, tokenize=False, add_generation_prompt=True)
        head, head_ids = self._head
        if head and text.startswith(head):
            ids = head_ids + tokenizer.encode(text[len(head):], add_special_tokens=False)
        else:
            ids = tokenizer.encode(text, add_special_tokens=False)
        self._head = _head_before_last_special(text, ids, tokenizer)
        return ids


def _head_before_last_special(text: str, ids: list[int], tokenizer) -> tuple[str, list[int]]:
    """(text, ids) up to the last special token of `ids`, or nothing when that cannot be placed."""
    specials = set(getattr(tokenizer, "all_special_ids", ()))
    for k in range(len(ids) - 1, 0, -1):
        if ids[k] in specials:
            mark = tokenizer.convert_ids_to_tokens(ids[k])
            at = text.rfind(mark)
            if at <= 0 or text.count(mark) != ids.count(ids[k]):
                return "", []
            return text[:at], ids[:k]
    return "", []
