"""The embedded paged-KV engine."""
from agentrt.engine.async_engine import AsyncLLMEngine, EngineDeadError, RequestStream
from agentrt.engine.config import EngineConfig
from agentrt.engine.llm_engine import LLMEngine
from agentrt.engine.loader import MODEL_ALIASES, ModelNotFoundError, UnsupportedModelError
from agentrt.engine.params import SamplingParams
from agentrt.engine.request import RequestMeta, RequestOutput

__all__ = ["AsyncLLMEngine", "EngineConfig", "EngineDeadError", "RequestStream", "LLMEngine", "MODEL_ALIASES", "ModelNotFoundError", "RequestMeta",
           "RequestOutput", "SamplingParams", "UnsupportedModelError"]
