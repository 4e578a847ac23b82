"""Training on an environment: the problems of each step, keyed as prompts are, and the multi-turn rollout
that ``DistillModule`` samples instead of single-turn completions when ``model.environment`` is set.

A batch of episodes is ``{"problems": [R dicts], "keys": [R], "ids": [R], "template_kwargs", "batch_index"}``;
``DistillModule.rollout`` sees ``problems`` and runs the loop of ``tiplight.envs.loop``. The ``Rollout`` it
gives has a completion mask on the student's own tokens only and an attention mask on every real token, so
scoring, normalisation, selection (a rollout's budget m counts its student tokens), the loss and the logged
fractions count sampled tokens while the teacher and the student read the tool turns as context.
"""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torch.utils.data import DataLoader

from tiplight.data import PromptStream, check_sizes, rank_share_loader
from tiplight.envs.base import Environment
from tiplight.envs.loop import AgentRollout, TurnGenerate, engine_turns, run_episodes
from tiplight.passes import eval_mode
from tiplight.rollout import RolloutEngine, Sampling, eos_token_ids
from tiplight.seeding import resolve_seed

SHARDED = ("model.environment with a sharded student (trainer.strategy FSDP) is not supported: ranks would run "
           "different numbers of turns; use DDP (a LoRA student, or one that fits on each device).")


def episode_batch(problems: list[dict[str, Any]], rollouts_per_problem: int, first_key: int,
                  template_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Each problem repeated ``rollouts_per_problem`` times; ``keys`` name every rollout from ``first_key``."""
    repeated = [p for p in problems for _ in range(rollouts_per_problem)]
    return {"problems": repeated, "keys": torch.arange(first_key, first_key + len(repeated), dtype=torch.long),
            "ids": [str(p["id"]) for p in repeated], "template_kwargs": template_kwargs}


class EpisodeStream(PromptStream):
    """``PromptStream``'s order and keys over problems: batch ``b`` is slice ``rank`` of global batch ``b``."""

    def __init__(self, problems: list[dict[str, Any]], template_kwargs: dict[str, Any] | None, **kwargs: Any):
        super().__init__(problems, pad_id=0, **kwargs)  # type: ignore[arg-type]
        self.template_kwargs = template_kwargs

    def make_batch(self, items: list[dict[str, Any]], first_key: int) -> dict[str, Any]:  # type: ignore[override]
        return episode_batch(items, self.g, first_key, self.template_kwargs)


class EpisodeDataModule(L.LightningDataModule):
    """The problems of ``model.environment`` for multi-turn on-policy distillation.

    Args:
        prompts_per_step: problems per optimizer step over all ranks.
        rollouts_per_prompt: episodes per problem (G).
        val_size: train problems held out (fixed seed) for the validation OPD loss.
        val_batch_size: problems per validation batch on each rank.
        chat_template_kwargs: chat-template variables of every turn, e.g. ``{enable_thinking: true}``.
        seed: seed of the problem order and of the held-out split (default: ``seed_everything``).
    """

    def __init__(self, prompts_per_step: int = 8, rollouts_per_prompt: int = 4, val_size: int = 0,
                 val_batch_size: int = 8, chat_template_kwargs: dict[str, Any] | None = None,
                 seed: int | None = None) -> None:
        super().__init__()
        check_sizes(val_size, prompts_per_step=prompts_per_step, rollouts_per_prompt=rollouts_per_prompt,
                    val_batch_size=val_batch_size)
        self.save_hyperparameters(logger=False)
        self.seed = resolve_seed(seed)
        self.train_problems: list[dict[str, Any]] = []
        self.val_problems: list[dict[str, Any]] = []

    @property
    def template_kwargs(self) -> dict[str, Any] | None:
        return self.hparams.chat_template_kwargs

    def setup(self, stage: str) -> None:
        module = self.trainer.lightning_module
        env = getattr(module, "environment", None)
        if env is None:
            raise ValueError("data is tiplight.envs.EpisodeDataModule but model.environment is not set; give the "
                             "environment's class_path (e.g. ToyLookup, DeepPlanningTravel).")
        if getattr(module, "sharded", False):
            raise ValueError(SHARDED)
        problems, hp = env.problems("train"), self.hparams
        order = list(range(len(problems)))
        random.Random(self.seed).shuffle(order)
        held = set(order[: hp.val_size])
        self.val_problems = [problems[i] for i in sorted(held)]
        self.train_problems = [p for i, p in enumerate(problems) if i not in held]
        if not self.train_problems:
            raise ValueError(f"data.val_size={hp.val_size} leaves none of the environment's {len(problems)} "
                             "train problems for training; lower it.")
        rank_zero_info(f"tiplight data: {len(self.train_problems)} training and {len(self.val_problems)} "
                       f"validation problems of {type(env).__name__}.")

    def train_dataloader(self) -> DataLoader:
        hp, trainer = self.hparams, self.trainer
        if hp.prompts_per_step % trainer.world_size:
            raise ValueError(f"data.prompts_per_step={hp.prompts_per_step} does not split over "
                             f"{trainer.world_size} ranks; use a multiple of the number of processes.")
        stream = EpisodeStream(self.train_problems, self.template_kwargs, prompts_per_step=hp.prompts_per_step,
                               rollouts_per_prompt=hp.rollouts_per_prompt, seed=self.seed,
                               start=getattr(trainer.lightning_module, "next_batch", 0), rank=trainer.global_rank,
                               world_size=trainer.world_size)
        return DataLoader(stream, batch_size=None)

    def val_dataloader(self) -> DataLoader:
        """This rank's contiguous share of the held-out problems, keyed by their index in the whole set."""
        problems, kwargs = self.val_problems, self.template_kwargs
        return rank_share_loader(len(problems), self.hparams.val_batch_size, self.trainer,
                                 lambda i, j: episode_batch(problems[i:j], 1, i, kwargs))


def chunked(generate: TurnGenerate, size: int) -> TurnGenerate:
    """``generate`` over at most ``size`` rows at a time (bounds generation memory; each row depends only on
    its own key, so the chunks change nothing)."""

    def run(prompts: list[list[int]], keys: torch.Tensor, max_new_tokens: int) -> list[list[int]]:
        out: list[list[int]] = []
        for start in range(0, len(prompts), size):
            out += generate(prompts[start : start + size], keys[start : start + size], max_new_tokens)
        return out

    return run


def sample_episodes(engine: RolloutEngine, student: nn.Module, tokenizer: Any, env: Environment,
                    batch: dict[str, Any], *, sampling: Sampling, seed: int, vocab_size: int, batch_size: int,
                    synced: bool = False) -> AgentRollout:
    """One episode per row of ``batch`` (``problems``, ``keys`` ``[R]``, ``template_kwargs``) from the student
    in eval mode; every student turn samples under ``sampling`` (``max_new_tokens``: the longest turn)."""
    if synced:
        raise ValueError(SHARDED)
    eos = eos_token_ids(tokenizer, student)
    turns = engine_turns(engine, student, sampling=sampling, seed=seed, eos_token_ids=eos,
                         pad_token_id=tokenizer.pad_token_id, vocab_size=vocab_size)
    with eval_mode(student):
        return run_episodes(chunked(turns, batch_size), tokenizer, env, batch["problems"], batch["keys"].cpu(),
                            max_new_tokens=sampling.max_new_tokens, eos_token_ids=eos,
                            template_kwargs=batch.get("template_kwargs"))
