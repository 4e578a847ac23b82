"""``tiplight study``: run a grid of ``tiplight fit`` runs over seeds, then report means with 95% CIs.

    tiplight study --config configs/toy.yaml \\
        --grid selection=all_tokens,soft_or_50,entropy_sampling_50 --seeds 0 1 2 3 4 \\
        --baseline all_tokens --out studies/mine --jobs 2
    tiplight study report studies/mine
"""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path

from tiplight.study.grid import Axis, Run, Study, threads_per_run
from tiplight.study.report import report
from tiplight.study.runner import check_free, run_local, run_submitit

__all__ = ["Axis", "Run", "Study", "main", "report"]

EPILOG = """the grid:
  Every --grid KEY=V1,V2,... is one axis; the settings are the product of all axes, each run once per seed.
  A KEY naming a folder of fragments beside the first config (selection -> configs/selection/) takes
  fragment names (--config configs/selection/V.yaml); any other KEY is a `tiplight fit` option
  (model.optimizer.init_args.lr=1e-4,3e-4 -> --model.optimizer.init_args.lr=1e-4). Arguments after `--`
  go to every run. --seed S becomes --seed_everything=S, which seeds the model, the data and the rollouts.

runs and resuming:
  Each run is its own `tiplight fit` process writing to OUT/runs/<setting>/seed<S>/ (logs, evals,
  summary.json). Runs with summary.json are skipped, so the same command resumes a study (other fit
  arguments for a finished run are refused); a failed run leaves failed.json and does not stop the others.
  A run's folder is locked while its fit lives, and the fit stops (SIGTERM) when the study is killed. --jobs N runs N at a time with the cores split between
  them (OMP_NUM_THREADS), or N array tasks at once with --executor submitit (SLURM, or cluster=local).

the report (`tiplight study report OUT`, also written at the end of a study):
  OUT/results.csv (one row per run with the command that reproduces it), OUT/report.md (mean and 95% CI
  per setting, paired differences to --baseline), OUT/accuracy.png and OUT/curves.png."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tiplight study", description=__doc__.split("\n")[0],
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", action="append", required=True, help="base config(s) of every run")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2", help="one axis of the grid")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds of every setting (default: 0)")
    p.add_argument("--out", required=True, help="the study's folder")
    p.add_argument("--baseline", help="setting the others are compared with (paired over seeds)")
    p.add_argument("--jobs", type=int, default=1, help="runs at once (default 1)")
    p.add_argument("--threads", type=int, help="CPU threads per run (default: cores / jobs)")
    p.add_argument("--executor", choices=("local", "submitit"), default="local")
    p.add_argument("--cluster", help="submitit cluster: slurm (default when available) or local")
    p.add_argument("--slurm", action="append", default=[], metavar="KEY=VALUE",
                   help="submitit/SLURM parameter, e.g. slurm_partition=gpu, gpus_per_node=1, timeout_min=120")
    p.add_argument("--dry-run", action="store_true", help="list the commands and stop")
    return p


def build(args: argparse.Namespace, extra: list[str]) -> Study:
    if args.jobs < 1:
        raise ValueError(f"--jobs={args.jobs} is not allowed; use an integer >= 1.")
    root = Path(args.config[0]).parent
    study = Study(out=args.out, configs=args.config, axes=[Axis.parse(g, root) for g in args.grid],
                  seeds=args.seeds, baseline=args.baseline, jobs=args.jobs,
                  threads=args.threads or threads_per_run(args.jobs), extra=extra)
    labels = [label for label, _ in study.settings()]
    if args.baseline is not None and args.baseline not in labels:
        raise ValueError(f"--baseline {args.baseline!r} is not a setting of the grid; settings: {', '.join(labels)}.")
    return study


def run(study: Study, args: argparse.Namespace) -> int:
    """Run the pending runs of ``study``; print progress; write the report; the number of failed runs."""
    runs = study.runs()
    pending = [r for r in runs if not r.finished]
    check_free(pending)
    print(f"tiplight study: {len(runs)} runs, {len(runs) - len(pending)} already done, "
          f"{len(pending)} to run, {study.jobs} at a time, {study.threads} thread(s) each")
    failed, lock = [], threading.Lock()

    def on_done(r: Run, code: int) -> None:
        with lock:
            if code:
                failed.append(r)
            status = "done" if code == 0 else f"FAILED (exit {code}; see {r.folder}/failed.json)"
            print(f"  {r.setting} seed {r.seed}: {status}", flush=True)
            report(study.out)  # results.csv follows the study as runs arrive

    if args.executor == "local":
        run_local(pending, study.jobs, on_done)
    else:
        slurm = dict(_parameter(kv) for kv in args.slurm)
        run_submitit(pending, study.jobs, Path(study.out), args.cluster, slurm, on_done)
    print(report(study.out))
    return len(failed)


def _parameter(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` of ``--slurm``, numbers as numbers (``gpus_per_node=1``, ``timeout_min=120``)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"--slurm {text!r} is not KEY=VALUE; e.g. slurm_partition=gpu or timeout_min=120.")
    for kind in (int, float):
        try:
            return key, kind(value)
        except ValueError:
            pass
    return key, value


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["report"]:
        if len(argv) != 2:
            raise ValueError("usage: tiplight study report OUT (the folder of a study).")
        print(report(argv[1]))
        return 0
    own, extra = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    args = parser().parse_args(own)
    study = build(args, extra)
    if (Path(study.out) / "study.json").is_file():
        study.check_resumes(Study.load(study.out))
    if args.dry_run:
        for r in study.runs():
            print(("# done: " if r.finished else "") + r.command)
        return 0
    study.save()
    return 1 if run(study, args) else 0
