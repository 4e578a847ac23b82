"""A study's grid: settings (the product of its axes) x seeds, each run one ``tiplight fit`` command."""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Axis:
    """One grid axis: a config key and its values.

    A key naming a folder of config fragments (``selection`` -> ``configs/selection/``) takes fragment
    names as values (``--config configs/selection/<value>.yaml``); any other key is a ``tiplight fit``
    option (``model.optimizer.init_args.lr`` -> ``--model.optimizer.init_args.lr=<value>``)."""

    key: str
    values: tuple[str, ...]
    fragments: str | None = None  # the folder of fragments when the key names one

    @classmethod
    def parse(cls, text: str, config_root: Path) -> Axis:
        """``KEY=V1,V2,...`` -> an axis; a clear error for anything else."""
        key, sep, values = text.partition("=")
        names = tuple(v.strip() for v in values.split(",") if v.strip())
        if not sep or not key.strip() or not names:
            raise ValueError(f"--grid {text!r} is not KEY=V1,V2,...; e.g. selection=all_tokens,soft_or_50 or "
                             "model.optimizer.init_args.lr=1e-4,3e-4.")
        key = key.strip()
        folder = config_root / key
        if not folder.is_dir():
            return cls(key, names)
        missing = [n for n in names if not (folder / f"{n}.yaml").is_file()]
        if missing:
            known = sorted(p.stem for p in folder.glob("*.yaml"))
            raise ValueError(f"--grid {key}: no fragment {', '.join(missing)} in {folder}; known: {', '.join(known)}.")
        return cls(key, names, str(folder))

    def args(self, value: str) -> list[str]:
        if self.fragments is not None:
            return ["--config", str(Path(self.fragments) / f"{value}.yaml")]
        return [f"--{self.key}={value}"]

    def label(self, value: str) -> str:
        return value if self.fragments is not None else f"{self.key.rsplit('.', 1)[-1]}={value}"


@dataclass(frozen=True)
class Run:
    """One run of the study: a setting, a seed, its folder and the exact command that reproduces it."""

    setting: str
    seed: int
    folder: str
    argv: tuple[str, ...]
    threads: int

    @property
    def command(self) -> str:
        return f"OMP_NUM_THREADS={self.threads} " + shlex.join(self.argv)

    @property
    def finished(self) -> bool:
        return read_summary(self.folder) is not None


@dataclass
class Study:
    """Everything that defines a study (saved as ``study.json`` in its folder, read back by ``report``)."""

    out: str
    configs: list[str]
    axes: list[Axis]
    seeds: list[int]
    baseline: str | None = None
    jobs: int = 1
    threads: int = 1
    extra: list[str] = field(default_factory=list)  # further `tiplight fit` arguments for every run

    def settings(self) -> list[tuple[str, list[str]]]:
        """``(label, fit arguments)`` for every point of the grid, in axis order."""
        out = []
        for values in itertools.product(*(axis.values for axis in self.axes)):
            label = " ".join(axis.label(v) for axis, v in zip(self.axes, values)) or "base"
            out.append((label, [a for axis, v in zip(self.axes, values) for a in axis.args(v)]))
        return out

    def runs(self) -> list[Run]:
        """Every (setting, seed) run, settings first: a partial study has every setting's first seeds."""
        runs = []
        for seed in self.seeds:
            for label, args in self.settings():
                folder = Path(self.out) / "runs" / slug(label) / f"seed{seed}"
                argv = ["tiplight", "fit", *(a for c in self.configs for a in ("--config", c)), *args,
                        *self.extra, f"--seed_everything={seed}", *output_args(folder)]
                runs.append(Run(label, seed, str(folder), tuple(argv), self.threads))
        return runs

    def save(self) -> None:
        Path(self.out).mkdir(parents=True, exist_ok=True)
        data = asdict(self)
        data["axes"] = [asdict(a) for a in self.axes]
        (Path(self.out) / "study.json").write_text(json.dumps(data, indent=2) + "\n")

    @classmethod
    def load(cls, out: str | Path) -> Study:
        """The study saved in folder ``out``, its runs under ``out`` wherever the folder now is (moved, or
        reached from another directory than the one ``--out`` was relative to)."""
        path = Path(out) / "study.json"
        if not path.is_file():
            raise ValueError(f"{out} is not a study folder (no study.json); run `tiplight study` first.")
        data = json.loads(path.read_text())
        data["axes"] = [Axis(a["key"], tuple(a["values"]), a["fragments"]) for a in data["axes"]]
        return cls(**{**data, "out": str(out)})

    def check_resumes(self, saved: Study) -> None:
        """Refuse to resume ``saved`` (this folder's study) when a run it finished would now get other
        ``tiplight fit`` arguments: its results would be reported under the new command. (Failed and
        pending runs simply run again with the new command.)"""
        before = {r.folder: r.argv for r in saved.runs() if r.finished}
        for run in self.runs():
            old = before.get(run.folder)
            if old is not None and old != run.argv:
                dropped = [a for a in old if a not in run.argv] or ["(order)"]
                added = [a for a in run.argv if a not in old] or ["(order)"]
                raise ValueError(
                    f"--out {self.out} holds runs made with other `tiplight fit` arguments ({run.folder} had "
                    f"{shlex.join(dropped)} where this command gives {shlex.join(added)}); rerun with the same "
                    "arguments to resume, or choose a new --out.")


def read_summary(folder: str | Path) -> dict | None:
    """A run's ``summary.json``, or None when it is missing or unreadable (a run cut off while writing it)."""
    try:
        data = json.loads((Path(folder) / "summary.json").read_text())
    except (OSError, ValueError):  # missing, truncated, not UTF-8
        return None
    return data if isinstance(data, dict) else None


def output_args(folder: Path) -> list[str]:
    """Send a run's logs, evaluation records, student and summary.json to ``folder`` (TensorBoard logs)."""
    logger = {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
              "init_args": {"save_dir": str(folder), "name": "", "version": ""}}
    return [f"--trainer.default_root_dir={folder}", f"--trainer.logger={json.dumps(logger)}"]


def slug(label: str) -> str:
    """A folder name for a setting label."""
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", label).strip("_") or "base"


def threads_per_run(jobs: int) -> int:
    """CPU threads for each of ``jobs`` concurrent runs, so that together they do not oversubscribe."""
    return max(1, (os.cpu_count() or 1) // jobs)
