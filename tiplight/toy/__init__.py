"""The embedded toy world: a synthetic math task, its tokenizer, and a tiny teacher/student pair.

Everything a CPU user needs to run on-policy distillation with no download::

    from tiplight import toy
    problems = toy.load_problems("test")           # [{"id", "prompt", "answer", "solution", ...}]
    toy.accuracy(toy.student_dir(), problems)      # greedy accuracy of the shipped student

The shipped checkpoints under ``ASSETS`` come from ``tiplight toy build --out DIR`` (see
``assets/BUILD.md`` for the command, run time and accuracies). Importing this package loads no
model and does not import torch; the heavy modules are imported on first use.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tiplight.sources import register_source
from tiplight.toy.task import TaskConfig, load_problems

if TYPE_CHECKING:
    from transformers import PreTrainedModel

register_source("toy", partial(load_problems, "test"))  # the toy world's test split, by name
register_source("toy_train", partial(load_problems, "train"))  # its training prompts

ASSETS: Path = Path(__file__).parent / "assets"
# the overconfident world's student (``toy.planted``); its teacher is the shipped one (teacher_dir())
OVERCONFIDENT_ASSETS: Path = Path(__file__).parent / "assets_overconfident"

__all__ = [
    "ASSETS",
    "OVERCONFIDENT_ASSETS",
    "TaskConfig",
    "accuracy",
    "build",
    "load_problems",
    "main",
    "overconfident_student_dir",
    "student_dir",
    "teacher_dir",
    "tokenizer_dir",
]


def tokenizer_dir() -> Path:
    """The shipped tokenizer directory (``AutoTokenizer.from_pretrained`` loads it offline)."""
    return ASSETS / "tokenizer"


def teacher_dir() -> Path:
    """The shipped teacher: an HF directory with model, generation config and tokenizer."""
    return ASSETS / "teacher"


def student_dir() -> Path:
    """The shipped student: an HF directory with model, generation config and tokenizer."""
    return ASSETS / "student"


def overconfident_student_dir() -> Path:
    """The overconfident world's student: confident and wrong wherever a carry is due (``toy.planted``)."""
    return OVERCONFIDENT_ASSETS / "student"


def accuracy(model: PreTrainedModel | str | Path, problems: list[dict], **kwargs: Any) -> float:
    """Greedy accuracy of ``model`` (object or HF directory) on ``problems``; see ``toy.evaluate.accuracy``."""
    from tiplight.toy.evaluate import accuracy as _accuracy

    return _accuracy(model, problems, **kwargs)


def build(out: Path, *, budget: float = 1.0, seed: int = 0, eval_n: int | None = None,
          overconfident: bool = False, teacher: Path | None = None) -> dict:
    """Train the tokenizer, teacher and student into ``out``; see ``toy.recipe.build``."""
    from tiplight.toy.recipe import build as _build

    return _build(Path(out), budget=budget, seed=seed, eval_n=eval_n, overconfident=overconfident, teacher=teacher)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``tiplight toy ...`` (``build`` and ``eval`` subcommands)."""
    from tiplight.toy.recipe import main as _main

    return _main(argv)
