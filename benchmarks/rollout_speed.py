"""Rollout speed: Hugging Face ``generate`` (HFGenerate) and vLLM (VLLMEngine) side by side, one run.

Each model is measured in its own process (one in-process vLLM engine per process); the table goes to
stdout and to ``--out``. Needs an environment with vLLM (see the README's vLLM section)::

    OMP_NUM_THREADS=2 python benchmarks/rollout_speed.py --threads 2 --out benchmarks/results/rollout_speed_cpu.md

Models: the toy student (``toy``), and a randomly initialised model of Qwen3-0.6B's shape (``qwen3-0.6b``,
built from a config, nothing downloaded). Tokens/s counts generated tokens up to and including EOS.
vLLM's start-up (engine build + first weight load) and a weight sync (what every optimizer step adds)
are reported apart from generation.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass

import torch

QWEN3_0P6B = dict(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                  num_attention_heads=16, num_key_value_heads=8, head_dim=128, tie_word_embeddings=True,
                  max_position_embeddings=40960, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
                  bos_token_id=151643, eos_token_id=151645, pad_token_id=151643)


@dataclass(frozen=True)
class Workload:
    """Rollouts per call, prompt tokens, completion budget."""

    rollouts: int
    prompt_tokens: int
    max_new_tokens: int


WORKLOADS = {"toy": Workload(rollouts=128, prompt_tokens=20, max_new_tokens=64),
             "qwen3-0.6b": Workload(rollouts=16, prompt_tokens=64, max_new_tokens=32)}


def load(name: str):
    """(model, prompt ids ``[R, P]``, eos id, pad id, tokenizer vocabulary size)."""
    from transformers import AutoModelForCausalLM, Qwen3Config, Qwen3ForCausalLM

    work = WORKLOADS[name]
    if name == "toy":
        from tiplight import toy

        model = AutoModelForCausalLM.from_pretrained(toy.student_dir())
        vocab = model.config.vocab_size
    else:
        torch.manual_seed(0)
        model = Qwen3ForCausalLM(Qwen3Config(**QWEN3_0P6B))
        vocab = 151669  # Qwen3's tokenizer; the embedding is padded to 151936
    ids = torch.randint(3, min(vocab, 5000), (work.rollouts, work.prompt_tokens), generator=torch.Generator().manual_seed(0))
    return model.eval(), ids, model.config.eos_token_id, model.config.pad_token_id, vocab


def timed_generate(engine, model, ids, eos: int, pad: int, vocab: int, max_new: int) -> tuple[float, int]:
    from tiplight.rollout import Sampling

    start = time.perf_counter()
    out = engine.generate(model, ids, torch.ones_like(ids), sampling=Sampling(max_new_tokens=max_new), seed=0,
                          keys=torch.arange(len(ids)), eos_token_ids=[eos], pad_token_id=pad, vocab_size=vocab)
    return time.perf_counter() - start, int(out.completion_mask.sum())


def measure(name: str, threads: int) -> dict:
    """One model: HF generate, then vLLM (start-up, weight sync, generation), in this process."""
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{threads - 1}")
    torch.set_num_threads(threads)
    from tiplight.rollout import HFGenerate
    from tiplight.vllm_engine import VLLMEngine

    model, ids, eos, pad, vocab = load(name)
    work = WORKLOADS[name]
    row = {"model": name, "params_m": sum(p.numel() for p in model.parameters()) / 1e6, **work.__dict__}
    timed_generate(HFGenerate(), model, ids[:2], eos, pad, vocab, 4)  # warm-up
    row["hf_s"], row["hf_tokens"] = timed_generate(HFGenerate(), model, ids, eos, pad, vocab, work.max_new_tokens)
    engine = VLLMEngine(max_model_len=work.prompt_tokens + work.max_new_tokens + 8, kv_cache_gib=1)
    start = time.perf_counter()
    engine.sync(model)
    row["vllm_startup_s"] = time.perf_counter() - start
    engine.weights_updated()
    start = time.perf_counter()
    engine.sync(model)
    row["vllm_sync_s"] = time.perf_counter() - start
    timed_generate(engine, model, ids[:2], eos, pad, vocab, 4)  # warm-up
    row["vllm_s"], row["vllm_tokens"] = timed_generate(engine, model, ids, eos, pad, vocab, work.max_new_tokens)
    return row


def table(rows: list[dict], threads: int) -> str:
    lines = [f"Rollout speed on CPU ({threads} threads; torch {torch.__version__}); sampling at temperature 1.",
             "", "| model | params (M) | rollouts x (prompt + max new) | HF tok/s | vLLM tok/s | vLLM / HF "
             "| vLLM start-up (s) | weight sync (s) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        hf, vllm = r["hf_tokens"] / r["hf_s"], r["vllm_tokens"] / r["vllm_s"]
        lines.append(f"| {r['model']} | {r['params_m']:.1f} | {r['rollouts']} x ({r['prompt_tokens']} + "
                     f"{r['max_new_tokens']}) | {hf:.0f} | {vllm:.0f} | {vllm / hf:.2f}x | "
                     f"{r['vllm_startup_s']:.1f} | {r['vllm_sync_s']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", default=None, help="also write the table (markdown) here")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # child process: one model, JSON out
    args = parser.parse_args()
    if args.one:
        print("ROW " + json.dumps(measure(args.one, args.threads)), flush=True)
        return
    rows = []
    for name in args.models:
        out = subprocess.run([sys.executable, __file__, "--one", name, "--threads", str(args.threads)],
                             capture_output=True, text=True, env={**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"})
        found = [line[4:] for line in out.stdout.splitlines() if line.startswith("ROW ")]
        if not found:
            sys.exit(f"benchmark of {name} failed:\n{out.stderr[-3000:]}")
        rows.append(json.loads(found[0]))
    text = table(rows, args.threads)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
