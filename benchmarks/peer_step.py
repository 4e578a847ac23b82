"""Whole on-policy distillation steps side by side (issue 26): tiplight, TRL's ``GKDTrainer`` and the naive loop.

Every framework trains the same student on the same teacher, prompts, rollouts per prompt, completion budget,
divergence (reverse KL, every completion token), optimizer (plain AdamW, constant LR, clip 1.0) and precision,
each in a fresh process with ``--threads`` threads, one after the other in one run:

- ``tiplight``: ``DistillModule`` + ``PromptDataModule`` under a Lightning ``Trainer`` (what ``tiplight fit``
  builds), phases from its own ``timer`` (rollout, score + select, update).
- ``trl``: ``trl.experimental.gkd.GKDTrainer`` with ``lmbda=1`` (every batch sampled from the student) and
  ``beta=1`` (full-vocabulary reverse KL), ``gradient_checkpointing=False`` like the others; rollout =
  ``generate_on_policy_outputs``, score = ``compute_loss``, update = the rest of the step (backward, clipping,
  optimizer). ``trl-default`` (not run unless named in ``--frameworks``) keeps TRL's default
  ``gradient_checkpointing=True``, under which GKD also generates without a KV cache.
- ``naive``: a hand-written loop: ``generate(do_sample=True)``, full ``model(...).logits`` of both models,
  reverse KL masked to the completion, backward, AdamW.

Shapes: ``toy`` (the shipped toy pair, vocabulary 85) and ``qwen3`` (a random Qwen3-0.6B-shaped pair with the
real 151,936-token vocabulary and hidden size 1024; ``--layers`` decoder layers, 2 by default on CPU where 28
would take minutes per step, 28 on CUDA). Usage::

    OMP_NUM_THREADS=1 python benchmarks/peer_step.py --shape toy --steps 10 --warmup 2
    OMP_NUM_THREADS=1 python benchmarks/peer_step.py --shape qwen3 --steps 3 --warmup 1
    python benchmarks/peer_step.py --shape qwen3 --device cuda --steps 5     # real shapes on a GPU

TRL lives in its own environment (``--trl-python``, default ``$TRL_PYTHON`` or ``/work/venv-trl/bin/python``):
``python3 -m venv /work/venv-trl && /work/venv-trl/bin/pip install torch==2.13.0 && /work/venv-trl/bin/pip install
trl -e .``. Peak memory: the process's peak RSS (``VmHWM``) on CPU, ``torch.cuda.max_memory_allocated`` on
GPU. Start-up: seconds from the worker's start (after importing torch) to its first step. The last line reads ``peer_step: tiplight/TRL completion tokens/s R1x, peak memory R2x (shape S)``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

FRAMEWORKS = ("tiplight", "trl", "naive", "trl-default")
CONFIGS = Path(__file__).parent / "configs"
TRL_INSTALL = ("TRL is not installed: python3 -m venv /work/venv-trl && /work/venv-trl/bin/pip install torch==2.13.0 "
               "&& /work/venv-trl/bin/pip install trl -e <this checkout>, then pass --trl-python /work/venv-trl/bin/python.")


@dataclass(frozen=True)
class Job:
    """What every framework runs: the pair (directories), the prompts and the step's shape."""

    shape: str
    student: str
    teacher: str
    prompts: str  # JSONL with a ``problem`` field, one row per prompt of a step
    rollouts_per_prompt: int
    max_new_tokens: int
    lr: float
    steps: int
    warmup: int
    device: str
    threads: int


@dataclass
class Clock:
    """Wall and CPU seconds per phase of each step (CUDA synchronised at the boundaries)."""

    start: float = field(default_factory=time.perf_counter)
    steps: list[dict[str, tuple[float, float]]] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    first_step_at: float | None = None

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        sync()
        wall, cpu = time.perf_counter(), time.process_time()
        yield
        sync()
        if self.first_step_at is None:
            self.first_step_at = wall
        wall_s, cpu_s = self.steps[-1].get(name, (0.0, 0.0))  # phases of the same name add up
        self.steps[-1][name] = (wall_s + time.perf_counter() - wall, cpu_s + time.process_time() - cpu)

    def new_step(self) -> None:
        self.steps.append({})


def sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def peak_memory_mib(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    status = Path("/proc/self/status").read_text()
    return int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("VmHWM"))) / 1024


def encoded_prompts(job: Job, tokenizer) -> list[list[int]]:
    """The step's prompts, formatted and encoded exactly as ``PromptDataModule`` does by default."""
    from tiplight.data import encode_prompt, format_prompt

    rows = [json.loads(line) for line in Path(job.prompts).read_text().splitlines()]
    return [encode_prompt(tokenizer, format_prompt(tokenizer, r["problem"])) for r in rows]


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    from tiplight.padding import left_pad as pad

    return pad(prompts, pad_id)


# --- workers (each in its own process) ------------------------------------------------------------------
def run_tiplight(job: Job, clock: Clock) -> None:
    import lightning as L

    from tiplight.args import Optimization
    from tiplight.data import PromptDataModule
    from tiplight.module import DistillModule
    from tiplight.rollout import Sampling

    class Timed(DistillModule):
        """DistillModule whose ``timer`` phases, losses and valid tokens go to ``clock``."""

        def training_step(self, batch, batch_idx):
            clock.new_step()
            with clock.phase("step"):
                return super().training_step(batch, batch_idx)

        @contextmanager
        def timer(self, name: str) -> Iterator[None]:
            with clock.phase({"select": "score"}.get(name, name)):  # selection is part of scoring here
                yield

        def log_step(self, stats, weights, loss, kept_fraction):
            super().log_step(stats, weights, loss, kept_fraction)
            clock.losses.append(float(loss))
            clock.tokens.append(int(stats.valid.sum()))

    module = Timed(student=job.student, teacher=job.teacher, sampling=Sampling(max_new_tokens=job.max_new_tokens),
                   optimization=Optimization(lr_schedule="constant", grad_clip=1.0), seed=0,
                   optimizer=lambda p: torch.optim.AdamW(p, lr=job.lr, weight_decay=0.0))
    prompts = len(Path(job.prompts).read_text().splitlines())
    data = PromptDataModule(train_files=[job.prompts], answer_field=None, id_field=None, prompts_per_step=prompts,
                            rollouts_per_prompt=job.rollouts_per_prompt, seed=0)
    trainer = L.Trainer(max_steps=job.warmup + job.steps, accelerator="gpu" if job.device == "cuda" else "cpu",
                        devices=1, logger=False, enable_checkpointing=False, limit_val_batches=0,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(module, data)


def run_trl(job: Job, clock: Clock, out_dir: str, gradient_checkpointing: bool) -> None:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    tokenizer = AutoTokenizer.from_pretrained(job.student)
    rows = [{"prompt_ids": ids} for ids in encoded_prompts(job, tokenizer) for _ in range(job.rollouts_per_prompt)]

    def collate(features: list[dict]) -> dict[str, torch.Tensor]:
        # no ``labels``: with lmbda=1 every batch is replaced by the student's samples, and the loss is then
        # the mean over generated tokens (TRL's chat collator would divide by the dataset's completion length)
        ids, mask = left_pad([f["prompt_ids"] for f in features], tokenizer.pad_token_id)
        return {"prompts": ids, "prompt_attention_mask": mask, "input_ids": ids, "attention_mask": mask}

    class Timed(GKDTrainer):
        def generate_on_policy_outputs(self, model, inputs, generation_config):
            with clock.phase("rollout"):
                out = GKDTrainer.generate_on_policy_outputs(model, inputs, generation_config)
            clock.tokens.append(int(out[1][:, inputs["prompts"].shape[1] :].sum()))
            return out

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            with clock.phase("score"):
                loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            clock.losses.append(float(loss[0] if return_outputs else loss))
            return loss

    class Steps(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            clock.new_step()
            sync()
            self.wall, self.cpu = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kwargs):
            sync()
            clock.steps[-1]["step"] = (time.perf_counter() - self.wall, time.process_time() - self.cpu)

    args = GKDConfig(output_dir=out_dir, per_device_train_batch_size=len(rows), max_steps=job.warmup + job.steps,
                     learning_rate=job.lr, lr_scheduler_type="constant", warmup_steps=0, optim="adamw_torch",
                     weight_decay=0.0, max_grad_norm=1.0, lmbda=1.0, beta=1.0, temperature=1.0,
                     max_new_tokens=job.max_new_tokens, report_to=[], save_strategy="no", logging_steps=1,
                     disable_tqdm=True, use_cpu=job.device == "cpu", bf16=False, fp16=False, seed=0,
                     dataloader_num_workers=0, gradient_checkpointing=gradient_checkpointing)
    trainer = Timed(model=AutoModelForCausalLM.from_pretrained(job.student),
                    teacher_model=AutoModelForCausalLM.from_pretrained(job.teacher), args=args,
                    train_dataset=Dataset.from_list(rows), data_collator=collate, processing_class=tokenizer,
                    callbacks=[Steps()])
    trainer.train()


def run_naive(job: Job, clock: Clock) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from tiplight.rollout import eos_token_ids

    tokenizer = AutoTokenizer.from_pretrained(job.student)
    student = AutoModelForCausalLM.from_pretrained(job.student).to(job.device)
    teacher = AutoModelForCausalLM.from_pretrained(job.teacher).to(job.device).eval().requires_grad_(False)
    rows = [ids for ids in encoded_prompts(job, tokenizer) for _ in range(job.rollouts_per_prompt)]
    prompts, prompt_mask = (t.to(job.device) for t in left_pad(rows, tokenizer.pad_token_id))  # [R, P]
    eos = eos_token_ids(tokenizer, student)
    config = GenerationConfig(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=job.max_new_tokens,
                              eos_token_id=eos, pad_token_id=tokenizer.pad_token_id)
    optimizer = torch.optim.AdamW(student.parameters(), lr=job.lr, weight_decay=0.0)
    torch.manual_seed(0)
    for _ in range(job.warmup + job.steps):
        clock.new_step()
        with clock.phase("step"):
            naive_step(student, teacher, optimizer, prompts, prompt_mask, config, eos, clock)


def naive_step(student, teacher, optimizer, prompts, prompt_mask, config, eos: list[int], clock: Clock) -> None:
    """Sample, full logits of both models, reverse KL over the completion, one AdamW step."""
    from step_memory import naive_loss

    from tiplight.rollout import completion_mask

    p = prompts.shape[1]
    with clock.phase("rollout"), torch.no_grad():
        student.eval()
        ids = student.generate(input_ids=prompts, attention_mask=prompt_mask, generation_config=config)
        student.train()
        valid = completion_mask(ids[:, p:], eos)  # [R, C]
        mask = torch.cat([prompt_mask, valid.long()], 1)
    with clock.phase("score"):
        with torch.no_grad():
            t_logits = teacher(input_ids=ids, attention_mask=mask).logits[:, p - 1 : -1]  # [R, C, V]
        s_logits = student(input_ids=ids, attention_mask=mask).logits[:, p - 1 : -1]
        loss = naive_loss(s_logits, t_logits, valid)
    with clock.phase("update"):
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
    clock.losses.append(float(loss))
    clock.tokens.append(int(valid.sum()))


def worker(framework: str, job: Job, out_dir: str) -> dict:
    torch.set_num_threads(job.threads)
    clock = Clock()
    if framework == "tiplight":
        run_tiplight(job, clock)
    elif framework.startswith("trl"):
        run_trl(job, clock, out_dir, gradient_checkpointing=framework == "trl-default")
    else:
        run_naive(job, clock)
    return summarise(framework, job, clock)


def summarise(framework: str, job: Job, clock: Clock) -> dict:
    """Medians over the measured steps (the warm-up steps dropped) of wall and CPU seconds per phase."""
    steps = clock.steps[job.warmup :]
    phases: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for step in steps:
        if framework.startswith("trl"):
            step["update"] = tuple(step["step"][i] - step["rollout"][i] - step["score"][i] for i in range(2))
        for name, value in step.items():
            phases[name].append(value)
    medians = {name: [statistics.median(v[i] for v in values) for i in range(2)] for name, values in phases.items()}
    tokens = clock.tokens[job.warmup :]
    return {"framework": framework, "shape": job.shape, "steps": len(steps), "phases": medians,
            "tokens_per_step": statistics.mean(tokens), "tokens_per_s": statistics.mean(tokens) / medians["step"][0],  # per median step, as the table
            "startup_s": (clock.first_step_at or clock.start) - clock.start, "peak_mib": peak_memory_mib(job.device),
            "loss_first": clock.losses[0], "loss_last": clock.losses[-1], "torch": torch.__version__}


# --- the pair and the orchestration --------------------------------------------------------------------
def word_tokenizer(vocab: int):
    """A word-level tokenizer of exactly ``vocab`` tokens (``<pad>`` 0, ``<unk>`` 1, ``</s>`` 2, ``w3`` ...):
    Qwen3's vocabulary size without its tokenizer (nothing is downloaded)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {"<pad>": 0, "<unk>": 1, "</s>": 2} | {f"w{i}": i for i in range(3, vocab)}
    core = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", eos_token="</s>")


def build_pair(shape: str, layers: int, root: Path, prompts: int) -> tuple[str, str, list[str]]:
    """(student dir, teacher dir, prompt texts) for ``shape``; the qwen3 pair is written under ``root``."""
    if shape == "toy":
        from tiplight import toy

        return str(toy.student_dir()), str(toy.teacher_dir()), [p["prompt"] for p in toy.load_problems("train", prompts)]
    from transformers import AutoModelForCausalLM, Qwen3Config

    config = json.loads((CONFIGS / "qwen3-0.6b.json").read_text())
    config.update(num_hidden_layers=layers, bos_token_id=None, eos_token_id=2, pad_token_id=0, torch_dtype="float32")
    tokenizer = word_tokenizer(config["vocab_size"])
    dirs = []
    for name, seed in (("student", 0), ("teacher", 1)):
        torch.manual_seed(seed)
        AutoModelForCausalLM.from_config(Qwen3Config(**config)).save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
        dirs.append(str(root / name))
    g = torch.Generator().manual_seed(0)
    texts = [" ".join(f"w{i}" for i in torch.randint(3, 5000, (32,), generator=g).tolist()) for _ in range(prompts)]
    return dirs[0], dirs[1], texts


def run_fresh(python: str, framework: str, job: Job, out_dir: Path) -> dict | None:
    """One framework in a fresh process; its last stdout line is the JSON row."""
    env = {**os.environ, "OMP_NUM_THREADS": str(job.threads), "MKL_NUM_THREADS": str(job.threads),
           "MALLOC_MMAP_THRESHOLD_": str(2**20), "TOKENIZERS_PARALLELISM": "false"}
    cmd = [python, __file__, "--worker", framework, json.dumps(asdict(job)), str(out_dir / framework)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        print(f"# {framework} failed:\n{done.stderr[-3000:]}", file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def trl_python(given: str | None) -> str | None:
    """The interpreter that has TRL: ``--trl-python``, ``$TRL_PYTHON``, /work/venv-trl, or this one."""
    candidates = [given, os.environ.get("TRL_PYTHON"), "/work/venv-trl/bin/python", sys.executable]
    for python in filter(None, candidates):
        if shutil.which(python) and subprocess.run([python, "-c", "import trl"], capture_output=True).returncode == 0:
            return python
    return None


def table(rows: list[dict]) -> str:
    lines = ["| framework | wall s/step | CPU s/step | rollout wall / CPU s | score wall / CPU s | update wall / CPU s "
             "| completion tok/step | completion tok/s | start-up s | peak MiB | loss first -> last |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ph = r["phases"]
        cell = [f"{ph[n][0]:.3f} / {ph[n][1]:.3f}" for n in ("rollout", "score", "update")]
        lines.append(f"| {r['framework']} | {ph['step'][0]:.3f} | {ph['step'][1]:.3f} | {' | '.join(cell)} | "
                     f"{r['tokens_per_step']:.0f} | {r['tokens_per_s']:.1f} | {r['startup_s']:.1f} | "
                     f"{r['peak_mib']:.0f} | {r['loss_first']:.4f} -> {r['loss_last']:.4f} |")
    return "\n".join(lines)


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=("toy", "qwen3"), default="toy")
    parser.add_argument("--steps", type=int, default=10, help="measured steps (after --warmup)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--layers", type=int, default=None, help="qwen3 decoder layers (default: 2 on CPU, 28 on CUDA)")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--rollouts-per-prompt", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--lr", type=float, default=None, help="AdamW LR (default: 1e-3 toy, 1e-5 qwen3)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--frameworks", default="tiplight,trl,naive", help=f"a comma list of {', '.join(FRAMEWORKS)}")
    parser.add_argument("--tiplight-python", default=sys.executable)
    parser.add_argument("--trl-python", default=None)
    parser.add_argument("--workdir", default=None, help="where the qwen3 pair is written (default: a temp dir)")
    parser.add_argument("--worker", nargs=3, metavar=("FRAMEWORK", "JOB", "OUT"), help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse()
    unknown = sorted(set(args.frameworks.split(",")) - set(FRAMEWORKS))
    if unknown:
        raise SystemExit(f"--frameworks={args.frameworks} names {', '.join(unknown)}; use a comma list of "
                         f"{', '.join(FRAMEWORKS)}.")
    if args.worker:
        framework, job, out = args.worker
        print(json.dumps(worker(framework, Job(**json.loads(job)), out)))
        return
    import tempfile

    root = Path(args.workdir or tempfile.mkdtemp(prefix="peer_step_"))
    layers = args.layers or (28 if args.device == "cuda" else 2)
    student, teacher, texts = build_pair(args.shape, layers, root, args.prompts)
    (root / "prompts.jsonl").write_text("".join(json.dumps({"problem": t}) + "\n" for t in texts))
    lr = args.lr or (1e-3 if args.shape == "toy" else 1e-5)
    job = Job(args.shape, student, teacher, str(root / "prompts.jsonl"), args.rollouts_per_prompt,
              args.max_new_tokens, lr, args.steps, args.warmup, args.device, args.threads)
    trl = trl_python(args.trl_python)
    pythons = {"tiplight": args.tiplight_python, "naive": args.tiplight_python, "trl": trl, "trl-default": trl}
    rows = []
    for framework in args.frameworks.split(","):
        if pythons[framework] is None:
            print(f"# {TRL_INSTALL}", file=sys.stderr)
            continue
        row = run_fresh(pythons[framework], framework, job, root)
        if row is not None:
            rows.append(row)
    shape = f"{args.shape}" + (f", {layers} layers, vocabulary 151936, hidden 1024" if args.shape == "qwen3" else "")
    print(f"shape {shape}; {args.prompts} prompts x {args.rollouts_per_prompt} rollouts, <= {args.max_new_tokens} "
          f"new tokens, AdamW lr {lr}, fp32, {args.device}, {args.threads} thread(s) per process; median of "
          f"{args.steps} steps after {args.warmup} warm-up; score = teacher + student forward, statistics, loss "
          f"(tiplight: + selection); TRL's update = step - rollout - score\n")
    print(table(rows))
    by = {r["framework"]: r for r in rows}
    if "tiplight" in by and "trl" in by:
        speed = by["tiplight"]["tokens_per_s"] / by["trl"]["tokens_per_s"]
        memory = by["tiplight"]["peak_mib"] / by["trl"]["peak_mib"]
        cpu = by["trl"]["phases"]["step"][1] / by["tiplight"]["phases"]["step"][1]
        print(f"\nCPU s/step TRL/tiplight {cpu:.2f}x (the steadier measure on a shared machine)")
        print(f"\npeer_step: tiplight/TRL completion tokens/s {speed:.2f}x, peak memory {memory:.2f}x (shape {args.shape})")
    else:
        print(f"\npeer_step: tiplight/TRL not measured ({'TRL missing' if 'trl' not in by else 'tiplight failed'}) "
              f"(shape {args.shape})")


if __name__ == "__main__":
    main()
