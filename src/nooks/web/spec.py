"""The web shadow: what the engine needs to know about web extensions.

A web extension holds no handles the host must re-open: its state is what its
start-up built (the application, its configuration), and a restarted domain
builds it again from the same module and arguments — that is the log this
class keeps. The rules for requests:

* while an extension recovers, its requests are held in arrival order (each
  waits at most ``block_timeout``, then 503; past ``max_held`` of them, 503 at
  once) and woken in that order once it is back (the worker pool lends a worker
  to one request at a time, and bounds those waiting for one with
  ``--max-queue``); the next piece of a streamed body is busy
  at once (503 inside: the host resumes the body elsewhere if it may); a
  stream the host drops meanwhile is dropped (it died with the incarnation);
  ``retry_safe`` is answered from the log (what the application said at
  start-up);
* a request that was in flight when the extension failed is re-issued once the
  extension is back if its method is idempotent (GET, HEAD, PUT, DELETE,
  OPTIONS, TRACE) or the application marked its route safe to retry
  (``"POST /api/*"``, shell-style patterns); any other is answered 503 with
  ``Retry-After``: it may have run, and running it twice could do harm;
* a response that cannot be sent (a bad status or header, a body longer or
  shorter than it says) is never passed on: the extension misbehaved, and is
  recovered like one that crashed (the request re-issued as above);
* a failure or a refusal (``500``, and 400, 403, 404, 405, 410) to a request that
  may be re-issued is doubted, and a fresh extension is asked: the first may be
  broken. An application that means its answer gives it again, and such answers
  are then trusted — ten seconds after the first confirmation, twice as long
  after each next one, up to an hour: a site whose clients ask for what is not
  there costs a few restarts of each worker in its first minutes, then one an
  hour;
* a request that fails the extension ``max_tries`` times fails alone with 500;
* the pieces of a streamed body (``more``, ``drop``) are never re-issued: the
  stream died with the incarnation, and the host resumes the body by running
  the whole request again when that is safe (``nooks.web.streaming``).
"""

from __future__ import annotations

import fnmatch
from typing import Any

from nooks.domain.host import Domain
from nooks.errors import FailureReport, Poisoned, Unavailable
from nooks.shadow.spec import NOT_IN_LOG, ClassSpec, Strategy
from nooks.web.http import IDEMPOTENT, check_head
from nooks.web.interface import Head, WebInterface

RETRY_AFTER = 1  # seconds, for 503 answers
DOUBTED = frozenset({500, 400, 403, 404, 405, 410})  # answers a broken extension gives
TRUST_FIRST, TRUST_MAX = 10.0, 3600.0  # seconds, after one confirmation and at most


class ServiceBusy(Unavailable):
    """Answer 503 with Retry-After: the request did not (or may not have) run."""

    status = 503


class ExtensionFailed(Poisoned):
    """Answer 500: the request fails the extension every time it is tried."""

    status = 500


class WebShadow(ClassSpec):
    interface = WebInterface
    def __init__(self, retry_safe: list[str] | tuple[str, ...] = ()) -> None:
        self.retry_safe: list[tuple[str, str]] = []
        self._marked: list[str] | None = None  # what the application said at start-up
        self.mark_retry_safe(retry_safe)

    def mark_retry_safe(self, routes: list[str] | tuple[str, ...]) -> None:
        for route in routes:
            method, sep, pattern = route.strip().partition(" ")
            if not sep or not pattern.startswith("/"):
                raise ValueError(f"retry-safe route {route!r} is not 'METHOD /path-pattern'")
            self.retry_safe.append((method.upper(), pattern.strip()))

    def safe_to_retry(self, method: str, target: str) -> bool:
        if method in IDEMPOTENT:
            return True
        path = target.partition("?")[0]
        return any(m in (method, "*") and fnmatch.fnmatchcase(path, p)
                   for m, p in self.retry_safe)

    # while an extension recovers: requests wait in order (bounded: ``max_held`` of
    # them, ``block_timeout`` each); a piece of a streamed body is busy at once (the
    # stream died with the incarnation: the host resumes the body elsewhere, if it
    # may); dropping such a stream is done already; the routes marked safe are the
    # ones the application gave at start-up
    default_strategy = Strategy.QUEUE
    strategies = {"more": Strategy.BUSY, "drop": Strategy.DROP,
                  "retry_safe": Strategy.FROM_LOG}

    def violation(self, op: str, args: tuple[Any, ...], result: Any) -> str | None:
        if op == "handle" and isinstance(result, Head):
            return head_problem(result)
        return None

    def doubt(self, op: str, args: tuple[Any, ...], result: Any, domain: Domain) -> str | None:
        if op == "handle" and isinstance(result, Head) and result.status in DOUBTED:
            return f"answered {result.status}"
        return None

    def trust_for(self, confirmations: int) -> float:
        return min(TRUST_FIRST * (1 << min(max(confirmations - 1, 0), 20)), TRUST_MAX)

    def record(self, op: str, args: tuple[object, ...], result: object) -> object:
        if op == "retry_safe" and isinstance(result, list):
            self._marked = list(result)
        return result

    def answer(self, op: str, args: tuple[object, ...]) -> object:
        if op == "retry_safe" and self._marked is not None:
            return list(self._marked)
        return NOT_IN_LOG

    def reissuable(self, op: str, args: tuple[object, ...]) -> bool:
        if op == "handle":
            return self.safe_to_retry(str(args[0]), str(args[1]))
        return super().reissuable(op, args)  # not ``more`` or ``drop``: @once

    def busy(self, op: str) -> BaseException:
        return ServiceBusy("the application is restarting; try again")

    def dropped(self, op: str) -> object:
        if op == "handle":
            raise ServiceBusy("too many requests are waiting for the application to "
                              "restart; try again")
        return None

    def poison(self, op: str, report: FailureReport) -> BaseException:
        kind = getattr(getattr(report, "kind", None), "value", "failed")
        return ExtensionFailed(f"the application {kind} on this request every time it ran")

    def status(self) -> dict[str, object]:
        return {"retry_safe": [f"{m} {p}" for m, p in self.retry_safe]}


def head_problem(head: Head) -> str | None:
    """Why a response from the extension cannot be sent, or None."""
    problem = check_head(head.status, head.reason, head.headers)
    if problem is None and len(head.body) > head.length:
        problem = f"a body of {len(head.body)} bytes said to be {head.length} long"
    if problem is None and len(head.body) < head.length and not head.stream:
        problem = (f"a body of {head.length} bytes came with {len(head.body)} of them "
                   "and no stream for the rest")
    return problem
