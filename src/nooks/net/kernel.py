"""The kernel's side of a NIC driver's calls (``NetKernelInterface``), one per
incarnation of its domain: DMA memory and doorbells go to the card; frames
passed up go to the TAP once the card says they are the wire's; the transmit
queue is woken; carrier goes to the TAP."""

from __future__ import annotations

from typing import Any, Protocol

from nooks.net.card import Card


class Machine(Protocol):
    """What the kernel calls reach in the host besides the card."""

    def pass_up(self, frame: bytes) -> None: ...
    def wake_tx(self) -> None: ...
    def set_carrier(self, on: bool) -> None: ...


class NetKernel:
    def __init__(self, machine: Machine, card: Card, context: Any) -> None:
        self.machine = machine
        self.card = card
        self.context = context

    def dma_alloc(self, size: int, align: int) -> int:
        return self.card.dma_alloc(size, align)

    def mmio_write(self, offset: int, value: int) -> None:
        self.card.model.write(offset, value)

    def mmio_sync(self) -> None:
        return None  # posted calls made before this one were run before it

    def netif_rx(self, frame: bytes) -> None:
        self.card.passed_up(frame)
        self.machine.pass_up(frame)

    def netif_rx_at(self, address: int, length: int) -> None:
        self.machine.pass_up(self.card.passed_up_at(address, length))

    def tx_wake(self) -> None:
        self.machine.wake_tx()

    def carrier(self, on: bool) -> None:
        self.machine.set_carrier(on)
