# mypy: disable-error-code="empty-body"
"""A driver that reaches shared memory the host owns (as a card's registers are)."""

from __future__ import annotations

import struct
from typing import Annotated

import msgspec

from nooks.domain.child import region
from nooks.wrappers import Interface

Offset = Annotated[int, msgspec.Meta(ge=0, le=4092)]
Word = Annotated[int, msgspec.Meta(ge=0, lt=1 << 32)]


class MappedInterface(Interface):
    def poke(self, offset: Offset, value: Word) -> None: ...
    def peek(self, offset: Offset) -> int: ...


class Mapped:
    def __init__(self) -> None:
        self.mem = region("regs")

    def poke(self, offset: int, value: int) -> None:
        struct.pack_into("<I", self.mem, offset, value)

    def peek(self, offset: int) -> int:
        value: int = struct.unpack_from("<I", self.mem, offset)[0]
        return value
