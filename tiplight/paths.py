"""``tiplight:`` paths name files shipped inside the package, wherever it is installed."""

from __future__ import annotations

from pathlib import Path

PREFIX = "tiplight:"
ROOT = Path(__file__).parent


def resolve(path: str) -> str:
    """``tiplight:toy/assets/student`` -> the absolute path in the installed package; others unchanged."""
    if path.startswith(PREFIX):
        return str(ROOT / path[len(PREFIX) :])
    return path
