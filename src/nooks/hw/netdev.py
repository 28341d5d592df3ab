"""What a network driver returns to the system about its card (as a Linux driver
fills its ``net_device``), and the helpers a kernel gives NIC drivers: below the
drivers, so that they can name them."""

from __future__ import annotations

from typing import Annotated

import msgspec

MAX_MTU = 9000
Mac = Annotated[bytes, msgspec.Meta(min_length=6, max_length=6)]
Mtu = Annotated[int, msgspec.Meta(ge=68, le=MAX_MTU)]


class Info(msgspec.Struct, frozen=True, kw_only=True):
    """What ``probe`` found: the card's permanent address and the largest MTU it takes."""

    mac: Mac
    max_mtu: Mtu = 1500


def ether_crc(data: bytes) -> int:
    """The big-endian Ethernet CRC (Linux's ``ether_crc``): cards hash multicast
    addresses with its top bits."""
    crc = 0xFFFFFFFF
    for byte in data:
        for bit in range(8):
            top = (crc >> 31) & 1
            crc = (crc << 1) & 0xFFFFFFFF
            if top ^ ((byte >> bit) & 1):
                crc ^= 0x04C11DB7
    return crc
