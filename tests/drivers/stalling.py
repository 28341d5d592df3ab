"""E1000 drivers that stop working without crashing: one goes deaf (its interrupt
handler does nothing after a while: received frames stay in the ring), one goes
mute (it takes frames to send and never rings the card's tail), one stops
reclaiming its transmit ring (it fills, and stays full), one lags (it passes each
received frame up only when the next one comes), one never acknowledges its
interrupts (the line stays up). Each fresh one works for a
while again, as a driver with a transient fault would."""

from __future__ import annotations

from nooks.drivers.e1000 import E1000

WORKS_FOR = 30  # calls of the kind that breaks, then it stops doing them


class Deaf(E1000):
    def __init__(self) -> None:
        super().__init__()
        self.handled = 0

    def interrupt(self) -> None:
        self.handled += 1
        if self.handled <= WORKS_FOR:
            super().interrupt()


class Mute(E1000):
    def __init__(self) -> None:
        super().__init__()
        self.sent = 0

    def xmit(self, frames: list[bytes]) -> int:
        self.sent += 1
        if self.sent <= WORKS_FOR:
            return super().xmit(frames)
        return len(frames)  # taken, and never sent


class Misfiltering(E1000):
    """After a while it programs the card's address filter with another address:
    frames for this machine are filtered out by the card."""

    def __init__(self) -> None:
        super().__init__()
        self.handled = 0

    def interrupt(self) -> None:
        self.handled += 1
        if self.handled == WORKS_FOR:
            super().set_mac(b"\x02\x00\x00\x00\x00\x99")
        super().interrupt()


class Unreclaiming(E1000):
    """After a while it never reclaims what the card sent: its ring fills and stays
    full, though the card has sent everything and raised its interrupt."""

    def __init__(self) -> None:
        super().__init__()
        self.cleaned = 0

    def _tx_clean(self) -> None:
        self.cleaned += 1
        if self.cleaned <= WORKS_FOR // 6:  # (its 64-slot ring then fills within a ping)
            super()._tx_clean()


class Lagging(E1000):
    """After a while its poll stops one frame short: each frame goes up only when
    the next one has come (a ping's reply waits for the next one's)."""

    def __init__(self) -> None:
        super().__init__()
        self.handled = 0
        self.held: tuple[int, int] | None = None
        self.pass_up = self.k.netif_rx_at
        self.k = _Holding(self)

    def interrupt(self) -> None:
        self.handled += 1
        super().interrupt()


class _Holding:
    """The kernel as a lagging driver calls it: a frame passed up is held back until
    the next one."""

    def __init__(self, driver: Lagging) -> None:
        self.driver = driver
        self.kernel = driver.k

    def netif_rx_at(self, address: int, length: int) -> None:
        d = self.driver
        if d.handled <= WORKS_FOR:
            d.pass_up(address, length)
            return
        if d.held is not None:
            d.pass_up(*d.held)
        d.held = (address, length)

    def __getattr__(self, name: str) -> object:
        return getattr(self.kernel, name)


class Unacknowledging(E1000):
    """After a while its handler polls the rings but never acknowledges the card's
    causes: the line stays up, and the handler is called again and again."""

    def __init__(self) -> None:
        super().__init__()
        self.handled = 0

    def interrupt(self) -> None:
        self.handled += 1
        if self.handled <= WORKS_FOR:
            super().interrupt()
            return
        self._rx()
        self._tx_clean()
