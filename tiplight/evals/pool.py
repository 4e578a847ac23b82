"""Killable grading workers: the hard time limit for sympy work.

Each worker is a plain `python -m tiplight.evals.pool` subprocess speaking one JSON line per request
over its pipes. Not `multiprocessing`: a subprocess needs no `__main__` re-import, no pickling, and can
be started from daemonic processes (DataLoader or Pool workers) and from any thread. The parent waits
on the pipe with a deadline (`select`, no signals) and kills a worker that overruns; a replacement is
started at once, so nobody waits for a hung worker. Workers exit by themselves when the parent dies
(their stdin closes); a worker that died while idle (killed from outside) is replaced, never handed out.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import json
import logging
import os
import select
import subprocess
import sys
import threading
import time
from pathlib import Path

logger = logging.getLogger("tiplight.evals")
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
MEMORY_LIMIT_BYTES = 4 << 30
COLD_START_S = 120.0  # longest wait for a new pool's first warm worker (imports take seconds under load)
# longest wait for a free worker: the bound that keeps a call from hanging on a pool that cannot start
# workers; a working pool frees one within (comparisons queued ahead) x 2 x timeout / workers
MAX_WAIT_S = 600.0
# each worker holds sympy and Math-Verify (~200 MB, idle unless asked); at least 4, so that two workers
# killed by one overrunning comparison (and its retry) leave warm ones while their replacements start
DEFAULT_WORKERS = min(8, max(4, os.cpu_count() or 1))


class Worker:
    """One grading subprocess; it imports everything at start and says `ready` before taking work."""

    def __init__(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH", "")) if p)
        env.setdefault("OMP_NUM_THREADS", "1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tiplight.evals.pool"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            bufsize=0,
        )
        self._buffer = b""
        self.ready = False

    def _read_line(self, deadline: float) -> dict | None:
        """The next reply line, or None on timeout or a dead worker."""
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
        return json.loads(line)

    def wait_ready(self, deadline: float) -> bool:
        """Wait (until `deadline`) for the worker's imports to finish."""
        if not self.ready:
            self.ready = bool((self._read_line(deadline) or {}).get("ready"))
        return self.ready

    def send(self, payload: dict) -> bool:
        """Send one comparison; False when the worker is gone."""
        try:
            self.proc.stdin.write(json.dumps(payload).encode() + b"\n")
        except (BrokenPipeError, OSError):
            return False
        return True

    def verdict(self, deadline: float) -> bool | None:
        """The reply to the comparison sent last, or None on timeout or a dead worker."""
        reply = self._read_line(deadline)
        if reply is None:
            return None
        for note in reply.get("notes", ()):
            logger.debug("grader: %s", note)
        return bool(reply["ok"])

    def kill(self) -> None:
        """Kill and reap the process (no waiting on a hung worker beyond the kill itself)."""
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=1.0)


class _Waiter:
    """A caller waiting for a worker: `_checkin` hands one over and sets the event."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.worker: Worker | None = None


class WorkerPool:
    """`size` workers shared by any number of threads, all started (warming) when the pool is made.

    A worker is handed out only once warm (its imports done, in a background thread) and alive, so
    neither start-up nor waiting is charged to a comparison: its clock starts when a warm worker takes
    it. One that overruns is retried once on another warm worker; the overrunning worker is killed and a
    replacement starts warming at once.
    """

    def __init__(self, size: int) -> None:
        self.size = max(1, size)
        self._idle: list[Worker] = []
        self._waiters: collections.deque[_Waiter] = collections.deque()  # first come, first served
        self._cond = threading.Condition()
        self._warming = 0
        self.replaced = 0
        self.retried = 0
        self._lost = 0  # workers that did not start, and were not replaced: the pool runs with fewer
        for _ in range(self.size):
            self._spawn()

    def _spawn(self) -> None:
        """Start a worker; a background thread hands it to the idle list once it is warm."""
        with self._cond:
            self._warming += 1
        self._start()

    def _start(self) -> None:
        """Start a worker already counted in ``_warming``."""
        worker = Worker()
        threading.Thread(target=self._warm, args=(worker,), daemon=True).start()

    def _warm(self, worker: Worker) -> None:
        ready = worker.wait_ready(time.monotonic() + COLD_START_S)
        if not ready:
            logger.warning(
                "grader: a worker did not start within %.0f s; running with one fewer", COLD_START_S
            )
            worker.kill()
        if ready:
            self._checkin(worker)
        with self._cond:
            self._warming -= 1
            self._lost += not ready
            if self._lost >= self.size:  # no worker will ever be handed out: release every waiting caller
                for waiter in self._waiters:
                    waiter.event.set()
                self._waiters.clear()
            self._cond.notify_all()

    def _checkout(self, deadline: float) -> Worker | None:
        """A warm, live idle worker, waited for until `deadline` (None after it). Dead ones (killed from
        outside while idle) are replaced and the wait goes on."""
        while True:
            worker = self._take(deadline)
            if worker is None or worker.proc.poll() is None:
                return worker
            logger.warning(
                "grader: a worker died while idle (exit code %s); replacing it", worker.proc.returncode
            )
            self._replace(worker)

    def _take(self, deadline: float) -> Worker | None:
        """An idle worker, waited for until `deadline`. Waiting callers are served in arrival order: a
        caller never loses its turn to later arrivals, however many threads grade."""
        with self._cond:
            if self._idle and not self._waiters:
                return self._idle.pop()
            if self._lost >= self.size:
                return None
            waiter = _Waiter()
            self._waiters.append(waiter)
        waiter.event.wait(max(0.0, deadline - time.monotonic()))
        with self._cond:
            if waiter.worker is None and waiter in self._waiters:  # timed out before a worker came
                self._waiters.remove(waiter)
            return waiter.worker

    def _checkin(self, worker: Worker) -> None:
        """Hand a free worker to the longest-waiting caller, or keep it idle."""
        with self._cond:
            if self._waiters:
                waiter = self._waiters.popleft()
                waiter.worker = worker
                waiter.event.set()
            else:
                self._idle.append(worker)

    def _replace(self, worker: Worker) -> None:
        """Kill an overrunning worker and start a replacement, off the caller's path (no reaping wait)."""
        worker.proc.kill()
        with self._cond:
            self.replaced += 1
            self._warming += 1  # counted at once: warmup() waits for the replacement, not only its start

        def reap_and_restart() -> None:
            worker.kill()
            self._start()

        threading.Thread(target=reap_and_restart, daemon=True).start()

    def run(self, payload: dict, timeout: float, max_wait: float = MAX_WAIT_S) -> bool | None:
        """Compare in a warm worker: `timeout` seconds from dispatch, retried once after an overrun. None
        when both attempts overran, or no worker was free within `max_wait` (which a working pool never
        reaches) or can ever be (none started). Waiting for a free worker is not part of `timeout`: it
        cannot turn a verdict into None."""
        for attempt in range(2):
            worker = self._checkout(time.monotonic() + max_wait)
            if worker is None:
                logger.warning("grader: no worker was free within %.0f s, or none could start", max_wait)
                return None
            self.retried += attempt  # counted when the retry is dispatched
            verdict = worker.verdict(time.monotonic() + timeout) if worker.send(payload) else None
            if verdict is not None:
                self._checkin(worker)
                return verdict
            logger.debug("grader: worker overran on %r; replacing it", str(payload.get("pred"))[:80])
            self._replace(worker)
        return None

    def warmup(self, timeout: float = COLD_START_S) -> None:
        """Wait until every worker started so far has finished its imports (seconds on a loaded machine)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._warming and time.monotonic() < deadline:
                self._cond.wait(deadline - time.monotonic())

    def grow(self, size: int) -> None:
        """Add workers up to `size`."""
        with self._cond:
            extra, self.size = size - self.size, max(self.size, size)
        for _ in range(max(0, extra)):
            self._spawn()

    def close(self) -> None:
        """Kill all idle workers."""
        with self._cond:
            idle, self._idle = self._idle, []
        for worker in idle:
            worker.kill()


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
            _POOL.grow(size)
        return _POOL


def _shutdown() -> None:
    if _POOL is not None and os.getpid() == _POOL_PID:
        _POOL.close()


atexit.register(_shutdown)


def _serve() -> None:
    """Worker main loop: imports first, then `ready`, then one JSON request per line in, one verdict out.

    A request's `delay_s` makes the worker wait that long before comparing: a slow comparison that does
    not depend on the machine's speed (for tests; the grader never sends it)."""
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)  # anything printed by sympy goes to stderr, never into the protocol
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT_BYTES, MEMORY_LIMIT_BYTES))
    except (ImportError, ValueError, OSError):
        pass
    from tiplight.evals.equivalence import equivalent
    from tiplight.evals.mathverify import verdict as math_verify_verdict
    from tiplight.evals.symbolic import SympyComparator

    # parse once, so the first comparison runs at full speed
    equivalent("\\frac{\\sqrt{8}}{2}", "\\sqrt{2}", SympyComparator())
    math_verify_verdict("The answer is $\\boxed{x \\ge 1}$.", "[1, \\infty)")
    out.write(b'{"ready": true}\n')
    for line in sys.stdin.buffer:
        comparator = SympyComparator()
        try:
            request = json.loads(line)
            time.sleep(float(request.get("delay_s", 0.0)))
            ok = bool(equivalent(request["pred"], request["gold"], comparator))
            if not ok and request.get("response") and not comparator.refused:
                settled = not comparator.unsure
                ok = math_verify_verdict(
                    request["response"],
                    request.get("raw_gold", request["gold"]),
                    request["pred"],
                    request["gold"],
                    settled,
                )
        except BaseException as exc:  # any failure, including MemoryError and RecursionError, is "not equal"
            ok = False
            comparator.notes.append(f"{type(exc).__name__}: {str(exc)[:100]}")
        out.write(json.dumps({"ok": ok, "notes": comparator.notes[:3]}).encode() + b"\n")


if __name__ == "__main__":
    _serve()
