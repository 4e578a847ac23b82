"""Benchmarks as data: a name -> zero-argument loader table over JSONL files shipped in the package.

Each problem is a dict with at least `id`, `problem`, `answer` (plus `subject`/`level` for MATH).
Provenance and hashes of the shipped files: `tiplight/evals/data/SOURCES.md`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial
from pathlib import Path

DATA_DIR = Path(__file__).parent / "data"
REQUIRED_FIELDS = ("id", "problem", "answer")


def read_jsonl(path: str | Path) -> list[dict]:
    """Problems from a JSONL file (one JSON object per line). A missing `id` becomes the line index."""
    problems = []
    with open(path, encoding="utf-8") as f:
        for index, line in enumerate(f):
            if not line.strip():
                continue
            row = json.loads(line)
            row.setdefault("id", str(index))
            missing = [k for k in REQUIRED_FIELDS if k not in row]
            if missing:
                raise ValueError(
                    f"{path}, line {index + 1}: missing field(s) {missing}; each problem needs {list(REQUIRED_FIELDS)}."
                )
            problems.append(row)
    return problems


BENCHMARKS: dict[str, Callable[[], list[dict]]] = {
    "math500": partial(read_jsonl, DATA_DIR / "math500.jsonl"),
    "aime24": partial(read_jsonl, DATA_DIR / "aime24.jsonl"),
    "aime25": partial(read_jsonl, DATA_DIR / "aime25.jsonl"),
    "math_train": partial(read_jsonl, DATA_DIR / "math_train.jsonl"),  # prompts for training, not an eval
    "toy": lambda: _toy("test"),  # the embedded toy world's test split
    "toy_train": lambda: _toy("train"),  # its training prompts
}


def _toy(split: str) -> list[dict]:
    from tiplight.toy import load_problems

    return load_problems(split)


def register_benchmark(name: str, loader: Callable[[], list[dict]]) -> None:
    """Add a benchmark under `name`; `loader()` returns its problems. Duplicate names raise."""
    if name in BENCHMARKS:
        raise ValueError(f"Benchmark {name!r} is already registered; known: {sorted(BENCHMARKS)}.")
    BENCHMARKS[name] = loader


def load_benchmark(name_or_path: str) -> list[dict]:
    """Problems of a registered benchmark (`math500`, `aime24`, `aime25`, ...) or of a JSONL path."""
    if name_or_path in BENCHMARKS:
        return BENCHMARKS[name_or_path]()
    path = Path(name_or_path).expanduser()
    if path.suffix == ".jsonl" and path.is_file():
        return read_jsonl(path)
    raise ValueError(
        f"Unknown benchmark {name_or_path!r}: use one of {sorted(BENCHMARKS)} or the path of an existing .jsonl file."
    )
