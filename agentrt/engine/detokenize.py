"""Incremental detokenization and stop-string matching."""
from __future__ import annotations

from agentrt.engine.request import Request

# tokens re-decoded before the new ones, so that merges across the boundary come out right
CONTEXT_TOKENS = 4


def update_text(tokenizer, req: Request, stop: list[str], final: bool = False) -> bool:
    """Extend req.text with its new tokens; True when a stop string was found (text cut before it)."""
    out = req.output_token_ids
    start = max(0, req.detok_offset - CONTEXT_TOKENS)
    head = tokenizer.decode(out[start:req.detok_offset], skip_special_tokens=True)
    full = tokenizer.decode(out[start:], skip_special_tokens=True)
    if full.endswith("\ufffd") and not final:
        return False            # an incomplete UTF-8 sequence: wait for the next token
    new = full[len(head):] if full.startswith(head) else full
    old_len = len(req.text)
    req.text += new
    req.detok_offset = len(out)
    if not stop or not new:
        return False
    window_start = max(0, old_len - max(len(s) for s in stop) + 1)
    hits = [i for i in (req.text.find(s, window_start) for s in stop) if i >= 0]
    if hits:
        req.text = req.text[:min(hits)]
        return True
    return False
