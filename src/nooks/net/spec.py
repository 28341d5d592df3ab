"""The network shadow: what the engine needs to know about NIC drivers.

What a NIC driver holds is the card's configuration; the shadow logs it — the
card found (``probe``), up or down, its address, MTU, receive mode (promiscuous,
all-multicast, the multicast groups) — and a fresh driver gets it back in that
order: probe, address, MTU, receive mode, open. The address is the system's: the
one it set, or the one the first driver found, which the interface took (a fresh
driver that reads another from the card is told the system's). The card is reset
before each fresh driver is built (``prepare_restart``: the host's). The rules for
requests:

* while the driver recovers, transmits wait in arrival order (at most
  ``max_held``; past that a frame is dropped, counted) and go to the fresh
  driver in that order; an interrupt is dropped (the host looks at the card's
  line again once the driver is back); ``stats`` is answered from the last
  known; configuration waits;
* a transmit in flight when the driver failed is sent again (a frame twice on
  the wire is harmless; lost, it is not), and one that fails every driver is
  dropped alone (``FramePoisoned``); an interrupt is not sent again;
* configuration is re-issued (each call sets a state: twice is once).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nooks.domain.host import Domain
from nooks.errors import FailureReport, Poisoned, Unavailable
from nooks.hw.netdev import Info
from nooks.net.interface import NetInterface
from nooks.shadow.spec import NOT_IN_LOG, ClassSpec, Strategy


class NetBusy(Unavailable):
    """The driver could not take the request (it was down): a frame is dropped."""


class FramePoisoned(Poisoned):
    """This frame failed the driver every time: it is dropped alone."""


class NetShadow(ClassSpec):
    interface = NetInterface
    default_strategy = Strategy.BLOCK
    strategies = {"xmit": Strategy.QUEUE, "interrupt": Strategy.DROP,
                  "stats": Strategy.FROM_LOG}

    def __init__(self, reset: Callable[[], None] = lambda: None) -> None:
        self._reset = reset
        self.info: Info | None = None
        self.opened = False
        self.mac: bytes | None = None  # set by the system (None: the card's own)
        self._found: bytes | None = None  # the address a fresh driver read from the card
        self.mtu: int | None = None
        self.rx_mode: tuple[bool, bool, list[bytes]] | None = None
        self.last_stats: dict[str, int] = {}

    def record(self, op: str, args: tuple[Any, ...], result: Any) -> Any:
        if op == "probe" and isinstance(result, Info):
            self.info = result
        elif op == "open":
            self.opened = True
        elif op == "stop":
            self.opened = False
        elif op == "set_mac":
            self.mac = bytes(args[0])
        elif op == "change_mtu":
            self.mtu = int(args[0])
        elif op == "set_rx_mode":
            self.rx_mode = (bool(args[0]), bool(args[1]), [bytes(g) for g in args[2]])
        elif op == "stats" and isinstance(result, dict):
            self.last_stats = dict(result)
        return result

    def violation(self, op: str, args: tuple[Any, ...], result: Any) -> str | None:
        if op == "probe" and isinstance(result, Info) and (
                result.mac[0] & 1 or not any(result.mac)):
            # (the system's interface cannot take it: its link would not come up)
            return (f"probe found the address {result.mac.hex(':')}, which is not one "
                    "card's (multicast or zero)")
        return None

    def answer(self, op: str, args: tuple[Any, ...]) -> Any:
        if op == "stats":
            return dict(self.last_stats)
        return NOT_IN_LOG

    def prepare_restart(self) -> None:
        self._reset()

    def reinit(self, domain: Domain) -> None:
        found = domain.call("probe")
        self._found = found.mac if isinstance(found, Info) else None

    def replay(self, domain: Domain) -> int:
        n = 0
        # the system's address: the one it set, else what the first driver found (the
        # interface has it): a fresh driver that read another from the card is told
        mac = self.mac or (self.info.mac if self.info is not None else None)
        if mac is not None and (self.mac is not None or mac != self._found):
            domain.call("set_mac", mac)
            n += 1
        if self.mtu is not None:
            domain.call("change_mtu", self.mtu)
            n += 1
        if self.rx_mode is not None:
            domain.call("set_rx_mode", *self.rx_mode)
            n += 1
        if self.opened:
            domain.call("open")
            n += 1
        return n

    def busy(self, op: str) -> BaseException:
        return NetBusy(f"{op}: the driver is being recovered")

    def poison(self, op: str, report: FailureReport) -> BaseException:
        return FramePoisoned(f"{op} failed the driver every time it was tried: {report}",
                             report)

    def status(self) -> dict[str, Any]:
        mac = self.mac or (self.info.mac if self.info is not None else None)
        return {"mac": mac.hex(":") if mac else None, "mtu": self.mtu, "up": self.opened,
                "promisc": self.rx_mode[0] if self.rx_mode else False,
                "allmulti": self.rx_mode[1] if self.rx_mode else False,
                "groups": [g.hex(":") for g in self.rx_mode[2]] if self.rx_mode else []}
