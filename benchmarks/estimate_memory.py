"""Per-GPU memory estimate of a tiplight run, from its YAML alone: no weights, no GPU.

    python benchmarks/estimate_memory.py                       # every full config under configs/
    python benchmarks/estimate_memory.py --config configs/llama_70b_to_8b.yaml --config configs/strategy/ddp_lora.yaml
    python benchmarks/estimate_memory.py --placements --config configs/llama_70b_to_8b.yaml   # teacher placements

Each model named in the config is built on the meta device from its config.json (tests/fixtures for hub
ids, the directory itself for local/packaged models) to count parameters exactly. Then, per GPU:
- student states: weights (model.dtype, or 4-bit for QLoRA) + float32 gradients and two AdamW moments of
  the trainable parameters (all, or LoRA's), divided by the world size under FSDP/FSDP2;
- teacher weights: teacher_dtype, or 4/8-bit (bitsandbytes quantizes decoder linears; embeddings and
  lm_head stay 16-bit), divided by the world size under FSDP/FSDP2 unless quantized (never sharded);
- FSDP gathered units: two of the largest unit in bf16 (the one computing and the one prefetched);
- generation KV cache: generation_batch_size x (prompt + response) tokens, bf16 keys and values;
- activations of one micro-batch x (prompt + response) tokens, with gradient checkpointing (one stored
  hidden state per layer plus one layer's working set) and without (every layer's working set);
- teacher hidden states kept for all of a rank's micro-batches until the update ([R, C, d_t], bf16);
- logits: ``chunk_size`` positions x vocabulary in float32, ~6 live copies (student, teacher, softmaxes,
  and the loss's saved tensors).
Peak = persistent states + max(generation, update). A model of the allocator, not a measurement: expect
fragmentation and CUDA context (~1-3 GB) on top; benchmarks/gpu_check.sh measures the real peak.
"peak, teacher served" is the same run with the teacher behind ``vllm serve`` (``VLLMHidden``: no teacher
weights but its lm_head, bf16 hidden states on the wire); a config whose teacher is served is estimated so.

``--placements``: for the config's teacher, colocated / sharded (FSDP over the job) / served top-k / served
exact: the teacher memory each training GPU holds and the bytes moved per step. Sharded moves the teacher's
other shards to every rank once per micro-batch forward (FSDP all-gathers); served moves vLLM's answers: at
every token of every sequence (prompt included), top-k ``prompt_logprobs`` as JSON (sized by serialising
entries of that shape: ids below the vocabulary size, float32 log-probabilities as Python floats, a 4-character
decoded token), or final hidden states as base64 of ``wire_dtype``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
GB = 1024**3
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
SHARDED = ("FSDPStrategy", "FSDP2Strategy", "ModelParallelStrategy")


@dataclass(frozen=True)
class Arch:
    """What the estimate needs from one architecture (counted on the meta device)."""

    params: int
    linear: int  # parameters in the decoder's nn.Linear layers (what bitsandbytes quantizes)
    lora: int  # LoRA parameters per unit of rank on every decoder linear ("all-linear")
    largest_unit: int  # parameters of the largest FSDP unit (a layer, the embeddings or the lm_head)
    layers: int
    hidden: int
    intermediate: int
    kv_width: int  # num_key_value_heads * head_dim
    vocab: int


def config_dir(source: str) -> Path:
    """The directory holding ``source``'s config.json: local/packaged path, else tests/fixtures."""
    from tiplight.sources import resolve

    local = Path(resolve(source))
    if (local / "config.json").is_file():
        return local
    fixture = FIXTURES / source.replace("/", "--")
    if not (fixture / "config.json").is_file():
        raise SystemExit(f"no config.json for {source!r}: add {fixture}/config.json (see tests/fixtures/README.md).")
    return fixture


@cache
def arch(source: str) -> Arch:
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(config_dir(source))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    decoder = model.get_decoder()
    linears = [m for m in decoder.layers.modules() if isinstance(m, nn.Linear)]
    units = [*decoder.layers, decoder.embed_tokens, model.get_output_embeddings()]
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return Arch(
        params=sum(p.numel() for p in model.parameters()),
        linear=sum(m.weight.numel() for m in linears),
        lora=sum(m.in_features + m.out_features for m in linears),
        largest_unit=max(sum(p.numel() for p in u.parameters()) for u in units),
        layers=config.num_hidden_layers,
        hidden=config.hidden_size,
        intermediate=config.intermediate_size,
        kv_width=config.num_key_value_heads * head_dim,
        vocab=config.vocab_size,
    )


def weight_bytes(a: Arch, dtype: str, quantization) -> float:
    """Weights in memory: 16/32-bit, or bitsandbytes 4/8-bit linears (NF4 with double quant ~4.13 bits)."""
    if quantization is None:
        return a.params * BYTES[dtype]
    per_linear = 4.13 / 8 if quantization.bits == 4 else 1.0 + 4 / 4096  # 8-bit: one fp32 scale per row
    return a.linear * per_linear + (a.params - a.linear) * 2


def layer_working_set(a: Arch, tokens: int) -> float:
    """bf16 activations one decoder layer keeps for backward (attention via SDPA, no T^2 scores)."""
    return tokens * (6 * a.hidden + 2 * a.kv_width + 4 * a.intermediate) * 2


def estimate(config) -> dict[str, float | str]:
    """Per-GPU bytes of each part for one parsed config (see the module docstring)."""
    trainer, model, data = config.trainer, config.model, config.data.init_args
    strategy = (trainer.strategy.class_path if hasattr(trainer.strategy, "class_path") else str(trainer.strategy))
    strategy = strategy.rsplit(".", 1)[-1]
    devices = trainer.devices if isinstance(trainer.devices, int) and trainer.devices > 0 else 1
    world = devices * (trainer.num_nodes or 1)
    shards = world if strategy in SHARDED else 1
    served = served_teacher(model.teacher)
    s = arch(model.student)
    t = arch(served["head"]) if served and served.get("head") else (None if served else arch(model.teacher))
    trainable = model.lora.r * s.lora if model.lora else s.params
    student_w = weight_bytes(s, model.dtype, model.student_quantization)
    student_states = (student_w if model.lora else 0) + ((0 if model.lora else student_w) + trainable * 12) / shards
    teacher_q = model.teacher_quantization
    if served:  # no teacher weights in training but the exact path's lm_head
        teacher = t.vocab * t.hidden * BYTES[served.get("head_dtype", "float32")] if t else 0
    else:
        teacher = weight_bytes(t, model.teacher_dtype or model.dtype, teacher_q) / (1 if teacher_q else shards)
    local_unit = 0 if teacher_q or served else t.largest_unit
    gathered = 2 * 2 * max(s.largest_unit, local_unit) if shards > 1 else 0
    rollouts = data.prompts_per_step * data.rollouts_per_prompt // world
    length = data.max_prompt_tokens + model.sampling.max_new_tokens
    kv = min(model.memory.generation_batch_size, rollouts) * length * s.layers * 2 * s.kv_width * 2
    micro = model.memory.micro_batch_size or rollouts
    tokens = micro * length
    act_ckpt = tokens * s.hidden * 2 * s.layers + layer_working_set(s, tokens)
    act_full = s.layers * layer_working_set(s, tokens)
    row = served_row_bytes(served, t) if served else t.hidden * 2  # bytes per position kept until the update
    teacher_hidden = rollouts * model.sampling.max_new_tokens * row
    logits = model.memory.chunk_size * max(s.vocab, t.vocab if t else 0) * 4 * 6
    persistent = student_states + teacher + gathered
    update = teacher_hidden + logits + (act_ckpt if model.memory.gradient_checkpointing else act_full)
    update_other = teacher_hidden + logits + (act_full if model.memory.gradient_checkpointing else act_ckpt)
    act = act_ckpt if model.memory.gradient_checkpointing else act_full
    if served:
        served_peak = persistent + max(kv, update)
    else:  # the same run with its teacher served exactly (VLLMHidden, bf16 on the wire, bf16 head)
        served_peak = (student_states + t.vocab * t.hidden * 2 + (2 * 2 * s.largest_unit if shards > 1 else 0)
                       + max(kv, teacher_hidden + logits + act))
    return {
        "strategy": f"{strategy} x{world}", "student": f"{s.params / 1e9:.2f}B ({trainable / 1e9:.3g}B trained)",
        "teacher": served["name"] if served else f"{t.params / 1e9:.2f}B" + (f" {teacher_q.bits}-bit" if teacher_q else ""),
        "student states": student_states, "teacher weights": teacher, "gathered units": gathered,
        "generation KV": kv, "activations (ckpt)": act_ckpt, "activations (no ckpt)": act_full,
        "teacher hidden": teacher_hidden, "logits chunk": logits,
        "peak": persistent + max(kv, update), "peak, other ckpt setting": persistent + max(kv, update_other),
        "peak, teacher served": served_peak,
    }


def served_teacher(teacher) -> dict | None:
    """A served teacher's settings (``name`` its class, plus its init_args), or None for a local one."""
    if teacher is None or isinstance(teacher, str):
        return None
    name = str(teacher.class_path).rsplit(".", 1)[-1]
    return {"name": name, **{k: v for k, v in vars(teacher.init_args).items() if v is not None}}


def served_row_bytes(served: dict, t: Arch | None) -> int:
    """Bytes per completion position the training side keeps from a served teacher until the update."""
    if served["name"] == "VLLMTopK":
        return (1 + 2 * (served.get("k", 64) + 1)) * 4  # TopKHead's packed float32 row
    return t.hidden * BYTES[served.get("wire_dtype", "float32")]


def topk_json_bytes(k: int, vocab: int, token_chars: int = 4, seed: int = 0) -> float:
    """Bytes per position of vLLM's ``prompt_logprobs`` JSON with ``k + 1`` entries, in its answer's compact
    layout ``{"id":{"logprob":float,"rank":int,"decoded_token":str},...}``, from serialised entries: ids below
    ``vocab``, ranks 1..k and one of the sampled token's below ``vocab``, float32 log-probabilities written as
    Python floats, ``token_chars``-character tokens."""
    rng = random.Random(seed)
    ranks = [*range(1, k + 1), None]  # the top k, then the sampled token's own rank
    entries = [{str(rng.randrange(vocab)): {"logprob": torch.tensor(-rng.expovariate(0.3)).item(),
                                            "rank": rank or rng.randrange(k + 1, vocab), "decoded_token": "a" * token_chars}
                for rank in ranks} for _ in range(64)]
    return sum(len(json.dumps(e, separators=(",", ":"))) + 1 for e in entries) / len(entries)  # + "," between


def placements(config, k: int = 64) -> list[tuple[str, dict]]:
    """Teacher memory per training GPU and bytes moved per step for each placement of ``config``'s teacher
    (a local one: its architecture gives the sizes), at the config's shapes."""
    trainer, model, data = config.trainer, config.model, config.data.init_args
    devices = trainer.devices if isinstance(trainer.devices, int) and trainer.devices > 0 else 1
    world = devices * (trainer.num_nodes or 1)
    t = arch(model.teacher)
    rollouts, completion = data.prompts_per_step * data.rollouts_per_prompt, model.sampling.max_new_tokens
    positions = rollouts * (data.max_prompt_tokens + completion)  # vLLM answers at every token
    micro_batches = -(-rollouts // world // (model.memory.micro_batch_size or rollouts // world))
    weights = t.params * 2  # bf16
    kept = rollouts // world * completion  # completion positions a rank keeps until the update
    json_bytes = topk_json_bytes(k, t.vocab)
    rows = {
        "colocated": (weights, kept * t.hidden * 2, 0.0),
        f"sharded (FSDP x{world})": (weights / world + 2 * 2 * t.largest_unit, kept * t.hidden * 2,
                                     world * micro_batches * weights * (world - 1) / world),
        f"served top-{k} (VLLMTopK)": (0.0, kept * (1 + 2 * (k + 1)) * 4, positions * json_bytes),
        "served exact (VLLMHidden, bf16)": (t.vocab * t.hidden * 2, kept * t.hidden * 2,
                                           positions * (t.hidden * 2 * 4 / 3)),
    }
    tokens = rollouts * completion
    return [(name, {"teacher weights / GPU": w, "teacher tensors / GPU": x, "moved / step": moved,
                    "moved / completion token": f"{moved / tokens / 1024:.1f} KiB"}) for name, (w, x, moved) in rows.items()]


def parse(files: list[str]):
    """The config LightningCLI would run, parsed by tiplight's own parser (nothing instantiated)."""
    from tiplight.cli import TiplightCLI

    class ParseOnly(TiplightCLI):
        def instantiate_classes(self) -> None:  # parse only
            pass

        def instantiate_trainer(self, **kwargs):
            return None

    args = [a for f in files for a in ("--config", f)]
    return ParseOnly(args=args, run=False).config


def table(rows: list[tuple[str, dict]], first: str = "config") -> str:
    columns = list(rows[0][1])
    lines = [f"| {first} | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, row in rows:
        cells = [f"{v / GB:.1f} GB" if isinstance(v, float | int) else v for v in row.values()]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", action="append", help="YAML files layered as on the tiplight command line")
    parser.add_argument("--placements", action="store_true", help="teacher placements of the --config run")
    parser.add_argument("--k", type=int, default=64, help="top-k of the served top-k placement")
    args = parser.parse_args(argv)
    if args.placements:
        config = parse(args.config or [str(ROOT / "configs" / "llama_70b_to_8b.yaml")])
        print(table(placements(config, args.k), "teacher placement"))
        return
    runs = [args.config] if args.config else [[str(p)] for p in sorted((ROOT / "configs").glob("*.yaml"))]
    rows = [(" + ".join(Path(f).name for f in files), estimate(parse(files))) for files in runs]
    print(table(rows))


if __name__ == "__main__":
    sys.exit(main())
