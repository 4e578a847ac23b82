"""Several processes through the command: `tiplight fit` launched by `torchrun --nnodes 2` (one process a node,
rendezvous on the loopback address, as a cluster's launcher starts it on each host), and FSDP2 over 2 processes,
train and export the student with the weights of one process."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_cli import write_config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def exported_weights(root: Path) -> dict[str, torch.Tensor]:
    [student] = root.glob("runs/**/student")
    return {k: v for f in sorted(student.glob("*.safetensors")) for k, v in load_file(f).items()}


def fit_command(config: Path) -> list[str]:
    return ["-m", "tiplight.cli", "fit", "--config", str(config), "--trainer.val_check_interval", "null",
            "--trainer.limit_val_batches", "0", "--trainer.enable_checkpointing", "false"]


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "LOCAL_RANK", "RANK", "WORLD_SIZE"))}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}


def run_dirs(tmp_path: Path, tiny, prompts_file) -> tuple[Path, Path]:
    """Two run folders with the same config: one process, and several."""
    dirs = tmp_path / "one", tmp_path / "two"
    for root in dirs:
        root.mkdir()
        write_config(root / "run.yaml", tiny, prompts_file)
    return dirs


def assert_same_student(one: Path, two: Path) -> None:
    want, got = exported_weights(one), exported_weights(two)
    assert want.keys() == got.keys() and want
    for name, value in want.items():
        torch.testing.assert_close(got[name], value, rtol=1e-4, atol=1e-5, msg=name)


def fit_alone(root: Path, *extra: str) -> None:
    done = subprocess.run([sys.executable, *fit_command(root / "run.yaml"), *extra], cwd=root, env=environment(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.distributed
def test_two_nodes_through_torchrun_give_the_weights_of_one_process(tiny, prompts_file, tmp_path):
    one, two = run_dirs(tmp_path, tiny, prompts_file)
    fit_alone(one)

    port = free_port()
    nodes = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1", "--node_rank",
         str(rank), "--master_addr", "127.0.0.1", "--master_port", str(port),
         *fit_command(two / "run.yaml"), "--trainer.num_nodes", "2", "--trainer.strategy", "ddp"],
        cwd=two, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    outputs = [node.communicate(timeout=600) for node in nodes]
    for node, (_, err) in zip(nodes, outputs):
        assert node.returncode == 0, err[-3000:]
    assert "Starting with 2 processes" in outputs[0][1], outputs[0][1][-3000:]  # one job, not two

    assert_same_student(one, two)


@pytest.mark.slow
@pytest.mark.distributed
def test_fsdp2_over_two_processes_exports_the_gathered_student_of_one_process(tiny, prompts_file, tmp_path):
    """Multi-process runs once exported nothing (``student_dir`` null); FSDP2's shards are now gathered."""
    one, two = run_dirs(tmp_path, tiny, prompts_file)
    fit_alone(one)
    fit_alone(two, "--config", str(Path(__file__).parents[1] / "configs/strategy/fsdp2.yaml"),
              "--trainer.devices", "2")
    assert_same_student(one, two)


@pytest.mark.slow
@pytest.mark.distributed
def test_validation_loss_is_the_same_on_one_and_two_processes(tiny, prompts_file, tmp_path):
    """Validation rollouts were keyed ``rank * 10**6 + i`` and the loss a mean of per-rank means: 0.014792
    on one process, 0.014675 on two. Now every prompt keeps its key and the mean is over all tokens."""
    config = write_config(tmp_path / "run.yaml", tiny, prompts_file)
    losses = []
    for devices in ("1", "2"):
        done = subprocess.run([sys.executable, "-m", "tiplight.cli", "validate", "--config", str(config),
                               "--data.init_args.val_size", "5", "--trainer.devices", devices,
                               "--trainer.strategy", "ddp"],
                              cwd=tmp_path, env=environment(), capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        losses.append(float(re.search(r"val/opd_loss\W+([-+.\deE]+)", done.stdout).group(1)))
    assert losses[0] > 0 and losses[1] == pytest.approx(losses[0], rel=1e-5)
