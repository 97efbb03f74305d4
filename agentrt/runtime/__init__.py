"""Runs programs: walks their step graphs, calls the engine and the tools, reports events."""
from agentrt.runtime.errors import ProgramError
from agentrt.runtime.events import Event, ProgramResult, TraceWriter, summarize
from agentrt.runtime.program import Program, current_program
from agentrt.runtime.runtime import Runtime, run

__all__ = ["Event", "Program", "ProgramError", "ProgramResult", "Runtime", "TraceWriter", "current_program", "run",
           "summarize"]
