"""The five strategies for requests that arrive while a driver recovers, each against
BLOCK: every test here fails if its strategy is replaced by blocking the caller."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar, cast

import pytest

from nooks.domain.host import Domain
from nooks.shadow.engine import Shadow
from nooks.shadow.spec import NOT_IN_LOG, Busy, ClassSpec, Strategy
from nooks.testing import FakeDomain

WAIT = 0.3  # seconds a request is given to finish while the recovery is held


class Echo:
    """A model driver: answers each request with its name and arguments."""

    def __init__(self, store: list[tuple[str, Any]]) -> None:
        self.store = store

    def __getattr__(self, op: str) -> Callable[..., Any]:
        def call(*args: Any) -> Any:
            self.store.append((op, args))
            return f"{op}{args}"
        return call


class Toy(ClassSpec):
    strategies: ClassVar[dict[str, Strategy]] = {
        "stat": Strategy.FROM_LOG, "poke": Strategy.BUSY, "wait": Strategy.BLOCK,
        "send": Strategy.QUEUE, "play": Strategy.QUEUE, "tick": Strategy.DROP,
    }

    def __init__(self) -> None:
        self.known: dict[tuple[Any, ...], Any] = {}

    def record(self, op: str, args: tuple[Any, ...], result: Any) -> Any:
        if op == "stat":
            self.known[args] = result
        return result

    def answer(self, op: str, args: tuple[Any, ...]) -> Any:
        return self.known.get(args, NOT_IN_LOG)

    def queued(self, op: str, args: tuple[Any, ...]) -> Any:
        return "queued" if op == "send" else NOT_IN_LOG  # "play" waits its turn

    def dropped(self, op: str) -> Any:
        return "dropped"


class Held:
    """A shadow whose recovery is held half-way until ``release``."""

    def __init__(self, max_held: int = 16, block_timeout: float = 10.0) -> None:
        self.store: list[tuple[str, Any]] = []
        self.fake = FakeDomain(Echo, self.store)
        self.shadow = Shadow(cast(Domain, self.fake), Toy(), max_held=max_held,
                             block_timeout=block_timeout)
        self.answers: dict[str, Any] = {}
        self.threads: list[threading.Thread] = []

    def __enter__(self) -> Held:
        self.fake.restart_gate = threading.Event()
        self._recovery = threading.Thread(target=self.shadow.recover_now,
                                          args=(self.fake.report("crash"), 0))
        self._recovery.start()
        assert self.fake.restart_started.wait(5)
        return self

    def ask(self, key: str, op: str, *args: Any) -> bool:
        """Send a request from a thread; whether it finished while the recovery was held."""
        def run() -> None:
            try:
                self.answers[key] = self.shadow.call(op, *args)
            except Exception as e:
                self.answers[key] = e

        held = self.shadow.status()["held"]
        t = threading.Thread(target=run)
        t.start()
        self.threads.append(t)
        end = time.monotonic() + WAIT
        # done, or held in the queue (then the next request queues behind it), or still
        # waiting when WAIT runs out
        while t.is_alive() and self.shadow.status()["held"] == held:
            left = end - time.monotonic()
            if left <= 0:
                break
            t.join(min(left, 0.005))
        return not t.is_alive()

    def release(self) -> None:
        assert self.fake.restart_gate is not None
        self.fake.restart_gate.set()
        self._recovery.join(10)
        for t in self.threads:
            t.join(10)

    def __exit__(self, *exc: object) -> None:
        self.release()


def test_from_log_answers_at_once_what_the_log_knows() -> None:
    h = Held()
    known = h.shadow.call("stat", "/a")
    with h:
        assert h.ask("a", "stat", "/a")  # from the log, while the driver is down
        assert not h.ask("b", "stat", "/b")  # not in the log: waits, as BLOCK would
    assert h.answers == {"a": known, "b": "stat('/b',)"}
    assert ("stat", ("/a",)) in h.store and h.store.count(("stat", ("/a",))) == 1


def test_busy_answers_at_once_with_the_class_error() -> None:
    with Held() as h:
        assert h.ask("p", "poke")
    assert isinstance(h.answers["p"], Busy)
    assert ("poke", ()) not in h.store  # never sent


def test_block_waits_for_the_driver_and_is_bounded() -> None:
    with Held() as h:
        assert not h.ask("w", "wait", 1)
    assert h.answers["w"] == "wait(1,)"
    with Held(block_timeout=0.05) as h:
        assert h.ask("w", "wait", 2)  # its bound ran out while the recovery was held
    assert isinstance(h.answers["w"], Busy)


def test_queue_releases_the_caller_and_runs_the_requests_in_order_after() -> None:
    with Held() as h:
        for i in range(5):
            assert h.ask(f"s{i}", "send", i)  # released at once
        assert h.store == []  # nothing reached the driver yet
    assert all(h.answers[f"s{i}"] == "queued" for i in range(5))
    assert h.store == [("send", (i,)) for i in range(5)]  # run after, in arrival order
    assert h.shadow.recoveries[-1].held == 5


def test_queue_without_release_keeps_arrival_order_and_drops_past_its_bound() -> None:
    with Held(max_held=2) as h:
        assert not h.ask("p0", "play", 0)
        assert not h.ask("p1", "play", 1)
        assert h.ask("p2", "play", 2)  # the queue is full: dropped at once
    assert h.answers["p2"] == "dropped" and h.shadow.dropped == 1
    assert h.answers["p0"] == "play(0,)" and h.answers["p1"] == "play(1,)"
    assert h.store == [("play", (0,)), ("play", (1,))]


def test_queued_callers_reach_the_driver_one_after_another_in_arrival_order() -> None:
    with Held() as h:
        for i in range(6):
            assert not h.ask(f"p{i}", "play", i)  # each waits for its turn
    assert [h.answers[f"p{i}"] for i in range(6)] == [f"play({i},)" for i in range(6)]
    assert h.store == [("play", (i,)) for i in range(6)]
    assert h.shadow.recoveries[-1].held == 6


def test_drop_completes_at_once_as_dropped_and_is_counted() -> None:
    with Held() as h:
        assert h.ask("t", "tick")
    assert h.answers["t"] == "dropped"
    assert h.shadow.dropped == 1 and h.shadow.status()["dropped"] == 1
    assert ("tick", ()) not in h.store


@pytest.mark.parametrize("op", ["stat", "poke", "send", "tick"])
def test_in_passive_mode_every_strategy_goes_to_the_driver(op: str) -> None:
    h = Held()
    assert h.shadow.call(op, 1) == f"{op}(1,)"
    assert h.store == [(op, (1,))]


def test_a_request_that_comes_as_a_recovery_ends_is_not_stranded() -> None:
    """While the recovery is being recorded (its hook runs), held requests are all run
    and new ones go straight to the driver: none is held with nobody to run it."""
    store: list[tuple[str, Any]] = []
    fake = FakeDomain(Echo, store)
    seen: list[Any] = []

    def hook(rec: object) -> None:
        t = threading.Thread(target=lambda: seen.append(shadow.call("send", 9)))
        t.start()
        t.join(5)

    shadow = Shadow(cast(Domain, fake), Toy(), on_recovery=hook)
    shadow.recover_now(fake.report("crash"), 0)
    assert seen == ["send(9,)"] and ("send", (9,)) in store  # sent, not "queued"
    assert shadow.mode == "passive" and shadow.status()["held"] == 0
