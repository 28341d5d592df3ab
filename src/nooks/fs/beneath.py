"""What lies beneath a mountpoint, for a driver that looks at its own mountpoint.

A driver is constructed before its filesystem is mounted: a constructor that
stats, resolves or checks its mountpoint sees the directory the mount will
cover. A driver rebuilt by a recovery runs while the mount is live, and its
requests to its own mount would wait for the recovery that is waiting for it.
The shadow answers them from here instead (``FsShadow.answer_own``), as they
were answered at first: from the directory beneath, through a descriptor the
host opened on it before mounting.

Lookups are answered (getattr, access, readlink, statfs); anything else a
constructor asks of its own mountpoint gets EIO.
"""

from __future__ import annotations

import errno
import os
from typing import Any

from nooks.fs.interface import os_error
from nooks.shadow.spec import NOT_IN_LOG

_INTS = ("st_mode", "st_ino", "st_dev", "st_nlink", "st_uid", "st_gid", "st_rdev", "st_size",
         "st_blksize", "st_blocks")


class Beneath:
    def __init__(self, mountpoint: str, use_ns: bool) -> None:
        self.fd = os.open(mountpoint, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.use_ns = use_ns

    def answer(self, op: str, args: tuple[Any, ...]) -> Any:
        path = args[1] if len(args) > 1 and isinstance(args[1], str) else ""
        rel = path.lstrip("/") or "."
        if op == "getattr":
            return self._attrs(self._stat(rel))
        if op == "access":
            self._stat(rel)
            return 0
        if op == "readlink":
            try:
                return os.readlink(rel, dir_fd=self.fd)
            except OSError as e:
                raise os_error(e.errno or errno.EIO) from None
        if op == "statfs":
            v = os.statvfs(self.fd)
            return {f"f_{k}": getattr(v, f"f_{k}") for k in (
                "bsize", "frsize", "blocks", "bfree", "bavail", "files", "ffree", "favail",
                "fsid", "flag", "namemax")}
        return NOT_IN_LOG

    def _stat(self, rel: str) -> os.stat_result:
        try:
            return os.stat(rel, dir_fd=self.fd, follow_symlinks=False)
        except OSError as e:
            raise os_error(e.errno or errno.EIO) from None

    def _attrs(self, st: os.stat_result) -> dict[str, int | float]:
        out: dict[str, int | float] = {k: getattr(st, k) for k in _INTS}
        for k in ("atime", "mtime", "ctime"):
            out[f"st_{k}"] = getattr(st, f"st_{k}_ns") if self.use_ns else getattr(st, f"st_{k}")
        return out

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
