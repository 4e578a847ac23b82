"""Killable grading workers: the hard time limit for sympy work.

Each worker is a plain `python -m tiplight.evals.pool` subprocess speaking one JSON line per request
over its pipes. Not `multiprocessing`: a subprocess needs no `__main__` re-import, no pickling, and can
be started from daemonic processes (DataLoader or Pool workers) and from any thread. The parent waits
on the pipe with a deadline (`select`, no signals) and kills a worker that overruns; a replacement is
started at once, so nobody waits for a hung worker. Workers exit by themselves when the parent dies
(their stdin closes).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import queue
import select
import subprocess
import sys
import threading
import time
from pathlib import Path

logger = logging.getLogger("tiplight.evals")
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
MEMORY_LIMIT_BYTES = 4 << 30
DEFAULT_WORKERS = min(8, os.cpu_count() or 1)  # each worker holds sympy (~150 MB); most grades never need one


class Worker:
    """One grading subprocess."""

    def __init__(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH", "")) if p)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tiplight.evals.pool"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            bufsize=0,
        )
        self._buffer = b""

    def request(self, pred: str, gold: str, deadline: float) -> bool | None:
        """Send one comparison; its verdict, or None on timeout or a dead worker."""
        try:
            self.proc.stdin.write(json.dumps({"pred": pred, "gold": gold}).encode() + b"\n")
        except (BrokenPipeError, OSError):
            return None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        reply = json.loads(line)
        for note in reply.get("notes", ()):
            logger.debug("grader: %s", note)
        return bool(reply["ok"])

    def kill(self) -> None:
        """Kill and reap the process (no waiting on a hung worker beyond the kill itself)."""
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=1.0)


class WorkerPool:
    """Up to `size` workers, shared by any number of threads."""

    def __init__(self, size: int) -> None:
        self.size = max(1, size)
        self._idle: queue.Queue[Worker] = queue.LifoQueue()
        self._lock = threading.Lock()
        self._count = 0
        self.replaced = 0

    def _checkout(self, deadline: float) -> Worker | None:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            if self._count < self.size:
                self._count += 1
                return Worker()
        try:
            return self._idle.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            return None

    def run(self, pred: str, gold: str, deadline: float) -> bool | None:
        """Compare in a worker before `deadline` (time.monotonic); None when it did not finish."""
        worker = self._checkout(deadline)
        if worker is None:
            return None
        verdict = worker.request(pred, gold, deadline)
        if verdict is None:  # overran or died: replace it now, never wait for it
            logger.debug("grader: worker timed out or died on %r vs %r; replacing it", pred[:80], gold[:80])
            worker.kill()
            self.replaced += 1
            self._idle.put(Worker())
        else:
            self._idle.put(worker)
        return verdict

    def warmup(self) -> None:
        """Start every worker now (each imports sympy, ~1 s) so the first grades are not slowed."""
        with self._lock:
            while self._count < self.size:
                self._count += 1
                self._idle.put(Worker())

    def close(self) -> None:
        """Kill all idle workers."""
        while True:
            try:
                self._idle.get_nowait().kill()
            except queue.Empty:
                break
        self._count = 0


_POOL: WorkerPool | None = None
_POOL_PID = -1
_POOL_LOCK = threading.Lock()


def get_pool(size: int | None = None) -> WorkerPool:
    """The process-wide pool (re-created after a fork: a child must not share its parent's pipes)."""
    global _POOL, _POOL_PID
    with _POOL_LOCK:
        if _POOL is None or os.getpid() != _POOL_PID:
            _POOL, _POOL_PID = WorkerPool(size or DEFAULT_WORKERS), os.getpid()
        elif size and size > _POOL.size:
            _POOL.size = size
        return _POOL


def _shutdown() -> None:
    if _POOL is not None and os.getpid() == _POOL_PID:
        _POOL.close()


atexit.register(_shutdown)


def _serve() -> None:
    """Worker main loop: one JSON request per line in, one verdict per line out."""
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)  # anything printed by sympy goes to stderr, never into the protocol
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT_BYTES, MEMORY_LIMIT_BYTES))
    except (ImportError, ValueError, OSError):
        pass
    from tiplight.evals.equivalence import equivalent
    from tiplight.evals.symbolic import SympyComparator

    for line in sys.stdin.buffer:
        comparator = SympyComparator()
        try:
            request = json.loads(line)
            ok = bool(equivalent(request["pred"], request["gold"], comparator))
        except BaseException as exc:  # any failure, including MemoryError and RecursionError, is "not equal"
            ok = False
            comparator.notes.append(f"{type(exc).__name__}: {str(exc)[:100]}")
        out.write(json.dumps({"ok": ok, "notes": comparator.notes[:3]}).encode() + b"\n")


if __name__ == "__main__":
    _serve()
