"""The embedded paged-KV engine.

The names below are imported on first use (see `agentrt.lazy_exports`): `agentrt.engine.params`
(SamplingParams) loads without torch; LLMEngine and the other engine classes load it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from agentrt import lazy_exports

if TYPE_CHECKING:
    from agentrt.engine.async_engine import AsyncLLMEngine, EngineDeadError, RequestStream
    from agentrt.engine.backend import Runner, RunnerLayout, StepOutput
    from agentrt.engine.config import EngineConfig
    from agentrt.engine.llm_engine import LLMEngine
    from agentrt.engine.loader import MODEL_ALIASES, ModelNotFoundError, UnsupportedModelError
    from agentrt.engine.observe import EngineObserver
    from agentrt.engine.params import SamplingParams
    from agentrt.engine.policy import EnginePolicy, KVSpec
    from agentrt.engine.request import RequestMeta, RequestOutput

# exported name -> the module that defines it; a new export is one line here (and one above)
_EXPORTS = {
    "AsyncLLMEngine": "agentrt.engine.async_engine",
    "EngineDeadError": "agentrt.engine.async_engine",
    "RequestStream": "agentrt.engine.async_engine",
    "Runner": "agentrt.engine.backend",
    "RunnerLayout": "agentrt.engine.backend",
    "StepOutput": "agentrt.engine.backend",
    "EngineConfig": "agentrt.engine.config",
    "LLMEngine": "agentrt.engine.llm_engine",
    "MODEL_ALIASES": "agentrt.engine.loader",
    "ModelNotFoundError": "agentrt.engine.loader",
    "UnsupportedModelError": "agentrt.engine.loader",
    "EngineObserver": "agentrt.engine.observe",
    "SamplingParams": "agentrt.engine.params",
    "EnginePolicy": "agentrt.engine.policy",
    "KVSpec": "agentrt.engine.policy",
    "RequestMeta": "agentrt.engine.request",
    "RequestOutput": "agentrt.engine.request",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
