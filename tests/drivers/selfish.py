"""A driver whose constructor looks at its own mountpoint, as published drivers do
(they resolve it, check that it exists, stat it). Built again by a recovery while
the mount is live, it must not wait for itself.

Constructed as ``Selfish(MOUNTPOINT)``; it is otherwise the Quirky memory
filesystem without quirks.
"""

from __future__ import annotations

import os
from typing import Any

from tests.drivers.quirky import Quirky


class Selfish(Quirky):
    """Also: getattr of ``/crash`` aborts the driver; while the file named by the
    optional second argument exists, the constructor fails."""

    def __init__(self, mountpoint: str, refuse_while: str = "") -> None:
        real = os.path.realpath(mountpoint)
        if not os.path.exists(real) or not os.path.isdir(real):
            raise ValueError(f"{mountpoint} is not a directory")
        self.seen = os.lstat(real)
        if refuse_while and os.path.exists(refuse_while):
            raise RuntimeError(f"{refuse_while} exists: not starting")
        super().__init__()

    def getattr(self, path: str, fh: int | None = None) -> Any:
        if path == "/crash":
            os.abort()
        return super().getattr(path, fh)
