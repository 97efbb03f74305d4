"""The model-facing call format: instructions, the lenient parser, resolving calls to tools."""
from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentrt.tools import (
    TOOL_CALL_CLOSE,
    TOOL_CALL_OPEN,
    ToolCall,
    parse_tool_call,
    render_tool_instructions,
    resolve_call,
    tool,
    tools_by_name,
)


@tool
def search(query: str, k: int = 3) -> list[str]:
    """Search the notes for passages.

    Args:
        query: what to look for
    """
    return [query] * k


@tool
async def calc(expression: str) -> float:
    """Evaluate an arithmetic expression."""
    return 0.0


TOOLS = tools_by_name([search, calc])
CALL = ToolCall("search", {"query": "paged attention"})


def call_of(text: str) -> ToolCall | None:
    parsed = parse_tool_call(text)
    return parsed.call


# ------------------------------------------------------------------------------------ instructions
def test_instructions_list_tools_format_and_example():
    text = render_tool_instructions([search, calc])
    assert "- search(query: str, k: int = 3): Search the notes for passages. (query: what to look for)" in text
    assert "- calc(expression: str): Evaluate an arithmetic expression." in text
    example = text.split(TOOL_CALL_OPEN)[1].split(TOOL_CALL_CLOSE)[0]
    assert json.loads(example) == {"name": "search", "arguments": {"query": "..."}}
    assert "without a tool call" in text
    assert call_of(f"{TOOL_CALL_OPEN}{example}{TOOL_CALL_CLOSE}") == ToolCall("search", {"query": "..."})
    assert render_tool_instructions([]) == ""


def test_instructions_stay_short_per_tool():
    def wordy(a: int) -> int:
        return a

    wordy = tool(wordy, description="A very long description. " + "word " * 200)
    line = next(ln for ln in render_tool_instructions([wordy]).splitlines() if ln.startswith("- wordy"))
    assert line == "- wordy(a: int): A very long description."
    assert max(len(ln) for ln in render_tool_instructions([search, calc]).splitlines()) <= 240


# ------------------------------------------------------------------------------------------ parser
def test_no_call_is_a_final_answer():
    assert parse_tool_call("  The answer is 42.\n") == ("  The answer is 42.\n", None, None)
    assert parse_tool_call("") == ("", None, None)


@pytest.mark.parametrize("text", [
    '<tool_call>{"name": "search", "arguments": {"query": "paged attention"}}</tool_call>',
    '<tool_call>{"name": "search", "arguments": {"query": "paged attention"}}',  # stopped on the close tag
    '<tool_call>\n```json\n{"name": "search", "arguments": {"query": "paged attention"}}\n```\n</tool_call>',
    '<tool_call>{"name": "search", "arguments": {"query": "paged attention"}} I will wait.</tool_call>',
    "<tool_call>{'name': 'search', 'arguments': {'query': 'paged attention'}}</tool_call>",
    '<tool_call>{"name": "search", "args": {"query": "paged attention"}}</tool_call>',
    '<tool_call>{"name": "search", "parameters": {"query": "paged attention"}}</tool_call>',
    '<tool_call>{"name": "search", "input": {"query": "paged attention"}}</tool_call>',
    '<tool_call>{"name": "search", "arguments": "{\\"query\\": \\"paged attention\\"}"}</tool_call>',
    '<tool_call>{"function": {"name": "search", "arguments": "{\\"query\\": \\"paged attention\\"}"}}</tool_call>',
    '<tool_call>{"name": "search", "query": "paged attention"}</tool_call>',  # flattened arguments
    '<tool_call>{"name": "search", "arguments": {"query": "paged attention"}</tool_call>',  # lost a brace
    '< TOOL_CALL >{"name": " search ", "arguments": {"query": "paged attention"},}',
])
def test_lenient_forms_parse_to_the_same_call(text):
    parsed = parse_tool_call(text)
    assert parsed.error is None, parsed.error
    assert parsed.call == CALL


def test_content_before_call_is_kept_and_only_first_call_used():
    text = ('Let me look that up.\n<tool_call>{"name": "search", "arguments": {"query": "paged attention"}}'
            '</tool_call>\n<tool_call>{"name": "calc", "arguments": {"expression": "1+1"}}</tool_call>')
    assert parse_tool_call(text) == ("Let me look that up.", CALL, None)


def test_strings_with_braces_quotes_and_tags():
    text = ('<tool_call>{"name": "calc", "arguments": {"expression": "{a} + \\"}\\" + \'x\' </tool_call>",'
            ' "n": {"deep": [1, {"x": null}]}}}</tool_call>')
    call = call_of(text)
    assert call == ToolCall("calc", {"expression": "{a} + \"}\" + 'x' </tool_call>", "n": {"deep": [1, {"x": None}]}})


def test_python_literals_and_json_words_mixed():
    call = call_of("<tool_call>{'name': 'search', 'arguments': {'query': \"it's\", 'k': 2, 'exact': true, 'x': None}}")
    assert call == ToolCall("search", {"query": "it's", "k": 2, "exact": True, "x": None})


@pytest.mark.parametrize("text", [
    '<tool_call>{"name": "search"}</tool_call>',
    '<tool_call>{"name": "search", "arguments": null}</tool_call>',
    '<tool_call>{"name": "search", "arguments": ""}</tool_call>',
])
def test_missing_arguments_are_empty(text):
    assert call_of(text) == ToolCall("search", {})


@pytest.mark.parametrize("text, reason", [
    ("<tool_call>search(query='x')</tool_call>", "no JSON object"),
    ("<tool_call></tool_call>{\"name\": \"search\"}", "no JSON object"),
    ('<tool_call>{"name": "search", "arguments": {"query": "paged', "incomplete"),
    ('<tool_call>{"name": search, "arguments": {}}</tool_call>', "JSON is invalid"),
    ('<tool_call>{"arguments": {"query": "x"}}</tool_call>', 'no "name"'),
    ('<tool_call>{"name": 7, "arguments": {}}</tool_call>', '"name" must be the tool name'),
    ('<tool_call>{"name": "  ", "arguments": {}}</tool_call>', '"name" must be the tool name'),
    ('<tool_call>{"name": "search", "arguments": ["x"]}</tool_call>', '"arguments" must be a JSON object'),
    ('<tool_call>{"name": "search", "args": "query=x"}</tool_call>', '"args" is a string'),
    ("<tool_call>{1: 2, 'name': 'search', 'arguments': {3: 4}}</tool_call>", "names must be strings"),
    ('<tool_call>{"name": "search", "arguments": {"q": "x"]}</tool_call>', "incomplete"),
])
def test_malformed_calls_give_an_error_for_the_model(text, reason):
    parsed = parse_tool_call(text)
    assert parsed.call is None
    assert parsed.error is not None and reason in parsed.error
    assert '<tool_call>{"name": "TOOL_NAME", "arguments": {"ARG": "VALUE"}}</tool_call>' in parsed.error


def test_error_keeps_content():
    parsed = parse_tool_call("Thinking...\n<tool_call>oops")
    assert parsed.content == "Thinking..." and parsed.call is None and parsed.error


_pieces = st.sampled_from(["<tool_call>", "</tool_call>", "{", "}", "[", "]", '"', "'", "\\", ":", ",",
                           '"name"', '"arguments"', '"search"', "true", "null", "```", "\n", " "])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_pieces, st.text(max_size=8)), max_size=30).map("".join))
def test_parser_never_raises(text):
    parsed = parse_tool_call(text)
    assert (parsed.call is None) or (parsed.error is None)
    if parsed.call is not None:
        assert isinstance(parsed.call.name, str) and isinstance(parsed.call.arguments, dict)
    if not re.search(r"<\s*tool_call\s*>", text, re.IGNORECASE):
        assert parsed == (text, None, None)


def test_parser_survives_absurd_nesting():
    parsed = parse_tool_call('<tool_call>{"name": "search", "arguments": {"a": ' + "[" * 5000 + "]" * 5000 + "}}")
    assert parsed.call is None or parsed.call.name == "search"
    assert parse_tool_call("<tool_call>" + "{" * 5000).error


# ------------------------------------------------------------------------------------- resolution
def test_resolve_call_validates():
    found, args = resolve_call(ToolCall("search", {"query": "x", "k": "2"}), TOOLS)
    assert found is search and args.query == "x" and args.k == 2
    assert resolve_call(ToolCall("Search", {"query": "x"}), TOOLS)[0] is search  # case-insensitive fallback


def test_resolve_unknown_tool_lists_known_ones():
    message = resolve_call(ToolCall("browse", {}), TOOLS)
    assert message == "Unknown tool 'browse'. Available tools: search, calc."
    assert "no tools are available" in resolve_call(ToolCall("browse", {}), {})


def test_resolve_bad_arguments():
    message = resolve_call(ToolCall("search", {"k": 1, "limit": 2}), TOOLS)
    assert isinstance(message, str)
    assert "tool 'search'" in message and "missing required argument 'query'" in message
    assert "unexpected argument 'limit'" in message and "search(query: str, k: int = 3)" in message


def test_tools_by_name_rejects_duplicates():
    with pytest.raises(ValueError, match="two tools are named 'search'"):
        tools_by_name([search, search])


def test_close_tag_bounds_a_repair_but_not_strings():
    lost = '<tool_call>{"name": "search", "arguments": {"query": "paged attention"}</tool_call> then {"x": 1'
    assert call_of(lost) == CALL
    two = lost.split(" then")[0] + '\n<tool_call>{"name": "calc", "arguments": {}}</tool_call>'
    assert call_of(two) == CALL
    stray = '<tool_call>{"name": "search", "arguments": {"query": "paged attention"}</tool_call> a }'
    assert call_of(stray) == CALL
