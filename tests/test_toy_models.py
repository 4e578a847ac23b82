"""The shipped toy teacher and student: loadable offline, small, and as accurate as BUILD.md says."""

from __future__ import annotations

import json

import pytest
from transformers import AutoConfig, AutoTokenizer

from tiplight import toy

pytestmark = pytest.mark.skipif(
    not (toy.ASSETS / "build.json").exists(), reason="toy assets not built (tiplight toy build)"
)


@pytest.fixture(scope="module")
def documented() -> dict:
    return json.loads((toy.ASSETS / "build.json").read_text())


@pytest.fixture(scope="module")
def measured() -> dict[str, float]:
    problems = toy.load_problems("test", 100)
    return {
        "teacher": toy.accuracy(toy.teacher_dir(), problems),
        "student": toy.accuracy(toy.student_dir(), problems),
    }


def test_shipped_directories_are_small_and_share_the_tokenizer() -> None:
    files = [f for f in toy.ASSETS.rglob("*") if f.is_file() and "agent" not in f.relative_to(toy.ASSETS).parts]
    assert sum(f.stat().st_size for f in files) < 10 * 2**20  # the math world's pair and tokenizer
    every_world = [f for root in (toy.ASSETS, toy.OVERCONFIDENT_ASSETS) for f in root.rglob("*") if f.is_file()]
    assert sum(f.stat().st_size for f in every_world) < 16 * 2**20  # with the agent and overconfident worlds
    assert not [f for f in files if f.suffix in {".bin", ".pt", ".pth"}]  # safetensors only
    vocab = AutoTokenizer.from_pretrained(toy.tokenizer_dir()).get_vocab()
    for model_dir in (toy.teacher_dir(), toy.student_dir()):
        assert (model_dir / "model.safetensors").exists() and (model_dir / "generation_config.json").exists()
        assert AutoConfig.from_pretrained(model_dir).vocab_size == len(vocab)
        assert AutoTokenizer.from_pretrained(model_dir).get_vocab() == vocab


def test_teacher_is_accurate(measured: dict[str, float], documented: dict) -> None:
    assert measured["teacher"] >= 0.88
    assert abs(measured["teacher"] - documented["teacher"]["test_accuracy"]) <= 0.08


def test_student_is_clearly_weaker(measured: dict[str, float], documented: dict) -> None:
    assert 0.15 <= measured["student"] <= 0.65
    assert abs(measured["student"] - documented["student"]["test_accuracy"]) <= 0.12
    assert measured["teacher"] >= measured["student"] + 0.3
