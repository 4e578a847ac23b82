"""A study's report: ``results.csv`` (one row per run, with the command that reproduces it) from the runs'
``summary.json``, then everything else from ``results.csv`` alone: a Markdown table of mean and 95% CI per
setting, paired differences against the baseline over the same seeds (also at equal update cost), the
planted-error recall of a world that has planted errors, and the plots (``compute.png`` with costs).

The compute-matched view measures the update's cost as its kept-token head FLOPs (6 d V per kept token,
summed over the run: ``cost/head_flops``), the part of the update a selector sets. It is a count, not a
timing: a rerun reproduces it exactly, on any machine and under any load, where the seconds of a shared
machine do not. It leaves out the backbone's forward and backward, which run over every position whatever
is kept, so it is the saving a selector could reach, not the wall time it saves."""

from __future__ import annotations

import csv
import itertools
import math
from collections import defaultdict
from pathlib import Path

from tiplight.study.grid import Study, read_summary
from tiplight.study.intervals import Interval, interval, paired

QUADRANTS = ("Q1", "Q2", "Q3", "Q4")
PLANTED = ("recall", "precision", "share")  # planted/* of summary.json, as planted_<name> columns
PHASES = ("rollout", "score", "select", "update")  # time/* of summary.json: mean seconds per step
COLUMNS = ("setting", "seed", "status", "accuracy_before", "accuracy_after", "steps", "kept_fraction",
           "wall_seconds", "peak_memory_mib", *(f"{p}_seconds" for p in PHASES),
           *(f"{q}_{over}" for over in ("all", "kept") for q in QUADRANTS), *(f"planted_{p}" for p in PLANTED),
           "head_flops", "accuracy_curve", "command")


def collect(study: Study) -> list[dict[str, object]]:
    """One row per run of ``study`` (finished, failed or pending), in the study's order."""
    rows = []
    for run in study.runs():
        folder = Path(run.folder)
        row: dict[str, object] = {c: "" for c in COLUMNS}
        row.update(setting=run.setting, seed=run.seed, command=run.command, status="pending")
        s = read_summary(folder)
        if s is not None:
            row.update(status="done", accuracy_before=s.get("accuracy_before"), accuracy_after=s.get("accuracy_after"),
                       steps=s.get("steps"), kept_fraction=s.get("train/kept_fraction"),
                       wall_seconds=s.get("wall_seconds"), peak_memory_mib=s.get("peak_memory_mib"),
                       head_flops=s.get("cost/head_flops", ""),
                       **{f"planted_{p}": s.get(f"planted/{p}", "") for p in PLANTED},
                       accuracy_curve=" ".join(f"{k}:{v:.4f}" for k, v in s.get("accuracy_curve", {}).items()))
            for q in QUADRANTS:
                for over in ("all", "kept"):
                    row[f"{q}_{over}"] = s.get(f"quadrant/{q}_{over}", "")
            times = {p: s[f"time/{p}"] for p in PHASES if f"time/{p}" in s} or logged_means(folder, PHASES)
            row.update({f"{p}_seconds": seconds for p, seconds in times.items()})
        elif (folder / "failed.json").is_file():
            row["status"] = "failed"
        rows.append(row)
    return rows


def logged_means(folder: Path, phases: tuple[str, ...]) -> dict[str, float]:
    """``phase -> mean of time/<phase>`` over the steps the run's TensorBoard log holds: the step times of a
    run whose ``summary.json`` predates them ({} without a log)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    log.Reload()
    tags = set(log.Tags()["scalars"])
    return {p: sum(e.value for e in events) / len(events) for p in phases
            if f"time/{p}" in tags and (events := log.Scalars(f"time/{p}"))}


def write_csv(rows: list[dict[str, object]], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def by_setting(rows: list[dict[str, str]], column: str) -> dict[str, dict[int, float]]:
    """``setting -> {seed: value}`` of a numeric column over the finished runs, settings in row order."""
    out: dict[str, dict[int, float]] = defaultdict(dict)
    for row in rows:
        if row["status"] == "done" and row.get(column, "") not in ("", "None"):
            out[row["setting"]][int(row["seed"])] = float(row[column])
    return dict(out)


def curve_points(text: str) -> dict[int, float]:
    """``{step: accuracy}`` of one ``accuracy_curve`` cell (``"0:0.4650 50:0.5810"``)."""
    return {int(step): float(acc) for step, acc in (point.split(":") for point in text.split())}


def curves(rows: list[dict[str, str]]) -> dict[str, dict[int, list[float]]]:
    """``setting -> {step: [accuracy per seed]}`` from the ``accuracy_curve`` column."""
    out: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        for step, acc in curve_points(row["accuracy_curve"] if row["status"] == "done" else "").items():
            out[row["setting"]][step].append(acc)
    return {k: dict(v) for k, v in out.items()}


def accuracy_at_cost(curve: dict[int, float], steps: int, total: float, cost: float) -> float:
    """A run's accuracy once it had spent ``cost`` head FLOPs: linear along its ``curve`` (step -> accuracy),
    its ``total`` FLOPs spread evenly over its ``steps`` steps; its last accuracy from ``total`` on."""
    points = sorted((total * step / steps, acc) for step, acc in curve.items())
    if cost >= points[-1][0]:
        return points[-1][1]
    if cost <= points[0][0]:
        return points[0][1]
    (x0, y0), (x1, y1) = next((a, b) for a, b in itertools.pairwise(points) if a[0] <= cost <= b[0])
    return y0 if x1 == x0 else y0 + (y1 - y0) * (cost - x0) / (x1 - x0)


def compute_matched(rows: list[dict[str, str]], baseline: str) -> dict[str, dict[int, float]]:
    """``setting -> {seed: accuracy after - the baseline's accuracy (same seed) at this run's head FLOPs}``.

    A selector that kept a tenth of the tokens is compared with the baseline after a tenth of its head
    work (``accuracy_at_cost``), not after the same number of steps."""
    done = [r for r in rows if r["status"] == "done" and r["accuracy_curve"]  # runs without evaluations: none
            and all(r[c] not in ("", "None") for c in ("head_flops", "accuracy_after"))]
    base = {int(r["seed"]): r for r in done if r["setting"] == baseline}
    out: dict[str, dict[int, float]] = defaultdict(dict)
    for row in done:
        b = base.get(int(row["seed"]))
        if b is not None:
            at = accuracy_at_cost(curve_points(b["accuracy_curve"]), int(b["steps"]), float(b["head_flops"]),
                                  float(row["head_flops"]))
            out[row["setting"]][int(row["seed"])] = float(row["accuracy_after"]) - at
    return dict(out)


def _pct(i: Interval) -> str:
    if math.isnan(i.mean):
        return "-"
    return f"{100 * i.mean:.1f}" + ("" if math.isnan(i.half_width) else f" ± {100 * i.half_width:.1f}")


def markdown(rows: list[dict[str, str]], baseline: str | None) -> str:
    """Mean ± 95% CI per setting, and the paired difference to ``baseline`` (points, same seeds)."""
    after, before = by_setting(rows, "accuracy_after"), by_setting(rows, "accuracy_before")
    kept, wall = by_setting(rows, "kept_fraction"), by_setting(rows, "wall_seconds")
    flops = by_setting(rows, "head_flops")
    matched = compute_matched(rows, baseline) if baseline in flops else {}
    head = ["setting", "runs", "accuracy before (%)", "accuracy after (%)"]
    if baseline in after:
        head.append(f"after - {baseline} (points, paired)")
    if matched:
        head.append(f"after - {baseline} at equal head FLOPs (points, paired)")
    head += ["kept fraction", "wall (s)"] + (["head GFLOPs"] if flops else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for setting, values in after.items():
        cells = [setting, str(len(values)), _pct(interval(list(before.get(setting, {}).values()))),
                 _pct(interval(list(values.values())))]
        if baseline in after:
            cells.append("-" if setting == baseline else _pct(paired(values, after[baseline])))
        if matched:
            cells.append("-" if setting == baseline else _pct(interval(list(matched.get(setting, {}).values()))))
        cells += [f"{interval(list(kept.get(setting, {}).values())).mean:.3f}",
                  f"{interval(list(wall.get(setting, {}).values())).mean:.0f}"]
        if flops:
            cells.append(f"{interval(list(flops.get(setting, {}).values())).mean / 1e9:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def step_time_table(rows: list[dict[str, str]], baseline: str | None) -> str:
    """Mean seconds per step of each phase, and the step time over ``baseline``'s on the same seed (the
    ratio's mean ± 95% CI over seeds); "" when no run logged its step times. Read the ratio, not the seconds:
    runs that shared a machine share its load, and a study runs its settings seed by seed."""
    phases = {p: by_setting(rows, f"{p}_seconds") for p in PHASES}
    if not any(phases.values()):
        return ""
    step = {setting: {seed: sum(phases[p][setting].get(seed, 0.0) for p in PHASES) for seed in seeds}
            for setting, seeds in phases["update"].items()}
    ratio = baseline in step
    head = ["setting", *(f"{p} (s)" for p in PHASES), "step (s)"] + ([f"step / {baseline} (paired)"] if ratio else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for setting, seconds in step.items():
        cells = [setting, *(f"{interval(list(phases[p].get(setting, {}).values())).mean:.3f}" for p in PHASES),
                 f"{interval(list(seconds.values())).mean:.3f}"]
        if ratio:
            shared = [seconds[s] / step[baseline][s] for s in seconds if step[baseline].get(s)]
            i = interval(shared)
            cells.append(f"{i.mean:.2f}" + ("" if math.isnan(i.half_width) else f" ± {i.half_width:.2f}"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def quadrant_table(rows: list[dict[str, str]]) -> str:
    """Mean TIP quadrant shares (%) over all valid tokens and over kept tokens, per setting."""
    head = ["setting", *(f"{q} all" for q in QUADRANTS), *(f"{q} kept" for q in QUADRANTS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    shares = [by_setting(rows, f"{q}_{over}") for over in ("all", "kept") for q in QUADRANTS]
    for setting in by_setting(rows, "accuracy_after"):
        means = [interval(list(column.get(setting, {}).values())).mean for column in shares]
        lines.append("| " + " | ".join([setting, *("-" if math.isnan(m) else f"{100 * m:.1f}" for m in means)]) + " |")
    return "\n".join(lines) + "\n"


def planted_table(rows: list[dict[str, str]]) -> str:
    """Mean planted-error recall, precision and share (%) per setting; "" when no run logged them."""
    columns = {p: by_setting(rows, f"planted_{p}") for p in PLANTED}
    if not any(columns.values()):
        return ""
    lines = ["| setting | planted errors kept (recall) | kept tokens that are planted errors (precision) | "
             "planted errors among all tokens |", "|---|---|---|---|"]
    for setting in by_setting(rows, "accuracy_after"):
        means = [interval(list(columns[p].get(setting, {}).values())).mean for p in PLANTED]
        lines.append("| " + " | ".join([setting, *("-" if math.isnan(m) else f"{100 * m:.1f}" for m in means)]) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, str]], out: Path) -> list[Path]:
    """``accuracy.png`` (final accuracy, mean and 95% CI per setting) and ``curves.png`` (accuracy against
    training step, mean over seeds per setting)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    after = by_setting(rows, "accuracy_after")
    stats = {s: interval(list(v.values())) for s, v in after.items()}
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(stats) + 1.5))
    names = list(stats)[::-1]
    ax.errorbar([100 * stats[s].mean for s in names], range(len(names)), fmt="o", capsize=4,
                xerr=[0 if math.isnan(stats[s].half_width) else 100 * stats[s].half_width for s in names])
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("accuracy after training (%), mean and 95% CI over seeds")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    paths = [out / "accuracy.png", out / "curves.png"]
    fig.savefig(paths[0], dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for setting, points in curves(rows).items():
        steps = sorted(points)
        ax.plot(steps, [100 * sum(points[s]) / len(points[s]) for s in steps], marker="o", label=setting)
    ax.set_xlabel("training step")
    ax.set_ylabel("accuracy (%), mean over seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(paths[1], dpi=120)
    plt.close(fig)
    flops = by_setting(rows, "head_flops")
    if flops:
        paths.append(_plot_compute(plt, stats, flops, out / "compute.png"))
    return paths


def _plot_compute(plt, stats: dict[str, Interval], flops: dict[str, dict[int, float]], path: Path) -> Path:
    """``compute.png``: final accuracy (mean and 95% CI) against the update's kept-token head FLOPs."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for setting, acc in stats.items():
        cost = interval(list(flops.get(setting, {}).values())).mean / 1e9
        ax.errorbar([cost], [100 * acc.mean], yerr=[0 if math.isnan(acc.half_width) else 100 * acc.half_width],
                    fmt="o", capsize=4, label=setting)
    ax.set_xscale("log")
    ax.set_xlabel("kept-token head GFLOPs of the update, whole run (log scale)")
    ax.set_ylabel("accuracy after training (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def unreadable(study: Study) -> list[str]:
    """The ``summary.json`` files of ``study`` that exist but cannot be read (those runs count as pending)."""
    return [str(Path(r.folder) / "summary.json") for r in study.runs()
            if (Path(r.folder) / "summary.json").is_file() and not r.finished]


def report(out: str | Path) -> str:
    """Refresh ``results.csv`` from the runs, then ``report.md`` and the plots from ``results.csv``."""
    out = Path(out)
    study = Study.load(out)
    write_csv(collect(study), out / "results.csv")
    rows = read_csv(out / "results.csv")
    counts = {s: sum(r["status"] == s for r in rows) for s in ("done", "failed", "pending")}
    broken = "".join(f"{path} is unreadable (cut off while written?): that run is pending and runs again "
                     "with the next `tiplight study`\n" for path in unreadable(study))
    planted, times = planted_table(rows), step_time_table(rows, study.baseline)
    text = (f"runs: {counts['done']} done, {counts['failed']} failed, {counts['pending']} pending\n{broken}\n"
            + markdown(rows, study.baseline) + "\nTIP quadrant shares (%), mean over steps and seeds\n\n"
            + quadrant_table(rows)
            + (f"\nPlanted errors (%), mean over steps and seeds\n\n{planted}" if planted else "")
            + (f"\nSeconds per step by phase (mean over steps, then seeds)\n\n{times}" if times else ""))
    (out / "report.md").write_text(text)
    if counts["done"]:
        plot(rows, out)
    return text
