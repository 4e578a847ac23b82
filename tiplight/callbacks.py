"""Run-level callbacks: the end-of-fit summary with the exported student."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_only


class RunSummary(L.Callback):
    """At the end of fit: export the student as a HF directory, print accuracy before and after
    (from a ``MathEvalCallback`` with ``at_fit_start`` and ``at_fit_end``) and write ``summary.json``.

    Args:
        export: save the trained student under ``<log_dir>/student``.
        merge_lora: export merged weights (True) or the PEFT adapter alone (False).
    """

    def __init__(self, export: bool = True, merge_lora: bool = True):
        super().__init__()
        self.export, self.merge_lora = export, merge_lora
        self.summary: dict[str, Any] = {}

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        log_dir = Path(trainer.log_dir or trainer.default_root_dir)
        student_dir = None
        if self.export:
            student_dir = self._export(trainer, pl_module, log_dir / "student")
        before, after = _accuracies(trainer)
        self.summary = {
            "accuracy_before": before.get("accuracy"),
            "accuracy_after": after.get("accuracy"),
            "benchmark": before.get("benchmark") or after.get("benchmark"),
            "student_dir": student_dir,
            "log_dir": str(log_dir),
            "steps": trainer.global_step,
        }
        self._report(log_dir)

    @staticmethod
    def _export(trainer: L.Trainer, pl_module: L.LightningModule, out: Path) -> str | None:
        if trainer.world_size > 1:
            return None  # sharded weights: export from a checkpoint with `pl_module.export` on one process
        return pl_module.export(str(out), merge=True)

    @rank_zero_only
    def _report(self, log_dir: Path) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        (log_dir / "summary.json").write_text(json.dumps(self.summary, indent=2) + "\n")
        s = self.summary
        if s["accuracy_before"] is not None and s["accuracy_after"] is not None:
            print(f"\ntiplight: {s['benchmark']} accuracy {s['accuracy_before']:.1%} before -> "
                  f"{s['accuracy_after']:.1%} after {s['steps']} steps")
        if s["student_dir"]:
            print(f"tiplight: trained student (HF directory): {s['student_dir']}")
        print(f"tiplight: logs and summary.json in {log_dir}")


def _accuracies(trainer: L.Trainer) -> tuple[dict[str, Any], dict[str, Any]]:
    """``{benchmark, accuracy}`` at fit start and at fit end from the first ``MathEvalCallback``."""
    from tiplight.evals import MathEvalCallback

    evals = next((cb for cb in trainer.callbacks if isinstance(cb, MathEvalCallback)), None)
    if evals is None:
        return {}, {}

    def first(moment: str) -> dict[str, Any]:
        results = evals.results.get(moment, {})
        for bench, metrics in results.items():
            return {"benchmark": bench, "accuracy": metrics.get("accuracy")}
        return {}

    return first("fit_start"), first("fit_end")
