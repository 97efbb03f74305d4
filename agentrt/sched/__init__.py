"""Workflow-aware scheduling behind one front door (`WorkflowScheduler`), fed typed program
events (`agentrt.sched.events`): pause prediction, TTL pins, next-use eviction, prefetch, program
order and admission.

>>> from agentrt.sched import WorkflowScheduler
>>> from agentrt.sched.events import ProgramStarted, ToolStarted
"""
from agentrt.sched.front import WorkflowScheduler
from agentrt.sched.predictor import PinDecision, ToolPausePredictor, load_tracelab_tool_latencies

__all__ = ["PinDecision", "ToolPausePredictor", "WorkflowScheduler", "load_tracelab_tool_latencies"]
