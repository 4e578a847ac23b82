"""The grading pool under contention and faults: waiting for a worker never turns into a False.

Slow comparisons are made by the worker-side `delay_s` hook, never by an expression assumed slow."""

from __future__ import annotations

import shutil
import sys
import threading
import time

from tiplight.evals import grade, warmup
from tiplight.evals import grader as grader_module
from tiplight.evals.pool import WorkerPool, get_pool

PAIR = (r"\boxed{\sqrt{8}}", r"2\sqrt2")  # needs a worker (sympy)
HELD = {"pred": "1", "gold": "1", "delay_s": 4.0}  # a comparison that holds its worker for 4 s


def hold_every_worker(pool: WorkerPool) -> tuple[list[threading.Thread], list]:
    """Start one held comparison per worker; returns once none is idle."""
    verdicts: list = []
    threads = [
        threading.Thread(target=lambda: verdicts.append(pool.run(HELD, timeout=30.0)))
        for _ in range(pool.size)
    ]
    for thread in threads:
        thread.start()
    while pool._idle:
        time.sleep(0.01)
    return threads, verdicts


def test_waiting_for_a_busy_pool_is_not_charged_to_the_verdict():
    """Every worker is busy for 4 s: a 0.5 s comparison waits for one, then grades True (it gave up,
    False, after its own timeout + 0.75 s before)."""
    warmup()
    pool = get_pool()
    grader_module._CACHE.clear()
    threads, verdicts = hold_every_worker(pool)
    try:
        assert grade(*PAIR, timeout=0.5) is True
    finally:
        for thread in threads:
            thread.join()
    assert verdicts == [True] * pool.size


def test_workers_killed_from_outside_are_replaced_before_the_next_verdict():
    """Dead idle workers are not handed out (every call returned False at once): the call waits for a
    replacement, and the pool is whole again."""
    warmup()
    pool = get_pool()
    for worker in list(pool._idle):
        worker.proc.kill()
        worker.proc.wait()
    grader_module._CACHE.clear()
    assert grade(*PAIR) is True
    warmup()
    assert len(pool._idle) == pool.size and all(w.proc.poll() is None for w in pool._idle)


def test_a_comparison_runs_to_its_own_limit_then_is_retried_once_and_replaced():
    """A slow comparison within its own limit keeps its worker; one past it is killed, retried once on
    another warm worker, and both workers are replaced."""
    pool = get_pool(2)
    warmup()
    replaced, retried = pool.replaced, pool.retried
    assert pool.run({**HELD, "delay_s": 1.0}, timeout=3.0) is True
    assert (pool.replaced, pool.retried) == (replaced, retried)
    assert pool.run({**HELD, "delay_s": 60.0}, timeout=0.5) is None
    assert (pool.replaced, pool.retried) == (replaced + 2, retried + 1)


def test_a_pool_whose_workers_cannot_start_refuses_at_once(monkeypatch):
    """The bound that keeps a call from hanging: once no worker can start, callers are not kept waiting."""
    monkeypatch.setattr(sys, "executable", shutil.which("false"))  # every worker exits before `ready`
    pool = WorkerPool(2)
    while pool._warming:
        time.sleep(0.01)
    assert pool._lost == pool.size
    assert pool.run(HELD, timeout=0.5) is None
