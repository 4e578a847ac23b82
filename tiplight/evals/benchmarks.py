"""Benchmarks by name (``math500``, ``aime24``, ``aime25``, the toy world's ``toy``, ...): the evaluation
view of ``tiplight.sources``. Each problem is a dict with at least ``id``, ``problem``, ``answer`` (plus
``subject``/``level`` for MATH); provenance and hashes of the shipped files: ``tiplight/evals/data/SOURCES.md``.
"""

from __future__ import annotations

from tiplight.sources import PROBLEM_FIELDS, SOURCES, load_source
from tiplight.sources import register_source as register_benchmark

BENCHMARKS = SOURCES  # one table: a benchmark registered here is also a prompt set for training

__all__ = ["BENCHMARKS", "load_benchmark", "register_benchmark"]


def load_benchmark(name_or_path: str) -> list[dict]:
    """Problems of a registered benchmark or of a JSONL path (each with ``id``, ``problem``, ``answer``)."""
    return load_source(name_or_path, PROBLEM_FIELDS)
