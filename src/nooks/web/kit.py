"""The web class in the spec test kit (``nooks.testing``).

A model extension (``Ledger``: pages, a ledger of POSTs that must never run
twice, an idempotent ``PUT``-like route marked safe, a streamed body) and a
scenario of what clients ask, run through ``WebShadow``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nooks.testing import Ref, SpecKit
from nooks.web.interface import Head
from nooks.web.spec import ExtensionFailed, ServiceBusy, WebShadow

CLIENT = ("127.0.0.1", 40000)
SERVER = ("127.0.0.1", 8080)
BIG = bytes(range(256)) * 16  # a body streamed in pieces


@dataclass
class Books:
    """What outlives the extension: the ledger (POST /ledger) and the keyed records
    (POST /keyed/NAME, safe to run again)."""

    ledger: list[bytes] = field(default_factory=list)
    keyed: dict[str, bytes] = field(default_factory=dict)

    def snapshot(self) -> tuple[tuple[bytes, ...], tuple[tuple[str, bytes], ...]]:
        return tuple(self.ledger), tuple(sorted(self.keyed.items()))


class Ledger:
    def __init__(self, books: Books) -> None:
        self.books = books
        self.streams: dict[int, bytes] = {}

    def retry_safe(self) -> list[str]:
        return ["POST /keyed/*"]

    def handle(self, method: str, target: str, headers: list[tuple[str, str]],  # noqa: PLR0917
               body: bytes, client: tuple[str, int], server: tuple[str, int]) -> Head:
        if method == "POST" and target == "/ledger":
            self.books.ledger.append(body)
            count = str(len(self.books.ledger)).encode()
            return Head(201, "Created", [], count, len(count))
        if method == "POST" and target.startswith("/keyed/"):
            self.books.keyed[target] = body
            return Head(200, "OK", [], b"kept", 4)
        if target == "/big":
            self.streams[1] = BIG
            return Head(200, "OK", [("ETag", '"big"')], BIG[:1024], len(BIG), stream=1)
        return Head(200, "OK", [("Content-Type", "text/plain")], target.encode(),
                    len(target))

    def more(self, stream: int, offset: int) -> bytes:
        return self.streams.get(stream, b"")[offset:offset + 1024]

    def drop(self, stream: int) -> None:
        self.streams.pop(stream, None)


def _req(method: str, target: str, body: bytes = b"") -> tuple[Any, ...]:
    return (method, target, [("Host", "x")], body, CLIENT, SERVER)


SCENARIO: tuple[tuple[str, tuple[Any, ...]], ...] = (
    ("retry_safe", ()),
    ("handle", _req("GET", "/index")),
    ("handle", _req("POST", "/ledger", b"one")),
    ("handle", _req("POST", "/keyed/a", b"alpha")),
    ("handle", _req("GET", "/big")),
    ("more", (1, 1024)),
    ("drop", (1,)),
    ("handle", _req("HEAD", "/index")),
)


def _busy(e: BaseException) -> bool:
    return isinstance(e, ServiceBusy)


def _poison(e: BaseException) -> bool:
    return isinstance(e, ExtensionFailed)


def _spec() -> WebShadow:
    spec = WebShadow()
    spec.mark_retry_safe(["POST /keyed/*"])  # as the host does with what retry_safe says
    return spec


KITS = (
    SpecKit(name="web", spec=_spec, driver=Ledger, store=Books, scenario=SCENARIO,
            busy=_busy, poison=_poison, snapshot=Books.snapshot,
            # a stream dies with its incarnation: ``more`` then answers b"" (and the host
            # runs the request again, if it may, for the rest of the body)
            gone={"more": b""},
            # an extension's start-up is its whole state: nothing to re-initialise or
            # replay; what it raises is answered 500, never suspect (its doubted
            # answers are tested in tests/unit/test_web_spec.py)
            phases=frozenset({"passive", "restart", "reissue", "checkpoint", "active"})),
)

__all__ = ["KITS", "Books", "Ledger", "Ref"]
