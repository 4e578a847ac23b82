"""Running a study's runs: N at a time on this machine, or as a SLURM job array through submitit.

Each run is its own ``tiplight fit`` process with ``OMP_NUM_THREADS`` set to its share of the cores. A
finished run (``summary.json`` present) is skipped, so rerunning a study resumes it; a failed run leaves
``failed.json`` (exit code and the end of its log) and does not stop the others."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tiplight.study.grid import Run

LOG_TAIL = 20  # lines of a failed run's log kept in failed.json


def execute(run: Run) -> int:
    """Run one study run to completion in a subprocess (its log in ``<folder>/fit.log``); its exit code."""
    folder = Path(run.folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "failed.json").unlink(missing_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(run.threads), "MKL_NUM_THREADS": str(run.threads)}
    argv = [sys.executable, "-m", "tiplight.cli", *run.argv[1:]]  # the `tiplight` of this interpreter
    start = time.perf_counter()
    with (folder / "fit.log").open("w") as log:
        code = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, env=env, check=False).returncode
    if code != 0:
        tail = (folder / "fit.log").read_text(errors="replace").splitlines()[-LOG_TAIL:]
        record = {"returncode": code, "seconds": round(time.perf_counter() - start, 1), "log_tail": tail}
        (folder / "failed.json").write_text(json.dumps(record, indent=2) + "\n")
    return code


def run_local(runs: list[Run], jobs: int, on_done: Callable[[Run, int], None]) -> None:
    """Run ``runs`` ``jobs`` at a time on this machine; ``on_done(run, exit_code)`` after each."""
    def one(run: Run) -> None:
        on_done(run, execute(run))

    pool = ThreadPoolExecutor(max_workers=jobs)
    try:
        for future in [pool.submit(one, run) for run in runs]:
            future.result()
    except BaseException:  # Ctrl-C: start no further run
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()


def run_submitit(runs: list[Run], jobs: int, folder: Path, cluster: str | None,
                 slurm: dict[str, object], on_done: Callable[[Run, int], None]) -> None:
    """Run ``runs`` as one job array (``cluster``: None picks SLURM when available, ``"local"`` runs on
    this machine through submitit's local executor); waits for them all."""
    try:
        import submitit
    except ImportError:
        raise ValueError("--executor submitit needs the submitit package: pip install 'tiplight[study]'.") from None
    executor = submitit.AutoExecutor(folder=str(folder / "submitit"), cluster=cluster)
    executor.update_parameters(slurm_array_parallelism=jobs, cpus_per_task=runs[0].threads if runs else 1,
                               **slurm)
    jobs_ = executor.map_array(execute, runs)
    for run, job in zip(runs, jobs_):
        try:
            code = job.result()
        except Exception:  # a job that timed out, was preempted or crashed: recorded, the others go on
            code = 1
        on_done(run, code)
