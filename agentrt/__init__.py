"""agentrt: a runtime for multi-agent LLM programs on an embedded paged-KV engine."""
from agentrt.engine import AsyncLLMEngine, EngineConfig, LLMEngine, RequestMeta, RequestOutput, SamplingParams

__version__ = "0.1.0"
__all__ = ["AsyncLLMEngine", "EngineConfig", "LLMEngine", "RequestMeta", "RequestOutput", "SamplingParams", "__version__"]
