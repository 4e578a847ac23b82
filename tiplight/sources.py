"""Named data sources that training and evaluation share: prompt sets and benchmarks by name, files
shipped in the package (``tiplight:`` paths), and the one JSONL reader.

A layer below ``data``, ``evals`` and ``toy``: it imports none of them. Each part registers its own
sources (``register_source``): the toy world registers ``toy`` and ``toy_train`` when ``tiplight`` is imported.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

PREFIX = "tiplight:"
ROOT = Path(__file__).parent
DATA_DIR = ROOT / "evals" / "data"  # MATH-500, AIME 2024/2025, MATH train (provenance: SOURCES.md there)
PROBLEM_FIELDS = ("id", "problem", "answer")


def resolve(path: str) -> str:
    """``tiplight:toy/assets/student`` -> the absolute path in the installed package; others unchanged."""
    if path.startswith(PREFIX):
        return str(ROOT / path[len(PREFIX) :])
    return path


def read_lines(path: Path) -> Iterator[tuple[int, Any]]:
    """``(line number, parsed value)`` for each non-blank line of ``path`` (numbers start at 1)."""
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, 1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise ValueError(f"{path}:{line_no} is not UTF-8 text (byte {raw[error.start]:#04x}, the line's "
                                 f"byte {error.start + 1}); save the file as UTF-8.") from None
            if not text.strip():
                continue
            try:
                value = json.loads(text)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{line_no} is not valid JSON ({error.msg}).") from error
            yield line_no, value


def read_jsonl(path: str | Path, fields: tuple[str, ...] = (), option: str | None = None) -> list[dict[str, Any]]:
    """Rows of a JSONL file of objects; each must have ``fields`` (a missing ``id`` becomes the line
    index). Errors name the file, the line and the ``option`` that chose the field (``data.prompt_field``)."""
    path = Path(resolve(str(path))).expanduser()
    if not path.is_file():
        raise ValueError(f"{str(path)!r} is neither a registered source ({', '.join(sorted(SOURCES))}) nor an "
                         "existing JSONL file (a path, or tiplight:<path> inside the package).")
    rows = []
    for line_no, row in read_lines(path):
        keys = sorted(row) if isinstance(row, dict) else type(row).__name__
        if isinstance(row, dict):
            row.setdefault("id", str(line_no - 1))
        missing = [f for f in fields if not isinstance(row, dict) or f not in row]
        if missing:
            raise ValueError(f"{path}:{line_no} has no field {', '.join(map(repr, missing))}{_by(option)}; "
                             f"its fields are {keys}.")
        null = [f for f in fields if row[f] is None]
        if null:  # str(None) would be trained on, or graded against, as the text "None"
            raise ValueError(f"{path}:{line_no} has null {', '.join(map(repr, null))}{_by(option)}; give text, "
                             "or leave the row out.")
        rows.append(row)
    return rows


def _by(option: str | None) -> str:
    return f" ({option})" if option else ""


SOURCES: dict[str, Callable[[], list[dict[str, Any]]]] = {
    "math500": partial(read_jsonl, DATA_DIR / "math500.jsonl", PROBLEM_FIELDS),
    "aime24": partial(read_jsonl, DATA_DIR / "aime24.jsonl", PROBLEM_FIELDS),
    "aime25": partial(read_jsonl, DATA_DIR / "aime25.jsonl", PROBLEM_FIELDS),
    "math_train": partial(read_jsonl, DATA_DIR / "math_train.jsonl", PROBLEM_FIELDS),  # training prompts
}


def register_source(name: str, loader: Callable[[], list[dict[str, Any]]]) -> None:
    """Add a named source; ``loader()`` returns its rows. Duplicate names raise."""
    if name in SOURCES:
        raise ValueError(f"source {name!r} is already registered; known: {sorted(SOURCES)}.")
    SOURCES[name] = loader


def load_source(name_or_path: str, fields: tuple[str, ...] = PROBLEM_FIELDS,
                option: str | None = None) -> list[dict[str, Any]]:
    """Rows of a registered source or of a JSONL / ``tiplight:`` path; each must have ``fields``."""
    if name_or_path in SOURCES and not Path(name_or_path).is_file():
        rows = SOURCES[name_or_path]()
        missing = [f for f in fields if rows and f not in rows[0]]
        if missing:
            raise ValueError(f"source {name_or_path!r} has no field {', '.join(map(repr, missing))}{_by(option)}; "
                             f"its fields are {sorted(rows[0])}.")
        return rows
    return read_jsonl(name_or_path, fields, option)
