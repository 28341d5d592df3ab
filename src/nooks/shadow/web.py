"""The web shadow: what the engine needs to know about web extensions.

A web extension holds no handles the host must re-open: its state is what its
start-up built (the application, its configuration), and a restarted domain
builds it again from the same module and arguments — that is the log this
class keeps. The rules for requests:

* while an extension recovers, its requests queue (bounded by the engine's
  ``block_timeout``, then 503);
* a request that was in flight when the extension failed is re-issued once the
  extension is back if its method is idempotent (GET, HEAD, PUT, DELETE,
  OPTIONS, TRACE) or the application marked its route safe to retry
  (``"POST /api/*"``, shell-style patterns); any other is answered 503 with
  ``Retry-After``: it may have run, and running it twice could do harm;
* a request that fails the extension ``max_tries`` times fails alone with 500;
* the pieces of a streamed body (``more``, ``drop``) are never re-issued: the
  stream died with the incarnation, and the host resumes the body by running
  the whole request again when that is safe (``nooks.web.streaming``).
"""

from __future__ import annotations

import fnmatch

from nooks.domain.host import Domain
from nooks.errors import FailureReport
from nooks.shadow.engine import ClassSpec, NotInLog, Strategy
from nooks.web.http import IDEMPOTENT

RETRY_AFTER = 1  # seconds, for 503 answers


class ServiceBusy(Exception):
    """Answer 503 with Retry-After: the request did not (or may not have) run."""

    status = 503


class ExtensionFailed(Exception):
    """Answer 500: the request fails the extension every time it is tried."""

    status = 500


class WebShadow(ClassSpec):
    def __init__(self, retry_safe: list[str] | tuple[str, ...] = ()) -> None:
        self.retry_safe: list[tuple[str, str]] = []
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

    def strategy(self, op: str) -> Strategy:
        return Strategy.QUEUE

    def translate(self, op: str, args: tuple[object, ...], reissue: bool) -> tuple[object, ...]:
        return args

    def record(self, op: str, args: tuple[object, ...], result: object) -> object:
        return result

    def reinit(self, domain: Domain) -> None:
        pass  # the application's start-up runs again as the domain constructs it

    def replay(self, domain: Domain) -> int:
        return 0

    def reissuable(self, op: str, args: tuple[object, ...]) -> bool:
        if op == "handle":
            return self.safe_to_retry(str(args[0]), str(args[1]))
        return op not in ("more", "drop")

    def suspect(self, op: str, args: tuple[object, ...], error: BaseException,
                domain: Domain) -> bool:
        return False  # a web extension's errors are its responses: 500s are answers

    def doubt(self, op: str, args: tuple[object, ...], result: object,
              domain: Domain) -> str | None:
        return None

    def reissued(self, op: str, args: tuple[object, ...],
                 error: BaseException) -> tuple[bool, object]:
        return False, None

    def answer(self, op: str, args: tuple[object, ...]) -> object:
        raise NotInLog

    def busy(self, op: str) -> BaseException:
        return ServiceBusy("the application is restarting; try again")

    def poison(self, op: str, report: FailureReport | None) -> BaseException:
        kind = getattr(getattr(report, "kind", None), "value", "failed")
        return ExtensionFailed(f"the application {kind} on this request every time it ran")

    def dropped(self, op: str) -> object:
        return None

    def handle_result(self, op: str) -> bool:
        return False
