"""The student's optimizer: built from ``model.optimizer`` with errors that name the option, and the check
that a resumed run keeps the optimizer class its checkpoint's state belongs to."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any

import torch

from tiplight.args import Optimization
from tiplight.schedule import lr_factor

# torch's own messages (``Invalid learning rate: -1.0``) -> the init_args key they are about
_FIELDS = {"learning rate": "lr", "weight_decay": "weight_decay", "epsilon": "eps", "beta": "betas",
           "momentum": "momentum", "rho": "rho", "lr_decay": "lr_decay"}


def build_optimizer(factory: Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer],
                    params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """``factory(params)``; a value the optimizer refuses is one sentence naming ``model.optimizer.init_args``."""
    try:
        return factory(params)
    except (ValueError, TypeError) as error:
        found = re.search(r"Invalid (learning rate|weight_decay|epsilon|beta|momentum|rho|lr_decay)", str(error))
        key = f".{_FIELDS[found.group(1)]}" if found else ""
        raise ValueError(f"model.optimizer.init_args{key} is not allowed: {error} (from {_class_of(factory)}).") from None


def optimizer_and_schedule(factory: Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer],
                           params: list[torch.nn.Parameter], options: Optimization, max_steps: int) -> dict[str, Any]:
    """Lightning's ``configure_optimizers`` answer: the optimizer and its per-step LR schedule."""
    optimizer = build_optimizer(factory, params)
    factor = partial(lr_factor, schedule=options.lr_schedule, warmup_steps=options.warmup_steps,
                     total_steps=max(max_steps, 1), min_lr_ratio=options.min_lr_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def _class_of(factory: object) -> str:
    """The optimizer class a factory builds: a partial's function, or the class jsonargparse's partial holds."""
    for inner in (getattr(factory, "func", None), *getattr(factory, "args", ())):
        if isinstance(inner, type):
            return f"{inner.__module__}.{inner.__qualname__}"
    return getattr(factory, "__qualname__", type(factory).__name__)


def optimizer_name(optimizers: Sequence[torch.optim.Optimizer]) -> str | None:
    """``torch.optim.adamw.AdamW`` for the (first) optimizer; None before there is one."""
    if not optimizers:
        return None
    cls = type(getattr(optimizers[0], "optimizer", optimizers[0]))  # unwrap Lightning's wrapper
    return f"{cls.__module__}.{cls.__qualname__}"


def check_resumed_optimizer(saved: str | None, optimizers: Sequence[torch.optim.Optimizer]) -> None:
    """Refuse a resume whose ``model.optimizer`` class differs from the checkpoint's: its saved state would
    be loaded into the wrong optimizer (a KeyError mid-step, or silently wrong moments)."""
    current = optimizer_name(optimizers)
    if saved is not None and current is not None and saved != current:
        raise ValueError(f"--ckpt_path holds the state of a {saved} optimizer but model.optimizer is {current}; "
                         "resume with the same optimizer class, or start a new run from the exported student.")
