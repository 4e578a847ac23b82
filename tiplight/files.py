"""Writes that leave either the old file or the complete new one: a full disk, a crash or a signal
mid-write never leaves a truncated checkpoint, summary or exported student under its final name."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO


def partial_name(path: Path) -> Path:
    """The temporary sibling a write goes to before it is renamed to ``path``."""
    return path.with_name(f".{path.name}.partial")


@contextmanager
def replaced_when_done(path: Path) -> Iterator[Path]:
    """The temporary file to write ``path``'s new content to: it replaces ``path`` when the block ends
    without an exception, and is removed either way."""
    temporary = partial_name(path)
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> None:
    """``path.write_text(text)``, all or nothing."""
    with replaced_when_done(Path(path)) as temporary:
        temporary.write_text(text)


def write_dir(out: str | Path, fill: Callable[[Path], None]) -> Path:
    """``fill(folder)`` into a temporary folder, then put it in place of ``out`` (replacing an older one)."""
    out = Path(out)
    temporary, old = partial_name(out), out.with_name(f".{out.name}.old")
    for leftover in (temporary, old):
        shutil.rmtree(leftover, ignore_errors=True)
    try:
        temporary.mkdir(parents=True)
        fill(temporary)
        if out.exists():
            out.rename(old)
        temporary.rename(out)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return out


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``torch.save`` checkpoints, written to a temporary name and renamed when complete
    (``tiplight`` gives it to every trainer that names no checkpoint plugin of its own)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if "://" in str(path):  # remote storage (fsspec): no rename there
            return super().save_checkpoint(checkpoint, path, storage_options)
        with replaced_when_done(Path(path)) as temporary:
            super().save_checkpoint(checkpoint, temporary, storage_options)
