"""The toy build recipe on a tiny budget: it runs, is repeatable, and writes loadable HF directories."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tiplight import toy
from tiplight.toy.recipe import MODEL, main
from tiplight.toy.tokenizer import build_tokenizer
from tiplight.toy.train import ModelSpec, SFTSpec, make_model, sft_batch, train_sft


def test_sft_batch_puts_labels_on_solution_and_eos_only() -> None:
    tok = build_tokenizer()
    problem = toy.load_problems("test", 1)[0]
    batch = sft_batch([problem], tok)
    labelled = batch["labels"][0][batch["labels"][0] != -100].tolist()
    assert labelled[-1] == tok.eos_token_id
    assert tok.decode(labelled, skip_special_tokens=True) == problem["solution"]


def test_sft_is_deterministic() -> None:
    tok, train = build_tokenizer(), toy.load_problems("train", 64)
    spec, small = SFTSpec(steps=3, batch_size=8, warmup=1), ModelSpec(hidden_size=32, num_layers=1)
    states = []
    for _ in range(2):
        model = make_model(small, tok, seed=5)
        train_sft(model, train, tok, spec, seed=5, log_every=0)
        states.append(model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


@pytest.mark.slow
def test_reduced_recipe_writes_loadable_hf_directories(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # Teacher 10 steps, student 2; untrained models generate to the length cap, so score only 8 problems.
    report = toy.build(tmp_path, budget=0.005, eval_n=8)
    written = json.loads((tmp_path / "build.json").read_text())
    assert written["teacher"]["steps"] == 10 and written["student"]["steps"] == 2
    assert written["test_problems"] == 8
    assert report["teacher"]["test_accuracy"] == written["teacher"]["test_accuracy"]
    for name in ("teacher", "student"):
        model = AutoModelForCausalLM.from_pretrained(tmp_path / name)
        assert model.config.model_type == "qwen3" and model.config.hidden_size == MODEL.hidden_size
        assert (tmp_path / name / "model.safetensors").exists()
        assert AutoTokenizer.from_pretrained(tmp_path / name).get_vocab() == build_tokenizer().get_vocab()
        # the recorded accuracy is the saved model's, measured again from its directory
        assert report[name]["test_accuracy"] == pytest.approx(toy.accuracy(tmp_path / name, toy.load_problems("test", 8)))
    assert AutoTokenizer.from_pretrained(tmp_path / "tokenizer").eos_token == "</s>"
    assert main(["eval", "--n", "2", str(tmp_path / "student")]) == 0
    assert "greedy test accuracy" in capsys.readouterr().out


def test_bad_budget_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="budget=0"):
        toy.build(tmp_path, budget=0)
