"""A network card's port: an AF_PACKET socket on one end of a veth.

What the card sends goes out on the wire whole (one ``sendmsg`` per frame); what
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
SOL_PACKET, PACKET_VNET_HDR = 263, 15
ETH_HLEN = 14
MAX_FRAME = 1518  # an MTU-1500 frame with its header and a VLAN tag
VNET_HDR = 12  # the card's virtio_net_hdr_v1; the socket's is the first 10 bytes
GSO_MAX = 65550  # the largest segment (and its Ethernet header) with offloads
NUM_BUFFERS_ONE = b"\x01\x00"


class Wire:
    """``offloads``: frames cross with a virtio-net header before them (12 bytes on
    the card's side, the socket's 10 on the wire's: ``PACKET_VNET_HDR``), and may be
    64 KiB TCP segments with partial checksums, which the kernel finishes."""

    def __init__(self, ns: str, ifname: str, max_frame: int = MAX_FRAME,
                 offloads: bool = False) -> None:
        self.ns = ns
        self.ifname = ifname
        self.max_frame = max_frame
        self.offloads = offloads
        self.oversized = 0
        netns.pushns(ns)
        try:
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW,
                                      socket.htons(ETH_P_ALL))
        finally:
            netns.popns()
        try:
            if offloads:
                self.sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
            self.sock.bind((ifname, ETH_P_ALL))
        except OSError:
            self.sock.close()
            raise

    def __repr__(self) -> str:
        return f"<Wire {self.ifname} in {self.ns} oversized={self.oversized}>"

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, frame: bytes) -> None:
        if self.offloads:
            # a segment (GSO type set) may be 64 KiB; a plain frame is bound by the MTU
            bound = GSO_MAX if len(frame) > VNET_HDR and frame[1] else self.max_frame
            if not ETH_HLEN <= len(frame) - VNET_HDR <= bound:
                raise ValueError(f"a frame of {len(frame) - VNET_HDR} bytes cannot go on "
                                 "the wire")
            view = memoryview(frame)  # (gathered by the socket: no copy here)
            self.sock.sendmsg([view[:10], view[VNET_HDR:]])
            return
        if not ETH_HLEN <= len(frame) <= self.max_frame:
            raise ValueError(f"a frame of {len(frame)} bytes cannot go on the wire")
        self.sock.send(frame)

    def receive(self) -> bytes | None:
        """The next frame that arrived (blocks); None for one this port sent or one
        too large. With offloads, the frame has its 12-byte header first."""
        if self.offloads:
            data, addr = self.sock.recvfrom(10 + GSO_MAX + 1)
            if addr[2] == PACKET_OUTGOING:
                return None
            bound = GSO_MAX if len(data) > 10 and data[1] else self.max_frame
            if not ETH_HLEN <= len(data) - 10 <= bound:
                self.oversized += 1
                return None
            return data[:10] + NUM_BUFFERS_ONE + data[10:]
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
