"""One GPU check of the sharded, quantized path, on random-init Qwen3 shapes (no download).

    python benchmarks/gpu_check.py build DIR            # random-init models + a 151,669-token tokenizer
    python benchmarks/gpu_check.py run DIR RETAIN OUT   # 1 step under FSDPStrategy, peak memory -> OUT (JSON)

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

    from tiplight.data import PromptDataModule
    from tiplight.models import Quantization
    from tiplight.module import DistillModule
    from tiplight.rollout import Sampling
    from tiplight.selection import AllTokens, SoftOrTopK

    module = DistillModule(
        student=str(root / "student"), teacher=str(root / "teacher"),
        selector=AllTokens() if retain >= 1 else SoftOrTopK(retain), dtype="float32", teacher_dtype="bfloat16",
        teacher_quantization=Quantization(bits=4), gradient_checkpointing=True, micro_batch_size=4,
        sampling=Sampling(max_new_tokens=1024), chunk_size=512, generation_batch_size=8, lr_schedule="constant",
        grad_clip=None,  # FSDPStrategy refuses Lightning's norm clipping until module.update uses parallel.clip_grad_norm
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


if __name__ == "__main__":
    if sys.argv[1] == "build":
        build(Path(sys.argv[2]))
    else:
        run(Path(sys.argv[2]), float(sys.argv[3]), Path(sys.argv[4]))
