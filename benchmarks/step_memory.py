"""Peak memory and time of one OPD update: tiplight against the naive full-logit pattern (GitHub issue 6).

One update = teacher forward, student forward, statistics, selection, loss, backward (no optimizer
step; the rollout is measured on its own, ``impl="rollout"``). Every configuration runs in a fresh
process. Peak memory is the process's peak RSS above its RSS right before the step (``VmHWM`` reset
through ``/proc/self/clear_refs``) on CPU, ``torch.cuda.max_memory_allocated`` above the allocated
bytes before the step on GPU; time is the median over ``--steps`` steps after one warm-up step.

- ``tiplight``: the path ``DistillModule`` runs (``completion_hidden``, ``token_stats_and_loss``: statistics
  and, for a frozen head, the loss's gradient w.r.t. the hidden states; ``TokenStats.from_raw``,
  ``SoftOrTopK``, ``selected_loss_sum``: no vocabulary pass for a frozen head, one over the kept tokens
  otherwise).
- ``naive``: full ``[R, P + C, V]`` logits from ``model(...).logits`` (student with grad, teacher
  without), statistics from those logits, reverse KL at every completion position, masked, mean.
- ``trl``: the naive logits fed to TRL's ``GKDTrainer.generalized_jsd_loss`` (beta=1: reverse KL).

Usage::

    python benchmarks/step_memory.py                       # CPU: tiny 2-layer Qwen3, vocabulary 151,936
    python benchmarks/step_memory.py --student qwen3-4b --teacher qwen3-8b \\
        --rollouts 8 --completion 4096 --chunk-size 512 --device cuda --dtype bfloat16 \\
        --checkpointing                                    # real shapes (random init) on a GPU
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, Qwen3Config

from tiplight import losses
from tiplight.models import LoRA, add_lora
from tiplight.objective import selected_loss_sum
from tiplight.objectives import ReverseKL
from tiplight.selection import SoftOrTopK, TokenStats
from tiplight.stats import completion_hidden, token_stats_and_loss

CONFIGS = Path(__file__).parent / "configs"
RETAINS = (1.0, 0.5, 0.2, 0.1)


@dataclass(frozen=True)
class Config:
    """One measured configuration (passed to the worker process as JSON)."""

    impl: str  # "tiplight", "naive", "trl" or "rollout"
    retain: float
    student: str = "tiny"
    teacher: str = "tiny"
    rollouts: int = 4  # R
    prompt: int = 32  # P
    completion: int = 128  # C
    chunk_size: int = 128
    steps: int = 3
    device: str = "cpu"
    dtype: str = "float32"
    checkpointing: bool = False  # student decoder-layer activation checkpointing (real shapes)
    lora: bool = False  # a LoRA student (peft, r=16 on every linear layer but the lm_head): a frozen head


def build_model(name: str, seed: int, device: str, dtype: torch.dtype) -> torch.nn.Module:
    """A randomly initialised model from ``benchmarks/configs/<name>.json``, in eval mode."""
    config = Qwen3Config(**json.loads((CONFIGS / f"{name}.json").read_text()))
    torch.manual_seed(seed)
    with torch.device(device):  # initialise where the model runs (a GPU initialises billions of weights fast)
        return AutoModelForCausalLM.from_config(config, dtype=dtype).eval()


class Memory:
    """Peak bytes allocated since ``reset()``, above what was allocated then."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")

    @staticmethod
    def _status(field: str) -> int:
        return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024

    def reset(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            self.base = self._status("VmRSS")

    def peak(self) -> int:
        if self.cuda:
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - self.base
        return self._status("VmHWM") - self.base


class Phases:
    """Wall and CPU (user + system) time per named phase of one step; the GPU is synchronised at each
    boundary. On a shared CPU the CPU time is the steadier measure of the work a phase does."""

    def __init__(self, device: str) -> None:
        self.cuda, self.wall, self.cpu = device.startswith("cuda"), {}, {}

    def __call__(self, name: str, fn: Callable, *args, **kwargs):
        if self.cuda:
            torch.cuda.synchronize()
        wall, cpu = time.perf_counter(), time.process_time()
        out = fn(*args, **kwargs)
        if self.cuda:
            torch.cuda.synchronize()
        self.wall[name] = self.wall.get(name, 0.0) + time.perf_counter() - wall
        self.cpu[name] = self.cpu.get(name, 0.0) + time.process_time() - cpu
        return out


def tiplight_step(s, t, ids, mask, valid, cfg: Config, vocab: int, timed: Phases) -> int:
    """One update on the ``DistillModule`` single-pass path; returns the number of kept tokens."""
    s_head, t_head = s.get_output_embeddings(), t.get_output_embeddings()
    with torch.inference_mode():
        t_hidden = timed("teacher", completion_hidden, t, ids, mask, cfg.prompt)  # [R, C, d_t]
    t_hidden = t_hidden.clone()
    hidden = timed("student", completion_hidden, s, ids, mask, cfg.prompt)  # [R, C, d] with grad
    raw, token_loss = timed("stats", token_stats_and_loss, hidden, s_head, t_hidden, t_head, valid, vocab,
                            cfg.chunk_size, ReverseKL(), grad=True)
    stats = timed("select", TokenStats.from_raw, raw.entropy, raw.rkl, raw.fkl, valid)
    keep = timed("select", SoftOrTopK(cfg.retain).select, stats) & valid  # [R, C]
    w = keep.float()
    loss = timed("loss", selected_loss_sum, hidden[keep], t_hidden[keep], w[keep], s_head, t_head,
                 ReverseKL(), vocab, cfg.chunk_size, token_loss.at(keep)) / keep.sum()
    timed("backward", loss.backward)
    return int(keep.sum())


def naive_stats(s_logits: torch.Tensor, t_logits: torch.Tensor, valid: torch.Tensor, chunk: int) -> TokenStats:
    """TokenStats from already materialised ``[R, C, V]`` logits (row by row, in chunks, no grad)."""
    with torch.no_grad():
        parts = [losses.token_divergences(a, b) for s_row, t_row in zip(s_logits.detach(), t_logits)
                 for a, b in zip(s_row.split(chunk), t_row.split(chunk))]  # views: no [N, V] copy
        h, rkl, fkl = (torch.cat(x).view(valid.shape) for x in zip(*parts))
    return TokenStats.from_raw(h / torch.log(torch.tensor(float(s_logits.shape[-1]))), rkl, fkl, valid)


def naive_loss(s_logits: torch.Tensor, t_logits: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Reverse KL at every position of ``[R, C, V]`` logits, masked afterwards, mean over kept."""
    return (losses.reverse_kl(s_logits, t_logits) * keep).sum() / keep.sum()


def trl_loss_fn() -> Callable:
    """TRL's ``GKDTrainer.generalized_jsd_loss``, read from the installed TRL source.

    Importing ``trl.experimental.gkd`` needs ``datasets`` and ``accelerate`` (not installed here), so the
    static method's source is taken verbatim from TRL's file and executed with ``torch`` and ``F``.
    """
    import importlib.util

    path = Path(importlib.util.find_spec("trl").origin).parent / "experimental" / "gkd" / "gkd_trainer.py"
    tree = ast.parse(path.read_text())
    fn = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "generalized_jsd_loss")
    fn.decorator_list = []
    scope = {"torch": torch, "F": torch.nn.functional}
    exec(compile(ast.Module(body=[fn], type_ignores=[]), str(path), "exec"), scope)
    gkd = scope["generalized_jsd_loss"]
    return lambda s, t, keep: gkd(s, t, labels=torch.where(keep, 0, -100), beta=1.0, reduction="batchmean")


def full_logit_step(s, t, ids, mask, valid, cfg: Config, loss_fn: Callable, timed: Phases) -> int:
    """One update with full logits: ``model(...).logits``, sliced to completion positions, masked loss."""
    p = cfg.prompt
    with torch.no_grad():
        t_logits = timed("teacher", lambda: t(input_ids=ids, attention_mask=mask).logits[:, p - 1 : -1])
    s_logits = timed("student", lambda: s(input_ids=ids, attention_mask=mask).logits[:, p - 1 : -1])  # [R, C, V]
    stats = timed("stats", naive_stats, s_logits, t_logits, valid, cfg.chunk_size)
    keep = timed("select", SoftOrTopK(cfg.retain).select, stats) & valid
    loss = timed("loss", loss_fn, s_logits, t_logits, keep)
    timed("backward", loss.backward)
    return int(keep.sum())


def rollout_step(s, ids, cfg: Config, timed: Phases) -> int:
    """Sampling ``C`` new tokens for ``R`` prompts with HF ``generate`` (no grad); returns tokens per rollout."""
    prompt = ids[:, : cfg.prompt]
    with torch.no_grad():
        out = timed("generate", s.generate, input_ids=prompt, attention_mask=torch.ones_like(prompt),
                    do_sample=True, max_new_tokens=cfg.completion, min_new_tokens=cfg.completion, pad_token_id=0)
    return out.shape[1] - cfg.prompt


def analytic_logit_elements(cfg: Config, vocab: int, kept: int) -> int:
    """``[*, V]`` logit elements alive with grad at the step's peak (the model's own logits for naive)."""
    if cfg.impl in ("tiplight", "rollout"):  # tiplight's logits never carry grad (closed-form gradients)
        return 0
    return cfg.rollouts * (cfg.prompt + cfg.completion) * vocab  # model(...).logits, all positions


def worker(cfg: Config) -> dict:
    """Build models and inputs, run one warm-up and ``cfg.steps`` measured steps; one result row."""
    if cfg.device == "cpu":
        torch.set_num_threads(1)
    dtype = getattr(torch, cfg.dtype)
    student = build_model(cfg.student, 0, cfg.device, dtype)
    teacher = build_model(cfg.teacher, 1, cfg.device, dtype).requires_grad_(False)
    if cfg.lora:
        torch.manual_seed(2)
        student = add_lora(student, LoRA(), quantized=False)
    if cfg.checkpointing:  # HF checkpoints decoder layers only in train mode (Qwen3 has no dropout)
        student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        student.train()
    vocab = student.config.vocab_size
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(vocab, (cfg.rollouts, cfg.prompt + cfg.completion), generator=g).to(cfg.device)
    mask = torch.ones_like(ids)
    valid = torch.ones(cfg.rollouts, cfg.completion, dtype=torch.bool, device=cfg.device)
    memory, walls, cpus, peaks = Memory(cfg.device), [], [], []
    for step in range(cfg.steps + 1):
        student.zero_grad(set_to_none=True)
        timed = Phases(cfg.device)
        memory.reset()
        if cfg.impl == "tiplight":
            kept = tiplight_step(student, teacher, ids, mask, valid, cfg, vocab, timed)
        elif cfg.impl == "rollout":
            kept = rollout_step(student, ids, cfg, timed)
        else:
            loss_fn = naive_loss if cfg.impl == "naive" else trl_loss_fn()
            kept = full_logit_step(student, teacher, ids, mask, valid, cfg, loss_fn, timed)
        if step > 0:  # the first step is a warm-up
            peaks.append(memory.peak())
            walls.append(timed.wall)
            cpus.append(timed.cpu)
    wall, cpu = (median_phases(x) for x in (walls, cpus))
    share = (cpu.get("stats", 0) + cpu.get("select", 0)) / sum(cpu.values())
    return {**asdict(cfg), "kept_tokens": kept, "peak_bytes": max(peaks),
            "step_seconds": statistics.median(sum(w.values()) for w in walls),
            "step_cpu_seconds": statistics.median(sum(c.values()) for c in cpus),
            "phase_seconds": wall, "phase_cpu_seconds": cpu, "stats_select_fraction": share,
            "grad_logit_elements": analytic_logit_elements(cfg, vocab, kept),
            "torch_threads": torch.get_num_threads(), "machine": machine(cfg.device)}


def median_phases(steps: list[dict[str, float]]) -> dict[str, float]:
    """Median seconds per phase over steps."""
    return {k: round(statistics.median(s[k] for s in steps), 4) for k in steps[0]}


def machine(device: str) -> str:
    """One line describing where the numbers come from."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), "cpu")
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}"


def run_fresh(cfg: Config) -> dict | None:
    """Run one configuration in a fresh Python process; its last stdout line is the JSON row.

    A fixed glibc mmap threshold (1 MiB) makes every large tensor its own mapping, returned to the OS when
    freed; with glibc's default dynamic threshold, freed tensors under 32 MiB stay in the heap and RSS
    reports the allocator's history rather than the step's live tensors.
    """
    cmd = [sys.executable, __file__, "--worker", json.dumps(asdict(cfg))]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(2**20)}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        print(f"# {cfg.impl} retain={cfg.retain} failed:\n{done.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    """Markdown table; ``vs naive@1.0`` divides by the naive all-token step's peak."""
    ref = next((r["peak_bytes"] for r in rows if r["impl"] == "naive" and r["retain"] == 1.0), None)
    lines = ["| impl | retain | kept tokens | peak MiB | vs naive@1.0 | step s (wall) | step s (CPU) |"
             " stats+select share (CPU) | grad [*,V] elements |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{r['peak_bytes'] / ref:.3f}" if ref and r["impl"] != "rollout" else "-"
        impl = r["impl"] + ("+lora" if r.get("lora") else "")
        lines.append(f"| {impl} | {r['retain']} | {r['kept_tokens']} | {r['peak_bytes'] / 2**20:,.0f} | "
                     f"{ratio} | {r['step_seconds']:.2f} | {r['step_cpu_seconds']:.2f} | {r['stats_select_fraction']:.1%} | "
                     f"{r['grad_logit_elements']:,} |")
    return "\n".join(lines)


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--worker", help=argparse.SUPPRESS)
    for field in ("student", "teacher", "device", "dtype"):
        p.add_argument(f"--{field}", default=getattr(Config, field))
    for field in ("rollouts", "prompt", "completion", "chunk_size", "steps"):
        p.add_argument(f"--{field.replace('_', '-')}", dest=field, type=int, default=getattr(Config, field))
    p.add_argument("--checkpointing", action="store_true", help="student activation checkpointing")
    p.add_argument("--impls", default="tiplight,naive,trl", help="comma-separated; trl is skipped if absent")
    p.add_argument("--retains", default=",".join(map(str, RETAINS)))
    p.add_argument("--lora-retains", default="1.0", help="retains of the LoRA-student rows (tiplight, naive)")
    p.add_argument("--no-rollout", action="store_true", help="skip the separate rollout measurement")
    return p.parse_args()


def main() -> None:
    args = parse()
    if args.worker:
        print(json.dumps(worker(Config(**json.loads(args.worker)))))
        return
    shared = {k: getattr(args, k) for k in ("student", "teacher", "rollouts", "prompt", "completion",
                                            "chunk_size", "steps", "device", "dtype", "checkpointing")}
    impls = [i for i in args.impls.split(",") if i != "trl" or _has_trl()]
    configs = [Config(impl, float(r), **shared) for impl in impls for r in args.retains.split(",")]
    configs += [Config(impl, float(r), **shared, lora=True) for impl in ("tiplight", "naive") if impl in impls
                for r in filter(None, args.lora_retains.split(","))]
    if not args.no_rollout:
        configs.append(Config("rollout", 1.0, **shared))
    rows = []
    for cfg in configs:
        row = run_fresh(cfg)
        if row is not None:
            print(json.dumps(row), flush=True)
            rows.append(row)
    print(f"\nstudent={args.student} teacher={args.teacher} R={args.rollouts} P={args.prompt} "
          f"C={args.completion} chunk={args.chunk_size} device={args.device} dtype={args.dtype} "
          f"checkpointing={args.checkpointing}\n")
    print(table(rows))


def _has_trl() -> bool:
    import importlib.util

    return importlib.util.find_spec("trl") is not None


if __name__ == "__main__":
    main()
