"""Math answer checking, benchmarks (MATH-500, AIME 2024/2025) and the evaluation callback.

`grade`/`extract_answer`/`grade_many`/`warmup` are light (no torch; sympy and Math-Verify load only in
the grading worker processes, which `warmup()` starts and waits for). The callback and the metrics
import Lightning and torchmetrics lazily, so grading workers and scripts that only grade stay fast.
"""

from __future__ import annotations

from typing import Any

from tiplight.evals.benchmarks import BENCHMARKS, load_benchmark, register_benchmark
from tiplight.evals.extract import extract_answer
from tiplight.evals.grader import grade, grade_many, warmup

__all__ = [
    "BENCHMARKS",
    "MathEvalCallback",
    "extract_answer",
    "grade",
    "grade_many",
    "load_benchmark",
    "register_benchmark",
    "warmup",
]


def __getattr__(name: str) -> Any:
    if name == "MathEvalCallback":
        from tiplight.evals.callback import MathEvalCallback

        return MathEvalCallback
    raise AttributeError(f"module 'tiplight.evals' has no attribute {name!r}")
