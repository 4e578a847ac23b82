"""Diagnostics of token selection: which tokens a selector keeps, and why.

- ``Scorer`` / ``Scored`` (no Trainer): score rollouts or given texts, select, get a per-token table.
- ``heatmap_html`` / ``heatmap_png`` / ``histogram``: pictures of a rollout and of the (entropy,
  divergence) plane with the TIP quadrants.
- ``TipDiagnostics``: a Lightning callback that saves these pictures and the rollouts during fit.
- ``main``: ``tiplight analyze RUN_DIR_OR_JSONL``: quadrant shares, divergence by position, overlap
  of the kept sets of several selectors.
"""

from __future__ import annotations

from typing import Any

from tiplight.diagnostics.scoring import Scorer
from tiplight.diagnostics.table import COLUMNS, Scored, from_step, read_jsonl

__all__ = ["COLUMNS", "Scored", "Scorer", "TipDiagnostics", "from_step", "heatmap_html", "heatmap_png",
           "histogram", "main", "read_jsonl"]


def __getattr__(name: str) -> Any:
    # matplotlib and lightning load on first use: `import tiplight.diagnostics` stays light
    if name in ("heatmap_html", "heatmap_png", "histogram"):
        from tiplight.diagnostics import plots

        return getattr(plots, name)
    if name == "TipDiagnostics":
        from tiplight.diagnostics.callback import TipDiagnostics

        return TipDiagnostics
    raise AttributeError(f"module 'tiplight.diagnostics' has no attribute {name!r}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``tiplight analyze ...``."""
    from tiplight.diagnostics.analyze import main as _main

    return _main(argv)
