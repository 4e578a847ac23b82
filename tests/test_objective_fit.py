"""Every registered objective trains the embedded toy world through the command line, as a user runs it:
``tiplight fit --config configs/toy.yaml --model.objective NAME``, 30 steps, and the full-vocabulary
reverse KL of the student's rollouts (``train/rkl``, logged whichever objective trains) falls."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tiplight.objectives import list_objectives

ROOT = Path(__file__).resolve().parents[1]
OPTIONS = {  # registered objective -> extra flags
    "ReverseKL": [],
    "ForwardKL": [],
    "JSD": [],
    "TopKDivergence": ["--model.objective.k", "16"],
    "SampledTokenPG": [],
}


def short_run(tmp_path: Path) -> Path:
    """The toy config cut to 30 steps with a CSV log and no evaluation callbacks (keeps it cheap)."""
    path = tmp_path / "short.yaml"
    logger = {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(tmp_path), "name": "opd"}}
    path.write_text(yaml.safe_dump({"trainer": {
        "max_steps": 30, "log_every_n_steps": 1, "limit_val_batches": 0, "enable_progress_bar": False,
        "default_root_dir": str(tmp_path), "logger": logger, "callbacks": []}}))
    return path


def test_every_registered_objective_has_a_run():
    assert set(OPTIONS) == set(list_objectives())


@pytest.mark.slow
@pytest.mark.parametrize("name", list(OPTIONS))
def test_every_objective_trains_the_toy_world_through_the_cli(tmp_path, name):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
           "TIPLIGHT_PLUGINS": "engines"}
    command = [sys.executable, "-m", "tiplight.cli", "fit", "--config", str(ROOT / "configs" / "toy.yaml"),
               "--config", str(short_run(tmp_path)), "--model.objective", name, *OPTIONS[name]]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [r for r in csv.DictReader((tmp_path / "opd" / "version_0" / "metrics.csv").open()) if r.get("train/rkl")]
    rkl = [float(r["train/rkl"]) for r in rows]
    assert len(rkl) == 30 and sum(rkl[-10:]) < sum(rkl[:10])
    gaps = [float(r["train/sampler_logprob_gap"]) for r in rows if r.get("train/sampler_logprob_gap")]
    assert len(gaps) == 30 and max(gaps) < 1e-3  # every engine reports the student's own log-probs: no gap
