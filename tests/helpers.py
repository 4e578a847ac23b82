"""Small builders shared by the module tests."""

from __future__ import annotations

import lightning as L

from tiplight.args import Optimization
from tiplight.data import PromptDataModule
from tiplight.module import DistillModule
from tiplight.rollout import Sampling


class Recording(DistillModule):
    """Records each step's loss, global keep mask and valid-token count in ``record``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.record: list[dict] = []

    def log_step(self, stats, weights, loss, kept_fraction):
        super().log_step(stats, weights, loss, kept_fraction)
        keep = self.global_keep(weights, stats.valid)
        self.record.append({"loss": float(loss), "kept": keep.nonzero().tolist(), "valid": int(stats.valid.sum())})

    @property
    def losses(self) -> list[float]:
        return [r["loss"] for r in self.record]


def make_module(tiny: dict[str, str], **kwargs) -> DistillModule:
    kwargs.setdefault("sampling", Sampling(max_new_tokens=8))
    kwargs.setdefault("optimization", Optimization(lr_schedule="constant"))
    kwargs.setdefault("optimizer", lambda p: __import__("torch").optim.AdamW(p, lr=1e-2))
    return DistillModule(student=kwargs.pop("student", tiny["student"]), teacher=kwargs.pop("teacher", tiny["teacher"]),
                         **kwargs)


def make_data(prompts_file: str, **kwargs) -> PromptDataModule:
    kwargs.setdefault("prompts_per_step", 4)
    kwargs.setdefault("rollouts_per_prompt", 2)
    kwargs.setdefault("val_size", 4)
    return PromptDataModule(train_files=[prompts_file], **kwargs)


def make_trainer(root, max_steps: int = 2, **kwargs) -> L.Trainer:
    kwargs.setdefault("logger", False)
    kwargs.setdefault("enable_checkpointing", False)
    kwargs.setdefault("limit_val_batches", 0)
    return L.Trainer(max_steps=max_steps, accelerator="cpu", devices=1, default_root_dir=str(root),
                     enable_progress_bar=False, enable_model_summary=False, **kwargs)
