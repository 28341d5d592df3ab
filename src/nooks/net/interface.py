# mypy: disable-error-code="empty-body"
"""The network class's interfaces: what the host asks a NIC driver, and what the
driver asks the host (its kernel calls).

The host → driver calls are a Linux ``net_device``'s operations: ``probe`` (find
the card, read its address), ``open``/``stop``, ``xmit`` a burst of frames (as
Linux's ``xmit_more``: one doorbell for the burst), the
configuration (``set_mac``, ``set_rx_mode``, ``change_mtu``), ``stats``, and
``interrupt``: the card's line is up; the driver acknowledges, takes what the
card received and reclaims what it sent (NAPI-style: one call handles all the
work pending).

The driver → host calls are the kernel's services to a driver: DMA memory
(``dma_alloc``: an address in the card's DMA region), a write to a doorbell
register (``mmio_write``, posted: batched with the next reply), a received frame
passed up (``netif_rx`` with its bytes, or ``netif_rx_at`` by its place in DMA
memory; posted), the transmit queue woken (``tx_wake``, posted),
the link's carrier.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from nooks.hw.netdev import Info, Mac, Mtu
from nooks.wrappers import Interface, changes, once, posted

ETH_HLEN = 14
VNET_HDR = 12  # a virtio-net header (``virtio_net_hdr_v1``), before a frame with offloads
GSO_MAX = 65550  # the largest segmentation-offload frame (with its Ethernet header)
MAX_BURST = 64  # frames in one transmit call
# a frame as it crosses: an Ethernet header and at most MAX_MTU bytes (and a VLAN tag),
# or, for a card with offloads, a virtio-net header and a frame of up to GSO_MAX bytes;
# each card checks its own bound
Frame = Annotated[bytes, msgspec.Meta(min_length=ETH_HLEN, max_length=VNET_HDR + GSO_MAX)]
Frames = Annotated[list[Frame], msgspec.Meta(min_length=1, max_length=MAX_BURST)]
Stats = Annotated[dict[Annotated[str, msgspec.Meta(max_length=64)],
                       Annotated[int, msgspec.Meta(ge=0, le=(1 << 63) - 1)]],
                  msgspec.Meta(max_length=64)]
Groups = Annotated[list[Mac], msgspec.Meta(max_length=4096)]


class NetInterface(Interface):
    @changes()
    def probe(self) -> Info:
        """Find the card and reset it."""

    @changes()
    def open(self) -> None:
        """Bring the interface up: rings allocated, receiver and transmitter on."""

    @changes()
    def stop(self) -> None:
        """Bring it down."""

    def xmit(self, frames: Frames) -> Annotated[int, msgspec.Meta(ge=0, le=MAX_BURST)]:
        """Send a burst of frames, in order; how many the card took. The rest are
        offered again at once if it took some, after ``tx_wake`` if it took none.
        Sent again after a failure: a frame twice on the wire is harmless (networks
        duplicate frames; TCP and ICMP take it), one lost is not."""

    @changes()
    def set_mac(self, mac: Mac) -> None: ...

    @changes()
    def set_rx_mode(self, promisc: bool, allmulti: bool, groups: Groups) -> None: ...

    @changes()
    def change_mtu(self, mtu: Mtu) -> None: ...

    def stats(self) -> Stats: ...

    @once
    def interrupt(self) -> None:
        """The card's interrupt line is up."""


Address = Annotated[int, msgspec.Meta(ge=0, lt=1 << 32)]
Size = Annotated[int, msgspec.Meta(ge=1, le=1 << 24)]
Word = Annotated[int, msgspec.Meta(ge=0, lt=1 << 32)]
Register = Annotated[int, msgspec.Meta(ge=0, lt=1 << 16)]


class NetKernelInterface(Interface):
    def dma_alloc(self, size: Size, align: Annotated[int, msgspec.Meta(ge=1, le=4096)]
                  ) -> Address:
        """DMA memory for the card (an address in its DMA region)."""

    @posted
    def mmio_write(self, offset: Register, value: Word) -> None:
        """A write to a register that makes the card act."""

    @posted
    def netif_rx(self, frame: Frame) -> None:
        """A frame received: pass it up to the system."""

    @posted
    def netif_rx_at(self, address: Address, length: Size) -> None:
        """The frame the card put at ``address`` in DMA memory (``length`` bytes, a
        header first with offloads): pass it up. The bytes never cross: the system
        gets the frame the wire delivered there."""

    @posted
    def tx_wake(self) -> None:
        """The card has room again: transmits may go on."""

    def mmio_sync(self) -> None:
        """Returns once every doorbell written before it has reached the card (as a
        driver reads a register back to flush its posted writes)."""

    def carrier(self, on: bool) -> None: ...
