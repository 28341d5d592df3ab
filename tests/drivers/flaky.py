"""A passthrough driver whose first incarnation is broken in a quiet way: its
state is corrupt, so reads of files named ``flaky*`` answer EIO and reads through
handles of files named ``stale*`` answer EBADF, though nothing is wrong with the
files. A restarted driver (its marker file says it is not the first) is healthy.
Reads of ``bad*`` answer EIO in every incarnation, like a bad sector."""

from __future__ import annotations

import errno
import os
from typing import Any

from mfusepy import FuseOSError

from nooks.drivers.passthrough import Passthrough


class _FirstIncarnation(Passthrough):
    """``self.first`` is true in the first driver built over ``root`` (a marker file
    there says when one was), as the campaign's faults are."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        marker = os.path.join(root, ".first-incarnation-done")
        self.first = not os.path.exists(marker)
        if self.first:
            with open(marker, "w"):
                pass


class FlakyPassthrough(_FirstIncarnation):
    @property
    def corrupt(self) -> bool:
        return self.first

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        name = os.path.basename(path)
        if name.startswith("bad"):
            raise FuseOSError(errno.EIO)
        if self.corrupt and name.startswith("flaky"):
            raise FuseOSError(errno.EIO)
        if self.corrupt and name.startswith("stale"):
            raise FuseOSError(errno.EBADF)
        return super().read(path, size, offset, fh)


class QuietlyWrongPassthrough(_FirstIncarnation):
    """A first incarnation that answers success but does not do the work: mkdir of
    ``lost*`` makes nothing, unlink of ``stuck*`` removes nothing, reads of
    ``short*`` stop half-way, root is refused entry to ``locked*``, and a listing
    of the directory ``listless*`` is refused as not a directory."""

    @property
    def wrong(self) -> bool:
        return self.first

    def mkdir(self, path: str, mode: int) -> int:
        if self.wrong and os.path.basename(path).startswith("lost"):
            return 0
        return super().mkdir(path, mode)

    def unlink(self, path: str) -> int:
        if self.wrong and os.path.basename(path).startswith("stuck"):
            return 0
        return super().unlink(path)

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        data = super().read(path, size, offset, fh)
        if self.wrong and os.path.basename(path).startswith("short"):
            return data[: len(data) // 2]
        return data

    def readdir(self, path: str, fh: int) -> Any:
        if self.wrong and os.path.basename(path).startswith("listless"):
            raise FuseOSError(errno.ENOTDIR)
        return super().readdir(path, fh)

    def access(self, path: str, amode: int) -> int:
        if self.wrong and os.path.basename(path).startswith("locked"):
            raise FuseOSError(errno.EACCES)
        return super().access(path, amode)
