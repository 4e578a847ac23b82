"""A short toy fit whose rollouts and evaluations come from vLLM: the student's accuracy rises."""

from __future__ import annotations

import torch
from engines import needs_vllm, vllm_engine
from helpers import make_trainer

from tiplight.args import Optimization
from tiplight.data import PromptDataModule
from tiplight.evals import MathEvalCallback
from tiplight.module import DistillModule
from tiplight.rollout import Sampling
from tiplight.selection import SoftOrTopK

pytestmark = needs_vllm
STEPS = 30


def test_toy_fit_with_vllm_rollouts_raises_accuracy(tmp_path):
    module = DistillModule(
        student="tiplight:toy/assets/student", teacher="tiplight:toy/assets/teacher",
        selector=SoftOrTopK(retain=0.5), engine=vllm_engine(), sampling=Sampling(max_new_tokens=64),
        optimization=Optimization(lr_schedule="constant"), optimizer=lambda p: torch.optim.AdamW(p, lr=3e-4, weight_decay=0.0),
    )  # fmt: skip
    data = PromptDataModule(train_files=["toy_train"], prompt_field="prompt", chat_template=False,
                            max_prompt_tokens=64, prompts_per_step=8, rollouts_per_prompt=2, val_size=8)
    evals = MathEvalCallback(benchmarks=["toy"], num_samples=1, temperature=0.0, max_new_tokens=64,
                             instruction=None, at_fit_start=True, at_fit_end=True, at_validation=False,
                             limit=100, batch_size=100, grade_workers=1)
    make_trainer(tmp_path, max_steps=STEPS, callbacks=[evals]).fit(module, data)
    before, after = (evals.results[m]["toy"]["mean@1"] for m in ("fit_start", "fit_end"))
    print(f"toy accuracy with vLLM rollouts: {before:.2f} -> {after:.2f} in {STEPS} steps")
    assert after >= before + 0.05
