"""Two OPD steps on tiny models under Lightning's FSDPStrategy (FSDP1), on CPU with gloo, writing losses
and kept sets as tests/distributed_run.py does: ``python tests/fsdp_run.py DEVICES TEACHER STUDENT PROMPTS OUT``.

The gradient norm is clipped (to 0.05, so that it binds), which checks ``tiplight.parallel.clip_grad_norm``
against Lightning's single-process clipping. Lightning refuses ``FSDPStrategy`` on CPU by an exact type check; the subclass below passes it and changes
nothing else. tiplight wraps both models itself (``tiplight.parallel.fsdp1_shard``, with ``device_id`` the
rank's device), so Lightning never calls FSDP with its CPU-less ``device_id``.
"""

from __future__ import annotations

import json
import sys

import lightning as L
import torch
from helpers import Recording
from lightning.pytorch.strategies import FSDPStrategy
from transformers.models.qwen3.modeling_qwen3 import Qwen3DecoderLayer

from tiplight.args import Memory, Optimization
from tiplight.data import PromptDataModule
from tiplight.parallel import clip_grad_norm
from tiplight.rollout import Sampling
from tiplight.selection import SoftOrTopK


class CPUFSDPStrategy(FSDPStrategy):
    """FSDPStrategy, allowed on the CPU accelerator (tests only)."""


class Clipped(Recording):
    """Norm clipping through tiplight.parallel.clip_grad_norm under FSDP1 (Lightning's FSDP precision
    plugin refuses norm clipping); Lightning's own clipping on one process."""

    def clip_gradients(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        if isinstance(self.trainer.strategy, FSDPStrategy):
            clip_grad_norm(self, optimizer, gradient_clip_val)
        else:
            super().clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)


def main(devices: int, teacher: str, student: str, prompts: str, out: str) -> None:
    module = Clipped(student=student, teacher=teacher, selector=SoftOrTopK(0.5),
                     optimization=Optimization(lr_schedule="constant", grad_clip=0.05),
                     sampling=Sampling(max_new_tokens=8), memory=Memory(micro_batch_size=2, gradient_checkpointing=True),
                     optimizer=lambda p: torch.optim.SGD(p, lr=0.5))
    data = PromptDataModule(train_files=[prompts], prompts_per_step=4, rollouts_per_prompt=2)
    strategy = (CPUFSDPStrategy(auto_wrap_policy={Qwen3DecoderLayer}, state_dict_type="sharded")
                if devices > 1 else "auto")
    trainer = L.Trainer(accelerator="cpu", devices=devices, strategy=strategy, max_steps=2, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0)
    trainer.fit(module, data)
    units = sorted({type(m).__name__ for m in (module.student.lm_head, module.teacher.lm_head,
                                                module.student.model.layers[0], module.teacher.model.layers[0])})
    if trainer.global_rank == 0:
        with open(out, "w") as f:
            json.dump({"steps": module.record, "units": units}, f)


if __name__ == "__main__":
    main(int(sys.argv[1]), *sys.argv[2:])
