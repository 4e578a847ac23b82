"""Running a study's runs: N at a time on this machine, or as a SLURM job array through submitit.

Each run is its own ``tiplight fit`` process with ``OMP_NUM_THREADS`` set to its share of the cores. A
finished run (``summary.json`` present) is skipped, so rerunning a study resumes it; a failed run leaves
``failed.json`` (exit code and the end of its log) and does not stop the others.

A run's folder is locked (``<folder>/.lock``, holding the ``tiplight fit`` process id) while its process
lives, so a second ``tiplight study`` on the same folder refuses it; and the process dies with the
``tiplight study`` that started it (SIGTERM, which saves a resumable checkpoint), killed or not."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tiplight.study.grid import Run

LOG_TAIL = 20  # lines of a failed run's log kept in failed.json
_PR_SET_PDEATHSIG = 1  # prctl(2), Linux


def claim(folder: Path) -> int:
    """A file descriptor holding the exclusive lock on ``folder/.lock``; a clear error when another process
    holds it. The lock lasts while any process holding the descriptor lives (the run's child included)."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        os.close(fd)
        if error.errno not in (errno.EAGAIN, errno.EACCES):
            raise
        holder = (folder / ".lock").read_text().strip() or "unknown"
        raise ValueError(f"{folder} is in use by another run (process {holder} holds {folder / '.lock'}); "
                         "wait for it to end or stop it, then rerun the study.") from None
    return fd


def check_free(runs: list[Run]) -> None:
    """Refuse, before starting anything, a study whose pending runs are still running elsewhere."""
    for run in runs:
        os.close(claim(Path(run.folder)))


def _die_with_parent(parent: int) -> Callable[[], None] | None:
    """A ``preexec_fn``: the child gets SIGTERM when the thread that started it (this process) dies
    (Linux; elsewhere None)."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before fork: the child only calls it

    def set_signal() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the signal was set
            os.kill(os.getpid(), signal.SIGTERM)

    return set_signal


def execute(run: Run) -> int:
    """Run one study run to completion in a subprocess (its log in ``<folder>/fit.log``); its exit code."""
    folder = Path(run.folder)
    lock = claim(folder)
    try:
        return _fit(run, folder, lock)
    finally:
        os.close(lock)


def _fit(run: Run, folder: Path, lock: int) -> int:
    (folder / "failed.json").unlink(missing_ok=True)
    if not run.finished:  # an unreadable summary.json (cut off while written) is no finished run
        (folder / "summary.json").unlink(missing_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(run.threads), "MKL_NUM_THREADS": str(run.threads)}
    argv = [sys.executable, "-m", "tiplight.cli", *run.argv[1:]]  # the `tiplight` of this interpreter
    start = time.perf_counter()
    with (folder / "fit.log").open("w") as log:
        child = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, pass_fds=(lock,),
                                 preexec_fn=_die_with_parent(os.getpid()))
        os.ftruncate(lock, 0)
        os.pwrite(lock, f"{child.pid}\n".encode(), 0)
        code = child.wait()
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
