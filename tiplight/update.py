"""The update of one on-policy step: the objective at kept positions, backward per micro-batch, the
denominator over all ranks, one optimizer step; a step that kept nothing is skipped, a non-finite loss stops."""

from __future__ import annotations

import warnings

import lightning as L
import torch

from tiplight.parallel import clip_grad_norm, no_sync, scale_gradients, sum_over_ranks
from tiplight.passes import ScoredPart


def update_step(module: L.LightningModule, parts: list[ScoredPart],
                weights: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss at kept positions (``module.loss_sum`` per micro-batch), backward, one optimizer step.

    Returns the step's loss and the fraction of valid tokens kept, both over all ranks."""
    kept = sum((w > 0).sum() for w in weights).float()
    valid = sum(p.rollout.completion_mask.sum() for p in parts).float()
    kept, valid = sum_over_ranks(module, torch.stack([kept, valid]))
    if kept == 0:
        skip_empty_step(module)
        return torch.tensor(float("nan")), kept
    module.empty_steps = 0
    optimizer = module.optimizers()
    optimizer.zero_grad()
    total = torch.zeros((), device=module.device)
    for i, (part, w) in enumerate(zip(parts, weights)):
        with no_sync(module.trainer, skip=i < len(parts) - 1):
            loss_sum = module.loss_sum(part, w)
            module.manual_backward(loss_sum)
        total += loss_sum.detach()
    denominator = kept if module.objective.denominator == "kept" else valid
    loss = sum_over_ranks(module, total) / denominator
    check_finite_loss(loss, module.trainer.global_step + 1)
    scale_gradients(module.student, module.trainer.world_size / denominator)
    if module.optimization.grad_clip is not None:
        clip_grad_norm(module, optimizer, module.optimization.grad_clip)
    optimizer.step()
    module.engine.weights_updated()
    module.lr_schedulers().step()
    return loss, kept / valid


def check_finite_loss(loss: torch.Tensor, step: int) -> None:
    """Stop before the optimizer step of a non-finite loss (the same on every rank): the weights or the
    rollouts hold NaN or inf, and every later step and the export would carry them."""
    if not torch.isfinite(loss):
        raise ValueError(f"the training loss is {loss.item()} at step {step} (the "
                         "student's weights or rollouts hold NaN or inf, e.g. after too high a learning "
                         "rate); the run stops before that optimizer step and the student is not exported.")


def skip_empty_step(module: L.LightningModule) -> None:
    """A step that kept no token on any rank is skipped; too many in a row end the run."""
    module.empty_steps += 1
    limit = module.optimization.max_empty_steps
    if module.empty_steps >= limit:
        raise ValueError(f"no token was kept in {module.empty_steps} consecutive steps "
                         f"(model.optimization.max_empty_steps={limit}): model.selector "
                         f"{type(module.selector).__name__} keeps nothing on these rollouts; change its "
                         "settings (retain, thresholds).")
    warnings.warn("no token was kept on any rank this step; the step is skipped.", stacklevel=3)
