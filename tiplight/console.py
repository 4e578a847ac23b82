"""What a run shows on the console: Lightning's bar on a terminal, one plain line every few steps in a log
file or pipe, and none of Lightning's advertising tips or third-party deprecation noise."""

from __future__ import annotations

import logging
import sys
import time
import warnings
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar

# warnings that say nothing about the user's run
_NOISE = (
    r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",  # lightning's _pytree on torch >= 2.9
    r".*LightningCLI's args parameter is intended to run from within Python.*",  # `tiplight` passes argv
)


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


def quiet() -> None:
    """Silence Lightning's '💡 Tip' messages and the warnings in ``_NOISE`` (idempotent)."""
    for pattern in _NOISE:
        warnings.filterwarnings("ignore", message=pattern)
    for handler in logging.getLogger("lightning.pytorch").handlers:
        if not any(isinstance(f, _DropTips) for f in handler.filters):
            handler.addFilter(_DropTips())


class LineProgress(ProgressBar):
    """One line every ``every`` optimizer steps (and at the last): step, the progress-bar metrics (loss,
    kept fraction) and seconds per step. For logs and pipes, where a redrawn bar is unreadable.

    Args:
        every: print every this many optimizer steps.
    """

    def __init__(self, every: int = 10) -> None:
        super().__init__()
        self.every = every
        self._enabled = True
        self._last = (0, 0.0)  # (step, time) of the last line

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last = (trainer.global_step, time.perf_counter())

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        step, total = trainer.global_step, trainer.max_steps
        if not (self._enabled and trainer.is_global_zero) or step == self._last[0]:
            return
        if step % self.every and step != total:
            return
        now = time.perf_counter()
        per_step = (now - self._last[1]) / (step - self._last[0])
        metrics = self.get_metrics(trainer, pl_module)
        shown = " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()
                         if k != "v_num")
        of = f"/{total}" if total > 0 else ""
        print(f"step {step}{of}  {shown}  ({per_step:.2f} s/step)", flush=True)
        self._last = (step, now)


def phase_progress(label: str, done: int, total: int, unit: str, started: float) -> None:
    """One line of a long phase outside the training bar (an evaluation before or after training):
    ``label: done/total unit (seconds since started)``, flushed at once for logs and pipes."""
    print(f"{label}: {done}/{total} {unit} ({time.perf_counter() - started:.0f} s)", flush=True)


def progress_bar() -> ProgressBar:
    """Lightning's bar when the console is a terminal, else ``LineProgress``."""
    return TQDMProgressBar() if sys.stdout.isatty() else LineProgress()  # both write to stdout
