"""agentrt: a runtime for multi-agent LLM programs on an embedded paged-KV engine.

>>> from agentrt import Agent, Workflow, END, append, tool, Runtime, run
"""
from agentrt.engine import AsyncLLMEngine, EngineConfig, LLMEngine, RequestMeta, RequestOutput, SamplingParams
from agentrt.graph import END, Agent, Workflow, WorkflowError, append
from agentrt.runtime import ProgramResult, Runtime, run
from agentrt.tools import tool

__version__ = "0.1.0"
__all__ = ["END", "Agent", "AsyncLLMEngine", "EngineConfig", "LLMEngine", "ProgramResult", "RequestMeta",
           "RequestOutput", "Runtime", "SamplingParams", "Workflow", "WorkflowError", "__version__",
           "append", "run", "tool"]
