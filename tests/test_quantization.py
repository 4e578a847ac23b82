"""bitsandbytes on CPU: 4-bit and 8-bit teachers and a QLoRA student train through the module, configured
as in YAML (``Quantization``), with layer widths bitsandbytes' CPU 4-bit kernel accepts (multiples of 64 in,
32 out) and at a real model's width; a width it cannot pack is one sentence at start-up. Skipped, with the
reason, where bitsandbytes cannot run on this CPU."""

from __future__ import annotations

import math
from functools import cache

import lightning as L
import pytest
import torch
from conftest import MODEL_VOCAB
from helpers import Recording
from test_cli import write_config
from test_cli_review import run_main

from tiplight.args import Optimization
from tiplight.data import PromptDataModule
from tiplight.models import LoRA, ModelSource, Quantization, cpu_4bit_blocks, load_model
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
packs = pytest.mark.skipif(cpu_4bit_blocks() is None, reason="this bitsandbytes does not pack 4-bit weights on this CPU")

def fit(tiny, prompts_file, **kwargs) -> Recording:
    module = Recording(student=tiny["student"], teacher=tiny["teacher"], selector=SoftOrTopK(0.5),
                    optimization=Optimization(lr_schedule="constant"), sampling=Sampling(max_new_tokens=6), dtype="bfloat16",
                    teacher_dtype="bfloat16", optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2), **kwargs)
    data = PromptDataModule(train_files=[prompts_file], prompts_per_step=2, rollouts_per_prompt=2)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, data)
    return module


def linear_types(model: torch.nn.Module) -> set[str]:
    return {type(m).__name__ for m in model.modules() if "Linear" in type(m).__name__}


@pytest.mark.parametrize(("bits", "layer"), [(4, "Linear4bit"), (8, "Linear8bitLt")])
@pytest.mark.parametrize("teacher", ["teacher", "qwen3_0p6b_width"])
def test_quantized_teacher_trains_the_student(packable, prompts_file, bits, layer, teacher):
    pair = {"student": packable["student"], "teacher": packable[teacher]}
    module = fit(pair, prompts_file, teacher_quantization=Quantization(bits=bits))
    assert layer in linear_types(module.teacher) and module.teacher.is_quantized
    assert not any(p.requires_grad for p in module.teacher.parameters())
    assert len(module.losses) == 1 and all(math.isfinite(x) and x > 0 for x in module.losses)


def test_qlora_student_trains_only_its_adapter(packable, prompts_file):
    tiny = packable
    before = {}

    class Snapshot(L.Callback):
        def on_train_start(self, trainer, pl_module):
            before.update({k: v.detach().clone() for k, v in pl_module.student.named_parameters() if v.requires_grad})

    module = Recording(student=tiny["student"], teacher=tiny["teacher"], selector=SoftOrTopK(0.5),
                    optimization=Optimization(lr_schedule="constant"), sampling=Sampling(max_new_tokens=6), dtype="bfloat16",
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


@packs
def test_packed_cpu_4bit_kernel_at_a_real_width_computes_the_dequantized_model(packable):
    """nf4 at Qwen3-0.6B's widths, in eval mode as the teacher runs (bitsandbytes then repacks each weight for
    its CPU kernel): the logits equal those of the same model with every weight replaced by its dequantized
    4-bit value, up to bfloat16 rounding."""
    from bitsandbytes.functional import dequantize_4bit

    path = packable["qwen3_0p6b_width"]
    quantized = load_model(ModelSource(path, "bfloat16", Quantization(bits=4)), "model.teacher", "cpu").eval()
    reference = load_model(ModelSource(path, "bfloat16"), "model.teacher").eval()
    layers = {name: m for name, m in quantized.named_modules() if type(m).__name__ == "Linear4bit"}
    assert len(layers) == 7  # q, k, v, o, gate, up, down of the one decoder layer
    with torch.no_grad():
        for name, layer in layers.items():
            reference.get_submodule(name).weight.copy_(dequantize_4bit(layer.weight.data, layer.weight.quant_state))
    ids = torch.randint(3, MODEL_VOCAB, (2, 12))
    with torch.inference_mode():
        want, got = (m(ids).logits.float() for m in (reference, quantized))
    assert all(getattr(m.weight.quant_state, "packing_format_for_cpu", True) for m in layers.values())
    assert torch.isfinite(got).all()
    assert (got - want).abs().max() <= 0.02 * want.abs().max()


@packs
@pytest.mark.parametrize("field", ["teacher", "student"])
def test_a_width_bitsandbytes_cannot_pack_is_one_sentence_at_start_up(tiny, prompts_file, tmp_path, capsys, field):
    """The tiny models' 32- and 48-wide layers once failed inside bitsandbytes 0.50 (``N must be divisible by
    block_n``, then a reshape error) at the first forward; now the command refuses before loading weights."""
    config = write_config(tmp_path / "run.yaml", tiny, prompts_file)
    extra = ["--model.lora.r", "4"] if field == "student" else []
    code, _, err = run_main(["fit", "--config", str(config), f"--model.{field}_quantization.bits", "4", *extra],
                            capsys)
    assert code == 2 and "Traceback" not in err and "block_n" not in err, err
    [sentence] = [line for line in err.splitlines() if line.startswith("tiplight: error:")]
    assert f"model.{field}_quantization.bits=4" in sentence and "divisible by 64" in sentence and "by 32" in sentence
    assert "model.layers.0." in sentence and "use bits 8" in sentence


def lora_gradients(packable, generate_first: bool) -> dict[str, torch.Tensor]:
    from tiplight.models import load_student

    source = ModelSource(packable["student"], "bfloat16", Quantization(bits=4))
    student = load_student(source, LoRA(r=4, alpha=8), seed=0, device="cpu")
    ids = torch.randint(3, MODEL_VOCAB, (2, 10), generator=torch.Generator().manual_seed(0))
    if generate_first:  # what a rollout does to the student: eval mode, no grad
        student.eval()
        with torch.no_grad():
            student(ids)
    student.train()
    student(ids).logits.float().square().mean().backward()
    return {k: p.grad.clone() for k, p in student.named_parameters() if p.requires_grad}


def test_a_rollout_does_not_change_the_qlora_students_gradient(packable):
    """bitsandbytes 0.50 repacks a 4-bit weight for its CPU kernel at the first eval-mode forward without grad
    (a rollout) and keeps it packed; that kernel has no autograd, so every later training step silently lost the
    gradient through the frozen base weights (the lower layers' LoRA gradients were off by up to 100%). The student's
    4-bit layers never repack; the teacher's (inference only) still do."""
    want, got = lora_gradients(packable, generate_first=False), lora_gradients(packable, generate_first=True)
    assert want.keys() == got.keys() and len(want) > 4
    for name in want:
        torch.testing.assert_close(got[name], want[name], msg=name)
