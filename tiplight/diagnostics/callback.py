"""``TipDiagnostics``: during fit, save what the selector kept every N steps (pictures and rollouts)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L

from tiplight.diagnostics import plots
from tiplight.diagnostics.table import Scored, from_step


class TipDiagnostics(L.Callback):
    """Every ``every_n_steps`` training steps, on rank 0, look at the step's rollouts (``last_step``).

    Writes under ``<log_dir>/diagnostics/``: ``step_<N>_heatmap.html`` and ``step_<N>_heatmap.png``
    (first rollout), ``step_<N>_histogram.png`` (all saved rollouts) and appends the rollouts to
    ``rollouts.jsonl`` (read by ``tiplight analyze``). With a TensorBoard logger the two pictures are
    also logged as images (``diagnostics/heatmap``, ``diagnostics/histogram``).

    Statistics keep the training normalisation (the whole step's scope); rank 0 saves its own rollouts.

    Args:
        every_n_steps: how often, in optimizer steps.
        max_rollouts: rollouts saved per step (the first ones of rank 0).
        save_jsonl: append the rollouts with their statistics and kept masks to ``rollouts.jsonl``.
        images: write the HTML/PNG pictures (and log them to TensorBoard).
        color_by: heatmap colouring: ``quadrant`` or a statistic (``entropy``, ``rkl``, ``fkl``, ...).
    """

    def __init__(self, every_n_steps: int = 50, max_rollouts: int = 8, save_jsonl: bool = True,
                 images: bool = True, color_by: str = "quadrant") -> None:
        super().__init__()
        if every_n_steps < 1 or max_rollouts < 1:
            raise ValueError(f"TipDiagnostics every_n_steps={every_n_steps}, max_rollouts={max_rollouts} "
                             "are not allowed; both must be integers >= 1.")
        if color_by != "quadrant" and color_by not in plots.STATISTICS:
            raise ValueError(f"TipDiagnostics color_by={color_by!r} is not allowed; use 'quadrant' or one of "
                             f"{', '.join(plots.STATISTICS)}.")
        self.every_n_steps, self.max_rollouts = every_n_steps, max_rollouts
        self.save_jsonl, self.images, self.color_by = save_jsonl, images, color_by

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        record = getattr(pl_module, "last_step", None)
        if record is None or step % self.every_n_steps or not trainer.is_global_zero:
            return
        thresholds = {"entropy_threshold": pl_module.logging.entropy_threshold,
                      "divergence_threshold": pl_module.logging.divergence_threshold}
        scored = from_step(record, pl_module.tokenizer, self.max_rollouts, repr(pl_module.selector), step)
        out = self.directory(trainer)
        if self.save_jsonl:
            scored.to_jsonl(out / "rollouts.jsonl", append=True)
        if self.images:
            self.pictures(trainer, scored, out, step, thresholds)

    @staticmethod
    def directory(trainer: L.Trainer) -> Path:
        out = Path(trainer.log_dir or trainer.default_root_dir) / "diagnostics"
        out.mkdir(parents=True, exist_ok=True)
        return out

    def pictures(self, trainer: L.Trainer, scored: Scored, out: Path, step: int, thresholds: dict) -> None:
        """Write the heatmap (HTML, PNG) and the histogram; log both to TensorBoard loggers."""
        weights = next(iter(scored.saved_kept.values())).float()
        (out / f"step_{step}_heatmap.html").write_text(
            plots.heatmap_html(scored, 0, weights, color_by=self.color_by, **thresholds), encoding="utf-8")
        figures = {
            "heatmap": plots.heatmap_png(scored, out / f"step_{step}_heatmap.png", 0, weights,
                                         color_by=self.color_by, **thresholds),
            "histogram": plots.histogram(scored, out / f"step_{step}_histogram.png", weights, **thresholds),
        }
        from lightning.pytorch.loggers import TensorBoardLogger

        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                for name, fig in figures.items():
                    logger.experiment.add_image(f"diagnostics/{name}", plots.to_image(fig), step)
