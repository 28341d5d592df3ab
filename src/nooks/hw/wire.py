"""A network card's port: an AF_PACKET socket on one end of a veth.

What the card sends goes out on the wire whole (one ``send`` per frame); what
arrives is the card's to receive, frames the port itself sent excluded
(``PACKET_OUTGOING``). The socket is made in the wire's namespace: it stays
bound to that interface whatever namespace its user runs in.

Rules: frames are 14 to ``max_frame`` bytes; a longer one on receive is
counted (``oversized``) and dropped, as a card's receive filter drops it.
"""

from __future__ import annotations

import contextlib
import socket

from pyroute2 import netns

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
ETH_HLEN = 14
MAX_FRAME = 1518  # an MTU-1500 frame with its header and a VLAN tag


class Wire:
    def __init__(self, ns: str, ifname: str, max_frame: int = MAX_FRAME) -> None:
        self.ns = ns
        self.ifname = ifname
        self.max_frame = max_frame
        self.oversized = 0
        netns.pushns(ns)
        try:
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW,
                                      socket.htons(ETH_P_ALL))
        finally:
            netns.popns()
        try:
            self.sock.bind((ifname, ETH_P_ALL))
        except OSError:
            self.sock.close()
            raise

    def __repr__(self) -> str:
        return f"<Wire {self.ifname} in {self.ns} oversized={self.oversized}>"

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, frame: bytes) -> None:
        if not ETH_HLEN <= len(frame) <= self.max_frame:
            raise ValueError(f"a frame of {len(frame)} bytes cannot go on the wire")
        self.sock.send(frame)

    def receive(self) -> bytes | None:
        """The next frame that arrived (blocks); None for one this port sent or one
        too large."""
        data, addr = self.sock.recvfrom(self.max_frame + 1)
        if addr[2] == PACKET_OUTGOING:
            return None
        if len(data) > self.max_frame:
            self.oversized += 1
            return None
        return data

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
