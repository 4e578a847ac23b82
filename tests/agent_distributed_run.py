"""Two OPD steps on an environment (multi-turn episodes) under DDP, writing every episode by rollout key,
the steps' kept sets and losses, and the final weights.

Used by test_envs_training.py: ``python tests/agent_distributed_run.py DEVICES TEACHER STUDENT OUT``.
Lightning re-launches this script once per extra rank.
"""

from __future__ import annotations

import json
import sys

import lightning as L
import torch
from agent_fixtures import EveryTurnTool
from helpers import Recording

import tiplight.module
from tiplight.args import Optimization
from tiplight.envs import EpisodeDataModule, sample_episodes
from tiplight.rollout import Sampling
from tiplight.selection import SoftOrTopK

EPISODES: dict[int, list] = {}


def recording_episodes(*args, **kwargs):
    out = sample_episodes(*args, **kwargs)
    batch = args[4]
    for key, ids, sampled, mask in zip(batch["keys"].tolist(), out.input_ids, out.sampled_mask, out.attention_mask):
        real = mask.bool()
        EPISODES[key] = [ids[real].tolist(), sampled[real].tolist()]
    return out


def main(devices: int, teacher: str, student: str, out: str) -> None:
    tiplight.module.sample_episodes = recording_episodes
    module = Recording(student=student, teacher=teacher, selector=SoftOrTopK(0.5),
                       optimization=Optimization(lr_schedule="constant"),
                       environment=EveryTurnTool(max_turns=3, max_tokens=256), sampling=Sampling(max_new_tokens=6),
                       optimizer=lambda p: torch.optim.SGD(p, lr=0.5))
    data = EpisodeDataModule(prompts_per_step=4, rollouts_per_prompt=2)
    trainer = L.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto", max_steps=2,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, data)
    episodes = [None] * trainer.world_size
    if trainer.world_size > 1:
        torch.distributed.all_gather_object(episodes, EPISODES)
    else:
        episodes = [EPISODES]
    merged = {str(k): v for part in episodes for k, v in part.items()}
    params = {k: v.detach().double().sum().item() for k, v in module.student.state_dict().items()}
    if trainer.global_rank == 0:
        with open(out, "w") as f:
            json.dump({"episodes": dict(sorted(merged.items())), "steps": module.record, "params": params}, f)


if __name__ == "__main__":
    main(int(sys.argv[1]), *sys.argv[2:])
