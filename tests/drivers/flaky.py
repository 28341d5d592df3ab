"""A passthrough driver whose first incarnation is broken in a quiet way: its
state is corrupt, so reads of files named ``flaky*`` answer EIO and reads through
handles of files named ``stale*`` answer EBADF, though nothing is wrong with the
files. A restarted driver (its marker file says it is not the first) is healthy.
Reads of ``bad*`` answer EIO in every incarnation, like a bad sector."""

from __future__ import annotations

import errno
import os

from mfusepy import FuseOSError

from nooks.drivers.passthrough import Passthrough


class FlakyPassthrough(Passthrough):
    def __init__(self, root: str) -> None:
        super().__init__(root)
        marker = os.path.join(root, ".first-incarnation-done")
        self.corrupt = not os.path.exists(marker)
        if self.corrupt:
            with open(marker, "w"):
                pass

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        name = os.path.basename(path)
        if name.startswith("bad"):
            raise FuseOSError(errno.EIO)
        if self.corrupt and name.startswith("flaky"):
            raise FuseOSError(errno.EIO)
        if self.corrupt and name.startswith("stale"):
            raise FuseOSError(errno.EBADF)
        return super().read(path, size, offset, fh)
