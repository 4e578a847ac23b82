"""The rollout sampler's cost per decoding step: ``CounterSampler`` as ``generate`` calls it, against plain
softmax + ``torch.multinomial`` (what ``do_sample=True`` does, with no reproducibility per rollout)::

    OMP_NUM_THREADS=1 python benchmarks/sampler_speed.py --rows 16 --vocab 151936

Measures the ``tiplight`` that Python imports (set ``PYTHONPATH`` to a checkout to measure another
revision); its git revision heads the table. Median of ``--steps`` calls after ``--warmup``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import torch

import tiplight
from tiplight.rollout import CounterSampler, Sampling


def revision() -> str:
    """Git revision (short hash, ``+dirty`` when modified) of the imported ``tiplight``."""
    root = Path(tiplight.__file__).resolve().parent.parent
    out = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty=+dirty"], capture_output=True,
                         text=True)
    return f"{root} @ {out.stdout.strip() or 'unknown'}"


def median_ms(step: Callable[[int], torch.Tensor], steps: int, warmup: int) -> float:
    """Median milliseconds of ``step(position)`` (CUDA synchronised)."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else lambda: None
    times = []
    for position in range(warmup + steps):
        sync()
        start = time.perf_counter()
        step(position)
        sync()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times[warmup:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    scores = torch.randn(args.rows, args.vocab, device=args.device) * 3  # [R, V]
    prompt = torch.zeros(args.rows, 8, dtype=torch.long, device=args.device)  # [R, P]
    keys = torch.arange(args.rows, device=args.device)
    rows = {}
    for name, sampling in [("T=1", Sampling()), ("T=0.7 top_k=50 top_p=0.95", Sampling(0.7, 0.95, 50))]:
        sampler = CounterSampler(sampling, 0, keys, prompt.shape[1], args.vocab)
        rows[f"CounterSampler {name}"] = median_ms(
            lambda pos, s=sampler: s(torch.cat([prompt, prompt[:, :1].expand(-1, pos)], 1), scores),
            args.steps, args.warmup)
    rows["softmax + multinomial T=1 (not reproducible per rollout)"] = median_ms(
        lambda pos: torch.multinomial(scores.softmax(-1), 1), args.steps, args.warmup)
    print(f"tiplight: {revision()}; logits [{args.rows}, {args.vocab}] float32 on {args.device}, "
          f"{torch.get_num_threads()} thread(s), median of {args.steps} steps\n")
    print("| sampler | ms per decoding step |\n|---|---|")
    for name, ms in rows.items():
        print(f"| {name} | {ms:.1f} |")


if __name__ == "__main__":
    main()
