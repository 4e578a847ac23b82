"""Environments for multi-turn rollouts with tools: the interface and registry, tool calls, the loop, and
the built-in environments (the agentic toy ``ToyLookup``, DeepPlanning travel planning)."""

from tiplight.envs.base import (
    EndReason,
    Environment,
    Episode,
    Split,
    get_environment,
    list_environments,
    register_environment,
)
from tiplight.envs.deepplanning import DeepPlanningTravel, hard_constraints
from tiplight.envs.loop import AgentRollout, Segment, TurnGenerate, engine_turns, run_episodes, turn_keys
from tiplight.envs.metrics import avg_at_k, best_at_k, scores_at_k
from tiplight.envs.render import ChatRenderer
from tiplight.envs.tools import Tool, ToolCall, argument_error, parse_tool_calls, run_calls
from tiplight.envs.toy import ToyLookup
from tiplight.envs.training import EpisodeDataModule, episode_batch, sample_episodes

__all__ = [
    "AgentRollout",
    "ChatRenderer",
    "DeepPlanningTravel",
    "EndReason",
    "Environment",
    "Episode",
    "EpisodeDataModule",
    "Segment",
    "Split",
    "Tool",
    "ToolCall",
    "ToyLookup",
    "TurnGenerate",
    "argument_error",
    "avg_at_k",
    "best_at_k",
    "engine_turns",
    "episode_batch",
    "get_environment",
    "hard_constraints",
    "list_environments",
    "parse_tool_calls",
    "register_environment",
    "run_calls",
    "run_episodes",
    "sample_episodes",
    "scores_at_k",
    "turn_keys",
]
