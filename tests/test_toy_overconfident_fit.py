"""``tiplight fit --config configs/toy_overconfident.yaml``, a few steps, as a user runs it: the recall of the
world's planted errors reaches the step log and summary.json, with the update's kept-token head FLOPs."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tiplight import toy

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.skipif(not (toy.OVERCONFIDENT_ASSETS / "build.json").exists(),
                    reason="overconfident toy student not built (tiplight toy build --world overconfident)")
def test_fit_on_the_overconfident_world_logs_planted_recall_and_head_flops(tmp_path: Path) -> None:
    short = tmp_path / "short.yaml"
    logger = {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(tmp_path), "name": "opd"}}
    short.write_text(yaml.safe_dump({
        "trainer": {"max_steps": 3, "log_every_n_steps": 1, "limit_val_batches": 0, "enable_progress_bar": False,
                    "default_root_dir": str(tmp_path), "logger": logger,
                    "callbacks": [{"class_path": "tiplight.callbacks.RunSummary", "init_args": {"export": False}}]},
        "model": {"selector": {"class_path": "tiplight.selection.OverconfidentTopK", "init_args": {"retain": 0.2}}}}))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "tiplight.cli", "fit", "--config", str(ROOT / "configs" / "toy_overconfident.yaml"),
               "--config", str(short)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [r for r in csv.DictReader((tmp_path / "opd" / "version_0" / "metrics.csv").open()) if r.get("train/loss")]
    summary = json.loads((tmp_path / "opd" / "version_0" / "summary.json").read_text())
    assert len(rows) == 3
    for name in ("planted/recall", "planted/precision", "planted/share"):
        steps = [float(r[name]) for r in rows if r.get(name) not in (None, "", "nan")]
        assert steps and all(0 <= v <= 1 for v in steps)
        assert summary[name] == pytest.approx(sum(steps) / len(steps), rel=1e-5)
    assert 0 < summary["planted/share"] < 0.2
    kept = [float(r["train/kept_fraction"]) for r in rows]
    flops = [float(r["cost/head_flops"]) for r in rows]
    assert all(f > 0 and f % (6 * 128 * 85) == 0 for f in flops)  # 6 d V per kept token, d = 128, V = 85
    assert summary["cost/head_flops"] == pytest.approx(sum(flops), rel=1e-6) and max(kept) < 0.25
