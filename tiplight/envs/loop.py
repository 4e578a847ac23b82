"""The multi-turn rollout loop: generate for every live episode in one call, run their tools, append the
tool turns, go on until each episode ends; then lay all rows out with two masks.

``attention_mask`` covers every real token (prompt, the student's turns, tool turns); ``sampled_mask``
exactly the tokens the student sampled, the only ones to score, select and train (TIP §6.6). Turn ``t``
of a rollout samples with the key ``turn_keys(key, t)`` (turn 0: the rollout key itself, so a one-turn
episode samples what single-turn rollouts sample), and each token depends only on (seed, that key, its
position in the turn): a rollout never depends on the batch it ran in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch

from tiplight.envs.base import Environment, Episode
from tiplight.envs.render import ChatRenderer
from tiplight.padding import left_pad
from tiplight.rollout import Rollout, RolloutEngine, Sampling, rollout_seeds

TurnGenerate = Callable[[list[list[int]], torch.Tensor, int], list[list[int]]]
"""(prompts as token-id lists, their turn keys ``[R]``, max new tokens) -> each row's sampled ids, up to and
including its first EOS."""

TURN_SALT = 0x5EED  # separates the turn-key hash from other uses of rollout_seeds


@dataclass(frozen=True)
class Segment:
    """Columns ``[start, end)`` of one row of ``AgentRollout.input_ids`` holding one part of the episode."""

    kind: Literal["prompt", "student", "tool"]
    start: int
    end: int


@dataclass
class AgentRollout:
    """Multi-turn rollouts ``[R, T]``: prompts left-padded to ``prompt_length``, then the turns, right-padded.

    ``sampled_mask`` is True exactly on the student's tokens; ``attention_mask`` on every real token.
    """

    input_ids: torch.Tensor  # [R, T]
    attention_mask: torch.Tensor  # [R, T] long
    sampled_mask: torch.Tensor  # [R, T] bool
    prompt_length: int
    segments: list[list[Segment]]
    episodes: list[Episode]

    def to_rollout(self) -> Rollout:
        """The training ``Rollout``: its completion mask is the sampled mask, while attention keeps the tool
        tokens as context."""
        return Rollout(self.input_ids, self.attention_mask, self.sampled_mask[:, self.prompt_length:],
                       self.prompt_length)

    def scores(self, env: Environment) -> torch.Tensor:
        """Each episode's score ``[R]``."""
        return torch.tensor([env.score(e) for e in self.episodes], dtype=torch.float)


def turn_keys(keys: torch.Tensor, turn: int) -> torch.Tensor:
    """The sampling keys of turn ``turn`` ``[R]``: the rollout keys at turn 0, a hash of (key, turn) after."""
    if turn == 0:
        return keys
    return torch.tensor(rollout_seeds(TURN_SALT + turn, keys), dtype=torch.long)


def engine_turns(engine: RolloutEngine, model: torch.nn.Module, *, sampling: Sampling, seed: int,
                 eos_token_ids: list[int], pad_token_id: int, vocab_size: int, synced: bool = False) -> TurnGenerate:
    """A ``TurnGenerate`` over any ``RolloutEngine`` (HF generate, vLLM): left-pads the token-id prompts."""
    device = next(model.parameters()).device

    def generate(prompts: list[list[int]], keys: torch.Tensor, max_new_tokens: int) -> list[list[int]]:
        ids, mask = left_pad(prompts, pad_token_id)  # [r, P]
        out = engine.generate(model, ids.to(device), mask.to(device),
                              sampling=replace(sampling, max_new_tokens=max_new_tokens), seed=seed, keys=keys,
                              eos_token_ids=eos_token_ids, pad_token_id=pad_token_id, vocab_size=vocab_size,
                              synced=synced)
        return [c[m].tolist() for c, m in zip(out.completion_ids.cpu(), out.completion_mask.cpu())]

    return generate


class _Rows:
    """The growing token lists of every row, with their sampled flags and segments."""

    def __init__(self, prompts: list[list[int]]) -> None:
        self.prompts = prompts
        self.turns: list[list[int]] = [[] for _ in prompts]
        self.sampled: list[list[bool]] = [[] for _ in prompts]
        self.segments: list[list[tuple[str, int, int]]] = [[("prompt", 0, len(p))] for p in prompts]

    def length(self, i: int) -> int:
        return len(self.prompts[i]) + len(self.turns[i])

    def add(self, i: int, ids: list[int], kind: Literal["student", "tool"]) -> None:
        start = self.length(i)
        self.turns[i] += ids
        self.sampled[i] += [kind == "student"] * len(ids)
        self.segments[i].append((kind, start, start + len(ids)))

    def layout(self, pad_id: int, episodes: list[Episode]) -> AgentRollout:
        prompt_ids, prompt_mask = left_pad(self.prompts, pad_id)  # [R, P]
        width = max(len(t) for t in self.turns)
        turn_ids = torch.full((len(self.turns), width), pad_id, dtype=torch.long)  # [R, C]
        sampled = torch.zeros((len(self.turns), width), dtype=torch.bool)
        for i, (ids, flags) in enumerate(zip(self.turns, self.sampled)):
            turn_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            sampled[i, : len(ids)] = torch.tensor(flags, dtype=torch.bool)
        real = torch.arange(width)[None, :] < torch.tensor([len(t) for t in self.turns])[:, None]  # [R, C]
        p = prompt_ids.shape[1]
        shifts = [p - len(prompt) for prompt in self.prompts]  # left padding of each row
        segments = [[Segment(kind, s + shift, e + shift) for kind, s, e in row]  # type: ignore[arg-type]
                    for row, shift in zip(self.segments, shifts)]
        return AgentRollout(torch.cat([prompt_ids, turn_ids], 1), torch.cat([prompt_mask, real.long()], 1),
                            torch.cat([torch.zeros_like(prompt_mask, dtype=torch.bool), sampled], 1), p, segments,
                            episodes)


def run_episodes(generate: TurnGenerate, tokenizer: Any, env: Environment, problems: list[dict[str, Any]],
                 keys: torch.Tensor, *, max_new_tokens: int, eos_token_ids: list[int],
                 template_kwargs: dict[str, Any] | None = None) -> AgentRollout:
    """One episode per problem (``keys`` ``[R]`` name the rollouts), batched turn by turn.

    ``max_new_tokens``: the longest student turn; an episode also stops at ``env.max_tokens`` in all.
    ``template_kwargs``: chat-template variables, e.g. ``{"enable_thinking": True}``.
    """
    renderer = ChatRenderer(tokenizer, tokenizer.convert_ids_to_tokens(eos_token_ids), template_kwargs)
    episodes = [env.start(problem) for problem in problems]
    schemas = [env.tool_schemas(problem) for problem in problems]
    rows = _Rows([renderer.prompt(e.messages, s) for e, s in zip(episodes, schemas)])
    for i, problem in enumerate(problems):
        if rows.length(i) >= env.max_tokens:
            raise ValueError(f"The prompt of problem {problem.get('id', i)!r} is {rows.length(i)} tokens long; "
                             f"max_tokens={env.max_tokens} leaves no room for a turn: raise max_tokens.")
    live, turn, eos = list(range(len(problems))), 0, set(eos_token_ids)
    while live:
        room = [env.max_tokens - rows.length(i) for i in live]
        outs = generate([rows.prompts[i] + rows.turns[i] for i in live], turn_keys(keys[live], turn),
                        min(max_new_tokens, max(room)))
        going, texts = [], []
        for i, out, r in zip(live, outs, room):
            out = out[:r]  # tokens past a row's own room were sampled only because another row had more
            rows.add(i, out, "student")
            text = tokenizer.decode(out, skip_special_tokens=True)
            episode = episodes[i]
            episode.messages.append({"role": "assistant", "content": text})
            episode.turns += 1
            episode.end = env.end_reason(episode, text, finished=bool(out) and out[-1] in eos)
            if episode.end is None:
                going.append(i)
                texts.append(text)
        live = _answer_tools(env, renderer, rows, episodes, schemas, going, texts)
        turn += 1
    return rows.layout(tokenizer.pad_token_id, episodes)


def _answer_tools(env: Environment, renderer: ChatRenderer, rows: _Rows, episodes: list[Episode],
                  schemas: list[list[dict[str, Any]]], going: list[int], texts: list[str]) -> list[int]:
    """Run the tool calls of rows ``going``, append their tool turns; the rows that go on to another turn."""
    live = []
    for i, messages in zip(going, env.execute([episodes[i] for i in going], texts)):
        episodes[i].messages += messages
        episodes[i].tool_calls += len(messages)
        ids = renderer.tool_turn(messages, schemas[i])
        if rows.length(i) + len(ids) >= env.max_tokens:  # no room for the tool turn and one more token
            episodes[i].end = "max_tokens"
            continue
        rows.add(i, ids, "tool")
        live.append(i)
    return live
