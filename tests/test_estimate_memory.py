"""benchmarks/estimate_memory.py's teacher placements and its served-teacher column, against the sizes
written out for the paper's 70B pair (128 rollouts of 2k prompt + 8k completion tokens, 8 GPUs)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SPEC = importlib.util.spec_from_file_location("estimate_memory", ROOT / "benchmarks" / "estimate_memory.py")
estimate_memory = sys.modules["estimate_memory"] = importlib.util.module_from_spec(SPEC)  # dataclasses need it
SPEC.loader.exec_module(estimate_memory)
PAIR = str(ROOT / "configs" / "llama_70b_to_8b.yaml")


@pytest.fixture(scope="module")
def placements():
    return dict(estimate_memory.placements(estimate_memory.parse([PAIR]), k=64))


def test_placements_at_the_paper_shapes(placements):
    t = estimate_memory.arch("meta-llama/Llama-3.3-70B-Instruct")
    assert (t.hidden, t.vocab) == (8192, 128256)
    positions, kept = 128 * (2048 + 8192), 16 * 8192  # vLLM answers every token; a rank keeps 16 completions
    colocated, sharded = placements["colocated"], placements["sharded (FSDP x8)"]
    topk, exact = placements["served top-64 (VLLMTopK)"], placements["served exact (VLLMHidden, bf16)"]
    assert colocated["teacher weights / GPU"] == t.params * 2 and colocated["moved / step"] == 0
    # FSDP: every rank gathers the other 7/8 of the bf16 teacher once per micro-batch (16 rollouts / 2)
    assert sharded["moved / step"] == pytest.approx(8 * 8 * t.params * 2 * 7 / 8)
    assert topk["teacher weights / GPU"] == 0 and topk["teacher tensors / GPU"] == kept * (1 + 2 * 65) * 4
    assert topk["moved / step"] == pytest.approx(positions * estimate_memory.topk_json_bytes(64, t.vocab))
    assert exact["teacher weights / GPU"] == t.vocab * t.hidden * 2  # the lm_head, bf16
    assert exact["moved / step"] == pytest.approx(positions * 8192 * 2 * 4 / 3)  # base64 of bf16
    assert sharded["moved / step"] > exact["moved / step"] > topk["moved / step"] > 0


def test_top_k_json_size_follows_vllms_layout():
    """65 entries of ``"id":{"logprob":-x.xxx,"rank":r,"decoded_token":"abcd"}``: ~70 bytes each."""
    size = estimate_memory.topk_json_bytes(64, 128256)
    assert 65 * 60 < size < 65 * 80
    assert estimate_memory.topk_json_bytes(16, 128256) < size


def test_a_served_teacher_config_is_estimated_without_its_weights():
    served = estimate_memory.estimate(estimate_memory.parse([PAIR, str(ROOT / "configs" / "teacher" / "vllm_exact.yaml")]))
    local = estimate_memory.estimate(estimate_memory.parse([PAIR]))
    assert served["teacher"] == "VLLMHidden" and served["teacher weights"] == 128256 * 8192 * 2
    assert served["peak"] == pytest.approx(local["peak, teacher served"]) and served["peak"] < local["peak"]
