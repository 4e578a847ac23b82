"""Run-level callbacks: the end-of-fit summary with the exported student."""

from __future__ import annotations

import json
import resource
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only

from tiplight.files import write_text
from tiplight.teachers import TeacherServerError

# per-step metrics averaged over the run in summary.json (kept fraction, TIP quadrant shares, the recall of
# planted errors in a world that has them, the seconds of each phase of a step); a step where one is NaN (no
# planted token) does not count for it
_MEAN_PREFIXES = ("train/kept_fraction", "quadrant/", "planted/", "time/")
_SUM_PREFIXES = ("cost/",)  # per-step costs summed over the run (the update's kept-token head FLOPs)


class RunSummary(L.Callback):
    """At the end of fit: export the student as a HF directory, print accuracy before and after
    (from a ``MathEvalCallback`` with ``at_fit_start`` and ``at_fit_end``) and write ``summary.json``:
    accuracies, the accuracy at every evaluated step, the run's mean kept fraction and quadrant shares
    (and planted-error recall, when the world has planted errors), the mean seconds of each phase of a step
    (``time/rollout``, ``time/score``, ``time/select``, ``time/update``), the total kept-token head FLOPs,
    wall time and peak memory. A folder that already holds a finished run is refused at start-up.

    Args:
        export: save the trained student under ``<log_dir>/student``.
        merge_lora: export merged weights (True) or the PEFT adapter alone (False).
    """

    def __init__(self, export: bool = True, merge_lora: bool = True):
        super().__init__()
        self.export, self.merge_lora = export, merge_lora
        self.summary: dict[str, Any] = {}
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}  # steps with a finite value, per metric
        self._steps = 0
        self._start = 0.0
        self._seconds_before = 0.0  # fit time before a resume (kept in checkpoints)

    def state_dict(self) -> dict[str, Any]:
        return {"sums": self._sums, "counts": self._counts, "steps": self._steps,
                "seconds": self._seconds_before + time.perf_counter() - self._start}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._sums = dict(state_dict.get("sums", {}))
        self._steps = int(state_dict.get("steps", 0))
        # checkpoints from before per-metric counts: every metric was finite at every step
        self._counts = dict(state_dict.get("counts", dict.fromkeys(self._sums, self._steps)))
        self._seconds_before = float(state_dict.get("seconds", 0.0))

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        finished = _log_dir(trainer) / "summary.json"
        if finished.exists() and trainer.ckpt_path is None:
            raise ValueError(f"{finished.parent} already holds a finished run (summary.json); set "
                             "trainer.default_root_dir (or the logger's save_dir/version) to a new folder, "
                             "or remove it.")
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        for name, value in trainer.callback_metrics.items():
            if name.startswith(_MEAN_PREFIXES + _SUM_PREFIXES) and torch.isfinite(value):
                self._sums[name] = self._sums.get(name, 0.0) + float(value)
                self._counts[name] = self._counts.get(name, 0) + 1
        self._steps += 1

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        log_dir = _log_dir(trainer)
        student_dir = self._export(trainer, pl_module, log_dir / "student") if self.export else None
        curve = _curve(trainer)
        self.summary = {
            "accuracy_before": curve.get("fit_start", {}).get("accuracy"),
            "accuracy_after": curve.get("fit_end", {}).get("accuracy"),
            "benchmark": next((c["benchmark"] for c in curve.values()), None),
            "accuracy_curve": {str(c["step"]): c["accuracy"] for c in curve.values()},
            "student_dir": student_dir,
            "log_dir": str(log_dir),
            "steps": trainer.global_step,
            "wall_seconds": round(self._seconds_before + time.perf_counter() - self._start, 1),
            "peak_memory_mib": round(peak_memory_mib(pl_module.device), 1),
            **{name: total if name.startswith(_SUM_PREFIXES) else total / self._counts[name]
               for name, total in sorted(self._sums.items())},
        }
        self._report(log_dir)

    def _export(self, trainer: L.Trainer, pl_module: L.LightningModule, out: Path) -> str:
        """Every rank takes part (FSDP2 shards are gathered); global rank 0 writes, the others wait for it."""
        student_dir = pl_module.export(str(out), merge=self.merge_lora, write=trainer.is_global_zero)
        trainer.strategy.barrier("tiplight-export")
        return student_dir

    @rank_zero_only
    def _report(self, log_dir: Path) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        write_text(log_dir / "summary.json", json.dumps(self.summary, indent=2) + "\n")  # never half a summary
        s = self.summary
        if s["accuracy_before"] is not None and s["accuracy_after"] is not None:
            print(f"\ntiplight: {s['benchmark']} accuracy {s['accuracy_before']:.1%} before -> "
                  f"{s['accuracy_after']:.1%} after {s['steps']} steps")
        if s["student_dir"]:
            print(f"tiplight: trained student (HF directory): {s['student_dir']}")
        print(f"tiplight: logs and summary.json in {log_dir}")


class Interruption(L.Callback):
    """What an interrupted fit leaves. SIGTERM (schedulers, ``kill``) during training: Lightning stops
    after the current step; after training (the final evaluation, the export) the phase stops at once.
    Either way a resumable checkpoint is saved to ``<log_dir>/checkpoints/interrupted.ckpt`` (resuming
    one saved after training runs the final phase again). Before training (the fit-start evaluation)
    nothing was trained, so nothing is saved. Ctrl-C stops mid-step, so nothing more is saved: the message
    names the last checkpoint, if any. A served teacher that fails during training (``TeacherServerError``)
    also leaves ``interrupted.ckpt``, named in its message. The student is not exported and
    ``summary.json`` is not written. (``tiplight`` adds this to every run.)"""

    def __init__(self) -> None:
        self.phase: Literal["start", "train", "end"] = "start"
        self._previous: Any = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Lightning handles SIGTERM only while training: before (fit-start evaluation) and after it (its
        # handlers are restored before ``on_fit_end``) the default handler would end the process silently
        if stage == "fit" and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.phase = "train"

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.phase = "end"

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        if self.phase != "train":  # while training, Lightning's own handler stops after the step
            raise SIGTERMException

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        if isinstance(exception, SIGTERMException) and self.phase == "start":
            saved = "nothing was trained in this run yet, so nothing was saved"
            what = "SIGTERM before training"
        elif isinstance(exception, SIGTERMException):
            path = _log_dir(trainer) / "checkpoints" / "interrupted.ckpt"
            trainer.save_checkpoint(path)
            saved = f"a resumable checkpoint was saved: resume with --ckpt_path {path}"
            what = "SIGTERM" if self.phase == "train" else "SIGTERM after training"
        elif isinstance(exception, TeacherServerError) and self.phase == "train":
            # the failed step took no optimizer step: resuming repeats it (the message says where from)
            exception.checkpoint = str(_log_dir(trainer) / "checkpoints" / "interrupted.ckpt")
            trainer.save_checkpoint(exception.checkpoint)
            return
        elif isinstance(exception, KeyboardInterrupt):
            saver = trainer.checkpoint_callback
            last = (saver.last_model_path or saver.best_model_path) if saver else ""
            saved = (f"nothing more was saved; the last checkpoint is {last}" if last
                     else "no checkpoint was saved (none was configured or reached)")
            what = "Ctrl-C"
        else:
            return
        if trainer.is_global_zero:
            print(f"\ntiplight: interrupted by {what} at step {trainer.global_step}: {saved}; the student was "
                  "not exported and summary.json was not written.", file=sys.stderr, flush=True)


def _log_dir(trainer: L.Trainer) -> Path:
    return Path(trainer.log_dir or trainer.default_root_dir)


def peak_memory_mib(device: torch.device) -> float:
    """Peak memory of this process: CUDA's allocator peak on a GPU, else the peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _curve(trainer: L.Trainer) -> dict[str, dict[str, Any]]:
    """``moment -> {benchmark, step, accuracy}`` for every evaluation of the first ``MathEvalCallback``
    (its first benchmark), in step order."""
    from tiplight.evals import MathEvalCallback

    evals = next((cb for cb in trainer.callbacks if isinstance(cb, MathEvalCallback)), None)
    if evals is None:
        return {}
    curve = {}
    for moment, results in evals.results.items():
        step = evals.steps.get(moment, trainer.global_step)
        for bench, metrics in results.items():
            curve[moment] = {"benchmark": bench, "step": step, "accuracy": metrics.get("accuracy")}
            break
    return dict(sorted(curve.items(), key=lambda item: item[1]["step"]))
