"""DDP (full fine-tuning and LoRA) and FSDP2 (ModelParallelStrategy, 1 and 2 gloo processes, tied and
untied embeddings) give the single-process result: losses, kept sets, each step's gradient, weights."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("distributed_run.py")


def run(strategy: str, devices: int, models, prompts_file, tmp_path, objective: str = "ReverseKL") -> dict:
    out = tmp_path / f"{strategy}.json"
    cmd = [sys.executable, str(SCRIPT), strategy, str(devices), models["teacher"], models["student"], prompts_file,
           str(out), objective]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=SCRIPT.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def single(tiny, prompts_file, tmp_path_factory):
    return run("single", 1, tiny, prompts_file, tmp_path_factory.mktemp("single"))


@pytest.fixture(scope="module")
def single_tied(tied, prompts_file, tmp_path_factory):
    return run("single", 1, tied, prompts_file, tmp_path_factory.mktemp("single_tied"))


@pytest.fixture(scope="module")
def single_lora(tiny, prompts_file, tmp_path_factory):
    return run("single+lora", 1, tiny, prompts_file, tmp_path_factory.mktemp("single_lora"))


@pytest.mark.distributed
@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_two_processes_match_one(strategy, single, tiny, prompts_file, tmp_path):
    assert_same(single, run(strategy, 2, tiny, prompts_file, tmp_path))


@pytest.mark.slow
def test_fsdp2_on_one_process_matches_no_sharding(single, tiny, prompts_file, tmp_path):
    """Once: 'Inference tensors do not track version counter' (FSDP2's single-process unshard under the
    teacher's inference mode)."""
    assert_same(single, run("fsdp2", 1, tiny, prompts_file, tmp_path))


@pytest.mark.slow
@pytest.mark.parametrize("devices", [1, pytest.param(2, marks=pytest.mark.distributed)])
def test_fsdp2_with_tied_embeddings_matches_no_sharding(devices, single_tied, tied, prompts_file, tmp_path):
    """Once: 'FSDP requires a single root module but got (FSDPQwen3Model(...), FSDPLinear(...))' at the
    first rollout. The tied weight's gradient sums its embedding and lm_head parts, as on one process."""
    sharded = run("fsdp2", devices, tied, prompts_file, tmp_path)
    assert_same(single_tied, sharded)
    assert "lm_head.weight" not in sharded["grads"][0]  # one parameter: named once, as the embedding
    assert sharded["params"]["lm_head.weight"] == sharded["params"]["model.embed_tokens.weight"]


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
    for one, two in zip(single["grads"], multi["grads"], strict=True):
        assert two.keys() == one.keys()
        for key, value in one.items():
            assert two[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    assert multi["params"].keys() == single["params"].keys()
    for key, value in single["params"].items():
        assert multi["params"][key] == pytest.approx(value, rel=1e-4, abs=1e-5), key
