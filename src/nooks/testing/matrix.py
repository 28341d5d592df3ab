"""The spec test kit: every phase of a recovery × every way a driver fails, for one class.

A class describes itself in a ``SpecKit``: its spec, a model driver (and the
store that outlives it), a scenario of requests, and the errors it answers
with. ``check(kit)`` first runs the scenario with nothing failing (the
*reference*), then once per case of the matrix, on a fresh ``FakeDomain``,
and compares:

* ``passive``: the driver fails on a request *after* doing its work (the
  hardest moment: its effect is there, its answer is lost). A request the spec
  may re-issue must then look as if nothing happened (same answers, same store:
  done once, not twice); one it may not must get the class's busy error, and
  be done once.
* ``restart``: the fresh driver cannot even be built, every time: the request
  gets the class's poison error and the shadow is dead; once the driver can be
  built again, the next request brings it back and is answered rightly.
* ``reinit`` / ``replay``: the fresh driver fails while the spec re-initialises
  it or replays its log: another one is built, and nobody notices.
* ``reissue``: the re-issued request fails the fresh driver too (once: nobody
  notices; every time: it alone gets the poison error, the rest go on).
* ``second-opinion``: the driver answers a request with an error the spec calls
  suspect, and fails when asked again: nobody notices.
* ``checkpoint``: the host condemns the driver between two requests (a check
  found its work wrong): nobody notices.
* ``active``: a request arrives while a recovery is under way: it is answered
  as its kind's strategy says (``check_strategies``).

A case that does not apply to a class (its recovery makes no replay calls,
say) is reported as not reached; ``Result.reached`` lists the phases that were.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from nooks.domain.host import Domain
from nooks.errors import FailureReport
from nooks.shadow.engine import Shadow
from nooks.shadow.spec import NOT_IN_LOG, Answer, ClassSpec, Strategy
from nooks.testing.fake import FAILURES, FakeDomain

MAX_TRIES = 3
PHASES = ("passive", "restart", "reinit", "replay", "reissue", "second-opinion",
          "checkpoint", "active")


@dataclass(frozen=True)
class Ref:
    """An argument that is the result of an earlier request of the scenario."""

    index: int


@dataclass
class SpecKit:
    """What the kit needs to know of one class (see the module docstring)."""

    name: str
    spec: Callable[[], ClassSpec]
    driver: Callable[[Any], Any]  # model driver, built on each start from the store
    store: Callable[[], Any]  # what outlives a driver (a disk, a ledger)
    scenario: Sequence[tuple[str, tuple[Any, ...]]]
    # whether an error is the class's busy answer, its poison answer
    busy: Callable[[BaseException], bool]
    poison: Callable[[BaseException], bool]
    unexpected: Callable[[Exception], BaseException] | None = None
    # a request (by its index in the scenario) and an error the spec calls suspect
    suspect: tuple[int, BaseException] | None = None
    # what a store looks like for comparison (default: itself)
    snapshot: Callable[[Any], Any] = field(default=lambda store: store)
    # requests about what dies with a driver (a streamed body's next piece) and the
    # answer they get once it is gone: after a recovery, that answer is right too
    gone: dict[str, Any] = field(default_factory=dict)
    # the phases this class's recovery goes through (a class whose re-initialisation
    # asks the driver nothing never reaches "reinit"): the kit checks it reached them
    phases: frozenset[str] = frozenset(PHASES)


@dataclass
class Run:
    answers: list[tuple[str, Any]]
    store: Any
    fake: FakeDomain
    shadow: Shadow[Probed]


@dataclass
class Case:
    phase: str
    failure: str
    op: str
    reached: bool
    ok: bool
    why: str = ""

    def __str__(self) -> str:
        mark = "ok" if self.ok else "FAILED"
        return f"{self.phase:>14} × {self.failure:<9} at {self.op:<10} {mark} {self.why}"


@dataclass
class Result:
    kit: str
    cases: list[Case]

    @property
    def failed(self) -> list[Case]:
        return [c for c in self.cases if not c.ok]

    @property
    def reached(self) -> set[str]:
        return {c.phase for c in self.cases if c.reached}

    def table(self) -> str:
        return "\n".join(str(c) for c in self.cases)


class Probed(ClassSpec):
    """A class's spec that tells the fake domain which phase of a recovery it is in."""

    def __init__(self, inner: ClassSpec, fake: FakeDomain) -> None:
        self.inner = inner
        self.fake = fake

    def translate(self, op: str, args: tuple[Any, ...], reissue: bool) -> tuple[Any, ...] | Answer:
        return self.inner.translate(op, args, reissue)

    def violation(self, op: str, args: tuple[Any, ...], result: Any) -> str | None:
        return self.inner.violation(op, args, result)

    def doubt(self, op: str, args: tuple[Any, ...], result: Any, domain: Domain) -> str | None:
        return self.inner.doubt(op, args, result, domain)

    def suspect(self, op: str, args: tuple[Any, ...], error: BaseException,
                domain: Domain) -> bool:
        return self.inner.suspect(op, args, error, domain)

    def record(self, op: str, args: tuple[Any, ...], result: Any) -> Any:
        return self.inner.record(op, args, result)

    def handle_result(self, op: str) -> bool:
        return self.inner.handle_result(op)

    def strategy(self, op: str) -> Strategy:
        return self.inner.strategy(op)

    def answer(self, op: str, args: tuple[Any, ...]) -> Any:
        return self.inner.answer(op, args)

    def queued(self, op: str, args: tuple[Any, ...]) -> Any:
        return self.inner.queued(op, args)

    def busy(self, op: str) -> BaseException:
        return self.inner.busy(op)

    def dropped(self, op: str) -> Any:
        return self.inner.dropped(op)

    def requester(self, op: str, args: tuple[Any, ...]) -> int | None:
        return self.inner.requester(op, args)

    def answer_own(self, op: str, args: tuple[Any, ...]) -> Any:
        return self.inner.answer_own(op, args)

    def prepare_restart(self) -> None:
        self.inner.prepare_restart()

    def reinit(self, domain: Domain) -> None:
        self.fake.phase = "reinit"
        try:
            self.inner.reinit(domain)
        finally:
            self.fake.phase = "passive"

    def replay(self, domain: Domain) -> int:
        self.fake.phase = "replay"
        try:
            return self.inner.replay(domain)
        finally:
            self.fake.phase = "passive"

    def reissuable(self, op: str, args: tuple[Any, ...]) -> bool:
        return self.inner.reissuable(op, args)

    def reissued(self, op: str, args: tuple[Any, ...], error: BaseException) -> tuple[bool, Any]:
        return self.inner.reissued(op, args, error)

    def poison(self, op: str, report: FailureReport) -> BaseException:
        return self.inner.poison(op, report)

    def status(self) -> dict[str, Any]:
        return self.inner.status()

    def close(self) -> None:
        self.inner.close()


def _resolve(args: tuple[Any, ...], answers: list[tuple[str, Any]]) -> tuple[Any, ...]:
    return tuple(answers[a.index][1] if isinstance(a, Ref) else a for a in args)


def start(kit: SpecKit, *, max_tries: int = 3) -> tuple[Shadow[Probed], FakeDomain, Any]:
    store = kit.store()
    fake = FakeDomain(kit.driver, store, name=kit.name, unexpected=kit.unexpected)
    spec = Probed(kit.spec(), fake)
    shadow = Shadow(_as_domain(fake), spec, max_tries=max_tries, block_timeout=2.0,
                    revive_first=0.0)
    return shadow, fake, store


def _as_domain(fake: FakeDomain) -> Domain:
    # the engine uses only the surface FakeDomain has (see nooks.testing.fake)
    domain: Domain = fake  # type: ignore[assignment]
    return domain


def run(kit: SpecKit, setup: Callable[[FakeDomain], object] | None = None,
        between: dict[int, Callable[[Shadow[Probed], FakeDomain], None]] | None = None) -> Run:
    """The scenario through a fresh shadow and fake domain; each request's answer
    (``("ok", value)`` or ``("error", exception)``)."""
    shadow, fake, store = start(kit)
    if setup is not None:
        setup(fake)
    answers: list[tuple[str, Any]] = []
    for i, (op, args) in enumerate(kit.scenario):
        if between and i in between:
            between[i](shadow, fake)
        fake.request = i
        try:
            answers.append(("ok", shadow.call(op, *_resolve(args, answers))))
        except Exception as e:
            answers.append(("error", e))
    return Run(answers, store, fake, shadow)


def _same(a: tuple[str, Any], b: tuple[str, Any]) -> bool:
    if a[0] != b[0]:
        return False
    if a[0] == "error":
        return type(a[1]) is type(b[1]) and str(a[1]) == str(b[1])
    return bool(a[1] == b[1])


Expect = dict[int, Callable[[BaseException], bool]]


def _compare(kit: SpecKit, ref: Run, got: Run, expect: Expect) -> str:
    """Why ``got`` differs from the reference beyond what ``expect`` allows ('' if not)."""
    for i, (r, g) in enumerate(zip(ref.answers, got.answers, strict=True)):
        want = expect.get(i)
        if want is not None:
            if g[0] != "error" or not want(g[1]):
                return f"request {i} ({kit.scenario[i][0]}) answered {g!r}, not its error"
            continue
        op = kit.scenario[i][0]
        if not _same(r, g) and not (op in kit.gone and g == ("ok", kit.gone[op])):
            return f"request {i} ({op}) answered {_short(g)}, not {_short(r)}"
    if kit.snapshot(ref.store) != kit.snapshot(got.store):
        return (f"the store differs: {_short(kit.snapshot(got.store))} "
                f"instead of {_short(kit.snapshot(ref.store))}")
    if got.shadow.mode != "passive":
        return f"the shadow is left {got.shadow.mode}"
    return ""


def _short(x: Any) -> str:
    text = repr(x)
    return text if len(text) <= 120 else text[:117] + "..."


def _first(kit: SpecKit) -> dict[str, int]:
    """The index of each kind of request's first occurrence in the scenario."""
    out: dict[str, int] = {}
    for i, (op, _) in enumerate(kit.scenario):
        out.setdefault(op, i)
    return out


def check(kit: SpecKit) -> Result:
    """Run the whole matrix for ``kit``; every case's outcome."""
    ref = run(kit)
    bad = [(i, a) for i, a in enumerate(ref.answers) if a[0] == "error"]
    if bad:
        raise AssertionError(f"{kit.name}: the scenario fails with nothing injected: {bad}")
    cases: list[Case] = []
    first = _first(kit)
    for op, i in first.items():
        args = _resolve(kit.scenario[i][1], ref.answers)
        reissuable = kit.spec().reissuable(op, args)
        for failure in FAILURES:
            cases += _cases(kit, ref, op, i, failure, reissuable)
    return Result(kit.name, cases)


def _cases(kit: SpecKit, ref: Run, op: str, i: int, failure: str,  # noqa: PLR0917
           reissuable: bool) -> list[Case]:
    out: list[Case] = []

    def case(phase: str, got: Run, expect: Expect, reached: bool,
             extra: str = "") -> None:
        why = extra or _compare(kit, ref, got, expect)
        out.append(Case(phase, failure, op, reached, not why, why))

    busy = {i: kit.busy} if not reissuable else {}

    # the driver fails after doing the request's work
    got = run(kit, lambda f: f.fail("passive", failure, op=op, request=i, after=True))
    case("passive", got, busy, True,
         "" if got.shadow.recoveries else "no recovery was recorded")

    # the fresh driver cannot be built, ever: the request gets the class's error and
    # the shadow is dead; then it can be built, and the application, trying again,
    # finds everything as if nothing had happened
    out.append(_dead(kit, ref, op, i, failure, reissuable))

    for phase in ("reinit", "replay"):
        def setup(f: FakeDomain, phase: str = phase) -> None:
            f.fail("passive", failure, op=op, request=i)
            f.fail(phase, failure, at=0)

        got = run(kit, setup)
        reached = any(t.fired for t in got.fake.triggers if t.phase == phase)
        case(phase, got, busy, reached)

    got = run(kit, lambda f: f.fail("passive", failure, op=op, request=i, times=2))
    case("reissue", got, busy, True)
    if reissuable:
        got = run(kit, lambda f: f.fail("passive", failure, op=op, request=i,
                                        times=MAX_TRIES))
        # the rest of the scenario goes on, but what needed the poisoned request fails
        extra = ""
        a = got.answers[i]
        if a[0] != "error" or not kit.poison(a[1]):
            extra = f"request {i} answered {_short(a)} on failing every driver"
        elif got.shadow.poisoned != 1:
            extra = f"{got.shadow.poisoned} requests counted as poisoned"
        out.append(Case("reissue", failure, op, True, not extra,
                        extra or "(every time: poisoned alone)"))

    if kit.suspect is not None and kit.suspect[0] == i:
        error = kit.suspect[1]
        got = run(kit, lambda f: (f.fail("passive", error, op=op, request=i),
                                  f.fail("passive", failure, op=op, request=i)))
        case("second-opinion", got, {}, True)

    def condemn(shadow: Shadow[Probed], fake: FakeDomain) -> None:
        shadow.recover_now(fake.report(failure, "checkpoint"), shadow.generation)

    got = run(kit, between={i: condemn})
    case("checkpoint", got, {}, True)

    out.append(_active(kit, ref, op, i, failure))
    return out


def _dead(kit: SpecKit, ref: Run, op: str, i: int, failure: str,  # noqa: PLR0917
          reissuable: bool) -> Case:
    shadow, fake, store = start(kit, max_tries=MAX_TRIES)
    answers: list[tuple[str, Any]] = []

    def ask(j: int) -> tuple[str, Any]:
        o, a = kit.scenario[j]
        fake.request = j
        try:
            return "ok", shadow.call(o, *_resolve(a, answers))
        except Exception as e:
            return "error", e

    for j in range(i):
        answers.append(ask(j))
    fake.fail("passive", failure, op=op, request=i)
    fake.fail("restart", "crash", at=0, times=10**6)
    got = ask(i)
    want = kit.busy if not reissuable else kit.poison
    why = ""
    if not shadow.recoveries or shadow.recoveries[0].ok:
        why = "the failed restart was not recorded"
    elif got[0] != "error" or not want(got[1]):
        why = f"request {i} answered {_short(got)} while no driver could be built"
    elif shadow.mode != "dead":
        why = f"the shadow is {shadow.mode}, not dead"
    if not why:
        fake.triggers.clear()  # the driver can be built again
        for j in range(i, len(kit.scenario)):
            answers.append(ask(j))
        got_run = Run(answers, store, fake, shadow)
        why = _compare(kit, ref, got_run, {})
    return Case("restart", failure, op, True, not why, why)


def _active(kit: SpecKit, ref: Run, op: str, i: int, failure: str) -> Case:
    """Request ``i`` arrives while a recovery is held half-way: answered by its
    strategy (early for FROM_LOG, BUSY, DROP and a released QUEUE; after the
    recovery for BLOCK and a waiting QUEUE)."""
    shadow, fake, _ = start(kit)
    answers: list[tuple[str, Any]] = []
    for j, (o, a) in enumerate(kit.scenario[:i]):
        try:
            answers.append(("ok", shadow.call(o, *_resolve(a, answers))))
        except Exception as e:
            return Case("active", failure, op, False, False, f"request {j} failed: {e!r}")
    args = _resolve(kit.scenario[i][1], answers)
    strategy = shadow.spec.strategy(op)
    fake.restart_gate = threading.Event()
    recovery = threading.Thread(target=shadow.recover_now,
                                args=(fake.report(failure, "idle"), shadow.generation))
    recovery.start()
    fake.restart_started.wait(5)
    got: list[tuple[str, Any]] = []

    def request() -> None:
        try:
            got.append(("ok", shadow.call(op, *args)))
        except Exception as e:
            got.append(("error", e))

    t = threading.Thread(target=request)
    t.start()
    t.join(0.3)
    early = not t.is_alive()
    fake.restart_gate.set()
    recovery.join(10)
    t.join(10)
    if not got:
        return Case("active", failure, op, True, False, "the request never finished")
    answer, want = got[0], ref.answers[i]
    queued = strategy is Strategy.QUEUE and shadow.spec.queued(op, args) is not NOT_IN_LOG
    if strategy is Strategy.BUSY or (strategy is Strategy.DROP):
        ok = early and (answer[0] == "error" and kit.busy(answer[1])
                        if strategy is Strategy.BUSY
                        else answer == ("ok", shadow.spec.dropped(op)))
    elif strategy is Strategy.FROM_LOG:
        ok = _same(answer, want)  # early if the log knew, else after the recovery
    elif strategy is Strategy.QUEUE and queued:
        ok = early and answer == ("ok", shadow.spec.queued(op, args))
    else:  # BLOCK, or QUEUE with the caller waiting its turn
        ok = not early and _same(answer, want)
    return Case("active", failure, op, True, ok,
                f"{strategy.name.lower()}: {'early' if early else 'after'} {_short(answer)}")
