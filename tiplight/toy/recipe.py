"""The build recipe of the toy world: ``tiplight toy build --out DIR [--budget F] [--seed N]``.

Teacher and student share the tokenizer and the architecture (a 0.86M-parameter Qwen3). They differ only
in their supervised budget: the teacher trains until it is near-perfect, the student stops early. An
under-trained student is weaker for a reason distillation can fix (it has the capacity, it lacks the
training signal), the case on-policy distillation is meant to repair. Whether a few CPU minutes of OPD
repair it depends on the OPD learning rate; see ``assets/BUILD.md``.

``--world overconfident`` builds the second world (``toy.planted``): a student trained longer, on solutions
that forget every carry, so it is confident and wrong where a carry is due, beside a true teacher
(``--teacher DIR`` reuses one instead of training it); see ``assets_overconfident/BUILD.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from tiplight.toy.evaluate import accuracy
from tiplight.toy.planted import load_planted_problems
from tiplight.toy.task import HELD_OUT, load_problems
from tiplight.toy.tokenizer import build_tokenizer, save_tokenizer
from tiplight.toy.train import ModelSpec, SFTSpec, make_model, train_sft

MODEL = ModelSpec(hidden_size=128, num_layers=4, num_heads=4, intermediate_size=384)
TEACHER_SFT = SFTSpec(steps=2000, batch_size=32, lr=3e-3, warmup=100)
# The student stops early at a constant learning rate: an annealed student (cosine to 5%) sat in a sharp
# minimum that OPD's fresh AdamW state only knocked it out of (0.38 -> 0.11 at lr 1e-3, flat at 1e-4).
STUDENT_SFT = SFTSpec(steps=500, batch_size=32, lr=3e-3, warmup=100, min_lr_frac=1.0)
# The overconfident student trains twice as long on the planted working, so that the forgotten carry is
# learned as firmly as the rest; a constant learning rate for the reason above.
OVERCONFIDENT_SFT = SFTSpec(steps=1000, batch_size=32, lr=3e-3, warmup=100, min_lr_frac=1.0)
TRAIN_PROBLEMS = 20_000  # the default train split; the teacher cycles over it about three times


def scaled(spec: SFTSpec, budget: float) -> SFTSpec:
    """``spec`` with its steps (and warm-up) scaled by ``budget``; at least 2 steps."""
    steps = max(2, round(spec.steps * budget))
    return replace(spec, steps=steps, warmup=max(1, min(spec.warmup, steps // 4)))


def _train_one(name: str, spec: SFTSpec, out: Path, train: list[dict], seed: int) -> dict:
    """Train one model from scratch and save it (with the tokenizer) as an HF directory ``out / name``."""
    tokenizer = build_tokenizer()
    model = make_model(MODEL, tokenizer, seed=seed)
    print(f"[toy build] {name}: {sum(p.numel() for p in model.parameters()):,} params, {spec.steps} steps")
    stats = train_sft(model, train, tokenizer, spec, seed=seed)
    model.save_pretrained(out / name)
    tokenizer.save_pretrained(out / name)
    return {"model": model, "spec": asdict(spec), "seed": seed, **stats}


@contextmanager
def _one_deterministic_thread() -> Iterator[None]:
    """Deterministic kernels on one thread inside, the caller's settings restored after.

    One thread gives the same bits on any machine, and on a busy 2-core box it was 8x faster than two
    (0.65 vs 5.3 s/step with other jobs running: OpenMP threads spin when the cores are oversubscribed)."""
    deterministic, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(deterministic)
        torch.set_num_threads(threads)


def build(out: Path, *, budget: float = 1.0, seed: int = 0, eval_n: int | None = None,
          overconfident: bool = False, teacher: Path | None = None) -> dict:
    """Train the toy tokenizer, teacher and student into ``out`` and measure their test accuracy.

    Args:
        out: directory to create; receives ``tokenizer/``, ``teacher/``, ``student/`` and ``build.json``.
        budget: multiplies both training budgets (1.0 is the shipped recipe; tests use ~0.01).
        seed: base seed; the teacher uses ``seed``, the student ``seed + 1``.
        eval_n: test problems to score (default: the ``HELD_OUT`` ones, as ``build.json`` records).
        overconfident: train the student on the planted working (``toy.planted``) for
            ``OVERCONFIDENT_SFT`` steps instead of the under-trained ``STUDENT_SFT`` one.
        teacher: an existing teacher directory to reuse (only scored, neither trained nor copied).

    Returns:
        the ``build.json`` content: specs, seconds, final losses and greedy test accuracies.
    """
    if budget <= 0:
        raise ValueError(f"budget={budget} must be > 0 (1.0 is the shipped recipe)")
    out, start = Path(out), time.perf_counter()
    with _one_deterministic_thread():
        save_tokenizer(out / "tokenizer")
        train, test = load_problems("train", TRAIN_PROBLEMS), load_problems("test", eval_n or HELD_OUT)
        student_train = load_planted_problems("train", TRAIN_PROBLEMS) if overconfident else train
        student_spec = OVERCONFIDENT_SFT if overconfident else STUDENT_SFT
        runs = {
            "teacher": ({"model": AutoModelForCausalLM.from_pretrained(teacher), "reused": str(teacher)}
                        if teacher else _train_one("teacher", scaled(TEACHER_SFT, budget), out, train, seed)),
            "student": _train_one("student", scaled(student_spec, budget), out, student_train, seed + 1),
        }
        for run in runs.values():
            run["test_accuracy"] = accuracy(run.pop("model"), test, tokenizer=build_tokenizer())
    report = {
        "command": f"tiplight toy build --out {out} --budget {budget} --seed {seed}"
                   + (" --world overconfident" if overconfident else "") + (f" --teacher {teacher}" if teacher else ""),
        "model": asdict(MODEL),
        "test_problems": len(test),
        "total_seconds": round(time.perf_counter() - start, 1),
        "torch_threads": 1,
        "torch": torch.__version__,
        "machine": platform.machine(),
        **runs,
    }
    (out / "build.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tiplight toy", description="The embedded toy world.")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="train the toy teacher and student from scratch")
    b.add_argument("--out", type=Path, required=True, help="output directory")
    b.add_argument("--budget", type=float, default=1.0, help="scales training steps (1.0 = shipped recipe)")
    b.add_argument("--seed", type=int, default=0, help="base seed (teacher: seed, student: seed + 1)")
    b.add_argument("--world", choices=("math", "overconfident", "agent"), default="math",
                   help="math: the arithmetic world (tokenizer, teacher, student); overconfident: its student "
                        "trained on the planted forgotten-carry working; agent: the tool-use world "
                        "(ToyLookup; tiplight/toy/agent.py)")
    b.add_argument("--teacher", type=Path, default=None,
                   help="math and overconfident worlds: reuse this teacher directory instead of training one")
    e = sub.add_parser("eval", help="greedy test accuracy of toy models (default: the shipped pair)")
    e.add_argument("models", nargs="*", type=Path, help="HF model directories")
    e.add_argument("--n", type=int, default=None, help="test problems (default: all 1,200)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``tiplight toy build|eval``; returns the process exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "build" and args.world == "agent" and args.teacher is not None:
        parser.error("--teacher reuses a math-world teacher; the agent world trains its own (drop --teacher).")
    if args.command == "build" and args.world == "agent":
        from tiplight.toy.agent import build_agent

        report = build_agent(args.out, budget=args.budget, seed=args.seed)
        for name in ("teacher", "student"):
            run = report[name]
            print(f"{name}: probe Avg@4 {run['probe_score']:.2f}, greedy {run['probe_greedy']:.2f} ({run['seconds']:.0f}s)")
        print(f"total {report['total_seconds']:.0f}s -> {args.out}")
        return 0
    if args.command == "build":
        report = build(args.out, budget=args.budget, seed=args.seed, overconfident=args.world == "overconfident",
                       teacher=args.teacher)
        for name in ("teacher", "student"):
            run = report[name]
            how = f"reused {run['reused']}" if "reused" in run else f"{run['seconds']:.0f}s"
            print(f"{name}: test accuracy {run['test_accuracy']:.3f} ({how})")
        print(f"total {report['total_seconds']:.0f}s -> {args.out}")
        return 0
    from tiplight.toy import student_dir, teacher_dir

    test = load_problems("test", args.n)
    for model_dir in args.models or [teacher_dir(), student_dir()]:
        print(f"{model_dir}: greedy test accuracy {accuracy(model_dir, test):.3f} on {len(test)} problems")
    return 0
