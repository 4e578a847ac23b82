"""mean@k, pass@k (unbiased) and maj@k over per-problem records, with subject/level breakdowns.

A record is one problem: `verdicts` (k booleans), `extracted` (k answers or None), optional `subject`
and `level`. Aggregation uses a torchmetrics `Metric` with sum states, so it can sync across ranks;
the callback computes on records already gathered to every rank and therefore does not sync.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torchmetrics import Metric

from tiplight.evals.grader import grade


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of Chen et al. (2021): 1 - C(n-c, k) / C(n, k), as a stable running product.

    n samples, c of them correct, k <= n.
    """
    if not 0 < k <= n:
        raise ValueError(f"pass@k needs 0 < k <= n; got k={k}, n={n}.")
    if n - c < k:
        return 1.0
    miss = 1.0
    for i in range(n - c + 1, n + 1):  # C(n-c, k)/C(n, k) = prod_{i=n-c+1}^{n} (1 - k/i)
        miss *= 1.0 - k / i
    return 1.0 - miss


def majority_vote(answers: list[str | None], verdicts: list[bool], timeout: float = 5.0) -> bool:
    """maj@k: is the most frequent answer (equivalent answers counted together) correct?

    Classes are formed with the checker itself (`grade(answer, representative)`); ties go to the
    class seen first; missing answers do not vote.
    """
    reps: list[tuple[str, bool]] = []
    counts: list[int] = []
    for answer, ok in zip(answers, verdicts):
        if answer is None:
            continue
        for i, (rep, _) in enumerate(reps):
            if answer == rep or grade(answer, rep, timeout=timeout):
                counts[i] += 1
                break
        else:
            reps.append((answer, ok))
            counts.append(1)
    if not reps:
        return False
    best = max(range(len(reps)), key=lambda i: (counts[i], -i))
    return reps[best][1]


class ProblemMean(Metric):
    """Mean of per-problem scores; sum states make it sync-capable across ranks."""

    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, scores: torch.Tensor) -> None:
        """scores: [P] per-problem values in [0, 1]."""
        self.total += scores.to(torch.float64).sum()
        self.count += scores.numel()

    def compute(self) -> torch.Tensor:
        """The mean, or NaN for no problems."""
        return self.total / self.count if self.count > 0 else torch.tensor(float("nan"))


def problem_scores(record: dict, k: int) -> dict[str, float]:
    """mean@k, pass@j (j = 1, 2, 4, ..., k) and maj@k of one problem's record."""
    verdicts = [bool(v) for v in record["verdicts"]][:k]
    n, c = len(verdicts), sum(verdicts)
    scores = {f"mean@{k}": c / n if n else 0.0}
    for j in sorted({1, k, *(2**p for p in range(1, k.bit_length()) if 2**p < k)}):
        scores[f"pass@{j}"] = pass_at_k(n, c, j) if n >= j else float("nan")
    scores[f"maj@{k}"] = float(record.get("maj_correct", False))
    return scores


def _group_keys(record: dict) -> list[str]:
    keys = [""]
    if record.get("subject"):
        keys.append(f"subject_{str(record['subject']).replace(' ', '_')}/")
    if record.get("level") is not None:
        keys.append(f"level_{record['level']}/")
    return keys


def compute_metrics(records: list[dict], k: int) -> dict[str, float]:
    """Benchmark metrics over records (plus `accuracy` = mean@k and per-subject/level breakdowns)."""
    grouped: dict[str, list[dict[str, float]]] = defaultdict(list)
    for record in records:
        scores = problem_scores(record, k)
        for prefix in _group_keys(record):
            grouped[prefix].append(scores)
    out: dict[str, float] = {}
    for prefix, rows in grouped.items():
        for name in rows[0]:
            metric = ProblemMean(sync_on_compute=False)
            metric.update(torch.tensor([r[name] for r in rows], dtype=torch.float64))
            out[prefix + name] = float(metric.compute())
    out["accuracy"] = out.get(f"mean@{k}", float("nan"))
    out["num_problems"] = float(len(records))
    return out
