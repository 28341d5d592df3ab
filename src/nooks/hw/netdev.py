"""What a network driver returns to the system about its card (as a Linux driver
fills its ``net_device``): below the drivers, so that they can name it."""

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
