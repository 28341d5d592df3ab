"""The host's TAP device: the network interface programs on this machine use.

The TAP lives as long as its descriptor: the host holds it, so a driver can die
and be replaced without the interface, its addresses or its routes changing.
Frames the kernel sends out of the TAP are the driver's to transmit; frames the
driver passes up are written to it. Carrier (``TUNSETCARRIER``) says whether the
link is up, as a card's link status would.

Rules: one frame per ``read``/``write`` (no packet-information header); a
frame written must be an Ethernet frame of at least 14 and at most
``mtu + 14`` bytes (the kernel's own bound for a TAP without offloads), or,
with offloads, a virtio-net header and a segment of at most 64 KiB;
``close`` removes the device.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct

from pyroute2 import netns

TUNSETIFF = 0x400454CA
TUNSETCARRIER = 0x400454E2
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN = 0x01, 0x02, 0x04, 0x08
ETH_HLEN = 14
VNET_HDR = 12  # virtio_net_hdr_v1
GSO_MAX = 65550  # the largest segment the kernel hands a TAP with offloads (and its header)


class Tap:
    """``offloads``: every frame read and written has a 12-byte virtio-net header
    before it (``IFF_VNET_HDR``), and the kernel hands over (and takes) 64 KiB TCP
    segments with partial checksums: for a card that does the rest itself."""

    def __init__(self, ns: str, ifname: str, mtu: int = 1500, offloads: bool = False) -> None:
        if not 68 <= mtu <= 65521:
            raise ValueError(f"MTU {mtu} is out of range (68 to 65521)")
        self.ns = ns
        self.ifname = ifname
        self.mtu = mtu
        self.offloads = offloads
        netns.pushns(ns)
        try:
            self.fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
        finally:
            netns.popns()
        try:
            flags = IFF_TAP | IFF_NO_PI | (IFF_VNET_HDR if offloads else 0)
            fcntl.ioctl(self.fd, TUNSETIFF, struct.pack("16sH", ifname.encode(), flags))
            if offloads:
                fcntl.ioctl(self.fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR))
                fcntl.ioctl(self.fd, TUNSETOFFLOAD,
                            TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN)
            os.set_blocking(self.fd, False)
        except OSError:
            os.close(self.fd)
            raise

    def __repr__(self) -> str:
        return f"<Tap {self.ifname} in {self.ns} fd={self.fd} mtu={self.mtu}>"

    def fileno(self) -> int:
        return self.fd

    @property
    def max_frame(self) -> int:
        """The most a read gives or a write takes (a header and a segment, with
        offloads; a frame of the MTU, without)."""
        return VNET_HDR + GSO_MAX if self.offloads else self.mtu + ETH_HLEN

    def read(self) -> bytes:
        """The next frame the kernel sends (BlockingIOError if there is none yet)."""
        return os.read(self.fd, self.max_frame + 4)

    def read_burst(self, most: int) -> list[bytes]:
        """The frames the kernel has queued, at most ``most`` (none if there are none
        yet): one read each, without blocking."""
        out: list[bytes] = []
        size = self.max_frame + 4
        while len(out) < most:
            try:
                out.append(os.read(self.fd, size))
            except BlockingIOError:
                break
        return out

    def write(self, frame: bytes) -> None:
        """Pass a frame up to this machine's kernel."""
        least = ETH_HLEN + (VNET_HDR if self.offloads else 0)
        if not least <= len(frame) <= self.max_frame:
            raise ValueError(f"a frame of {len(frame)} bytes cannot be passed up "
                             f"(MTU {self.mtu})")
        os.write(self.fd, frame)

    def carrier(self, up: bool) -> None:
        fcntl.ioctl(self.fd, TUNSETCARRIER, struct.pack("i", int(up)))

    def close(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1
