"""DDP (full fine-tuning and LoRA) and FSDP2 (ModelParallelStrategy) with 2 gloo processes give the
single-process result."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("distributed_run.py")


def run(strategy: str, devices: int, tiny, prompts_file, tmp_path, objective: str = "ReverseKL") -> dict:
    out = tmp_path / f"{strategy}.json"
    cmd = [sys.executable, str(SCRIPT), strategy, str(devices), tiny["teacher"], tiny["student"], prompts_file,
           str(out), objective]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=SCRIPT.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def single(tiny, prompts_file, tmp_path_factory):
    return run("single", 1, tiny, prompts_file, tmp_path_factory.mktemp("single"))


@pytest.fixture(scope="module")
def single_lora(tiny, prompts_file, tmp_path_factory):
    return run("single+lora", 1, tiny, prompts_file, tmp_path_factory.mktemp("single_lora"))


@pytest.mark.distributed
@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_two_processes_match_one(strategy, single, tiny, prompts_file, tmp_path):
    assert_same(single, run(strategy, 2, tiny, prompts_file, tmp_path))


@pytest.mark.distributed
def test_two_processes_match_one_with_lora(single_lora, tiny, prompts_file, tmp_path):
    """A LoRA student's frozen head: the loss's gradient comes from the statistics pass on each rank."""
    assert_same(single_lora, run("ddp+lora", 2, tiny, prompts_file, tmp_path))


@pytest.mark.distributed
@pytest.mark.parametrize("objective", ["TopKDivergence", "SampledTokenPG"])
def test_two_processes_match_one_for_top_k_and_sampled_token_objectives(objective, tiny, prompts_file, tmp_path):
    """TopKDivergence (the autograd path) and SampledTokenPG (its closed form reads the sampled tokens)."""
    one = run("single", 1, tiny, prompts_file, tmp_path, objective)
    assert_same(one, run("ddp", 2, tiny, prompts_file, tmp_path, objective))


def assert_same(single: dict, multi: dict) -> None:
    for one, two in zip(single["steps"], multi["steps"], strict=True):
        assert one["kept"] == two["kept"] and one["valid"] == two["valid"]
        assert two["loss"] == pytest.approx(one["loss"], rel=1e-4)
    assert multi["params"].keys() == single["params"].keys()
    for key, value in single["params"].items():
        assert multi["params"][key] == pytest.approx(value, rel=1e-4, abs=1e-5), key
