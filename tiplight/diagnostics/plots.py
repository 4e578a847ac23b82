"""Pictures of a selection: a token heatmap (HTML for notebooks, PNG for papers) and the
entropy-by-divergence histogram with the TIP quadrants (matplotlib, ``Agg`` backend).

PNG sizes are fixed: ``figsize * dpi`` pixels (defaults 1200 x 480 for the heatmap, 600 x 500 for the
histogram); figures are never cropped.
"""

from __future__ import annotations

import html
from pathlib import Path

import torch
from torch import Tensor

from tiplight.diagnostics.table import QUADRANT_NAMES, Scored
from tiplight.selection import Selector

QUADRANT_COLORS = {"Q1": "#e4572e", "Q2": "#f3a712", "Q3": "#7b2cbf", "Q4": "#d9d9d9"}
QUADRANT_LABELS = {"Q1": "high H, high D", "Q2": "high H, low D", "Q3": "low H, high D (overconfident)",
                   "Q4": "low H, low D (solved)"}
STATISTICS = ("entropy", "rkl", "fkl", "entropy_hat", "rkl_hat")
HEATMAP_SIZE, HISTOGRAM_SIZE, DPI = (12.0, 4.8), (6.0, 5.0), 100
TOOL_COLOR = "#f4f4f4"  # tool output of multi-turn episodes: context, never scored (lighter than Q4's grey)


def _figure(figsize: tuple[float, float], dpi: int):
    """A matplotlib Figure that needs no GUI backend (pyplot's global state stays untouched)."""
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, dpi=dpi)


def _colors(scored: Scored, rollout: int, color_by: str, thresholds: dict) -> list[str]:
    """A CSS colour per completion position of ``rollout``: its quadrant's, or the statistic's (viridis)."""
    if color_by == "quadrant":
        q = scored.quadrants(**thresholds)[rollout].tolist()
        return [QUADRANT_COLORS.get(QUADRANT_NAMES[i], "#ffffff") for i in q]
    if color_by not in STATISTICS:
        raise ValueError(f"color_by={color_by!r} is not allowed; use 'quadrant' or one of {', '.join(STATISTICS)}.")
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    values, valid = getattr(scored.stats, color_by), scored.stats.valid
    lo, hi = values[valid].min(), values[valid].max()
    scaled = ((values[rollout] - lo) / (hi - lo).clamp_min(1e-12)).clamp(0, 1).tolist()
    return [to_hex(colormaps["viridis"](0.15 + 0.85 * x)) for x in scaled]


def heatmap_html(scored: Scored, rollout: int = 0, selector: Selector | Tensor | None = None, *,
                 color_by: str = "quadrant", seed: int = 0, entropy_threshold: float | None = None,
                 divergence_threshold: float | None = None) -> str:
    """A self-contained HTML fragment: one ``<span class="tok">`` per valid token of ``rollout``, and per
    tool token of a multi-turn episode (``data-segment="tool"``, grey, no statistics, never kept).

    Each span carries ``data-position``, ``data-quadrant`` (Q1..Q4), ``data-kept`` (1/0) and a tooltip
    with the statistics; kept tokens are boxed. All model text is HTML-escaped.
    """
    thresholds = {"entropy_threshold": entropy_threshold, "divergence_threshold": divergence_threshold}
    kept = (scored.weights(selector, seed)[rollout] > 0).tolist()
    colors = _colors(scored, rollout, color_by, thresholds)
    q = scored.quadrants(**thresholds)[rollout].tolist()
    s = scored.stats
    spans = []
    for t in scored.shown(rollout):
        if not s.valid[rollout, t]:
            spans.append(f'<span class="tok" data-position="{t}" data-segment="tool" data-kept="0" '
                         f'style="background:{TOOL_COLOR};color:#777" title="position {t} | tool output (context, '
                         f'not scored)">{html.escape(scored.tokens[rollout][t])}</span>')
            continue
        tip = (f"position {t} | {QUADRANT_NAMES[q[t]]} | entropy {s.entropy[rollout, t]:.4f} | "
               f"rkl {s.rkl[rollout, t]:.4f} | fkl {s.fkl[rollout, t]:.4f} | kept {'yes' if kept[t] else 'no'}")
        style = f"background:{colors[t]};" + ("outline:2px solid #000;" if kept[t] else "opacity:0.75;")
        spans.append(f'<span class="tok" data-position="{t}" data-quadrant="{QUADRANT_NAMES[q[t]]}" '
                     f'data-kept="{int(kept[t])}" style="{style}" title="{html.escape(tip)}">'
                     f"{html.escape(scored.tokens[rollout][t])}</span>")
    legend = " ".join(f'<span style="background:{c};padding:0 4px">{n}: {html.escape(QUADRANT_LABELS[n])}</span>'
                      for n, c in QUADRANT_COLORS.items()) if color_by == "quadrant" else \
        f"colour: {html.escape(color_by)} (viridis, dark = low)"
    return (
        '<div class="tiplight-heatmap" style="font-family:monospace;line-height:1.9">'
        f'<div class="prompt" style="white-space:pre-wrap;color:#555">{html.escape(scored.prompts[rollout])}</div>'
        f'<div class="completion" style="white-space:pre-wrap">{"".join(spans)}</div>'
        f'<div class="legend" style="font-size:85%;margin-top:4px">{legend}; '
        '<span style="outline:2px solid #000">boxed</span> = kept; '
        f'<span style="background:{TOOL_COLOR};color:#777">grey</span> = tool output (context)</div></div>'
    )


def _shown(token: str) -> str:
    """A token as drawn in a box: whitespace made visible."""
    return token.replace("\n", "⏎").replace(" ", "␣").replace("\t", "⇥") or "∅"


def heatmap_png(scored: Scored, path: str | Path | None = None, rollout: int = 0,
                selector: Selector | Tensor | None = None, *, color_by: str = "quadrant", seed: int = 0,
                columns: int = 32, figsize: tuple[float, float] = HEATMAP_SIZE, dpi: int = DPI,
                entropy_threshold: float | None = None, divergence_threshold: float | None = None):
    """The tokens of ``rollout`` as coloured boxes, ``columns`` per row; kept tokens get a thick black edge.

    Returns the matplotlib Figure; writes a ``figsize * dpi`` pixel PNG to ``path`` when given.
    """
    from matplotlib.patches import Rectangle

    thresholds = {"entropy_threshold": entropy_threshold, "divergence_threshold": divergence_threshold}
    positions, valid = scored.shown(rollout), scored.stats.valid[rollout].tolist()
    kept = (scored.weights(selector, seed)[rollout] > 0).tolist()
    colors = _colors(scored, rollout, color_by, thresholds)
    rows = max(1, -(-len(positions) // columns))
    fig = _figure(figsize, dpi)
    ax = fig.add_axes((0.01, 0.08, 0.98, 0.84))
    ax.set_xlim(0, columns)
    ax.set_ylim(max(rows, 6), 0)  # short rollouts keep boxes of a readable height
    ax.axis("off")
    size = min(9.0, 0.6 * figsize[1] * 72 / (rows + 1))
    for i, t in enumerate(positions):
        x, y = i % columns, i // columns
        ax.add_patch(Rectangle((x + 0.04, y + 0.06), 0.92, 0.88, facecolor=colors[t] if valid[t] else TOOL_COLOR,
                               edgecolor="black" if kept[t] else "none", linewidth=2.0 if kept[t] else 0))
        ax.text(x + 0.5, y + 0.5, _shown(scored.tokens[rollout][t])[:6], ha="center", va="center", fontsize=size,
                color="black" if valid[t] else "#888888")
    tools = len(positions) - sum(valid)
    title = (f"rollout {rollout}: {sum(valid)} tokens, {sum(kept)} kept (black edge); colour: {color_by}"
             + (f"; {tools} tool tokens (grey, context)" if tools else ""))
    fig.suptitle(title, fontsize=10)
    if color_by == "quadrant":
        from matplotlib.patches import Patch

        fig.legend(handles=[Patch(color=c, label=f"{n}: {QUADRANT_LABELS[n]}") for n, c in QUADRANT_COLORS.items()],
                   loc="lower center", ncol=4, fontsize=8, frameon=False)
    if path is not None:
        fig.savefig(path, format="png")
    return fig


def thresholds(scored: Scored, entropy_threshold: float | None = None,
               divergence_threshold: float | None = None) -> tuple[float, float]:
    """The quadrant split on (entropy_hat, rkl_hat): given values, else medians over valid tokens
    (as ``selection.quadrants``)."""
    s = scored.stats

    def median(x: Tensor, given: float | None) -> float:
        return float(given) if given is not None else float(x[s.valid].median()) if s.valid.any() else 0.0

    return median(s.entropy_hat, entropy_threshold), median(s.rkl_hat, divergence_threshold)


def histogram(scored: Scored, path: str | Path | None = None, selector: Selector | Tensor | None = None, *,
              seed: int = 0, bins: int = 40, figsize: tuple[float, float] = HISTOGRAM_SIZE, dpi: int = DPI,
              entropy_threshold: float | None = None, divergence_threshold: float | None = None):
    """2-D histogram of valid tokens over normalised entropy (x) and reverse KL (y), log-scaled counts,
    with the quadrant thresholds and the kept tokens as dots.

    Returns the matplotlib Figure; writes a ``figsize * dpi`` pixel PNG to ``path`` when given.
    """
    from matplotlib.colors import LogNorm

    s = scored.stats
    kept = (scored.weights(selector, seed) > 0) & s.valid
    x, y = s.entropy_hat[s.valid].numpy(), s.rkl_hat[s.valid].numpy()
    h_split, d_split = thresholds(scored, entropy_threshold, divergence_threshold)
    fig = _figure(figsize, dpi)
    ax = fig.add_axes((0.12, 0.11, 0.7, 0.8))
    *_, image = ax.hist2d(x, y, bins=bins, range=((0, 1), (0, 1)), cmap="Greys", norm=LogNorm(), cmin=1)
    fig.colorbar(image, cax=fig.add_axes((0.85, 0.11, 0.03, 0.8)), label="tokens")
    if kept.any():
        ax.scatter(s.entropy_hat[kept].numpy(), s.rkl_hat[kept].numpy(), s=6, c="#e4572e", alpha=0.6,
                   label=f"kept ({int(kept.sum())} of {int(s.valid.sum())})")
        ax.legend(loc="upper center", fontsize=8)
    ax.axvline(h_split, color="#1f77b4", linestyle="--", linewidth=1)
    ax.axhline(d_split, color="#1f77b4", linestyle="--", linewidth=1)
    corners = {"Q1": (0.98, 0.98, "right", "top"), "Q2": (0.98, 0.02, "right", "bottom"),
               "Q3": (0.02, 0.98, "left", "top"), "Q4": (0.02, 0.02, "left", "bottom")}
    for name, (qx, qy, ha, va) in corners.items():
        ax.text(qx, qy, name, transform=ax.transAxes, ha=ha, va=va, color="#1f77b4", fontsize=11)
    ax.set_xlabel("student entropy (normalised, ĥ)")
    ax.set_ylabel("reverse KL (normalised, δ̂)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    if path is not None:
        fig.savefig(path, format="png")
    return fig


def to_image(fig) -> Tensor:
    """A rendered Figure as a ``[3, H, W]`` uint8 tensor (for ``SummaryWriter.add_image``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgba = torch.frombuffer(bytearray(canvas.buffer_rgba()), dtype=torch.uint8)
    width, height = canvas.get_width_height()
    return rgba.view(height, width, 4)[..., :3].permute(2, 0, 1).contiguous()
