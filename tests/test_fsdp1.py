"""Lightning's FSDPStrategy (FSDP1) with 2 gloo processes gives the single-process loss and kept set:
student and frozen teacher sharded by tiplight.parallel.fsdp1_shard, rollouts generated from the shards,
gradient norm clipped by tiplight.parallel.clip_grad_norm, decoder layers recomputed in backward (HF checkpointing)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("fsdp_run.py")


def run(devices: int, tiny, prompts_file, out: Path) -> dict:
    cmd = [sys.executable, str(SCRIPT), str(devices), tiny["teacher"], tiny["student"], prompts_file, str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=SCRIPT.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow
@pytest.mark.distributed
def test_fsdp1_two_processes_match_one(tiny, prompts_file, tmp_path):
    single = run(1, tiny, prompts_file, tmp_path / "single.json")
    sharded = run(2, tiny, prompts_file, tmp_path / "fsdp.json")
    assert sharded["units"] == ["FullyShardedDataParallel"]  # lm_heads and layers of both models
    for one, two in zip(single["steps"], sharded["steps"], strict=True):
        assert one["kept"] == two["kept"] and one["valid"] == two["valid"]
        assert two["loss"] == pytest.approx(one["loss"], rel=1e-4)
