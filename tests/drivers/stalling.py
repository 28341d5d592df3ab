"""E1000 drivers that stop working without crashing: one goes deaf (its interrupt
handler does nothing after a while: received frames stay in the ring), one goes
mute (it takes frames to send and never rings the card's tail). Each fresh one
works for a while again, as a driver with a transient fault would."""

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
