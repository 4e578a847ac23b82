"""What a training step logs: the time of each phase, loss and kept fraction, the statistics' quadrant shares,
planted-error recall, the kept tokens' head FLOPs and the sampler's log-probability gap."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import lightning as L
import torch

from tiplight import keep
from tiplight.parallel import sum_over_ranks
from tiplight.passes import ScoredPart, sampler_logprob_gap
from tiplight.planted import rollout_planted
from tiplight.rollout import Rollout
from tiplight.selection import TokenStats, planted_recall, quadrant_shares, quadrants


@contextmanager
def timer(module: L.LightningModule, name: str) -> Iterator[None]:
    """Log the wall time of the block as ``time/<name>`` (synchronised on CUDA)."""
    sync = torch.cuda.synchronize if module.device.type == "cuda" else lambda: None
    sync()
    start = time.perf_counter()
    yield
    sync()
    module.log(f"time/{name}", time.perf_counter() - start, on_step=True, reduce_fx="max", sync_dist=False)


def log_step(module: L.LightningModule, stats: TokenStats, weights: list[torch.Tensor], loss: torch.Tensor,
             kept_fraction: torch.Tensor) -> None:
    """The step's metrics; quadrant shares of the kept set and planted recall in ``batch`` scope only."""
    kept = module.global_keep(weights, stats.valid) if module.hparams.stats_scope == "batch" else None
    planted = global_planted(module, module.last_step.rollout, stats.valid.shape[1]) if kept is not None else None
    options = module.logging
    metrics = step_metrics(stats, kept, options.entropy_threshold, options.divergence_threshold, planted)
    metrics.update({"train/loss": loss, "train/kept_fraction": kept_fraction,
                    "cost/head_flops": head_flops(module, weights),
                    "lr": module.lr_schedulers().get_last_lr()[0]})
    module.log_dict(metrics, on_step=True, prog_bar=False)
    module.log_dict({"loss": loss, "kept": kept_fraction}, prog_bar=True, logger=False)


def log_sampler_gap(module: L.LightningModule, parts: list[ScoredPart]) -> None:
    """``train/sampler_logprob_gap``: mean ``|log P_S - log P_sampler|`` over the step's valid tokens
    on all ranks, when the rollout carries the sampler's log-probabilities."""
    gap = sampler_logprob_gap(parts)
    if gap is not None:
        total, count = sum_over_ranks(module, gap)
        module.log("train/sampler_logprob_gap", total / count.clamp(min=1), on_step=True)


def head_flops(module: L.LightningModule, weights: list[torch.Tensor]) -> torch.Tensor:
    """The update's kept-token head FLOPs over all ranks: 6 d V per kept token (the student lm_head's
    forward, 2 d V, and backward, 4 d V), the part of the update whose cost the selector sets (the
    backbone's backward runs over every position whatever is kept)."""
    kept = sum_over_ranks(module, sum((w > 0).sum() for w in weights).double())
    return 6 * module.student.get_output_embeddings().weight.shape[-1] * module.vocab_size * kept


def global_planted(module: L.LightningModule, rollout: Rollout, width: int) -> torch.Tensor | None:
    """The whole step's planted-error positions ``[R_global, width]`` (rows as ``global_keep``'s); None
    unless ``model.logging.planted_errors`` names the world's mask."""
    if module.planted_mask is None:
        return None
    local = rollout_planted(module.planted_mask, module.tokenizer, rollout)  # [R, C]
    return keep.gather_rows(module, local, width)


def step_metrics(stats: TokenStats, keep: torch.Tensor | None, entropy_threshold: float | None = None,
                 divergence_threshold: float | None = None,
                 planted: torch.Tensor | None = None) -> dict[str, torch.Tensor | float]:
    """A step's token metrics: mean entropy and KL(S||T) over valid tokens, mean completion length, and
    TIP quadrant shares over all valid tokens (and over kept ones when ``keep`` ``[R, C]`` is given);
    with the world's planted-error positions ``planted`` ``[R, C]`` and ``keep``, their recall
    (``planted/recall``, ``planted/precision``, ``planted/share``: ``selection.planted_recall``)."""
    valid = stats.valid
    n_valid = valid.sum().clamp(min=1)
    metrics: dict[str, torch.Tensor | float] = {
        "train/entropy": (stats.entropy * valid).sum() / n_valid,
        "train/rkl": (stats.rkl * valid).sum() / n_valid,
        "train/completion_length": valid.sum(1).float().mean(),
    }
    ids = quadrants(stats, entropy_threshold, divergence_threshold)
    for over, mask in (("all", valid), ("kept", keep)):
        if mask is not None:
            metrics.update({f"quadrant/{q}_{over}": share for q, share in quadrant_shares(ids, mask).items()})
    if planted is not None and keep is not None:
        metrics.update({f"planted/{k}": v for k, v in planted_recall(planted, keep, valid).items()})
    return metrics
