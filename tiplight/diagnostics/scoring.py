"""Scoring without a Trainer: a teacher and a student score student rollouts or given texts.

    scorer = Scorer(toy.teacher_dir(), toy.student_dir())
    scored = scorer.rollout(["What is 12+34?\\n"], sampling=Sampling(max_new_tokens=48), seed=0)
    scored.table(SoftOrTopK(retain=0.5))

The statistics are the training ones (``stats.completion_hidden`` + ``stats.token_stats_and_loss``), normalised
over all rollouts scored together (``TokenStats.from_raw``), as one training step's batch scope.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from tiplight.chunked_stats import RawStats
from tiplight.data import Prompt, collate, encode_prompt, format_prompt
from tiplight.diagnostics.table import Scored, decode_tokens
from tiplight.models import ModelSource, check_tokenizers, load_model, load_tokenizer, vocab_size
from tiplight.padding import left_pad
from tiplight.passes import eval_mode, sample, score
from tiplight.rollout import HFGenerate, Rollout, Sampling
from tiplight.selection import TokenStats
from tiplight.sources import resolve

ModelLike = nn.Module | str | Path


class Scorer:
    """A teacher and a student that score completions token by token.

    Args:
        teacher / student: HF model objects, or hub ids / directories (``tiplight:`` paths allowed).
        tokenizer: object, id or directory; defaults to the student's (then the teacher's must match it).
        dtype: weight dtype when loading from a path.
        chunk_size: positions per lm_head chunk (bounds the ``[N, V]`` logits' memory).
        batch_size: rollouts per forward pass.
        chat_template: format prompts with the tokenizer's chat template when it has one (as training).
        device: move both models there (e.g. "cuda"); by default they stay where they are (paths load on
            the CPU). Both models must sit on one device; inputs go to the student's.
    """

    def __init__(self, teacher: ModelLike, student: ModelLike, tokenizer: Any = None, *, dtype: str = "float32",
                 chunk_size: int = 512, batch_size: int = 64, chat_template: bool = True,
                 device: str | torch.device | None = None) -> None:
        self.tokenizer = _tokenizer(tokenizer, student, teacher)
        self.teacher = _model(teacher, dtype, "teacher")
        self.student = _model(student, dtype, "student")
        if device is not None:
            self.teacher, self.student = self.teacher.to(device), self.student.to(device)
        self.vocab_size = vocab_size(self.tokenizer, self.student, self.teacher)
        self.chunk_size, self.batch_size, self.chat_template = chunk_size, batch_size, chat_template
        self.engine = HFGenerate()

    @property
    def device(self) -> torch.device:
        return next(self.student.parameters()).device

    def encode_prompt(self, prompt: str) -> list[int]:
        """Token ids of a prompt as training sees it (chat template when enabled)."""
        text = format_prompt(self.tokenizer, prompt, chat_template=self.chat_template)
        return encode_prompt(self.tokenizer, text, self.chat_template)

    def rollout(self, prompts: list[str], sampling: Sampling | None = None, seed: int = 0,
                samples: int = 1) -> Scored:
        """Sample ``samples`` completions per prompt from the student (reproducible per ``seed``) and score them."""
        encoded = [Prompt(str(i), p, self.encode_prompt(p), "") for i, p in enumerate(prompts)]
        batch = collate(encoded, self.tokenizer.pad_token_id, samples, 0)
        rollout = sample(self.engine, self.student, self.tokenizer, batch, sampling=sampling or Sampling(max_new_tokens=64),
                         seed=seed, vocab_size=self.vocab_size, batch_size=self.batch_size)
        return self.score(rollout, [p for p in prompts for _ in range(samples)])

    def score_texts(self, prompts: list[str], completions: list[str], add_eos: bool = False) -> Scored:
        """Score given completions of ``prompts``; every completion token is valid (EOS too if present).

        ``add_eos``: append the tokenizer's EOS to each completion, as a finished rollout ends.
        """
        if len(prompts) != len(completions):
            raise ValueError(f"got {len(prompts)} prompts and {len(completions)} completions; give one "
                             "completion per prompt.")
        eos = [self.tokenizer.eos_token_id] if add_eos else []
        comp = [self.tokenizer(c, add_special_tokens=False)["input_ids"] + eos for c in completions]
        if not any(comp):
            raise ValueError("every completion is empty; give at least one completion with a token.")
        prompt_ids, prompt_mask = left_pad([self.encode_prompt(p) for p in prompts], self.tokenizer.pad_token_id)
        width = max(len(c) for c in comp)
        comp_ids = torch.full((len(comp), width), self.tokenizer.pad_token_id, dtype=torch.long)
        comp_mask = torch.zeros((len(comp), width), dtype=torch.bool)
        for i, c in enumerate(comp):
            comp_ids[i, : len(c)] = torch.tensor(c, dtype=torch.long)
            comp_mask[i, : len(c)] = True
        rollout = Rollout(torch.cat([prompt_ids, comp_ids], 1), torch.cat([prompt_mask, comp_mask.long()], 1),
                          comp_mask, prompt_ids.shape[1])
        return self.score(rollout, list(prompts))

    @torch.inference_mode()
    def score(self, rollout: Rollout, prompts: list[str]) -> Scored:
        """Token statistics of a ``Rollout`` (``[R, C]``), normalised over all its rollouts."""
        with eval_mode(self.student, self.teacher):
            parts = score(self.student, self.teacher, rollout, micro_batch_size=self.batch_size,
                          vocab_size=self.vocab_size, chunk_size=self.chunk_size)
        raw = RawStats.cat([p.raw for p in parts])
        valid = rollout.completion_mask.bool()
        stats = TokenStats.from_raw(raw.entropy.cpu(), raw.rkl.cpu(), raw.fkl.cpu(), valid.cpu())
        ids = rollout.completion_ids.cpu()
        return Scored(list(prompts), ids, decode_tokens(self.tokenizer, ids, valid), stats)


def _model(model: ModelLike, dtype: str, name: str) -> nn.Module:
    if isinstance(model, nn.Module):
        return model
    return load_model(ModelSource(resolve(str(model)), dtype), name)


def _tokenizer(tokenizer: Any, student: ModelLike, teacher: ModelLike) -> Any:
    """The given tokenizer, or the student's directory's (checked against the teacher's when both are paths)."""
    if tokenizer is not None and not isinstance(tokenizer, (str, Path)):
        return tokenizer
    if tokenizer is not None:
        return load_tokenizer(resolve(str(tokenizer)), "tokenizer")
    if isinstance(student, nn.Module):
        raise ValueError("tokenizer is not set and the student is a model object; give the tokenizer "
                         "(object, hub id or directory).")
    found = load_tokenizer(resolve(str(student)), "student")
    if not isinstance(teacher, nn.Module):
        check_tokenizers(found, load_tokenizer(resolve(str(teacher)), "teacher"))
    return found
