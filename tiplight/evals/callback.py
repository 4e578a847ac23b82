"""`MathEvalCallback`: sample, grade and score math benchmarks during fit or in a `validate` run, and the
test split of the module's environment (benchmark name `environment`: Avg@k / Best@k of episode scores).

The callback talks to the LightningModule only through `format_prompt(problem, instruction)`,
`generate_completions(prompts, *, num_samples, temperature, top_p, top_k, max_new_tokens, seed)` and, for
`environment`, its `environment` and `generate_episodes(problems, *, ..., first_key)`.
Problems are sharded by rank, records gathered to every rank, metrics computed identically everywhere.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info

from tiplight.console import phase_progress
from tiplight.evals.benchmarks import load_benchmark
from tiplight.evals.extract import extract_answer
from tiplight.evals.grader import grade_many
from tiplight.evals.metrics import compute_metrics, majority_vote

DEFAULT_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
ENVIRONMENT = "environment"  # the benchmark name of model.environment's test split


class MathEvalCallback(pl.Callback):
    """Evaluate the student on math benchmarks.

    Args:
        benchmarks: registered names (`math500`, `aime24`, `aime25`, ...) or JSONL paths; `environment`: the
            test split of `model.environment`, scored by the environment (`accuracy` is then Avg@k).
        num_samples: completions per problem (k of mean@k / pass@k / maj@k; the paper: 16).
        temperature: sampling temperature (the paper: 1.0); 0 means greedy.
        top_p: nucleus sampling threshold.
        top_k: top-k sampling (0 disables).
        max_new_tokens: generation budget per completion.
        instruction: appended to each problem before the chat template; None for none.
        every_n_steps: also evaluate every N optimizer steps (0: never).
        at_validation: also evaluate at the end of each validation epoch of `fit` (`tiplight validate`
            always evaluates: that is what it is for).
        at_fit_start: evaluate before training (for "before and after" comparisons).
        at_fit_end: evaluate when fit ends.
        limit: evaluate only the first `limit` problems of each benchmark (quick runs).
        batch_size: prompts per `generate_completions` call.
        seed: sampling seed.
        grade_timeout: seconds per graded answer.
        grade_workers: grading worker processes (None: one per CPU).
    """

    def __init__(
        self,
        benchmarks: list[str] | None = None,
        num_samples: int = 16,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        max_new_tokens: int = 4096,
        instruction: str | None = DEFAULT_INSTRUCTION,
        every_n_steps: int = 0,
        at_validation: bool = True,
        at_fit_start: bool = False,
        at_fit_end: bool = True,
        limit: int | None = None,
        batch_size: int = 16,
        seed: int = 0,
        grade_timeout: float = 5.0,
        grade_workers: int | None = None,
    ) -> None:
        super().__init__()
        if num_samples < 1 or batch_size < 1 or every_n_steps < 0 or (limit is not None and limit < 1):
            raise ValueError(
                "MathEvalCallback needs num_samples >= 1, batch_size >= 1, every_n_steps >= 0 and limit >= 1 "
                f"(or None); got {num_samples}, {batch_size}, {every_n_steps}, {limit}."
            )
        self.benchmarks = list(benchmarks) if benchmarks is not None else ["math500"]
        self.num_samples, self.temperature, self.top_p, self.top_k = num_samples, temperature, top_p, top_k
        self.max_new_tokens, self.instruction, self.batch_size, self.seed = (
            max_new_tokens, instruction, batch_size, seed,
        )  # fmt: skip
        self.every_n_steps, self.at_validation = every_n_steps, at_validation
        self.at_fit_start, self.at_fit_end, self.limit = at_fit_start, at_fit_end, limit
        self.grade_timeout, self.grade_workers = grade_timeout, grade_workers
        self.results: dict[str, dict[str, dict[str, float]]] = {}
        self.steps: dict[str, int] = {}  # moment -> optimizer step it was measured at
        self._last_step = -1
        self._loaded: dict[str, list[dict]] = {}
        for name in self.benchmarks:  # fail at start-up, not after an hour of training
            self._problems(name)

    # ---- hooks -------------------------------------------------------------------------------------
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.at_fit_start and "fit_start" not in self.results:  # a resumed run keeps its first measure
            self.evaluate(trainer, pl_module, "fit_start")

    def state_dict(self) -> dict[str, Any]:
        return {"results": self.results, "steps": self.steps}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.results = dict(state_dict.get("results", {}))
        self.steps = dict(state_dict.get("steps", {}))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if self.every_n_steps and step > 0 and step % self.every_n_steps == 0 and step != self._last_step:
            self._last_step = step  # with gradient accumulation this hook fires several times per step
            self.evaluate(trainer, pl_module, f"step_{step}")

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (self.at_validation or trainer.state.fn == "validate") and not trainer.sanity_checking:
            self.evaluate(trainer, pl_module, "validation")

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.at_fit_end:
            self.evaluate(trainer, pl_module, "fit_end")

    # ---- the evaluation ----------------------------------------------------------------------------
    def evaluate(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, moment: str
    ) -> dict[str, dict[str, float]]:
        """Run every benchmark now; log, write records and keep the metrics in `self.results[moment]`."""
        log_dir = Path(trainer.log_dir or trainer.default_root_dir)  # collective call on every rank
        was_training = pl_module.training
        pl_module.eval()
        results: dict[str, dict[str, float]] = {}
        try:
            with torch.no_grad():
                for name in self.benchmarks:
                    if name == ENVIRONMENT:
                        records = self._gather(self._run_episodes(trainer, pl_module, moment))
                        results[name] = episode_metrics(records, self.num_samples)
                    else:
                        records = self._gather(self._run_shard(trainer, pl_module, name, moment))
                        results[self._label(name)] = compute_metrics(records, self.num_samples)
                    if trainer.is_global_zero:
                        self._write_records(log_dir, moment, self._label(name), records)
        finally:
            pl_module.train(was_training)
        self.results[moment] = results
        self.steps[moment] = trainer.global_step
        self._log(trainer, pl_module, moment, results)
        if trainer.is_global_zero:
            rank_zero_info(summary_table(moment, results, self.num_samples))
        return results

    def _problems(self, name: str) -> list[dict]:
        if name == ENVIRONMENT:  # the module's environment gives them at evaluation
            return []
        if name not in self._loaded:  # read once; every evaluation uses the same problems
            problems = load_benchmark(name)
            self._loaded[name] = problems[: self.limit] if self.limit else problems
        return self._loaded[name]

    @staticmethod
    def _label(name: str) -> str:
        return Path(name).stem if name.endswith(".jsonl") else name

    def _run_shard(self, trainer: pl.Trainer, pl_module: pl.LightningModule, name: str, moment: str) -> list[dict]:
        """Generate and grade this rank's share of the problems, with a progress line per batch."""
        everything = list(enumerate(self._problems(name)))
        problems = everything[trainer.global_rank :: trainer.world_size]
        # equal shard sizes on every rank: sharded models (FSDP) need the same number and shape of
        # generate calls everywhere, so a short shard repeats its first problem and drops the result
        longest = -(-len(everything) // trainer.world_size)
        real = len(problems)
        problems += problems[:1] * (longest - real)
        records, started = [], time.perf_counter()
        for start in range(0, len(problems), self.batch_size):
            chunk = problems[start : start + self.batch_size]
            prompts = [pl_module.format_prompt(p["problem"], self.instruction) for _, p in chunk]
            completions = pl_module.generate_completions(
                prompts, num_samples=self.num_samples, temperature=self.temperature, top_p=self.top_p,
                top_k=self.top_k, max_new_tokens=self.max_new_tokens, seed=self.seed + chunk[0][0],
            )  # fmt: skip
            keep = max(0, min(len(chunk), real - start))
            records += self._grade_chunk(chunk[:keep], completions[:keep])
            if trainer.is_global_zero:
                done = min(len(everything), (start + len(chunk)) * trainer.world_size)
                phase_progress(f"math eval ({moment}) {self._label(name)}", done, len(everything), "problems", started)
        return records

    def _run_episodes(self, trainer: pl.Trainer, pl_module: pl.LightningModule, moment: str) -> list[dict]:
        """Run and score this rank's share of the environment's test problems (contiguous, keyed by their
        index in the whole split, so the scores do not depend on the number of ranks or the batch size)."""
        from tiplight.data import share

        env = getattr(pl_module, "environment", None)
        if env is None:
            raise ValueError(f"MathEvalCallback benchmark {ENVIRONMENT!r} scores the test split of model.environment, "
                             "which is not set; give model.environment or remove the benchmark.")
        everything = env.problems("test")[: self.limit] if self.limit else env.problems("test")
        start, stop = share(len(everything), trainer.global_rank, trainer.world_size)
        records, started = [], time.perf_counter()
        for first in range(start, stop, self.batch_size):
            chunk = everything[first : min(first + self.batch_size, stop)]
            out = pl_module.generate_episodes(
                chunk, num_samples=self.num_samples, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                max_new_tokens=self.max_new_tokens, seed=self.seed, first_key=first * self.num_samples,
            )  # fmt: skip
            episodes = iter(out.episodes)
            for index, problem in enumerate(chunk, first):
                mine = [next(episodes) for _ in range(self.num_samples)]
                records.append({"index": index, "id": problem["id"], "scores": [env.score(e) for e in mine],
                                "responses": [e.last_text for e in mine], "turns": [e.turns for e in mine],
                                "tool_calls": [e.tool_calls for e in mine], "ends": [e.end for e in mine]})
            if trainer.is_global_zero:
                done = min(len(everything), (first - start + len(chunk)) * trainer.world_size)
                phase_progress(f"eval ({moment}) {ENVIRONMENT}", done, len(everything), "problems", started)
        return records

    def _grade_chunk(self, chunk: list[tuple[int, dict]], completions: list[list[str]]) -> list[dict]:
        flat = [(p, text) for (_, p), texts in zip(chunk, completions) for text in texts]
        verdicts = iter(grade_many([t for _, t in flat], [str(p["answer"]) for p, _ in flat],
                                   timeout=self.grade_timeout, num_workers=self.grade_workers))  # fmt: skip
        records = []
        for (index, problem), texts in zip(chunk, completions):
            ok = [next(verdicts) for _ in texts]
            answers = [extract_answer(t) for t in texts]
            records.append({
                "index": index, "id": problem["id"], "subject": problem.get("subject"),
                "level": problem.get("level"), "gold": str(problem["answer"]), "responses": list(texts),
                "extracted": answers, "verdicts": ok,
                "maj_correct": majority_vote(answers, ok, timeout=self.grade_timeout),
            })  # fmt: skip
        return records

    @staticmethod
    def _gather(records: list[dict]) -> list[dict]:
        """All ranks' records, in problem order, on every rank."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            parts: list[list[dict] | None] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(parts, records)
            records = [r for part in parts for r in (part or [])]
        return sorted(records, key=lambda r: r["index"])

    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule, moment: str, results: dict) -> None:
        flat = {f"eval/{bench}/{k}": v for bench, metrics in results.items() for k, v in metrics.items()}
        if moment in ("fit_start", "fit_end"):  # self.log is not allowed in these hooks
            if trainer.is_global_zero:
                for logger in trainer.loggers:
                    logger.log_metrics(
                        {f"{k}/{moment}": v for k, v in flat.items()}, step=trainer.global_step
                    )
            return
        # identical values on every rank (computed from gathered records): no sync needed
        per_step = moment.startswith("step_")
        pl_module.log_dict(flat, sync_dist=False, on_step=per_step, on_epoch=not per_step)

    @staticmethod
    def _write_records(log_dir: Path, moment: str, bench: str, records: list[dict]) -> None:
        out = log_dir / "evals" / f"{moment}_{bench}.jsonl"
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")


def episode_metrics(records: list[dict], k: int) -> dict[str, float]:
    """Avg@k and Best@k of the records' episode scores (``accuracy`` = Avg@k), mean turns and tool calls."""
    from tiplight.envs.metrics import avg_at_k, best_at_k

    scores = torch.tensor([r["scores"] for r in records], dtype=torch.float).view(len(records), k)  # [n, k]
    mean = lambda field: float(torch.tensor([r[field] for r in records], dtype=torch.float).mean())  # noqa: E731
    avg = avg_at_k(scores)
    return {"num_problems": float(len(records)), f"avg@{k}": avg, f"best@{k}": best_at_k(scores), "accuracy": avg,
            "turns": mean("turns"), "tool_calls": mean("tool_calls")}


def summary_table(moment: str, results: dict[str, dict[str, float]], k: int) -> str:
    """A plain-text table of the headline metrics per benchmark (Avg@k / Best@k for an environment)."""
    columns = [f"mean@{k}", "pass@1", f"pass@{k}", f"maj@{k}"]
    columns = list(dict.fromkeys(columns))
    if ENVIRONMENT in results:
        columns = [*(columns if len(results) > 1 else []), f"avg@{k}", f"best@{k}"]
    title = "eval" if ENVIRONMENT in results else "math eval"
    lines = [f"{title} ({moment})", f"{'benchmark':14} {'n':>5} " + " ".join(f"{c:>9}" for c in columns)]
    for bench, metrics in results.items():
        cells = " ".join(f"{100 * metrics.get(c, float('nan')):>8.1f}%" for c in columns)
        lines.append(f"{bench:14} {int(metrics['num_problems']):>5} {cells}")
    return "\n".join(lines)
