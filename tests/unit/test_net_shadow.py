"""The network shadow's replay: a fresh driver gets the system's configuration, the
address included when the card tells it another."""

from __future__ import annotations

from typing import Any

from nooks.hw.netdev import Info
from nooks.net.spec import NetShadow

SYSTEMS = bytes.fromhex("525400000000")  # what the first driver found: the interface's
CARDS = bytes.fromhex("525400000001")


class Calls:
    """A domain that answers probe with ``mac`` and records every call."""

    def __init__(self, mac: bytes) -> None:
        self.mac = mac
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def call(self, op: str, *args: Any) -> Any:
        self.calls.append((op, args))
        return Info(mac=self.mac, max_mtu=9000) if op == "probe" else None


def _shadow(found: bytes) -> NetShadow:
    spec = NetShadow()
    spec.record("probe", (), Info(mac=found, max_mtu=9000))
    spec.record("open", (), None)
    return spec


def test_a_fresh_driver_that_reads_another_address_is_told_the_systems() -> None:
    spec = _shadow(SYSTEMS)
    domain = Calls(CARDS)
    spec.reinit(domain)  # type: ignore[arg-type]
    assert spec.replay(domain) == 2  # type: ignore[arg-type]
    assert domain.calls == [("probe", ()), ("set_mac", (SYSTEMS,)), ("open", ())]


def test_the_same_address_is_not_set_again_and_one_the_system_set_always_is() -> None:
    spec = _shadow(CARDS)
    domain = Calls(CARDS)
    spec.reinit(domain)  # type: ignore[arg-type]
    assert spec.replay(domain) == 1  # type: ignore[arg-type]
    assert ("set_mac", (CARDS,)) not in domain.calls
    spec.record("set_mac", (SYSTEMS,), None)
    domain = Calls(CARDS)
    spec.reinit(domain)  # type: ignore[arg-type]
    spec.replay(domain)  # type: ignore[arg-type]
    assert domain.calls[1] == ("set_mac", (SYSTEMS,))


def test_a_probe_that_finds_no_cards_address_is_a_violation() -> None:
    """A multicast or zero address cannot be the interface's (its link would not come
    up): the driver misbehaved, and a fresh one is asked."""
    spec = NetShadow()
    ok = Info(mac=bytes.fromhex("525400000001"), max_mtu=1500)
    assert spec.violation("probe", (), ok) is None
    for bad in ("010203040506", "000000000000"):
        found = spec.violation("probe", (), Info(mac=bytes.fromhex(bad), max_mtu=1500))
        assert found is not None and "not one card's" in found
    assert spec.violation("stats", (), {}) is None
