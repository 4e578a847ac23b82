"""Which tokens a step keeps: statistics normalised over the stats scope (the whole step across ranks, or
each micro-batch), the selector's weights, and the step's masks gathered over ranks for logging."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import lightning as L
import torch

from tiplight.chunked_stats import RawStats
from tiplight.padding import pad_right
from tiplight.parallel import all_gather_rows
from tiplight.passes import ScoredPart
from tiplight.rollout import Rollout
from tiplight.seeding import derived_seed
from tiplight.selection import Selector, TokenStats
from tiplight.selection.base import selector_weights


@dataclass
class StepRecord:
    """The last training step on this rank, for diagnostics: its rollouts, their statistics (normalised
    over the stats scope) and the selector's weights (0 = not kept), all ``[R_local, C]``."""

    rollout: Rollout
    stats: TokenStats
    weights: torch.Tensor


def normalise_and_select(selector: Selector, raw: RawStats, valid: torch.Tensor,
                         generator: torch.Generator) -> tuple[TokenStats, torch.Tensor]:
    """Statistics normalised over every valid token given, and the selector's float weights ``[R, C]``."""
    stats = TokenStats.from_raw(raw.entropy, raw.rkl, raw.fkl, valid)
    return stats, selector_weights(selector, stats, generator)


def select(module: L.LightningModule, selector: Selector, scope: Literal["batch", "micro"], parts: list[ScoredPart],
           step_seed: int, keys: torch.Tensor) -> tuple[TokenStats, list[torch.Tensor], slice]:
    """Normalise over the stats scope and select (``keys`` ``[R]``: the rollout keys of the parts' rows).

    Returns the scope's stats (the whole step's, gathered over ranks, in ``batch`` scope), per-part
    float weights (0 = not kept) and the rows of the stats that are this rank's rollouts."""
    if scope == "micro":
        return _select_micro(selector, parts, step_seed, keys)
    raw = RawStats.cat([p.raw for p in parts])
    masks = [p.rollout.completion_mask for p in parts]
    valid = torch.cat([pad_right(m, raw.entropy.shape[1]) for m in masks])  # [R, C] as RawStats.cat pads
    (entropy, rkl, fkl, valid), rows = all_gather_rows(module, [raw.entropy, raw.rkl, raw.fkl, valid])
    generator = torch.Generator(device=entropy.device).manual_seed(step_seed)
    stats, weights = normalise_and_select(selector, RawStats(entropy, rkl, fkl), valid.bool(), generator)
    local = weights[rows].split([len(m) for m in masks])
    return stats, [w[:, : m.shape[1]] for w, m in zip(local, masks)], rows


def _select_micro(selector: Selector, parts: list[ScoredPart], step_seed: int,
                  keys: torch.Tensor) -> tuple[TokenStats, list[torch.Tensor], slice]:
    """``micro`` scope: each micro-batch alone, drawing from (step seed, its first rollout key)."""
    firsts = [int(k[0]) for k in keys.split([len(p.raw.entropy) for p in parts])]
    device = parts[0].raw.entropy.device
    picked = [normalise_and_select(selector, p.raw, p.rollout.completion_mask,
                                   torch.Generator(device).manual_seed(derived_seed(step_seed, key)))
              for p, key in zip(parts, firsts)]
    stats = TokenStats.cat([s for s, _ in picked])
    return stats, [w for _, w in picked], slice(0, len(stats.valid))


def gather_rows(module: L.LightningModule, local: torch.Tensor, width: int) -> torch.Tensor:
    """This rank's ``[R_local, C_i]`` mask, padded or cut to ``width`` columns, gathered: ``[R_global, width]``."""
    (gathered,), _ = all_gather_rows(module, [pad_right(local, width)])
    return gathered[:, :width]


def global_keep(module: L.LightningModule, weights: list[torch.Tensor], width: int) -> torch.Tensor:
    """The whole step's keep mask ``[R_global, width]`` from this rank's per-part weights."""
    return gather_rows(module, torch.cat([pad_right(w, width) for w in weights]) > 0, width)
