"""The web shadow's second opinions and checks, against a fake domain: a broken first
extension's wrong answers never reach the client; an application's own answers do."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

import pytest

from nooks.domain.host import Domain
from nooks.shadow.engine import Shadow
from nooks.testing import FakeDomain
from nooks.web.interface import Head
from nooks.web.spec import ServiceBusy, WebShadow

CLIENT = ("127.0.0.1", 40000)
SERVER = ("127.0.0.1", 8080)


@dataclass
class World:
    """What outlives the extension: how many were built, what the POSTs did, and
    what the first one (``broken``) answers wrongly."""

    builds: int = 0
    posts: list[bytes] = field(default_factory=list)
    broken: dict[str, Head] = field(default_factory=dict)  # target -> wrong answer
    gone: set[str] = field(default_factory=set)  # targets that really are missing
    always_500: set[str] = field(default_factory=set)


class Site:
    def __init__(self, world: World) -> None:
        world.builds += 1
        self.world = world
        self.first = world.builds == 1

    def handle(self, method: str, target: str, headers: list[tuple[str, str]],  # noqa: PLR0917
               body: bytes, client: tuple[str, int], server: tuple[str, int]) -> Head:
        w = self.world
        if method == "POST":
            w.posts.append(body)
        if self.first and target in w.broken:
            return w.broken[target]
        if target in w.always_500:
            return Head(500, "Internal Server Error", [], b"bug", 3)
        if target in w.gone:
            return Head(404, "Not Found", [], b"no", 2)
        return Head(201 if method == "POST" else 200, "OK", [], target.encode(), len(target))


def _shadow(world: World) -> tuple[Shadow[WebShadow], FakeDomain]:
    fake = FakeDomain(Site, world)
    return Shadow(cast(Domain, fake), WebShadow(["POST /keyed/*"])), fake


def _get(shadow: Shadow[WebShadow], target: str, method: str = "GET",
         body: bytes = b"") -> Head:
    head: Head = shadow.call("handle", method, target, [], body, CLIENT, SERVER)
    return head


def test_a_500_from_a_broken_extension_is_answered_by_a_fresh_one() -> None:
    world = World(broken={"/a": Head(500, "Internal Server Error", [], b"x", 1)})
    shadow, _ = _shadow(world)
    assert _get(shadow, "/a").body == b"/a"
    assert world.builds == 2 and shadow.second_opinions_asked == 1


def test_an_application_that_means_its_500_gets_it_and_is_trusted_a_while() -> None:
    world = World(always_500={"/bug", "/bug2"})
    shadow, _ = _shadow(world)
    assert _get(shadow, "/bug").status == 500
    assert world.builds == 2  # one fresh extension asked, which said the same
    assert _get(shadow, "/bug2").status == 500
    assert world.builds == 2  # trusted: no restart for the next


def test_a_refusal_from_a_broken_extension_is_answered_by_a_fresh_one() -> None:
    world = World(broken={"/page": Head(404, "Not Found", [], b"", 0)})
    shadow, _ = _shadow(world)
    assert _get(shadow, "/page").status == 200  # doubted, answered by a fresh one
    assert world.builds == 2


def test_trust_in_confirmed_answers_grows_with_each_confirmation() -> None:
    world = World(gone={"/never"})
    shadow, _ = _shadow(world)
    spec = shadow.spec
    assert [spec.trust_for(n) for n in (1, 2, 3)] == [10.0, 20.0, 40.0]
    assert spec.trust_for(100) == 3600.0
    assert _get(shadow, "/never").status == 404
    assert world.builds == 2  # one fresh extension asked, which said the same
    assert _get(shadow, "/never").status == 404
    assert world.builds == 2  # trusted now
    shadow._trusted.clear()  # the window ran out
    assert _get(shadow, "/never").status == 404
    assert world.builds == 3 and shadow._confirmed[("handle", "result")] == 2


def test_a_post_not_safe_to_retry_keeps_its_500_and_runs_once() -> None:
    world = World(broken={"/ledger": Head(500, "Internal Server Error", [], b"", 0)})
    shadow, _ = _shadow(world)
    assert _get(shadow, "/ledger", "POST", b"one").status == 500
    assert world.posts == [b"one"] and world.builds == 1


@pytest.mark.parametrize(("method", "target"), [("GET", "/big"), ("POST", "/keyed/k")])
def test_a_response_that_cannot_be_sent_is_never_passed_on(method: str, target: str) -> None:
    world = World(broken={target: Head(200, "OK", [], b"0123456789", 4)})  # 10 bytes of 4
    shadow, _ = _shadow(world)
    head = _get(shadow, target, method, b"p")
    assert head.body == target.encode() and world.builds == 2  # re-issued to a fresh one


def test_a_post_whose_response_cannot_be_sent_is_answered_busy_not_run_again() -> None:
    world = World(broken={"/ledger": Head(200, "OK", [("Bad\n", "x")], b"", 0)})
    shadow, _ = _shadow(world)
    with pytest.raises(ServiceBusy):
        _get(shadow, "/ledger", "POST", b"one")
    assert world.posts == [b"one"] and world.builds == 2  # recovered, not re-run
