"""Runs of the command that must keep what was trained: FSDP2 with tied embeddings, resumes that honour
or refuse what the user typed, signals in any phase, and non-finite losses or weights."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_cli import write_config

COMMAND = [sys.executable, "-m", "tiplight.cli"]
CONFIGS = Path(__file__).parent.parent / "configs"


def fit(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*COMMAND, "fit", *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_fsdp2_fits_exports_and_resumes_a_tied_student(tied, prompts_file, tmp_path):
    """Once: 'FSDP requires a single root module' at the first rollout of a tied student under
    configs/strategy/fsdp2.yaml (then: the export of the DTensor weights failed)."""
    config = str(write_config(tmp_path / "run.yaml", tied, prompts_file))
    done = fit("--config", config, "--config", str(CONFIGS / "strategy" / "fsdp2.yaml"))
    assert done.returncode == 0, done.stderr[-3000:]
    log_dir = next((tmp_path / "runs").rglob("summary.json")).parent
    from transformers import AutoModelForCausalLM

    student = AutoModelForCausalLM.from_pretrained(log_dir / "student")
    assert student.lm_head.weight is student.model.embed_tokens.weight
    trained = student.model.embed_tokens.weight
    before = AutoModelForCausalLM.from_pretrained(tied["student"]).model.embed_tokens.weight
    assert torch.isfinite(trained).all() and not torch.equal(trained, before)
    ckpt = next((log_dir / "checkpoints").glob("*.ckpt"))  # a distributed checkpoint (a directory)
    resumed = fit("--config", config, "--config", str(CONFIGS / "strategy" / "fsdp2.yaml"), "--ckpt_path",
                  str(ckpt), "--trainer.max_steps", "3", "--trainer.default_root_dir", str(tmp_path / "resumed"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Restored all states" in resumed.stdout + resumed.stderr
