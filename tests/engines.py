"""Rollout engines for the shared contract tests: HFGenerate always, VLLMEngine where vLLM is installed."""

from __future__ import annotations

import functools
import importlib.util

import pytest
import torch

from tiplight.rollout import HFGenerate, RolloutEngine

HAS_VLLM = importlib.util.find_spec("vllm") is not None
needs_vllm = [pytest.mark.vllm, pytest.mark.skipif(not HAS_VLLM, reason="vllm is not installed")]
ENGINES = [pytest.param("hf", id="HFGenerate"), pytest.param("vllm", id="VLLMEngine", marks=needs_vllm)]


@functools.cache
def vllm_engine() -> RolloutEngine:
    """One in-process vLLM engine per test process (start-up takes tens of seconds on CPU); it re-syncs
    its weights whenever it is handed another student."""
    from tiplight.vllm_engine import VLLMEngine

    return VLLMEngine(max_model_len=256, kv_cache_gib=0.25)


def make_engine(name: str) -> RolloutEngine:
    return vllm_engine() if name == "vllm" else HFGenerate()


def chi_square_pvalue(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """p-value of Pearson's chi-square test of ``counts`` ``[V]`` against ``probs`` ``[V]``; categories
    expected fewer than 5 times are pooled into one."""
    counts, expected = counts.double(), probs.double() * counts.sum()
    small = expected < 5
    counts = torch.cat([counts[~small], counts[small].sum()[None]])
    expected = torch.cat([expected[~small], expected[small].sum()[None]])
    if expected[-1] == 0:
        counts, expected = counts[:-1], expected[:-1]
    stat = ((counts - expected) ** 2 / expected).sum()
    dof = len(counts) - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.double), stat / 2))


class SamplerLogprobs(HFGenerate):
    """HF generate whose sampler log-probabilities (the student's own) are shifted by ``offset``: a sampler
    that drifted from the trainer by a known amount."""

    def __init__(self, offset: float = 0.0) -> None:
        self.offset = offset

    def _generate(self, model, request):
        rollout = super()._generate(model, request)
        rollout.sampler_logprobs = (rollout.sampler_logprobs + self.offset) * rollout.completion_mask
        return rollout
