"""The ``Environment`` interface for multi-turn rollouts with tools, and its one registry (key = class name).

An environment gives a problem's opening messages and tools, runs the tool calls of an assistant turn
(``execute``: tool messages back, errors as messages, never an exception), says when an episode ends
(a final answer, ``max_turns``, ``max_tokens``) and scores it. It never sees the model: the loop in
``tiplight.envs.loop`` owns tokens, masks and sampling.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Literal

from tiplight.envs.tools import Tool, answer_text, parse_tool_calls, prepare_call, run_calls
from tiplight.registry import Registry

Split = Literal["train", "test"]
EndReason = Literal["answer", "max_turns", "max_tokens"]


@dataclass
class Episode:
    """One rollout's conversation: the problem, its messages so far, and why it ended (None: running)."""

    problem: dict[str, Any]
    messages: list[dict[str, Any]]
    turns: int = 0  # assistant turns so far
    end: EndReason | None = None
    tool_calls: int = 0

    @property
    def last_text(self) -> str:
        """The visible text of the last assistant turn ('' before the first)."""
        turns = [m["content"] for m in self.messages if m["role"] == "assistant"]
        return answer_text(turns[-1]) if turns else ""


class Environment(ABC):
    """A task the student solves over several turns with tools.

    Subclasses take plain typed constructor arguments (LightningCLI builds them from YAML by
    ``class_path``), keep heavy loading out of ``__init__`` only where it would need weights (a database
    is checked at construction, so a bad path fails at start-up), and implement the four abstract methods.

    Args:
        max_turns: the most assistant turns of an episode; a turn with a tool call at the limit ends it.
        max_tokens: the most tokens of an episode (prompt, the student's turns and tool turns together).
        tool_timeout: seconds all tool calls of one turn may take together; a late call is an error message.
    """

    def __init__(self, max_turns: int = 8, max_tokens: int = 2048, tool_timeout: float = 5.0) -> None:
        if max_turns < 1:
            raise ValueError(f"max_turns={max_turns!r} is invalid; an episode needs at least 1 turn.")
        if max_tokens < 2:
            raise ValueError(f"max_tokens={max_tokens!r} is invalid; it must be at least 2.")
        if not tool_timeout > 0:
            raise ValueError(f"tool_timeout={tool_timeout!r} is invalid; it must be a positive number of seconds.")
        self.max_turns, self.max_tokens, self.tool_timeout = max_turns, max_tokens, float(tool_timeout)

    @abstractmethod
    def problems(self, split: Split) -> list[dict[str, Any]]:
        """The problems of ``split`` (JSON-serialisable dicts with a unique ``id``), in a fixed order."""

    @abstractmethod
    def initial_messages(self, problem: dict[str, Any]) -> list[dict[str, Any]]:
        """The chat messages that open an episode (system and user), before the student's first turn."""

    @abstractmethod
    def tools(self, problem: dict[str, Any]) -> dict[str, Tool]:
        """The tools the student may call on ``problem``, by name."""

    @abstractmethod
    def score(self, episode: Episode) -> float:
        """The episode's score in [0, 1] (an empty or missing answer scores 0)."""

    def tool_schemas(self, problem: dict[str, Any]) -> list[dict[str, Any]]:
        """The tools in OpenAI function format, for ``apply_chat_template(tools=...)``."""
        return [tool.schema for tool in self.tools(problem).values()]

    def start(self, problem: dict[str, Any]) -> Episode:
        """A fresh episode of ``problem``."""
        return Episode(problem, list(self.initial_messages(problem)))

    def end_reason(self, episode: Episode, text: str, finished: bool) -> EndReason | None:
        """Why the episode ends after the assistant turn ``text`` (``finished``: it ended with EOS, not cut
        by the token budget), or None when its tool calls should run and the episode go on."""
        if not finished:
            return "max_tokens"
        if not parse_tool_calls(text):
            return "answer"
        return "max_turns" if episode.turns >= self.max_turns else None

    def execute(self, episodes: list[Episode], texts: list[str]) -> list[list[dict[str, Any]]]:
        """The tool messages answering each episode's assistant turn ``texts[i]``, one per call in order;
        the calls of all episodes run at once under ``tool_timeout``."""
        calls = [parse_tool_calls(text) for text in texts]
        jobs, owners = [], []
        for i, (episode, turn_calls) in enumerate(zip(episodes, calls)):
            tools = self.tools(episode.problem)
            jobs += [prepare_call(tools, call) for call in turn_calls]
            owners += [i] * len(turn_calls)
        results = run_calls(jobs, self.tool_timeout)
        messages: list[list[dict[str, Any]]] = [[] for _ in episodes]
        for i, call, result in zip(owners, [c for cs in calls for c in cs], results):
            messages[i].append({"role": "tool", "name": call.name, "content": result})
        return messages

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


# the contract's names: register_environment (a class decorator), get_environment(name, **kwargs), list_environments()
_REGISTRY: Registry[type[Environment]] = Registry(Environment, "environment")
register_environment = _REGISTRY.register
get_environment = _REGISTRY.build
list_environments = _REGISTRY.names
