"""A callback that sends SIGTERM to its own process in a chosen phase: a scheduler's signal at a known
moment (tests only; YAML ``class_path: signals.SigtermAt``, with tests/ on the path)."""

from __future__ import annotations

import os
import signal
from typing import Literal

import lightning as L


class SigtermAt(L.Callback):
    """SIGTERM to this process from ``on_fit_start`` (before the fit-start evaluation, when listed before
    it) or ``on_fit_end`` (before the final evaluation)."""

    def __init__(self, hook: Literal["on_fit_start", "on_fit_end"] = "on_fit_end") -> None:
        self.hook = hook

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.hook == "on_fit_start":
            os.kill(os.getpid(), signal.SIGTERM)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.hook == "on_fit_end":
            os.kill(os.getpid(), signal.SIGTERM)
