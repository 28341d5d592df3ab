"""A driver whose constructor looks at its own mountpoint, as published drivers do
(they resolve it, check that it exists, stat it). Built again by a recovery while
the mount is live, it must not wait for itself.

Constructed as ``Selfish(MOUNTPOINT)``; it is otherwise the Quirky memory
filesystem without quirks.
"""

from __future__ import annotations

import os

from tests.drivers.quirky import Quirky


class Selfish(Quirky):
    def __init__(self, mountpoint: str) -> None:
        real = os.path.realpath(mountpoint)
        if not os.path.exists(real) or not os.path.isdir(real):
            raise ValueError(f"{mountpoint} is not a directory")
        self.seen = os.lstat(real)
        super().__init__()
