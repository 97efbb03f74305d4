"""Workflow-aware scheduling: pause prediction and KV-cache policies for agent programs."""
from agentrt.sched.predictor import PinDecision, ToolPausePredictor, load_tracelab_tool_latencies

__all__ = ["PinDecision", "ToolPausePredictor", "load_tracelab_tool_latencies"]
