"""Shared memory a driver maps (a device's registers and DMA memory): the host owns
it, every incarnation of the domain maps the same pages, and both see each other's
writes at once."""

from __future__ import annotations

import mmap
import os
import struct

import pytest

from nooks.domain.host import Domain
from nooks.domain.spec import DriverSpec, Region
from tests.conftest import Snapshot
from tests.drivers.mapped import MappedInterface

pytestmark = pytest.mark.timeout(60)


def test_a_region_is_shared_with_every_incarnation(no_leaks: Snapshot) -> None:
    fd = os.memfd_create("nooks-test-regs", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, 4096)
        host = mmap.mmap(fd, 4096)
        spec = DriverSpec(target="tests.drivers.mapped:Mapped", interface=MappedInterface,
                          name="mapped", regions=(Region("regs", fd, 4096),))
        d = Domain(spec)
        try:
            d.call("poke", 8, 0xDEADBEEF)
            assert struct.unpack_from("<I", host, 8)[0] == 0xDEADBEEF  # seen at once
            struct.pack_into("<I", host, 16, 1234)
            assert d.call("peek", 16) == 1234
            d.restart()  # a fresh domain maps the same pages: what was there stays
            assert d.call("peek", 8) == 0xDEADBEEF
            d.call("poke", 8, 7)
            assert struct.unpack_from("<I", host, 8)[0] == 7
        finally:
            d.close()
        host.close()
    finally:
        os.close(fd)
