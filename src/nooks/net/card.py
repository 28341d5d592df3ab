"""A simulated NIC as the host holds it: its registers and DMA memory (shared memory
the driver's domain maps), its model, and the class's checks on what the driver
makes it do.

The checks (the wrappers of this class):

* every frame the driver puts on the wire is one the system gave it (``gave``),
  byte for byte (a short one may be padded with zeros to 60 bytes, as drivers
  do); anything else is refused and the driver has misbehaved;
* every frame the driver passes up is one the wire delivered into the card's
  ring and that was not passed up yet; anything else is refused likewise;
* DMA memory is handed out from the card's region only (``dma_alloc``).

The card remembers, bounded, the frames it was given and not yet sent and the
frames it delivered and not yet passed up; after a recovery the second are
*pending receives*, delivered again to the fresh driver (``reset`` returns them).
It also knows how long each list has gone without moving (``stalled``): a
driver that takes frames and never sends them, or leaves received ones in its
ring, has stopped working without crashing; so has one whose card takes no
frame for this machine's own address (``own``) or broadcasts: it programmed the
card's filter or ring otherwise than the system needs (a ring a driver never
gives back is always full). The card also follows each frame the driver took
and has not sent (``took``), and each received frame an interrupt handler that
began after it came has left in the ring (``polled``). The host recovers such a
driver as hung.
"""

from __future__ import annotations

import collections
import ctypes
import mmap
import os
import threading
import time
from collections.abc import Callable
from typing import NamedTuple, Protocol

from nooks.domain.spec import Region
from nooks.errors import LimitExceeded
from nooks.hw import e1000, ne2000, rtl8139, virtio

_libc = ctypes.CDLL(None, use_errno=True)
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 0x01, 0x02
MAX_GIVEN = 256  # frames given to the driver and not yet on the wire
MAX_DELIVERED = 1024  # frames in the ring not yet passed up
ETH_ZLEN = 60
VNET_HDR = 12  # before each frame of a card with offloads
BROADCAST = b"\xff" * 6
MISFILTERED_FRAMES = 2  # frames for this machine not taken before the card is wrong


class Model(Protocol):
    """What the host needs of a card's model."""

    regs: memoryview
    dma: memoryview
    counts: dict[str, int]
    placed: Callable[[int, bytes], None]

    def write(self, off: int, value: int) -> None: ...
    def receive(self, frame: bytes) -> bool: ...
    def pending(self) -> bool: ...
    def reset(self) -> None: ...
    def release(self) -> None: ...


class Family(NamedTuple):
    """A card family: its model, the sizes of its register window and DMA memory,
    and whether frames cross with a virtio-net header (checksum and segmentation
    offloads)."""

    model: Callable[..., Model]
    regs_size: int
    dma_size: int
    offloads: bool = False


FAMILIES: dict[str, Family] = {
    "ne2000": Family(ne2000.Ne2000, ne2000.REGS_SIZE, ne2000.MEMORY),  # (its own memory)
    "rtl8139": Family(rtl8139.Rtl8139, rtl8139.REGS_SIZE, 1 << 20),
    "e1000": Family(e1000.E1000, e1000.REGS_SIZE, 1 << 20),
    "virtio": Family(virtio.VirtioNet, virtio.REGS_SIZE, 16 << 20, offloads=True),
}


class Refused(Exception):
    """The driver made the card do what it must not (the driver misbehaved)."""


class Card:
    def __init__(self, family: str, mac: bytes, send: Callable[[bytes], None],
                 interrupt: Callable[[], None]) -> None:
        fam = FAMILIES[family]
        model, regs_size, self.dma_size = fam.model, fam.regs_size, fam.dma_size
        self.family = family
        self.offloads = fam.offloads
        self.mac = mac
        self._send_wire = send
        self._fds: list[int] = []
        self._maps: list[mmap.mmap] = []
        self.regs_size = (regs_size + 4095) // 4096 * 4096
        self.regs_fd, regs = self._region("nooks-card-regs", self.regs_size)
        self.dma_fd, dma = self._region("nooks-card-dma", self.dma_size)
        self._lock = threading.Lock()
        self._given: collections.deque[bytes] = collections.deque()
        self._delivered: collections.deque[bytes] = collections.deque()
        # where in DMA memory delivered frames begin: the frames put at one place,
        # oldest first (a driver gives a buffer back before its pass-up, posted, is
        # run), and each frame's place (by identity; as long as it is delivered)
        self._at: dict[int, collections.deque[bytes]] = {}
        self._place: dict[int, int] = {}
        # since when each list has waited without moving (None: it is empty)
        self._tx_since: float | None = None
        # frames given and not sent that the driver took (its ``xmit`` said so): by
        # identity, when; and the fresh driver's number (a reply counted after a
        # recovery is the old driver's)
        self._given_ids: set[int] = set()
        self._took_at: dict[int, float] = {}
        self.epoch = 0
        self._rx_since: float | None = None
        # when each delivered frame arrived (by identity), and when the last interrupt
        # handler of the current driver that returned had begun: a frame older than
        # that handler is one the driver's poll of its ring left behind
        self._arrived_at: dict[int, float] = {}
        self._polled: float | None = None
        self._sent_at: float | None = None  # when the card last sent a frame
        self.own: tuple[bytes, ...] = ()  # this machine's address(es), as the system set
        self._misfiltered_since: float | None = None  # frames for it filtered out since
        self._misfiltered = 0  # how many since
        self._dma_next = 0
        self.counts = collections.Counter[str]()
        self.model: Model = model(memoryview(regs)[:regs_size], memoryview(dma), mac,
                                  self._send, interrupt)
        self.model.placed = self._placed

    def _region(self, name: str, size: int) -> tuple[int, mmap.mmap]:
        fd = os.memfd_create(name, os.MFD_CLOEXEC)
        os.ftruncate(fd, size)
        m = mmap.mmap(fd, size)
        self._fds.append(fd)
        self._maps.append(m)
        return fd, m

    def regions(self) -> tuple[Region, ...]:
        return (Region("regs", self.regs_fd, self.regs_size),
                Region("dma", self.dma_fd, self.dma_size))

    def __repr__(self) -> str:
        return (f"<Card {self.family} {self.mac.hex(':')} given={len(self._given)} "
                f"delivered={len(self._delivered)} {dict(self.counts)}>")

    # -- what the system gives and takes ---------------------------------------------

    def gave(self, frame: bytes) -> None:
        """The system asks the driver to send ``frame``."""
        with self._lock:
            self._give(frame)
            if self._tx_since is None:
                self._tx_since = time.monotonic()

    def _give(self, frame: bytes) -> None:
        # under self._lock
        if len(self._given) >= MAX_GIVEN:
            self._let_go(0)
            self.counts["given_forgotten"] += 1
        self._given.append(frame)
        self._given_ids.add(id(frame))

    def _let_go(self, i: int) -> None:
        # under self._lock: given frame ``i`` is no longer to be sent
        frame = self._given[i]
        del self._given[i]
        self._given_ids.discard(id(frame))
        self._took_at.pop(id(frame), None)

    def forget(self, frames: list[bytes]) -> None:
        """The system will not ask for ``frames`` any more (they were dropped)."""
        with self._lock:
            for frame in frames:
                # itself, else an equal one (given again while it was still given)
                same = [i for i, f in enumerate(self._given) if f is frame] or \
                    [i for i, f in enumerate(self._given) if f == frame][:1]
                if same:
                    self._let_go(same[0])
            if not self._given:
                self._tx_since = None

    def took(self, frames: list[bytes], epoch: int) -> None:
        """The driver of ``epoch`` took ``frames`` to send. A card sends at the
        doorbell, before the driver's reply: those not sent yet wait for a driver
        that sends them later (a frame held for an interrupt), and not for long."""
        now = time.monotonic()
        with self._lock:
            if epoch != self.epoch:
                return  # (taken by a driver since replaced: its successor is offered them)
            for frame in frames:
                if id(frame) in self._given_ids:
                    self._took_at.setdefault(id(frame), now)

    def reclaimable(self) -> bool:
        """Whether every frame the current driver took has gone out on the wire and an
        interrupt handler of the driver has begun (and returned) since the last went:
        its transmit ring is free, and it has had its chance to see so."""
        with self._lock:
            polled = self._polled
            return not self._took_at and polled is not None and (
                self._sent_at is None or polled > self._sent_at)

    def polled(self, since: float, epoch: int) -> None:
        """The interrupt handler the driver of ``epoch`` began at ``since`` returned
        (what it passed up, posted, has reached the card)."""
        with self._lock:
            if epoch == self.epoch and (self._polled is None or since > self._polled):
                self._polled = since

    def moved(self) -> int:
        """A count that grows each time the card sends a frame or one is passed up."""
        return self.counts["sent"] + self.counts["passed_up"]

    def restart_clocks(self) -> None:
        """A fresh driver is up: what waits is its to move from now on."""
        now = time.monotonic()
        with self._lock:
            self._tx_since = now if self._given else None
            self._rx_since = now if self._delivered else None
            self._took_at.clear()
            self.epoch += 1
            self._polled = None
            self._misfiltered_since, self._misfiltered = None, 0

    def unsent(self) -> list[bytes]:
        """The frames given and not sent (a failed driver may have taken them)."""
        with self._lock:
            return list(self._given)

    def stalled(self, limit: float, filter_limit: float, took_limit: float | None = None,
                passed_over_limit: float | None = None) -> str | None:
        """What has gone ``limit`` seconds without moving, ``filter_limit`` seconds
        filtered out against the system's settings, (if given) ``took_limit``
        seconds taken by the driver and not sent, or ``passed_over_limit`` seconds
        received and left in the ring by an interrupt handler that began after they
        came, if anything."""
        now = time.monotonic()
        with self._lock:
            if took_limit is not None and self._took_at:
                late = sum(1 for t in self._took_at.values() if now - t > took_limit)
                if late:
                    return (f"the driver took {late} frames to send that the card had not "
                            f"sent {took_limit:g} s later")
            polled = self._polled
            if passed_over_limit is not None and polled is not None:
                left = sum(1 for t in self._arrived_at.values()
                           if t < polled and now - t > passed_over_limit)
                if left:
                    return (f"the driver's interrupt handler left {left} frames received "
                            f"in its ring for {passed_over_limit:g} s")
            if self._tx_since is not None and now - self._tx_since > limit:
                return (f"{len(self._given)} frames given to the driver were not sent for "
                        f"{limit:g} s")
            if self._rx_since is not None and now - self._rx_since > limit:
                return (f"{len(self._delivered)} frames received stayed in the card for "
                        f"{limit:g} s")
            since = self._misfiltered_since
            if since is not None and now - since > filter_limit \
                    and self._misfiltered >= MISFILTERED_FRAMES:
                return (f"the card took no frame for this machine's address for "
                        f"{filter_limit:g} s (its filter or its ring is not set up as the "
                        "system needs)")
        return None

    def regive(self, frames: list[bytes]) -> None:
        """A fresh driver will be asked to send ``frames`` again (they were in flight
        when the old one failed, which may have sent some): each may go once more."""
        with self._lock:
            for frame in frames:
                if frame not in self._given:
                    self._give(frame)
            if self._given:
                self._tx_since = time.monotonic()

    def _send(self, frame: bytes) -> None:
        with self._lock:
            for i, f in enumerate(self._given):
                if frame == f or (len(f) < ETH_ZLEN == len(frame)
                                  and frame == f + bytes(ETH_ZLEN - len(f))):
                    self._let_go(i)
                    self._tx_since = time.monotonic() if self._given else None
                    break
            else:
                self.counts["tx_refused"] += 1
                raise Refused(f"the driver sent a frame of {len(frame)} bytes the system "
                              "never gave it")
        self._send_wire(frame)
        self.counts["sent"] += 1
        self._sent_at = time.monotonic()

    def arrived(self, frame: bytes) -> None:
        """A frame arrived from the wire. It is listed as delivered before the card
        takes it (the driver may pass it up the moment it is in the ring), and
        forgotten if the card did not take it."""
        with self._lock:
            if len(self._delivered) >= MAX_DELIVERED:
                self._gone(self._delivered.popleft())
            self._delivered.append(frame)
            self._arrived_at[id(frame)] = time.monotonic()
            if self._rx_since is None:
                self._rx_since = time.monotonic()
        taken = self.model.receive(frame)
        if taken:
            with self._lock:  # (in the ring from now: a handler that began before may
                if id(frame) in self._arrived_at:  # have looked before it was there)
                    self._arrived_at[id(frame)] = time.monotonic()
        at = VNET_HDR if self.offloads else 0
        dest = frame[at:at + 6]
        if self.own and (dest == BROADCAST or dest in self.own):
            if taken:
                if dest != BROADCAST:  # (taking broadcasts says nothing of its own address)
                    self._misfiltered_since, self._misfiltered = None, 0
            else:  # filtered out, or no room: a ring set up wrong, or never given back
                self._misfiltered += 1
                if self._misfiltered_since is None:
                    self._misfiltered_since = time.monotonic()
        if not taken:
            with self._lock:
                for i in range(len(self._delivered) - 1, -1, -1):
                    if self._delivered[i] is frame:
                        del self._delivered[i]
                        self._gone(frame)
                        break
                if not self._delivered:
                    self._rx_since = None

    def _placed(self, address: int, frame: bytes) -> None:
        with self._lock:
            if id(frame) in self._place:  # (put somewhere else before: not there now)
                self._unplace(frame)
            self._at.setdefault(address, collections.deque()).append(frame)
            self._place[id(frame)] = address

    def _gone(self, frame: bytes) -> None:
        # under self._lock: ``frame`` is no longer delivered
        self._arrived_at.pop(id(frame), None)
        self._unplace(frame)

    def _unplace(self, frame: bytes) -> None:
        # under self._lock: ``frame`` is no longer delivered (places are as many as
        # the frames delivered, at most MAX_DELIVERED)
        address = self._place.pop(id(frame), None)
        if address is None:
            return
        here = self._at.get(address)
        if here is None:
            return
        for i, f in enumerate(here):
            if f is frame:
                del here[i]
                break
        if not here:
            del self._at[address]

    def passed_up_at(self, address: int, length: int) -> bytes:
        """The driver passes up the frame the card put at ``address`` in DMA memory:
        that frame, as the wire delivered it (what the driver did to the buffer since
        does not reach the system); Refused unless the card put one of ``length``
        bytes there that was not passed up yet."""
        with self._lock:
            for frame in self._at.get(address, ()):
                if len(frame) == length and self._take_delivered(frame):
                    return frame
            self.counts["rx_refused"] += 1
        raise Refused(f"the driver passed up {length} bytes at {address:#x} where the card "
                      "put no frame it had not passed up")

    def _take_delivered(self, frame: bytes) -> bool:
        # under self._lock: ``frame`` itself (not an equal one) is passed up, if delivered
        for i, f in enumerate(self._delivered):
            if f is frame:
                self._up(i)
                return True
        return False

    def _up(self, i: int) -> None:
        # under self._lock: delivered frame ``i`` is passed up
        self._gone(self._delivered[i])
        del self._delivered[i]
        self.counts["passed_up"] += 1
        self._rx_since = time.monotonic() if self._delivered else None

    def passed_up(self, frame: bytes) -> None:
        """The driver passes ``frame`` up; Refused unless the card delivered it."""
        with self._lock:
            for i, f in enumerate(self._delivered):
                if f == frame:
                    self._up(i)
                    return
            self.counts["rx_refused"] += 1
        raise Refused(f"the driver passed up a frame of {len(frame)} bytes the wire never "
                      "delivered")

    # -- the driver's memory -----------------------------------------------------------

    def dma_alloc(self, size: int, align: int) -> int:
        with self._lock:
            at = (self._dma_next + align - 1) // align * align
            if at + size > self.dma_size:
                raise LimitExceeded(f"the card's DMA memory ({self.dma_size} bytes) is used "
                                    "up")
            self._dma_next = at + size
            return at

    def reset(self) -> list[bytes]:
        """Power the card off and on (before a fresh driver); the frames delivered and
        not passed up, to deliver again once it is open."""
        self._zero_dma()  # (before the model's reset: a card may keep a PROM there)
        self.model.reset()
        with self._lock:
            # (what the system gave and was not sent is still to be sent: it stays)
            pending, self._delivered = list(self._delivered), collections.deque()
            self._at.clear()
            self._place.clear()
            self._arrived_at.clear()
            self._polled = None
            self._dma_next = 0
            self._rx_since = None
            self._misfiltered_since, self._misfiltered = None, 0
            self._tx_since = time.monotonic() if self._given else None
            self._took_at.clear()
            self.epoch += 1
        return pending

    def _zero_dma(self) -> None:
        """DMA memory back to zeros: its pages given back (a hole punched in the
        memfd, which every mapping sees at once), or written over where that fails."""
        if _libc.fallocate(self.dma_fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                           ctypes.c_long(0), ctypes.c_long(self.dma_size)) != 0:
            self.model.dma[:] = bytes(len(self.model.dma))

    def close(self) -> None:
        self.model.release()
        self.model.regs.release()
        self.model.dma.release()
        for m in self._maps:
            m.close()
        for fd in self._fds:
            os.close(fd)
        self._maps, self._fds = [], []
