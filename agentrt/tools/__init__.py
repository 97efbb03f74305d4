"""Tools agents can call: typed Python functions (`spec`) and the model-facing call format (`calls`)."""
from agentrt.tools.calls import (
    TOOL_CALL_CLOSE,
    TOOL_CALL_OPEN,
    ToolCall,
    ToolCallParse,
    parse_tool_call,
    render_tool_instructions,
    resolve_call,
    tools_by_name,
)
from agentrt.tools.context import CallInfo, CallSite, current_call, current_site, report_progress
from agentrt.tools.spec import (
    Tool,
    ToolArgumentError,
    ToolError,
    ToolParam,
    ToolResult,
    ToolTimeoutError,
    format_observation,
    tool,
)

__all__ = [
    "CallInfo", "CallSite", "current_call", "current_site", "report_progress", "TOOL_CALL_CLOSE", "TOOL_CALL_OPEN", "Tool", "ToolArgumentError", "ToolCall", "ToolCallParse", "ToolError",
    "ToolParam", "ToolResult", "ToolTimeoutError", "format_observation", "parse_tool_call",
    "render_tool_instructions", "resolve_call", "tool", "tools_by_name",
]
