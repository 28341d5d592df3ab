"""The web host's worker pool: any worker, or a given one, bounded in time."""

from __future__ import annotations

import threading

import pytest

from nooks.web.pool import Worker, WorkerPool
from nooks.web.spec import ServiceBusy


def _pool(n: int = 2, timeout: float = 0.3) -> tuple[WorkerPool, list[Worker]]:
    workers = [Worker(i, lambda *a: None) for i in range(n)]
    return WorkerPool(workers, queue_timeout=timeout, max_queue=4), workers


def test_any_worker_then_busy_when_none_comes() -> None:
    pool, workers = _pool()
    got = {pool.acquire(), pool.acquire()}
    assert got == set(workers)
    with pytest.raises(ServiceBusy, match="in time"):
        pool.acquire()
    pool.release(workers[0])
    assert pool.acquire() is workers[0]


def test_a_given_worker_is_taken_idle_or_handed_over_first() -> None:
    pool, (a, b) = _pool(timeout=5.0)
    assert pool.acquire(b) is b  # found among the idle ones
    assert pool.acquire() is a
    results: list[Worker] = []
    waiter = threading.Thread(target=lambda: results.append(pool.acquire(b)))
    waiter.start()
    while not b.wanted:  # the streamed body now waits for b
        threading.Event().wait(0.001)
    pool.release(b)
    waiter.join()
    assert results == [b] and b.wanted == 0
    pool.release(a)
    pool.release(b)
    assert {pool.acquire(), pool.acquire()} == {a, b}


def test_giving_up_on_a_worker_leaves_it_in_the_pool() -> None:
    pool, (a, b) = _pool(timeout=0.1)
    pool.acquire(a)
    with pytest.raises(ServiceBusy):
        pool.acquire(a)
    assert a.wanted == 0
    pool.release(a)
    assert {pool.acquire(), pool.acquire()} == {a, b}


def test_the_queue_of_waiters_is_bounded() -> None:
    pool, workers = _pool(n=1, timeout=2.0)
    held = pool.acquire()
    errors: list[BaseException] = []
    started = threading.Barrier(5)

    def wait() -> None:
        started.wait()
        try:
            pool.release(pool.acquire())
        except ServiceBusy as e:
            errors.append(e)

    threads = [threading.Thread(target=wait) for _ in range(4)]
    for t in threads:
        t.start()
    started.wait()
    while pool._waiting < 4:
        threading.Event().wait(0.001)
    with pytest.raises(ServiceBusy, match="too many"):
        pool.acquire()
    pool.release(held)
    for t in threads:
        t.join()
    assert not errors and held is workers[0]
