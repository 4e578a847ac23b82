"""Tool calls: the <tool_call> parser on well-formed and hostile text, argument checks against the JSON
schema, and execution under one deadline where failures become error messages."""

from __future__ import annotations

import threading

import pytest

from tiplight.envs import Tool, ToolCall, argument_error, parse_tool_calls, run_calls
from tiplight.envs.tools import MAX_CALL_CHARS, prepare_call

SCHEMA = {"type": "object", "required": ["city"],
          "properties": {"city": {"type": "string"}, "days": {"type": "integer"}, "ratio": {"type": "number"},
                         "star": {"type": "string", "enum": ["3", "4"]}, "flag": {"type": ["boolean", "null"]}}}
TRIP = Tool("trip", "plan a trip", SCHEMA, lambda city, **kw: f"{city} {sorted(kw.items())}")


def test_calls_are_parsed_in_order_with_the_text_around_them():
    text = ('let me look. <tool_call>\n{"name": "a", "arguments": {"x": 1}}\n</tool_call> and '
            '<tool_call>{"name": "b", "arguments": "{\\"y\\": [2]}"}</tool_call> done')
    assert parse_tool_calls(text) == [ToolCall("a", {"x": 1}), ToolCall("b", {"y": [2]})]
    assert parse_tool_calls("no call here, {\"name\": \"a\"}") == []


def test_calls_inside_the_thinking_block_are_not_calls():
    text = '<think>maybe <tool_call>{"name": "a", "arguments": {}}</tool_call></think>the answer'
    assert parse_tool_calls(text) == []
    assert parse_tool_calls(text + ' <tool_call>{"name": "b"}</tool_call>') == [ToolCall("b", {})]


@pytest.mark.parametrize("body, says", [
    ("{not json}", "not valid JSON"),
    ("[1, 2]", "JSON object"),
    ('{"arguments": {}}', "JSON object"),
    ('{"name": 3}', "JSON object"),
    ('{"name": "a", "arguments": [1]}', '"arguments" must be'),
    ('{"name": "a", "arguments": "not json"}', '"arguments" must be'),
    ("[" * 100_000 + "]" * 100_000, "at most"),
    ("[" * 30_000 + "]" * 30_000, "not valid JSON"),  # nested past the recursion limit
])
def test_malformed_calls_are_errors_not_exceptions(body, says):
    (parsed,) = parse_tool_calls(f"<tool_call>{body}</tool_call>")
    assert parsed.error is not None and says in parsed.error


def test_an_unclosed_call_is_one_error_and_hostile_text_parses_in_one_pass():
    (parsed,) = parse_tool_calls('<tool_call>{"name": "a"')
    assert "never closed" in parsed.error
    hostile = "<tool_call>" * 50_000  # quadratic scanning (or a backtracking regex) would stall here
    calls = parse_tool_calls(hostile)
    assert len(calls) == 1 and "never closed" in calls[0].error
    many = "<tool_call>{}</tool_call>" * 20_000
    assert len(parse_tool_calls(many)) == 20_000
    assert len("[" * 100_000) > MAX_CALL_CHARS


@pytest.mark.parametrize("arguments, says", [
    ({}, "missing required argument(s) city"),
    ({"city": "x", "hotel": "y"}, "no argument(s) hotel"),
    ({"city": 3}, "city=3 must be of type string"),
    ({"city": "x", "days": 2.5}, "must be of type integer"),
    ({"city": "x", "days": True}, "must be of type integer"),
    ({"city": "x", "star": "5"}, "must be one of"),
    ({"city": "x", "flag": 1}, "boolean or null"),
])
def test_arguments_are_checked_against_the_schema(arguments, says):
    assert says in argument_error(TRIP, arguments)


def test_fitting_arguments_pass():
    for arguments in ({"city": "x"}, {"city": "x", "days": 2, "ratio": 2, "star": "3", "flag": None}):
        assert argument_error(TRIP, arguments) is None
    assert prepare_call({"trip": TRIP}, ToolCall("trip", {"city": "x", "days": 2}))() == "x [('days', 2)]"


def test_unknown_tools_and_bad_calls_never_run():
    tools = {"trip": TRIP}
    assert prepare_call(tools, ToolCall("fly", {})) == "error: unknown tool 'fly'; available tools: trip."
    assert prepare_call(tools, ToolCall(error="bad.")) == "error: bad."
    assert prepare_call(tools, ToolCall("trip", {})).startswith("error: trip is missing")


def test_a_raising_tool_and_a_hanging_tool_are_error_messages_and_others_still_answer():
    release = threading.Event()

    def hang() -> str:
        release.wait()
        return "too late"

    def boom() -> str:
        raise KeyError("no such row")

    try:
        results = run_calls([lambda: "fast", hang, boom, "error: given"], timeout=0.05)
    finally:
        release.set()
    assert results[0] == "fast"
    assert results[1] == "error: the tool did not finish within 0.05 s."
    assert results[2].startswith("error: the tool raised KeyError") and "no such row" in results[2]
    assert results[3] == "error: given"


def test_tool_schema_is_the_openai_function_format():
    assert TRIP.schema == {"type": "function",
                           "function": {"name": "trip", "description": "plan a trip", "parameters": SCHEMA}}
