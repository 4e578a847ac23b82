"""One GPU check of the sharded, quantized path, on random-init Qwen3 shapes (no download).

    python benchmarks/gpu_check.py build DIR            # random-init models + a 151,669-token tokenizer
    python benchmarks/gpu_check.py run DIR RETAIN OUT   # 1 step under FSDPStrategy, peak memory -> OUT (JSON)
    python benchmarks/gpu_check.py grads OUT            # closed-form step gradients vs naive on the GPU -> OUT

Student: Qwen3-1.7B shapes with untied embeddings (FSDP1 refuses a tied student), fp32 master weights,
bf16-mixed. Teacher: Qwen3-4B shapes loaded 4-bit NF4. Driven by benchmarks/gpu_check.sh.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"
VOCAB = 151669  # Qwen3's tokenizer; model rows are 151936


def build(out: Path) -> None:
    """Random-init student and teacher directories sharing a large WordLevel tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

    chars = sorted(set(chr(c) for c in range(32, 127)) | {"\n"})
    names = ["<pad>", "<s>", "</s>", *chars]
    vocab = {t: i for i, t in enumerate(names + [f"<t{i}>" for i in range(VOCAB - len(names))])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    for name, fixture, tie in (("student", "Qwen--Qwen3-1.7B", False), ("teacher", "Qwen--Qwen3-4B", True)):
        config = AutoConfig.from_pretrained(FIXTURES / fixture)
        config.tie_word_embeddings, config.pad_token_id, config.bos_token_id, config.eos_token_id = tie, 0, 1, 2
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        model.save_pretrained(out / name)
        fast.save_pretrained(out / name)


def run(root: Path, retain: float, out: Path) -> None:
    import lightning as L
    from lightning.pytorch.strategies import FSDPStrategy
    from transformers.models.qwen3.modeling_qwen3 import Qwen3DecoderLayer

    from tiplight.args import Memory, Optimization
    from tiplight.data import PromptDataModule
    from tiplight.models import Quantization
    from tiplight.module import DistillModule
    from tiplight.rollout import Sampling
    from tiplight.selection import AllTokens, SoftOrTopK

    module = DistillModule(
        student=str(root / "student"), teacher=str(root / "teacher"),
        selector=AllTokens() if retain >= 1 else SoftOrTopK(retain), dtype="float32", teacher_dtype="bfloat16",
        teacher_quantization=Quantization(bits=4), sampling=Sampling(max_new_tokens=1024),
        memory=Memory(gradient_checkpointing=True, micro_batch_size=4, chunk_size=512, generation_batch_size=8),
        # FSDPStrategy refuses Lightning's norm clipping until module.update uses parallel.clip_grad_norm
        optimization=Optimization(lr_schedule="constant", grad_clip=None),
    )
    data = PromptDataModule(train_files=["math_train"], chat_template=False, max_prompt_tokens=512,
                            prompts_per_step=2, rollouts_per_prompt=4)
    strategy = FSDPStrategy(auto_wrap_policy={Qwen3DecoderLayer}, state_dict_type="sharded")
    trainer = L.Trainer(accelerator="gpu", devices=1, strategy=strategy, precision="bf16-mixed", max_steps=1,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False, limit_val_batches=0)
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    trainer.fit(module, data)
    result = {
        "retain": retain, "peak_allocated_gb": torch.cuda.max_memory_allocated() / 2**30,
        "peak_reserved_gb": torch.cuda.max_memory_reserved() / 2**30, "seconds": time.perf_counter() - start,
        "loss": float(trainer.callback_metrics.get("train/loss", float("nan"))),
        "kept_fraction": float(trainer.callback_metrics.get("train/kept_fraction", float("nan"))),
        "student_units": type(module.student.model.layers[0]).__name__,
        "teacher_linear": type(module.teacher.model.layers[0].mlp.up_proj).__name__,
        "device": torch.cuda.get_device_name(),
    }
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


def grads(out: Path) -> None:
    """tiplight's step gradient (closed form from the statistics pass, CUDA kernels, in-place log-softmax)
    against the naive full-logit one, per student parameter: Qwen3-0.6B student, Qwen3-1.7B teacher shapes
    (random init), 2 rollouts of 64 + 512 tokens, every token kept, full fine-tuning and LoRA, float32 (must
    agree: relative error < 1e-3) and bfloat16 (reported)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from step_memory import Config

    rows = []
    for dtype in ("float32", "bfloat16"):
        for lora in (False, True):
            cfg = Config("tiplight", 1.0, "qwen3-0.6b", "qwen3-1.7b", rollouts=2, prompt=64, completion=512,
                         chunk_size=256, device="cuda", dtype=dtype, lora=lora)
            error = _max_relative_error(cfg)
            rows.append({"dtype": dtype, "lora": lora, "max_relative_error": error,
                         "ok": error < 1e-3 if dtype == "float32" else None})
            print(json.dumps(rows[-1]), flush=True)
    out.write_text(json.dumps(rows, indent=2))


def _max_relative_error(cfg) -> float:
    """max over trained parameters of |g_tiplight - g_naive| / |g_naive| for one step of ``cfg``."""
    from step_memory import Phases, build_model, full_logit_step, naive_loss, tiplight_step

    from tiplight.models import LoRA, add_lora

    dtype = getattr(torch, cfg.dtype)
    student = build_model(cfg.student, 0, cfg.device, dtype)
    teacher = build_model(cfg.teacher, 1, cfg.device, dtype).requires_grad_(False)
    if cfg.lora:
        student = add_lora(student, LoRA(), quantized=False)
        for name, p in student.named_parameters():
            if "lora_B" in name:  # peft starts B at 0: make the adapter (and A's gradient) matter
                torch.nn.init.normal_(p, std=0.02)
    vocab = student.config.vocab_size
    ids = torch.randint(vocab, (cfg.rollouts, cfg.prompt + cfg.completion), device=cfg.device,
                        generator=torch.Generator(cfg.device).manual_seed(0))
    mask, valid = torch.ones_like(ids), torch.ones(cfg.rollouts, cfg.completion, dtype=torch.bool, device=cfg.device)
    steps = (lambda t: tiplight_step(student, teacher, ids, mask, valid, cfg, vocab, t),
             lambda t: full_logit_step(student, teacher, ids, mask, valid, cfg, naive_loss, t))
    got, want = [], []
    for step, found in zip(steps, (got, want)):
        student.zero_grad(set_to_none=True)
        step(Phases(cfg.device))
        found += [p.grad.float().clone() for p in student.parameters() if p.requires_grad]
    return max(float((a - b).norm() / b.norm().clamp(min=1e-30)) for a, b in zip(got, want, strict=True))


if __name__ == "__main__":
    if sys.argv[1] == "build":
        build(Path(sys.argv[2]))
    elif sys.argv[1] == "grads":
        grads(Path(sys.argv[2]))
    else:
        run(Path(sys.argv[2]), float(sys.argv[3]), Path(sys.argv[4]))
