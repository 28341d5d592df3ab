"""A vfat driver whose first incarnation corrupts the volume quietly: creating a
file named ``corrupt*`` also takes a free cluster in the FAT that nothing uses
(a lost cluster, which ``fsck.fat -n`` reports), and the create succeeds;
writes to files named ``misplaced*`` land one byte further on than asked
(which no checker of the volume sees), and succeed. A restarted driver (the
marker file named by ``NOOKS_TEST_MARKER`` exists) is healthy, as the
campaign's faulty drivers are once reloaded from disk."""

from __future__ import annotations

import os
from typing import Any

from nooks.drivers.vfat import Vfat


class CorruptingVfat(Vfat):
    def __init__(self, image: Any) -> None:
        super().__init__(image)
        marker = os.environ["NOOKS_TEST_MARKER"]
        # NOOKS_TEST_ALWAYS: every incarnation is broken (a bug in the code, not a fault)
        self.first = not os.path.exists(marker) or "NOOKS_TEST_ALWAYS" in os.environ
        if self.first:
            with open(marker, "w"):
                pass

    def create(self, path: str, mode: int, fi: int | None = None) -> int:
        fh = super().create(path, mode, fi)
        if self.first and os.path.basename(path).startswith("corrupt"):
            self._alloc(1, self._hint)  # linked in nowhere
            self._op_writes = False
            self._write(0, self._read(0, 1))  # as an operation does: dirty first
            self._end_op()
        return fh

    def write(self, path: str | None, data: bytes, offset: int, fh: int) -> int:
        if self.first and os.path.basename(path or "").startswith("misplaced"):
            super().write(path, data, offset + 1, fh)
            return len(data)
        return super().write(path, data, offset, fh)
