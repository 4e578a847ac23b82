"""``tiplight analyze RUN_DIR_OR_JSONL``: quadrant shares, divergence by position, kept-set overlap.

Reads saved rollouts (``TipDiagnostics`` writes ``<log_dir>/diagnostics/rollouts.jsonl``;
``Scored.to_jsonl`` writes the same format). Each training step in a file is one statistics scope:
selections are recomputed per step from the saved raw statistics (``TokenStats.from_raw``), so they are
normalised over the saved rollouts, not over the step's whole batch. Kept masks saved in the file are
reported as ``saved:<label>``. With ``--planted`` (the world's planted-error mask, e.g.
``tiplight.toy.planted.planted_error_mask``) it also reports how each kept set meets the planted errors.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path
from typing import Any

import torch

from tiplight.diagnostics.table import QUADRANT_NAMES, Scored, read_jsonl
from tiplight.planted import load_planted_mask, planted_positions
from tiplight.selection import Selector, get_selector, planted_recall, quadrant_shares

DEFAULT_SELECTORS = ("SoftOrTopK:0.5", "EntropyTopK:0.5", "OverconfidentTopK:0.2")


def parse_selector(spec: str) -> Selector:
    """``Name``, ``Name:retain`` or ``Name:key=value,key=value`` (values read as JSON when they parse)."""
    name, _, args = spec.partition(":")
    kwargs: dict[str, Any] = {}
    if args and "=" not in args:
        try:
            kwargs["retain"] = float(args)
        except ValueError:
            raise ValueError(f"selector {spec!r}: {args!r} is not a retain fraction; write Name:0.5 or "
                             "Name:key=value,...") from None
    elif args:
        for pair in args.split(","):
            key, _, value = pair.partition("=")
            try:
                kwargs[key.strip()] = json.loads(value)
            except json.JSONDecodeError:
                kwargs[key.strip()] = value
    return get_selector(name, **kwargs)


def find_files(source: str | Path) -> list[Path]:
    """The rollouts files: ``source`` itself, or every ``*.jsonl`` under a run directory's ``diagnostics``
    folders (other JSONL files of a run, such as evaluation records, are not rollouts)."""
    source = Path(source)
    if source.is_file():
        return [source]
    if source.is_dir():
        files = sorted(p for p in source.rglob("*.jsonl") if "diagnostics" in p.relative_to(source).parts)
        if files:
            return files
        raise ValueError(f"{str(source)!r} has no diagnostics rollouts (no diagnostics/*.jsonl); train with "
                         "--trainer.callbacks+=tiplight.diagnostics.TipDiagnostics, or give a JSONL path "
                         "written by Scored.to_jsonl.")
    raise ValueError(f"{str(source)!r} does not exist; give a run directory or a rollouts JSONL file.")


def kept_sets(scopes: list[Scored], selectors: dict[str, Selector], seed: int) -> dict[str, list[torch.Tensor]]:
    """Per label, one keep mask ``[R, C]`` per scope: recomputed selections, then the saved ones."""
    out = {label: [s.select(sel, seed) > 0 for s in scopes] for label, sel in selectors.items()}
    saved = sorted({label for s in scopes for label in (s.saved_kept or {})})
    for label in saved:
        out[f"saved:{label}"] = [(s.saved_kept or {}).get(label, torch.zeros_like(s.stats.valid)) & s.stats.valid
                                 for s in scopes]
    return out


def shares(scopes: list[Scored], masks: list[torch.Tensor] | None, thresholds: dict) -> dict[str, float]:
    """Quadrant shares among the tokens of ``masks`` (all valid tokens when None), over all scopes."""
    ids = torch.cat([s.quadrants(**thresholds).flatten() for s in scopes])
    keep = torch.cat([(m if m is not None else s.stats.valid).flatten()
                      for s, m in zip(scopes, masks or [None] * len(scopes))])
    return quadrant_shares(ids, keep)


def by_position(scopes: list[Scored], buckets: int) -> list[dict[str, float]]:
    """Mean entropy, reverse and forward KL by relative position in the rollout (``buckets`` equal bins)."""
    sums = torch.zeros(buckets, 4, dtype=torch.float64)  # tokens, entropy, rkl, fkl
    for s in scopes:
        valid = s.stats.valid
        rank = valid.long().cumsum(1) - 1  # index among the rollout's valid tokens  [R, C]
        length = valid.sum(1, keepdim=True).clamp_min(1)  # [R, 1]
        bucket = (rank * buckets // length).clamp(0, buckets - 1)[valid]  # [N]
        values = torch.stack([torch.ones_like(s.stats.entropy), s.stats.entropy, s.stats.rkl, s.stats.fkl], -1)[valid]
        sums.index_add_(0, bucket, values.double())
    mean = sums[:, 1:] / sums[:, :1].clamp_min(1)
    return [{"bucket": f"{100 * b // buckets}-{100 * (b + 1) // buckets}%", "tokens": int(sums[b, 0]),
             "entropy": float(mean[b, 0]), "rkl": float(mean[b, 1]), "fkl": float(mean[b, 2])} for b in range(buckets)]


def overlap(kept: dict[str, list[torch.Tensor]]) -> list[dict[str, Any]]:
    """Pairwise Jaccard index |A & B| / |A | B| of the kept sets, over all tokens of all scopes."""
    flat = {label: torch.cat([m.flatten() for m in masks]) for label, masks in kept.items()}
    rows = []
    for a, b in itertools.combinations(flat, 2):
        inter, union = int((flat[a] & flat[b]).sum()), int((flat[a] | flat[b]).sum())
        rows.append({"a": a, "b": b, "intersection": inter, "union": union,
                     "jaccard": inter / union if union else float("nan")})
    return rows


def planted(scopes: list[Scored], kept: dict[str, list[torch.Tensor]], path: str) -> dict[str, dict[str, float]]:
    """``selection.planted_recall`` of each kept set against the planted errors that the mask at dotted
    ``path`` marks on the saved rollouts, over all scopes."""
    mark = load_planted_mask(path, "--planted")
    truth = torch.cat([planted_positions(mark, s.prompts, s.tokens, s.stats.valid).flatten() for s in scopes])
    valid = torch.cat([s.stats.valid.flatten() for s in scopes])
    return {label: planted_recall(truth, torch.cat([m.flatten() for m in masks]), valid)
            for label, masks in kept.items()}


def analyze(source: str | Path, selectors: list[str] = DEFAULT_SELECTORS, buckets: int = 10, seed: int = 0,
            entropy_threshold: float | None = None, divergence_threshold: float | None = None,
            planted_errors: str | None = None) -> dict[str, Any]:
    """The whole report as a dict (what ``--json`` prints); ``planted`` only with ``planted_errors``."""
    if buckets < 1:
        raise ValueError(f"--buckets={buckets} is not allowed; use an integer >= 1.")
    files = find_files(source)
    scopes = [scored for f in files for scored in read_jsonl(f)]
    if not scopes:
        raise ValueError(f"{', '.join(map(str, files))} hold no rollouts (empty files).")
    thresholds = {"entropy_threshold": entropy_threshold, "divergence_threshold": divergence_threshold}
    kept = kept_sets(scopes, {spec: parse_selector(spec) for spec in selectors}, seed)
    valid = sum(int(s.stats.valid.sum()) for s in scopes)
    return {
        "files": [str(f) for f in files],
        "rollouts": sum(len(s) for s in scopes),
        "steps": sorted({s.step for s in scopes if s.step is not None}),
        "tokens": valid,
        "quadrant_shares": {"all": shares(scopes, None, thresholds),
                            **{label: shares(scopes, masks, thresholds) for label, masks in kept.items()}},
        "kept_fraction": {label: sum(int(m.sum()) for m in masks) / max(valid, 1) for label, masks in kept.items()},
        "by_position": by_position(scopes, buckets),
        "overlap": overlap(kept),
        **({"planted": planted(scopes, kept, planted_errors)} if planted_errors else {}),
    }


def markdown(report: dict[str, Any]) -> str:
    """The report as markdown tables."""
    names = QUADRANT_NAMES[1:]
    lines = [f"# tiplight analyze: {report['rollouts']} rollouts, {report['tokens']} tokens, "
             f"{len(report['steps'])} steps, {len(report['files'])} files", "",
             "## Quadrant shares (all valid tokens, then the kept tokens of each selector)", "",
             f"| tokens | kept fraction | {' | '.join(names)} |", "|---|---|" + "---|" * len(names)]
    for label, sh in report["quadrant_shares"].items():
        frac = report["kept_fraction"].get(label, 1.0)
        lines.append(f"| {label} | {frac:.3f} | " + " | ".join(f"{sh[n]:.3f}" for n in names) + " |")
    lines += ["", "## Mean statistics by relative position in the rollout", "",
              "| position | tokens | entropy | rkl | fkl |", "|---|---|---|---|---|"]
    lines += [f"| {r['bucket']} | {r['tokens']} | {r['entropy']:.4f} | {r['rkl']:.4f} | {r['fkl']:.4f} |"
              for r in report["by_position"]]
    lines += ["", "## Overlap of kept sets (Jaccard)", "", "| a | b | intersection | union | jaccard |",
              "|---|---|---|---|---|"]
    lines += [f"| {r['a']} | {r['b']} | {r['intersection']} | {r['union']} | {r['jaccard']:.3f} |"
              for r in report["overlap"]]
    if "planted" in report:
        lines += ["", "## Planted errors (share of them kept, share of the kept set that they are)", "",
                  "| tokens | recall | precision | planted share |", "|---|---|---|---|"]
        lines += [f"| {label} | {r['recall']:.3f} | {r['precision']:.3f} | {r['share']:.3f} |"
                  for label, r in report["planted"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``tiplight analyze``: print the report (markdown, or JSON with ``--json``)."""
    parser = argparse.ArgumentParser(prog="tiplight analyze", description=__doc__.split("\n")[0])
    parser.add_argument("source", help="a run directory (searched for diagnostics/*.jsonl) or a rollouts JSONL file")
    parser.add_argument("--selectors", nargs="+", default=list(DEFAULT_SELECTORS),
                        help="registry names with a retain fraction or arguments: SoftOrTopK:0.5 "
                             "QuadrantSelector:quadrants=[\"Q3\"] AllTokens (default: %(default)s)")
    parser.add_argument("--buckets", type=int, default=10, help="relative-position bins (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of stochastic selectors (default: %(default)s)")
    parser.add_argument("--entropy-threshold", type=float, default=None,
                        help="quadrant split on normalised entropy (default: the median)")
    parser.add_argument("--divergence-threshold", type=float, default=None,
                        help="quadrant split on normalised reverse KL (default: the median)")
    parser.add_argument("--planted", default=None, metavar="DOTTED.PATH",
                        help="the world's planted-error mask (tiplight.toy.planted.planted_error_mask): report "
                             "the recall of planted errors by each kept set")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    report = analyze(args.source, args.selectors, args.buckets, args.seed, args.entropy_threshold,
                     args.divergence_threshold, args.planted)
    print(json.dumps(report, indent=2) if args.json else markdown(report))
    return 0
