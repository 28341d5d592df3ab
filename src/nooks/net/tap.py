"""The host's TAP device: the network interface programs on this machine use.

The TAP lives as long as its descriptor: the host holds it, so a driver can die
and be replaced without the interface, its addresses or its routes changing.
Frames the kernel sends out of the TAP are the driver's to transmit; frames the
driver passes up are written to it. Carrier (``TUNSETCARRIER``) says whether the
link is up, as a card's link status would.

Rules: one frame per ``read``/``write`` (no packet-information header); a
frame written must be an Ethernet frame of at least 14 and at most
``mtu + 14`` bytes (the kernel's own bound for a TAP without offloads);
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
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
ETH_HLEN = 14


class Tap:
    def __init__(self, ns: str, ifname: str, mtu: int = 1500) -> None:
        if not 68 <= mtu <= 65521:
            raise ValueError(f"MTU {mtu} is out of range (68 to 65521)")
        self.ns = ns
        self.ifname = ifname
        self.mtu = mtu
        netns.pushns(ns)
        try:
            self.fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
        finally:
            netns.popns()
        try:
            fcntl.ioctl(self.fd, TUNSETIFF,
                        struct.pack("16sH", ifname.encode(), IFF_TAP | IFF_NO_PI))
            os.set_blocking(self.fd, False)
        except OSError:
            os.close(self.fd)
            raise

    def __repr__(self) -> str:
        return f"<Tap {self.ifname} in {self.ns} fd={self.fd} mtu={self.mtu}>"

    def fileno(self) -> int:
        return self.fd

    def read(self) -> bytes:
        """The next frame the kernel sends (BlockingIOError if there is none yet)."""
        return os.read(self.fd, self.mtu + ETH_HLEN + 4)

    def read_burst(self, most: int) -> list[bytes]:
        """The frames the kernel has queued, at most ``most`` (none if there are none
        yet): one read each, without blocking."""
        out: list[bytes] = []
        size = self.mtu + ETH_HLEN + 4
        while len(out) < most:
            try:
                out.append(os.read(self.fd, size))
            except BlockingIOError:
                break
        return out

    def write(self, frame: bytes) -> None:
        """Pass a frame up to this machine's kernel."""
        if not ETH_HLEN <= len(frame) <= self.mtu + ETH_HLEN:
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
