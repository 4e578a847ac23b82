"""Contract tests every registered environment gets for free: problems and schemas, tool-call failures as
messages (malformed, unknown tool, bad arguments, a tool that raises or hangs), and episode endings
(max turns, an empty answer, one-token turns) through the loop."""

from __future__ import annotations

import json
import threading
from dataclasses import replace

import pytest
import torch
from agent_fixtures import EOS, Scripted, call, tool_tokenizer
from deepplanning_fixture import write_benchmark

from tiplight.envs import Environment, get_environment, list_environments, run_episodes

REQUIRED_ARGS = {"DeepPlanningTravel": lambda tmp: {"root": str(write_benchmark(tmp / "travelplanning")),
                                                    "test_fraction": 0.5}}
SAMPLE = {"string": "x", "integer": 1, "number": 1.5, "boolean": True, "array": [], "object": {}}


@pytest.fixture(params=list_environments())
def env(request, tmp_path) -> Environment:
    args = REQUIRED_ARGS.get(request.param, lambda tmp: {})(tmp_path)
    return get_environment(request.param, **args, max_turns=3, max_tokens=20_000, tool_timeout=0.05)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return tool_tokenizer(tmp_path_factory.mktemp("contract_tok"))


def first_problem(env: Environment) -> dict:
    return env.problems("test")[0]


def valid_call(env: Environment) -> tuple[str, dict]:
    """A tool of the first problem and arguments that pass its schema (required ones, sample values)."""
    name, tool = next(iter(env.tools(first_problem(env)).items()))
    props = tool.parameters.get("properties", {})
    kind = lambda spec: spec["type"] if isinstance(spec.get("type"), str) else spec.get("type", ["string"])[0]  # noqa: E731
    return name, {p: SAMPLE[kind(props[p])] for p in tool.parameters.get("required", [])}


def tool_messages(env: Environment, text: str) -> list[dict]:
    (messages,) = env.execute([env.start(first_problem(env))], [text])
    return messages


def test_problems_are_json_with_unique_ids_and_disjoint_splits(env):
    train, test = env.problems("train"), env.problems("test")
    assert train and test and json.loads(json.dumps(train + test)) == train + test
    ids = [p["id"] for p in train + test]
    assert len(ids) == len(set(ids))
    assert env.problems("test") == test  # a fixed order


def test_opening_messages_and_tool_schemas(env):
    problem = first_problem(env)
    messages = env.initial_messages(problem)
    assert messages and all(m["role"] in ("system", "user") and isinstance(m["content"], str) for m in messages)
    schemas = env.tool_schemas(problem)
    assert schemas and all(s["type"] == "function" and s["function"]["parameters"]["type"] == "object"
                           for s in schemas)


@pytest.mark.parametrize("text, says", [
    ("<tool_call>{broken</tool_call>", "not valid JSON"),
    ("<tool_call>{\"name\": \"x\"", "never closed"),
    (call("no_such_tool"), "unknown tool 'no_such_tool'; available tools:"),
])
def test_malformed_calls_and_unknown_tools_are_error_messages(env, text, says):
    (message,) = tool_messages(env, text)
    assert message["role"] == "tool" and message["content"].startswith("error:") and says in message["content"]


def test_bad_arguments_are_error_messages(env):
    name, arguments = valid_call(env)
    tool = env.tools(first_problem(env))[name]
    contents = [m["content"] for m in tool_messages(env, call(name, **arguments, not_an_argument=1))]
    if tool.parameters.get("required"):
        contents += [m["content"] for m in tool_messages(env, call(name))]
        first = tool.parameters["required"][0]
        contents += [m["content"] for m in tool_messages(env, call(name, **{**arguments, first: [[1]]}))]
    assert all(c.startswith(f"error: {name}") for c in contents), contents


@pytest.mark.parametrize("failure", ["raises", "hangs"])
def test_a_failing_tool_is_an_error_message(env, failure, monkeypatch):
    release = threading.Event()

    def broken(*args, **kwargs):
        if failure == "raises":
            raise RuntimeError("database on fire")
        release.wait()
        return "late"

    tools = env.tools
    monkeypatch.setattr(env, "tools", lambda p: {n: replace(t, fn=broken) for n, t in tools(p).items()})
    name, arguments = valid_call(env)
    try:
        (message,) = tool_messages(env, call(name, **arguments))
    finally:
        release.set()
    expected = "raised RuntimeError: database on fire" if failure == "raises" else "did not finish within 0.05 s"
    assert expected in message["content"]


def episodes(env, tokenizer, respond, max_new_tokens=512):
    problems = env.problems("test")[:2]
    out = run_episodes(Scripted(tokenizer, respond), tokenizer, env, problems, torch.arange(len(problems)),
                       max_new_tokens=max_new_tokens, eos_token_ids=[EOS])
    return out, out.scores(env)


def test_an_episode_that_keeps_calling_ends_at_max_turns(env, tokenizer):
    out, scores = episodes(env, tokenizer, lambda text: call("no_such_tool"))
    assert all(e.end == "max_turns" and e.turns == env.max_turns for e in out.episodes)
    assert (scores == 0).all()
    assert all(sum(s.kind == "tool" for s in row) == env.max_turns - 1 for row in out.segments)


def test_an_empty_answer_ends_the_episode_and_scores_zero(env, tokenizer):
    out, scores = episodes(env, tokenizer, lambda text: "")
    assert all(e.end == "answer" and e.turns == 1 for e in out.episodes)
    assert (scores == 0).all() and out.sampled_mask.sum(1).tolist() == [1] * len(out.episodes)  # just EOS


def test_one_token_turns_end_at_the_token_budget(env, tokenizer):
    out, scores = episodes(env, tokenizer, lambda text: "a long answer", max_new_tokens=1)
    assert all(e.end == "max_tokens" for e in out.episodes) and (scores == 0).all()
    assert out.sampled_mask.sum(1).tolist() == [1] * len(out.episodes)
    assert ((scores >= 0) & (scores <= 1)).all()
