"""The workflow DSL: agents, steps and edges over a typed state, compiled to an Agent Step Graph.

>>> from agentrt.graph import Agent, Workflow, END, append
"""
from agentrt.graph.compile import CompiledWorkflow
from agentrt.graph.state import Reducer, StateError, append
from agentrt.graph.steps import END, Agent, Branch, FanOut, FunctionStep, LLMStep, ToolStep
from agentrt.graph.workflow import Workflow, WorkflowError

__all__ = ["Agent", "Branch", "CompiledWorkflow", "END", "FanOut", "FunctionStep", "LLMStep",
           "Reducer", "StateError", "ToolStep", "Workflow", "WorkflowError", "append"]
