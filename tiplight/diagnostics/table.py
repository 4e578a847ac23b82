"""Scored rollouts: per-token statistics with their text, selections on them, tables, and JSONL files.

A ``Scored`` holds what a diagnostic needs and nothing heavy: the completion token ids and texts, and
the ``TokenStats`` of its scope. It comes from a ``Scorer`` (models), from a training step
(``Scored.from_step``) or from a saved JSONL file (``read_jsonl``), so notebooks, the training callback
and ``tiplight analyze`` share one representation.

JSONL format, one rollout per line::

    {"rollout": 0, "step": 20, "prompt": "What is 12+34?\\n", "completion": "2+4=6 6...",
     "token_ids": [...], "tokens": ["2", "+", ...], "valid": [1, 1, ...],
     "entropy": [...], "rkl": [...], "fkl": [...], "kept": {"SoftOrTopK(retain=0.5, ...)": [0, 1, ...]}}

Lists run over completion positions up to the last valid one; ``entropy`` is H_S / log|V|, the KLs are
in nats; ``kept`` maps a selector's label to its 0/1 keep mask.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tiplight.padding import pad_right
from tiplight.planted import decode_tokens, prompt_texts
from tiplight.selection import Selector, TokenStats, quadrants
from tiplight.selection.base import selector_weights
from tiplight.sources import read_lines

COLUMNS = ("rollout", "position", "token", "token_id", "entropy", "rkl", "fkl", "entropy_hat", "rkl_hat",
           "quadrant", "kept", "weight")
QUADRANT_NAMES = ("", "Q1", "Q2", "Q3", "Q4")  # index = quadrant id from `selection.quadrants`


@dataclass(eq=False)
class Scored:
    """Completions and their token statistics, all per completion position ``[R, C]``.

    Attributes:
        prompts: the R prompt texts.
        token_ids: ``[R, C]`` long completion token ids (pads where not valid).
        tokens: R lists of C decoded token texts ("" where not valid).
        stats: ``TokenStats`` ``[R, C]``, normalised over these R rollouts (or over the training scope).
        step: the training step these rollouts come from, if any.
        saved_kept: keep masks ``[R, C]`` bool read from a file or a training step, by selector label.
        context: ``[R, C]`` bool, the real tokens the student did not sample (tool turns of multi-turn
            episodes): shown greyed out, never scored, counted or kept; None for single-turn rollouts.
    """

    prompts: list[str]
    token_ids: Tensor
    tokens: list[list[str]]
    stats: TokenStats
    step: int | None = None
    saved_kept: dict[str, Tensor] | None = None
    context: Tensor | None = None

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def completions(self) -> list[str]:
        """The R completion texts (valid tokens joined)."""
        return ["".join(t for t, v in zip(row, valid) if v) for row, valid in zip(self.tokens, self.valid_lists())]

    def valid_lists(self) -> list[list[bool]]:
        """``stats.valid`` as R lists of C bools."""
        return self.stats.valid.tolist()

    def select(self, selector: Selector, seed: int = 0) -> Tensor:
        """The selector's weights ``[R, C]`` float on these statistics: 0 = not kept (1 = kept for masks)."""
        generator = torch.Generator(device=self.stats.valid.device).manual_seed(seed)
        return selector_weights(selector, self.stats, generator)

    def quadrants(self, entropy_threshold: float | None = None, divergence_threshold: float | None = None) -> Tensor:
        """Quadrant id per token ``[R, C]`` long: 0 invalid, 1..4 = Q1..Q4 (default thresholds: medians)."""
        return quadrants(self.stats, entropy_threshold, divergence_threshold)

    def records(self, selector: Selector | Tensor | None = None, seed: int = 0,
                entropy_threshold: float | None = None, divergence_threshold: float | None = None,
                ) -> list[dict[str, Any]]:
        """One dict per valid token with the keys ``COLUMNS``.

        ``selector``: a Selector (applied with ``seed``) or precomputed weights ``[R, C]``; None leaves
        ``kept`` False and ``weight`` 0 everywhere.
        """
        weights = self.weights(selector, seed)
        q = self.quadrants(entropy_threshold, divergence_threshold).tolist()
        s = self.stats
        cols = {name: getattr(s, name).tolist() for name in ("entropy", "rkl", "fkl", "entropy_hat", "rkl_hat")}
        ids, w = self.token_ids.tolist(), weights.tolist()
        rows = []
        for r, valid in enumerate(self.valid_lists()):
            for t, ok in enumerate(valid):
                if not ok:
                    continue
                row = {"rollout": r, "position": t, "token": self.tokens[r][t], "token_id": ids[r][t]}
                row.update({name: values[r][t] for name, values in cols.items()})
                row.update(quadrant=QUADRANT_NAMES[q[r][t]], kept=w[r][t] > 0, weight=w[r][t])
                rows.append(row)
        return rows

    def table(self, selector: Selector | Tensor | None = None, seed: int = 0, **thresholds: float | None):
        """``records(...)`` as a pandas DataFrame when pandas is installed, else the list of dicts."""
        rows = self.records(selector, seed, **thresholds)
        try:
            import pandas as pd
        except ImportError:
            return rows
        return pd.DataFrame(rows, columns=list(COLUMNS))

    def weights(self, selector: Selector | Tensor | None, seed: int = 0) -> Tensor:
        """Weights ``[R, C]`` from a Selector (applied with ``seed``), given weights, or None (all 0)."""
        if selector is None:
            return torch.zeros_like(self.stats.entropy)
        if isinstance(selector, Selector):
            return self.select(selector, seed)
        if selector.shape != self.stats.valid.shape:
            raise ValueError(f"weights have shape {tuple(selector.shape)}; they must match the scored "
                             f"rollouts' shape {tuple(self.stats.valid.shape)}.")
        return selector.float() * self.stats.valid

    def to_jsonl(self, path: str | Path, selectors: dict[str, Selector | Tensor] | None = None,
                 seed: int = 0, append: bool = False) -> Path:
        """Write one JSON line per rollout (format in the module docstring); returns the path.

        ``selectors``: label -> Selector (applied with ``seed``) or weights ``[R, C]``; their keep masks
        are saved under ``kept`` along with any ``saved_kept``.
        """
        kept = {k: v.bool() for k, v in (self.saved_kept or {}).items()}
        kept.update({label: self.weights(sel, seed) > 0 for label, sel in (selectors or {}).items()})
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a" if append else "w", encoding="utf-8") as f:
            for r in range(len(self)):
                f.write(json.dumps(self._line(r, kept)) + "\n")
        return path

    def shown(self, rollout: int) -> list[int]:
        """The positions of ``rollout`` a heatmap draws: its valid tokens and its context (tool) tokens."""
        shown = self.stats.valid[rollout] | (self.context[rollout] if self.context is not None else False)
        return shown.nonzero().squeeze(1).tolist()

    def _line(self, r: int, kept: dict[str, Tensor]) -> dict[str, Any]:
        valid = self.stats.valid[r]
        n = int(valid.nonzero().max()) + 1 if valid.any() else 0  # up to the last valid position
        s = self.stats
        context = {} if self.context is None else {"context": self.context[r, :n].int().tolist()}
        return {
            **context,
            "rollout": r, "step": self.step, "prompt": self.prompts[r], "completion": self.completions[r],
            "token_ids": self.token_ids[r, :n].tolist(), "tokens": self.tokens[r][:n],
            "valid": valid[:n].int().tolist(),
            **{name: [float(f"{x:.8g}") for x in getattr(s, name)[r, :n].tolist()]  # float32 precision
               for name in ("entropy", "rkl", "fkl")},
            "kept": {label: mask[r, :n].int().tolist() for label, mask in kept.items()},
        }


def from_lines(lines: list[dict[str, Any]], step: int | None = None) -> Scored:
    """A ``Scored`` from parsed JSONL lines, normalised over these lines with ``TokenStats.from_raw``."""
    if not lines:
        raise ValueError("no rollouts to build a Scored from; the JSONL file or step is empty.")
    width = max(max(len(line["valid"]) for line in lines), 1)

    def rows(key: str, dtype: torch.dtype) -> Tensor:
        return torch.stack([pad_right(torch.tensor([line[key]], dtype=dtype), width)[0] for line in lines])

    entropy, rkl, fkl = (rows(k, torch.float32) for k in ("entropy", "rkl", "fkl"))
    labels = sorted({label for line in lines for label in line.get("kept", {})})
    saved = {label: torch.stack([pad_right(torch.tensor([line.get("kept", {}).get(label, [])], dtype=torch.long),
                                           width)[0] for line in lines]).bool() for label in labels}
    return Scored(
        prompts=[line.get("prompt", "") for line in lines],
        token_ids=rows("token_ids", torch.long),
        tokens=[list(line["tokens"]) + [""] * (width - len(line["tokens"])) for line in lines],
        stats=TokenStats.from_raw(entropy, rkl, fkl, rows("valid", torch.long)),
        step=step,
        saved_kept=saved,
        context=rows("context", torch.long).bool() if all("context" in line for line in lines) else None,
    )


def read_jsonl(path: str | Path) -> list[Scored]:
    """Saved rollouts, one ``Scored`` per training step found in the file (one in all when no steps)."""
    path = Path(path)
    by_step: dict[int | None, list[dict[str, Any]]] = {}
    for line_no, line in read_lines(path):
        missing = [k for k in ("token_ids", "tokens", "valid", "entropy", "rkl", "fkl") if k not in line]
        if missing:
            raise ValueError(f"{path}:{line_no} lacks {missing}; it is not a tiplight rollouts file "
                             "(see tiplight.diagnostics.table for the format).")
        by_step.setdefault(line.get("step"), []).append(line)
    return [from_lines(lines, step) for step, lines in by_step.items()]


def from_step(record: Any, tokenizer: Any, max_rollouts: int | None = None, label: str = "selector",
              step: int | None = None) -> Scored:
    """A ``Scored`` from a ``DistillModule.last_step`` record (its first ``max_rollouts`` rollouts).

    The statistics keep the training normalisation (over the step's whole scope); the step's weights
    are saved under ``label``.
    """
    rows = slice(0, max_rollouts)
    rollout = record.rollout
    s = record.stats
    stats = TokenStats(*(getattr(s, f)[rows].detach().float().cpu() if f != "valid" else s.valid[rows].cpu()
                         for f in ("entropy", "rkl", "fkl", "valid", "entropy_hat", "rkl_hat")))
    ids = rollout.completion_ids[rows].cpu()
    prompts = prompt_texts(tokenizer, rollout, rows)
    # real tokens the student did not sample: the tool turns of multi-turn episodes (none in single-turn)
    context = rollout.attention_mask[rows, rollout.prompt_length :].bool().cpu() & ~stats.valid
    return Scored(prompts, ids, decode_tokens(tokenizer, ids, stats.valid | context), stats, step,
                  {label: record.weights[rows].cpu() > 0}, context if context.any() else None)
