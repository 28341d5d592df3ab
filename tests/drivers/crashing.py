"""A passthrough driver that fails once in a chosen way: a lookup of a file named
``crash-KIND`` fails the driver as KIND says if the backing directory holds the
marker ``.crash-KIND``, which the driver removes first (so the fresh driver that
the request is sent to again answers it). Kinds: segv, abort, exit, exception,
hang, memory (allocates until its domain's limit), garbage (a size that cannot
be), arena (writes to the read-only kernel arena), kernel (calls a kernel it does
not have)."""

from __future__ import annotations

import ctypes
import os
from typing import Any

from nooks.drivers.passthrough import Passthrough

KINDS = ("segv", "abort", "exit", "exception", "hang", "memory", "garbage", "arena",
         "kernel")


class CrashingPassthrough(Passthrough):
    def getattr(self, path: str, fh: Any = None) -> dict[str, Any]:
        name = os.path.basename(path)
        if name.startswith("crash-"):
            marker = os.path.join(self.root, "." + name)
            if os.path.exists(marker):
                os.unlink(marker)
                return self._fail(name.removeprefix("crash-"), path, fh)
        result: dict[str, Any] = super().getattr(path, fh)
        return result

    def _fail(self, kind: str, path: str, fh: Any) -> dict[str, Any]:
        from nooks.domain import child

        if kind == "garbage":
            return {**super().getattr(path, fh), "st_size": -1}
        if kind == "arena":
            ctypes.memset(child.kernel_arena_address(), 1, 1)
        elif kind == "kernel":
            child.kernel().bd_read(0, 1)
        child.inject(kind)  # (the others: as ``nooks inject`` makes a driver fail)
        raise ValueError(f"no such way to fail: {kind}")


class XattrPassthrough(Passthrough):
    """Passthrough with extended attributes (on the directory beneath), and a bug:
    asked for ``user.bug`` it raises KeyError, which mfusepy answers with EINVAL."""

    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        if name == "user.bug":
            raise KeyError(name)
        return os.getxattr(self.root + path, name)

    def setxattr(self, path: str, name: str, value: bytes, options: int,
                 position: int = 0) -> None:
        os.setxattr(self.root + path, name, value, options)

    def listxattr(self, path: str) -> list[str]:
        return os.listxattr(self.root + path)

    def removexattr(self, path: str, name: str) -> None:
        os.removexattr(self.root + path, name)
