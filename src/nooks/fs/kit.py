"""The filesystem class in the spec test kit (``nooks.testing``).

A model driver (``MemoryFs``: files and directories in a ``Disk`` that outlives
each driver, handles that die with it) and a scenario of the requests an
application's ``cp``, ``mv`` and ``rm`` make, run through ``FsShadow`` as a
persistent driver (handles re-opened after a recovery) and as a volatile one
(the disk is the driver's own memory, lost with it: the journal rebuilds it).
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field
from typing import Any

from nooks.fs.interface import FsInterface, os_error
from nooks.fs.spec import ROOT_CTX, FsShadow
from nooks.testing import Ref, SpecKit


@dataclass
class Disk:
    files: dict[str, bytearray] = field(default_factory=dict)
    dirs: set[str] = field(default_factory=lambda: {"/"})

    def snapshot(self) -> tuple[tuple[tuple[str, bytes], ...], tuple[str, ...]]:
        return tuple(sorted((p, bytes(d)) for p, d in self.files.items())), \
            tuple(sorted(self.dirs))


class MemoryFs:
    """A filesystem driver in memory, with fusepy's calls (and the ``ctx`` nooks adds)."""

    def __init__(self, disk: Disk) -> None:
        self.disk = disk
        self.fds: dict[int, str] = {}
        self._next = 3

    def _parent_ok(self, path: str) -> None:
        if os.path.dirname(path) not in self.disk.dirs:
            raise os_error(errno.ENOENT)

    def init(self, ctx: Any, path: str) -> None:
        return None

    def getattr(self, ctx: Any, path: str, fh: Any = None) -> dict[str, Any]:
        if path in self.disk.dirs:
            return {"st_mode": stat.S_IFDIR | 0o755, "st_nlink": 2, "st_size": 0}
        if path in self.disk.files:
            return {"st_mode": stat.S_IFREG | 0o644, "st_nlink": 1,
                    "st_size": len(self.disk.files[path])}
        raise os_error(errno.ENOENT)

    def statfs(self, ctx: Any, path: str) -> dict[str, Any]:
        return {"f_bsize": 4096, "f_blocks": 1000, "f_bfree": 1000 - len(self.disk.files)}

    def mkdir(self, ctx: Any, path: str, mode: int) -> int:
        self._parent_ok(path)
        if path in self.disk.dirs or path in self.disk.files:
            raise os_error(errno.EEXIST)
        self.disk.dirs.add(path)
        return 0

    def rmdir(self, ctx: Any, path: str) -> int:
        if path not in self.disk.dirs:
            raise os_error(errno.ENOENT)
        self.disk.dirs.discard(path)
        return 0

    def _fd(self, path: str) -> int:
        fd = self._next
        self._next += 1
        self.fds[fd] = path
        return fd

    def create(self, ctx: Any, path: str, mode: int, flags: int) -> int:
        self._parent_ok(path)
        if path in self.disk.files and flags & os.O_EXCL:
            raise os_error(errno.EEXIST)
        self.disk.files.setdefault(path, bytearray())
        return self._fd(path)

    def open(self, ctx: Any, path: str, flags: int) -> int:
        if path not in self.disk.files:
            raise os_error(errno.ENOENT)
        if flags & os.O_TRUNC:
            self.disk.files[path] = bytearray()
        return self._fd(path)

    def _path(self, fh: int) -> str:
        path = self.fds.get(fh)
        if path is None or path not in self.disk.files:
            raise os_error(errno.EBADF)
        return path

    def read(self, ctx: Any, path: str, size: int, offset: int, fh: int) -> bytes:
        return bytes(self.disk.files[self._path(fh)][offset:offset + size])

    def write(self, ctx: Any, path: str, data: bytes, offset: int, fh: int) -> int:
        f = self.disk.files[self._path(fh)]
        if len(f) < offset:
            f.extend(bytes(offset - len(f)))
        f[offset:offset + len(data)] = data
        return len(data)

    def truncate(self, ctx: Any, path: str, length: int, fh: Any = None) -> int:
        f = self.disk.files.get(path)
        if f is None:
            raise os_error(errno.ENOENT)
        del f[length:]
        f.extend(bytes(length - len(f)))
        return 0

    def flush(self, ctx: Any, path: str, fh: int) -> int:
        self._path(fh)
        return 0

    def release(self, ctx: Any, path: str, fh: int) -> int:
        if self.fds.pop(fh, None) is None:
            raise os_error(errno.EBADF)
        return 0

    def rename(self, ctx: Any, old: str, new: str) -> int:
        if old not in self.disk.files:
            raise os_error(errno.ENOENT)
        self._parent_ok(new)
        self.disk.files[new] = self.disk.files.pop(old)
        for fd, p in self.fds.items():
            if p == old:
                self.fds[fd] = new
        return 0

    def unlink(self, ctx: Any, path: str) -> int:
        if self.disk.files.pop(path, None) is None:
            raise os_error(errno.ENOENT)
        return 0

    def opendir(self, ctx: Any, path: str) -> int:
        if path not in self.disk.dirs:
            raise os_error(errno.ENOENT)
        return self._fd(path)

    def readdir(self, ctx: Any, path: str, fh: int) -> list[str]:
        prefix = path.rstrip("/") + "/"
        names = {p[len(prefix):].split("/")[0] for p in (*self.disk.files, *self.disk.dirs)
                 if p.startswith(prefix) and p != prefix}
        return [".", "..", *sorted(names)]

    def releasedir(self, ctx: Any, path: str, fh: int) -> int:
        self.fds.pop(fh, None)
        return 0


def _volatile_driver(disk: Disk) -> MemoryFs:
    # a volatile driver's files are its memory: a fresh one starts empty
    return MemoryFs(Disk())


_W = os.O_WRONLY | os.O_CREAT
SCENARIO: tuple[tuple[str, tuple[Any, ...]], ...] = (
    ("init", (ROOT_CTX, "/")),
    ("mkdir", (ROOT_CTX, "/d", 0o755)),
    ("create", (ROOT_CTX, "/d/a", 0o644, _W)),
    ("write", (ROOT_CTX, "/d/a", b"hello, ", 0, Ref(2))),
    ("write", (ROOT_CTX, "/d/a", b"world", 7, Ref(2))),
    ("getattr", (ROOT_CTX, "/d/a", Ref(2))),
    ("flush", (ROOT_CTX, "/d/a", Ref(2))),
    ("release", (ROOT_CTX, "/d/a", Ref(2))),
    ("open", (ROOT_CTX, "/d/a", os.O_RDONLY)),
    ("read", (ROOT_CTX, "/d/a", 64, 0, Ref(8))),
    ("statfs", (ROOT_CTX, "/")),
    ("rename", (ROOT_CTX, "/d/a", "/d/b")),
    ("read", (ROOT_CTX, "/d/b", 5, 7, Ref(8))),
    ("release", (ROOT_CTX, "/d/b", Ref(8))),
    ("opendir", (ROOT_CTX, "/d")),
    ("readdir", (ROOT_CTX, "/d", Ref(14))),
    ("releasedir", (ROOT_CTX, "/d", Ref(14))),
    ("create", (ROOT_CTX, "/gone", 0o644, _W)),
    ("release", (ROOT_CTX, "/gone", Ref(17))),
    ("unlink", (ROOT_CTX, "/gone")),
    ("truncate", (ROOT_CTX, "/d/b", 5)),
    ("getattr", (ROOT_CTX, "/d/b")),
)


def _eio(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno == errno.EIO


def _unexpected(e: Exception) -> BaseException:
    unexpected = FsInterface.unexpected
    assert unexpected is not None
    return unexpected(e)


KITS = (
    SpecKit(name="fs persistent", spec=FsShadow, driver=MemoryFs, store=Disk,
            scenario=SCENARIO, busy=_eio, poison=_eio, unexpected=_unexpected,
            suspect=(9, os_error(errno.EIO)), snapshot=Disk.snapshot),
    SpecKit(name="fs volatile", spec=lambda: FsShadow(volatile=True), driver=_volatile_driver,
            store=Disk, scenario=SCENARIO, busy=_eio, poison=_eio,
            unexpected=_unexpected, suspect=(9, os_error(errno.EIO)),
            # the store here is the model's memory, gone with each driver: what counts is
            # what the applications read back, the answers
            snapshot=lambda disk: None),
)
