"""What a resumed run (``--ckpt_path``) takes from its checkpoint: the weights and the loop's state, never
the model options. Those come from the command as typed; an option that gives the checkpoint's weights
another structure is refused in one sentence, and every other difference is named in one line. A file
whose records fail their checksums is refused before anything is loaded from it."""

from __future__ import annotations

import sys
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

# options that change which parameters the student has: the checkpoint's weights and optimizer state
# cannot be loaded into a student built otherwise (lora's alpha and dropout can change)
STRUCTURAL = ("lora", "lora.r", "lora.target_modules", "student_quantization")


def saved_hparams(path: str) -> dict[str, Any]:
    """The model options a checkpoint was trained with: a ``.ckpt`` file's, or a distributed (FSDP2)
    checkpoint directory's ``meta.pt``; empty when there are none (Lightning's names, another layout)."""
    p = Path(path)
    file = p / "meta.pt" if p.is_dir() else p
    if not file.is_file():
        return {}
    hparams = dict(torch.load(file, weights_only=True, map_location="cpu").get("hyper_parameters") or {})
    hparams.pop("_instantiator", None)
    return hparams


def differences(given: dict[str, Any], saved: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``dotted name -> (given, saved)`` for each option the checkpoint holds whose given value differs;
    nested groups (``sampling``) compare field by field, a group set on one side only as a whole."""
    out = {}
    for key, value in saved.items():
        mine = given.get(key)
        if isinstance(mine, dict) and isinstance(value, dict):
            out.update({f"{key}.{name}": pair for name, pair in differences(mine, value).items()})
        elif mine != value:
            out[key] = (mine, value)
    return out


def non_finite(tensors: Iterable[tuple[str, Any]]) -> str | None:
    """The name of the first floating-point tensor holding NaN or inf (this rank's shard of a DTensor);
    None when every one is finite."""
    for name, tensor in tensors:
        local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
        if isinstance(local, torch.Tensor) and local.is_floating_point() and not torch.isfinite(local).all():
            return name
    return None


def loop_state(checkpoint: dict[str, Any]) -> tuple[int, str | None]:
    """The loop's state a checkpoint holds (the next training batch, the optimizer class), after refusing
    one whose weights hold NaN or inf."""
    bad = non_finite(checkpoint.get("state_dict", {}).items())
    if bad is not None:
        raise ValueError(f"the checkpoint's weight {bad} holds NaN or inf; resume from another checkpoint "
                         "(an earlier one, or interrupted.ckpt).")
    state = checkpoint.get("tiplight", {})
    return state.get("next_batch", 0), state.get("optimizer")


def check_intact(path: str) -> None:
    """Test a ``.ckpt`` file's records against their CRC-32 (one read of the file): torch.load does not,
    and a file corrupted mid-way loads with wrong weights. A distributed checkpoint has no checksums."""
    if not Path(path).is_file():
        return
    with zipfile.ZipFile(path) as archive:
        bad = archive.testzip()
    if bad is not None:
        raise ValueError(f"ckpt_path={path!r} is corrupted: its record {bad!r} fails its CRC-32 check; resume "
                         "from another checkpoint (an earlier one, or interrupted.ckpt).")


def check_resume(given: dict[str, Any], path: str) -> None:
    """Refuse a corrupted checkpoint, or a resume whose structural options differ from the checkpoint's;
    name the other differences (the given values are used: a moved student, new sampling or divergence)."""
    check_intact(path)
    diff = differences(given, saved_hparams(path))
    structural = {k: v for k, v in diff.items() if k in STRUCTURAL or k.startswith("student_quantization.")}
    if structural:
        listed = ", ".join(f"model.{k}={g!r} (the checkpoint holds {s!r})" for k, (g, s) in structural.items())
        raise ValueError(f"ckpt_path={path!r} cannot be resumed with {listed}: the student's weights would "
                         "have another structure; give the checkpoint's values or start a new run.")
    if diff:
        listed = ", ".join(f"model.{k}={g!r} (the checkpoint had {s!r})" for k, (g, s) in diff.items())
        print(f"tiplight: resuming {path} with the options given, which differ from the checkpoint's: "
              f"{listed}.", file=sys.stderr, flush=True)
