"""Run two OPD steps on tiny models under a strategy and write losses, kept sets, gradients and parameters.

Used by test_distributed.py: ``python tests/distributed_run.py STRATEGY DEVICES TEACHER STUDENT PROMPTS OUT
[OBJECTIVE]``; ``STRATEGY+lora`` trains a LoRA adapter (frozen lm_head); OBJECTIVE is a registered objective's
name (default ReverseKL). Lightning re-launches this script once per extra rank.
"""

from __future__ import annotations

import json
import sys

import lightning as L
import torch
from helpers import Recording

from tiplight.args import Memory, Optimization
from tiplight.data import PromptDataModule
from tiplight.models import LoRA
from tiplight.objectives import get_objective
from tiplight.rollout import Sampling
from tiplight.selection import SoftOrTopK


class GradRecording(Recording):
    """Also records each step's gradient, per parameter: its sum and norm (whole tensors, FSDP2's shards
    gathered)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.grads: list[dict[str, list[float]]] = []

    def on_before_optimizer_step(self, optimizer) -> None:
        grads = {}
        for name, param in self.student.named_parameters():
            if param.grad is not None:
                grad = param.grad.full_tensor() if hasattr(param.grad, "full_tensor") else param.grad
                grads[name] = [grad.double().sum().item(), grad.double().norm().item()]
        self.grads.append(grads)


def strategy(name: str):
    if name == "fsdp2":
        from tiplight.parallel import FSDP2Strategy

        return FSDP2Strategy()
    return "auto" if name == "single" else name


def main(name: str, devices: int, teacher: str, student: str, prompts: str, out: str,
         objective: str = "ReverseKL") -> None:
    name, _, lora = name.partition("+")
    module = GradRecording(student=student, teacher=teacher, selector=SoftOrTopK(0.5),
                           optimization=Optimization(lr_schedule="constant"), objective=get_objective(objective),
                           sampling=Sampling(max_new_tokens=8), memory=Memory(micro_batch_size=2),
                           optimizer=lambda p: torch.optim.SGD(p, lr=0.5), lora=LoRA(r=4, alpha=8) if lora else None)
    data = PromptDataModule(train_files=[prompts], prompts_per_step=4, rollouts_per_prompt=2)
    trainer = L.Trainer(accelerator="cpu", devices=devices, strategy=strategy(name), max_steps=2, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0)
    trainer.fit(module, data)
    params = {}
    for key, value in module.student.state_dict().items():
        full = value.full_tensor() if hasattr(value, "full_tensor") else value
        params[key] = full.detach().double().sum().item()
    if trainer.global_rank == 0:
        with open(out, "w") as f:
            json.dump({"steps": module.record, "grads": module.grads, "params": params}, f)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), *sys.argv[3:])
