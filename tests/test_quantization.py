"""bitsandbytes on CPU: 4-bit and 8-bit teachers and a QLoRA student train through the module, configured
as in YAML (``Quantization``). Skipped, with the reason, where bitsandbytes cannot run on this CPU."""

from __future__ import annotations

import math
from functools import cache

import lightning as L
import pytest
import torch
from helpers import Recording

from tiplight.data import PromptDataModule
from tiplight.models import LoRA, Quantization
from tiplight.rollout import Sampling
from tiplight.selection import SoftOrTopK


@cache
def cpu_support() -> str | None:
    """None when bitsandbytes runs 4-bit and 8-bit layers on this CPU, else why not."""
    try:
        import bitsandbytes as bnb
    except ImportError as error:
        return f"bitsandbytes is not installed ({error})"
    try:
        x = torch.randn(2, 64, dtype=torch.bfloat16)
        bnb.nn.Linear4bit(64, 64, compute_dtype=torch.bfloat16, quant_type="nf4").to("cpu")(x)
        bnb.nn.Linear8bitLt(64, 64, has_fp16_weights=False).to("cpu")(x.half())
    except Exception as error:  # backend missing or unsupported instruction set
        return f"bitsandbytes {bnb.__version__} cannot run on this CPU: {type(error).__name__}: {error}"
    return None


pytestmark = pytest.mark.skipif(cpu_support() is not None, reason=str(cpu_support()))


def fit(tiny, prompts_file, **kwargs) -> Recording:
    module = Recording(student=tiny["student"], teacher=tiny["teacher"], selector=SoftOrTopK(0.5),
                    lr_schedule="constant", sampling=Sampling(max_new_tokens=6), dtype="bfloat16",
                    teacher_dtype="bfloat16", optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2), **kwargs)
    data = PromptDataModule(train_files=[prompts_file], prompts_per_step=2, rollouts_per_prompt=2)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, data)
    return module


def linear_types(model: torch.nn.Module) -> set[str]:
    return {type(m).__name__ for m in model.modules() if "Linear" in type(m).__name__}


@pytest.mark.parametrize(("bits", "layer"), [(4, "Linear4bit"), (8, "Linear8bitLt")])
def test_quantized_teacher_trains_the_student(tiny, prompts_file, bits, layer):
    module = fit(tiny, prompts_file, teacher_quantization=Quantization(bits=bits))
    assert layer in linear_types(module.teacher) and module.teacher.is_quantized
    assert not any(p.requires_grad for p in module.teacher.parameters())
    assert len(module.losses) == 1 and all(math.isfinite(x) and x > 0 for x in module.losses)


def test_qlora_student_trains_only_its_adapter(tiny, prompts_file):
    before = {}

    class Snapshot(L.Callback):
        def on_train_start(self, trainer, pl_module):
            before.update({k: v.detach().clone() for k, v in pl_module.student.named_parameters() if v.requires_grad})

    module = Recording(student=tiny["student"], teacher=tiny["teacher"], selector=SoftOrTopK(0.5),
                    lr_schedule="constant", sampling=Sampling(max_new_tokens=6), dtype="bfloat16",
                    student_quantization=Quantization(bits=4), lora=LoRA(r=4, alpha=8),
                    teacher_quantization=Quantization(bits=4),
                    optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2))
    data = PromptDataModule(train_files=[prompts_file], prompts_per_step=2, rollouts_per_prompt=2)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        callbacks=[Snapshot()])
    trainer.fit(module, data)
    assert "Linear4bit" in linear_types(module.student)
    trainable = {k: v for k, v in module.student.named_parameters() if v.requires_grad}
    assert trainable and all("lora_" in k for k in trainable)
    assert any(not torch.equal(before[k], v) for k, v in trainable.items())
    assert all(math.isfinite(x) for x in module.losses)


def test_yaml_quantization_builds_a_bitsandbytes_config():
    config = Quantization(bits=4, quant_type="nf4", compute_dtype="bfloat16", double_quant=True).to_config()
    assert config.load_in_4bit and config.bnb_4bit_quant_type == "nf4"
    assert config.bnb_4bit_compute_dtype == torch.bfloat16 and config.bnb_4bit_use_double_quant
    assert Quantization(bits=8).to_config().load_in_8bit
