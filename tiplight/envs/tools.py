"""Tools and tool calls: the Qwen3/Hermes ``<tool_call>{json}</tool_call>`` parser, argument checks against
a tool's JSON schema, and execution of a turn's calls under one deadline.

Model text is only ever handed to ``json.loads`` (never ``eval``); the parser scans with ``str.find`` from
a moving offset, so it is linear in the text however hostile. Every failure (malformed call, unknown tool,
bad arguments, a tool that raises or overruns its time) becomes an error string for the model.

Tools run in daemon threads, all calls of a turn at once, joined against one deadline: the tools shipped
here are pure Python over in-memory tables, which a thread runs without a process start per call. A
thread cannot be killed, so a tool that hangs is abandoned (it finishes or idles in the background,
and being a daemon never blocks the interpreter's exit); a tool that can hang for good (network, a
solver) belongs in a subprocess inside the tool itself.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

OPEN, CLOSE = "<tool_call>", "</tool_call>"
THINK_END = "</think>"
MAX_CALL_CHARS = 65_536  # a longer call body is refused before json.loads sees it

JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,), "integer": (int,), "number": (int, float), "boolean": (bool,),
    "array": (list,), "object": (dict,), "null": (type(None),),
}


@dataclass(frozen=True)
class Tool:
    """A function the model may call: its OpenAI/JSON-schema description and the Python callable.

    ``parameters`` is a JSON schema of type object (``properties``, ``required``); ``fn`` takes the
    arguments as keywords and returns the text the model reads.
    """

    name: str
    description: str
    parameters: dict[str, Any]
    fn: Callable[..., str]

    @property
    def schema(self) -> dict[str, Any]:
        """The OpenAI function-calling schema, as ``apply_chat_template(tools=...)`` takes it."""
        return {"type": "function",
                "function": {"name": self.name, "description": self.description, "parameters": self.parameters}}


@dataclass(frozen=True)
class ToolCall:
    """One parsed call: the tool's name and its arguments; ``error`` is set when the call is malformed."""

    name: str = ""
    arguments: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def answer_text(text: str) -> str:
    """The visible part of a turn: what follows the last ``</think>`` (all of it without one), stripped."""
    end = text.rfind(THINK_END)
    return (text if end < 0 else text[end + len(THINK_END):]).strip()


def parse_tool_calls(text: str) -> list[ToolCall]:
    """Every ``<tool_call>...</tool_call>`` block of a turn's visible text, in order; a block that is not a
    JSON object with a string ``name`` and an object ``arguments`` (or is left open) is a call with ``error``."""
    text, calls, pos = answer_text(text), [], 0
    while (start := text.find(OPEN, pos)) >= 0:
        body_start = start + len(OPEN)
        end = text.find(CLOSE, body_start)
        if end < 0:
            calls.append(ToolCall(error=f"a {OPEN} was never closed by {CLOSE}."))
            break
        calls.append(_parse_body(text[body_start:end]))
        pos = end + len(CLOSE)
    return calls


def _parse_body(body: str) -> ToolCall:
    if len(body) > MAX_CALL_CHARS:
        return ToolCall(error=f"the tool call is {len(body)} characters long; at most {MAX_CALL_CHARS} are read.")
    try:
        call = json.loads(body)
    except (ValueError, RecursionError) as e:  # RecursionError: pathologically nested JSON
        return ToolCall(error=f"the tool call is not valid JSON ({type(e).__name__}: {str(e)[:120]}).")
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        return ToolCall(error='a tool call must be a JSON object {"name": "<tool>", "arguments": {...}}.')
    arguments = call.get("arguments", {})
    if isinstance(arguments, str):  # some models write the arguments as a JSON string
        with contextlib.suppress(ValueError, RecursionError):  # left a string: refused just below
            arguments = json.loads(arguments)
    if not isinstance(arguments, dict):
        return ToolCall(name=call["name"], error='"arguments" must be a JSON object of named arguments.')
    return ToolCall(name=call["name"], arguments=arguments)


def argument_error(tool: Tool, arguments: dict[str, Any]) -> str | None:
    """Why ``arguments`` do not fit ``tool.parameters`` (missing required, unknown names, wrong JSON types,
    a value outside an ``enum``), or None when they fit."""
    properties = tool.parameters.get("properties", {})
    missing = [name for name in tool.parameters.get("required", []) if name not in arguments]
    if missing:
        return f"{tool.name} is missing required argument(s) {', '.join(missing)}."
    unknown = [name for name in arguments if name not in properties]
    if unknown:
        return f"{tool.name} has no argument(s) {', '.join(unknown)}; it takes {', '.join(properties) or 'none'}."
    for name, value in arguments.items():
        spec = properties[name]
        kinds = spec.get("type", [])
        kinds = [kinds] if isinstance(kinds, str) else kinds
        if kinds and not any(_is_json_type(value, kind) for kind in kinds):
            return f"{tool.name}: argument {name}={value!r} must be of type {' or '.join(kinds)}."
        if "enum" in spec and value not in spec["enum"]:
            return f"{tool.name}: argument {name}={value!r} must be one of {spec['enum']}."
    return None


def _is_json_type(value: Any, kind: str) -> bool:
    if isinstance(value, bool) and kind in ("integer", "number"):
        return False  # JSON true is not a number, though Python's bool is an int
    return isinstance(value, JSON_TYPES.get(kind, object))


def prepare_call(tools: dict[str, Tool], call: ToolCall) -> Callable[[], str] | str:
    """The thunk that runs ``call``, or the error text when it cannot run (malformed, unknown, bad args)."""
    if call.error is not None:
        return f"error: {call.error}"
    tool = tools.get(call.name)
    if tool is None:
        return f"error: unknown tool {call.name!r}; available tools: {', '.join(sorted(tools)) or 'none'}."
    problem = argument_error(tool, call.arguments)
    if problem is not None:
        return f"error: {problem}"
    return lambda: str(tool.fn(**call.arguments))


def run_calls(jobs: list[Callable[[], str] | str], timeout: float) -> list[str]:
    """Results of ``jobs`` in order: strings pass through, thunks run concurrently in daemon threads that
    all share one deadline ``timeout`` seconds from now; a thunk that raises or is not done is an error."""
    boxes: list[list[str]] = [[] for _ in jobs]
    threads = {i: threading.Thread(target=_run_into, args=(job, boxes[i]), daemon=True)
               for i, job in enumerate(jobs) if callable(job)}
    for thread in threads.values():
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads.values():
        thread.join(max(0.0, deadline - time.monotonic()))
    return [job if not callable(job) else boxes[i][0] if boxes[i]
            else f"error: the tool did not finish within {timeout:g} s." for i, job in enumerate(jobs)]


def _run_into(job: Callable[[], str], box: list[str]) -> None:
    try:
        box.append(job())
    except Exception as e:  # a tool's failure is the model's information, never the trainer's crash
        box.append(f"error: the tool raised {type(e).__name__}: {str(e)[:200]}")
