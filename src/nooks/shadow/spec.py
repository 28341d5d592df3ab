"""What a driver class tells the shadow engine: ``ClassSpec`` and its defaults.

A class writes one ``ClassSpec`` subclass and overrides only what its drivers
need; every hook has a default that means "nothing special" (no log, no
remapping, nothing suspect, every request safe to send again). The hooks, by
the phase in which the engine calls them:

* passing a request on: ``translate`` (arguments as the current driver must see
  them, or ``Answer(value)`` to answer without the driver), ``violation`` (a
  result that must never be passed on), ``doubt`` and ``suspect`` (an answer a
  fresh driver should be asked about again), ``record`` (log the effect; the
  result the caller gets), ``handle_result`` (the result names driver state),
  ``trust_for`` (how long a doubt a fresh driver confirmed stays answered);
* while the driver is down: ``strategy`` (how each request is answered:
  ``strategies`` maps a request kind to one, ``default_strategy`` covers the
  rest), ``answer`` (from the log, or ``NOT_IN_LOG``), ``busy``, ``queued``,
  ``dropped``; ``requester`` and ``answer_own`` for requests made by the driver
  being recovered;
* recovering: ``prepare_restart`` (before each new driver is built), ``reinit``
  (bring it to its load-time state), ``replay`` (re-establish the logged state);
* after it: ``reissuable`` (a request in flight at the failure may be sent
  again), ``reissued`` (an error on a re-issue that shows the first attempt had
  done its work), ``poison`` (the error of a request that fails every driver);
* reporting: ``status`` (what the class's log holds, for ``nooks status``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, ClassVar

from nooks.domain.host import Domain
from nooks.errors import FailureReport, Poisoned, Unavailable
from nooks.wrappers import Interface, Meaning, declare


class Strategy(enum.Enum):
    """How a request is answered while its driver is being recovered."""

    FROM_LOG = "answer from log"  # what the log knows answers it (else: block)
    BUSY = "act busy"  # the class's busy answer, at once
    BLOCK = "block caller"  # wait for the driver, bounded in time
    QUEUE = "queue request"  # held in order (bounded in count), run after recovery
    DROP = "drop request"  # completed as dropped, counted


class _NotInLog:
    def __repr__(self) -> str:
        return "NOT_IN_LOG"


NOT_IN_LOG: Any = _NotInLog()
"""What ``ClassSpec.answer`` (and ``answer_own``, ``queued``) return when they have no
answer: the engine falls back to the next strategy."""


class Answer:
    """Returned by ``ClassSpec.translate``: the request needs no driver, ``value``
    answers it."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"Answer({self.value!r})"


class Busy(Unavailable):
    """The default busy answer: the driver is being recovered; try again."""


@dataclass(frozen=True)
class Meanings:
    """What each call of an interface means (``nooks.wrappers.meaning``), by call name:
    the tables a spec reads on its hot path."""

    of: dict[str, Meaning]
    handle_at: dict[str, int]  # the argument that names a handle
    openers: frozenset[str]
    closers: frozenset[str]
    logged: frozenset[str]  # what a journal of the driver's state keeps
    once: frozenset[str]  # never sent again after a failure
    done_if: dict[str, frozenset[int]]

    @staticmethod
    def read(interface: type[Interface]) -> Meanings:
        found = _read.get(interface)
        if found is not None:
            return found
        ms = {m.name: m.meaning for m in declare(interface).methods}
        found = _read[interface] = Meanings(
            of=ms,
            handle_at={n: m.handle_at for n, m in ms.items() if m.handle_at is not None},
            openers=frozenset(n for n, m in ms.items() if m.opens is not None),
            closers=frozenset(n for n, m in ms.items() if m.closes is not None),
            logged=frozenset(n for n, m in ms.items() if m.logged),
            once=frozenset(n for n, m in ms.items() if m.once),
            done_if={n: m.done_if for n, m in ms.items() if m.done_if})
        return found


_read: dict[type[Interface], Meanings] = {}


class ClassSpec:
    """What the engine needs to know about one driver class; override what differs.

    ``interface``, if a class sets it, is where the meaning of each call is declared
    (``nooks.wrappers.meaning``): the defaults of ``reissuable`` (not a ``@once``
    call) and ``reissued`` (an error in the call's ``done_if``) read it."""

    default_strategy: ClassVar[Strategy] = Strategy.BLOCK
    strategies: ClassVar[dict[str, Strategy]] = {}
    interface: ClassVar[type[Interface] | None] = None

    @property
    def meanings(self) -> Meanings:
        if self.interface is None:
            return _NO_MEANINGS
        return Meanings.read(self.interface)

    # -- passing a request on -------------------------------------------------------------

    def translate(self, op: str, args: tuple[Any, ...], reissue: bool) -> tuple[Any, ...] | Answer:
        """Arguments as the current driver must see them (virtual → real handles), or
        ``Answer(value)`` if the request needs no driver; ``reissue`` when the request
        already failed a driver once."""
        return args

    def violation(self, op: str, args: tuple[Any, ...], result: Any) -> str | None:
        """Why ``result`` must not be passed on (it would harm the host, the kernel or
        an application: e.g. more bytes than asked), or None. Such a driver has
        misbehaved: it is recovered, the request re-issued (if ``reissuable``; if not,
        answered ``busy``), and after ``max_tries`` the request fails alone."""
        return None

    def doubt(self, op: str, args: tuple[Any, ...], result: Any, domain: Domain) -> str | None:
        """Why a result the driver gave cannot be right (a postcondition that does not
        hold), or None; then a fresh driver is asked again. May ask the driver."""
        return None

    def suspect(self, op: str, args: tuple[Any, ...], error: BaseException,
                domain: Domain) -> bool:
        """Whether an error the driver returned may be a sign that it is broken (an
        answer a correct driver gives rarely or never here): then a fresh driver is
        asked again before the caller sees it. May ask the driver (``domain``)."""
        return False

    def trust_for(self, confirmations: int) -> float | None:
        """Seconds to trust answers of a kind a fresh driver has now confirmed
        ``confirmations`` times (None: the engine's ``trust_seconds``)."""
        return None

    def record(self, op: str, args: tuple[Any, ...], result: Any) -> Any:
        """Log the effect of a completed request; the result to give the caller."""
        return result

    def handle_result(self, op: str) -> bool:
        """Whether the result of ``op`` names driver state (stale after a recovery: a
        request that completed across one is sent again)."""
        return False

    # -- while the driver is down ---------------------------------------------------------

    def strategy(self, op: str) -> Strategy:
        return self.strategies.get(op, self.default_strategy)

    def answer(self, op: str, args: tuple[Any, ...]) -> Any:
        """Answer from the log (``Strategy.FROM_LOG``), or ``NOT_IN_LOG``: then the
        caller waits, as with ``Strategy.BLOCK``."""
        return NOT_IN_LOG

    def queued(self, op: str, args: tuple[Any, ...]) -> Any:
        """The answer that releases the caller of a request held by
        ``Strategy.QUEUE`` at once (the request runs after the recovery, in order),
        or ``NOT_IN_LOG``: the caller waits for its turn."""
        return NOT_IN_LOG

    def busy(self, op: str) -> BaseException:
        """The error of a request the class cannot serve now (``Strategy.BUSY``; a wait
        that ran out; a request that may not be sent again)."""
        return Busy(f"the driver is being recovered ({op}); try again")

    def dropped(self, op: str) -> Any:
        """The answer to a dropped request (``Strategy.DROP``, a full queue)."""
        return None

    def requester(self, op: str, args: tuple[Any, ...]) -> int | None:
        """The process (or thread) id that made the request, if the class knows it."""
        return None

    def answer_own(self, op: str, args: tuple[Any, ...]) -> Any:
        """Answer a request made by the driver being recovered (it must not wait for its
        own recovery), or ``NOT_IN_LOG`` (then it gets ``busy``)."""
        return NOT_IN_LOG

    # -- recovering -----------------------------------------------------------------------

    def prepare_restart(self) -> None:
        """Called before each attempt to build a new driver (e.g. put stored state
        back as the replay expects it)."""

    def reinit(self, domain: Domain) -> None:
        """Bring a freshly constructed driver to its load-time state."""

    def replay(self, domain: Domain) -> int:
        """Re-establish the logged state in a fresh driver; how many requests it took."""
        return 0

    # -- after a recovery -----------------------------------------------------------------

    def reissuable(self, op: str, args: tuple[Any, ...]) -> bool:
        """Whether a request that failed with the driver may be sent again; if not,
        it is answered by ``busy`` once the driver is back."""
        return op not in self.meanings.once

    def reissued(self, op: str, args: tuple[Any, ...], error: BaseException) -> tuple[bool, Any]:
        """A re-issued request raised ``error``: (True, result) if it was already done
        (by default: an error the call's declaration lists in ``done_if``)."""
        done = self.meanings.done_if.get(op)
        if done is not None and getattr(error, "errno", None) in done:
            return True, 0
        return False, None

    def poison(self, op: str, report: FailureReport) -> BaseException:
        """The error of a request that failed the driver every time it was tried."""
        return Poisoned(f"{op} failed the driver every time it was tried: {report}", report)

    # -- reporting ------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """What the class's log holds now, for ``nooks status`` (JSON-able)."""
        return {}

    def close(self) -> None:
        """Release what the log holds outside memory (spilled data)."""

    def __repr__(self) -> str:
        held = ", ".join(f"{k}={v}" for k, v in self.status().items()
                         if isinstance(v, int | str | bool))
        return f"<{type(self).__name__}{' ' + held if held else ''}>"


_NO_MEANINGS = Meanings(of={}, handle_at={}, openers=frozenset(), closers=frozenset(),
                        logged=frozenset(), once=frozenset(), done_if={})
