"""A small memory filesystem with the quirks published fusepy-style drivers have.

Each quirk is one that mfusepy and libfuse accept (or answer in their own way),
so an application sees the same thing mounted directly and through nooks:

* ``extra``: getattr, readdir entries and statfs carry keys mfusepy does not use
  (``"type": "file"``, a None value);
* ``bools``: ``st_nlink`` is ``True``;
* ``numpy``: sizes, times and write's result are numpy scalars;
* ``errnoless``: chmod raises ``io.UnsupportedOperation`` (an OSError without errno);
* ``notimpl``: chown raises NotImplementedError;
* ``arity``: utimens takes fewer arguments than mfusepy passes (a TypeError);
* ``raises``: getxattr raises KeyError, every time;
* ``nested``: getattr of ``/nested`` answers a deeply nested structure;
* ``slow``: reading ``/slow`` takes 6 seconds.

Constructed as ``Quirky("extra,bools,...")``.
"""

from __future__ import annotations

import errno
import io
import stat
import time
from typing import Any

import mfusepy
import numpy

Attrs = dict[str, Any]


class Quirky(mfusepy.Operations):  # type: ignore[misc]
    use_ns = True

    def __init__(self, quirks: str = "") -> None:
        self.quirks = set(filter(None, quirks.split(",")))
        now = time.time_ns()
        self.files: dict[str, Attrs] = {"/": {"st_mode": stat.S_IFDIR | 0o755, "st_nlink": 2,
                                              "st_ctime": now, "st_mtime": now,
                                              "st_atime": now}}
        self.data: dict[str, bytearray] = {}
        self.fh = 0
        if "arity" in self.quirks:
            self.utimens = self._utimens_short  # type: ignore[method-assign,assignment]

    def _attrs(self, path: str) -> Attrs:
        if path not in self.files:
            raise mfusepy.FuseOSError(errno.ENOENT)
        a = dict(self.files[path])
        if path in self.data:
            a["st_size"] = len(self.data[path])
        if "extra" in self.quirks:
            a.update({"type": "file" if path in self.data else "dir", "comment": None})
        if "bools" in self.quirks and path in self.data:
            a["st_nlink"] = True
        if "numpy" in self.quirks and path in self.data:
            a["st_size"] = numpy.int64(a["st_size"])
            a["st_mtime"] = numpy.int64(a["st_mtime"])
            a["st_blksize"] = numpy.uint32(4096)
        return a

    def getattr(self, path: str, fh: int | None = None) -> Attrs:
        if path == "/nested" and "nested" in self.quirks:
            deep: Any = 0
            for _ in range(5000):
                deep = [deep]
            return {"st_mode": deep}
        return self._attrs(path)

    def readdir(self, path: str, fh: int) -> list[Any]:
        names = [p[1:] for p in self.files if p != "/"]
        if "extra" in self.quirks:
            return [".", "..", *((n, {"st_mode": self.files["/" + n]["st_mode"], "type": "x",
                                      "note": None}, 0) for n in names)]
        return [".", "..", *names]

    def statfs(self, path: str) -> dict[str, Any]:
        out: dict[str, Any] = {"f_bsize": 4096, "f_blocks": 1000, "f_bavail": 500,
                               "f_bfree": 500, "f_namemax": 255}
        if "extra" in self.quirks:
            out.update({"f_kind": "memory", "f_note": None})
        if "numpy" in self.quirks:
            out["f_blocks"] = numpy.uint64(1000)
        return out

    def create(self, path: str, mode: int, fi: Any = None) -> int:
        now = time.time_ns()
        self.files[path] = {"st_mode": stat.S_IFREG | mode, "st_nlink": 1, "st_ctime": now,
                            "st_mtime": now, "st_atime": now}
        self.data[path] = bytearray()
        self.fh += 1
        return self.fh

    def open(self, path: str, flags: int) -> int:
        if path not in self.files:
            raise mfusepy.FuseOSError(errno.ENOENT)
        self.fh += 1
        return self.fh

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        if path == "/slow" and "slow" in self.quirks:
            time.sleep(6)  # a slow device, as it were
        return bytes(self.data[path][offset:offset + size])

    def write(self, path: str, data: bytes, offset: int, fh: int) -> Any:
        buf = self.data[path]
        if len(buf) < offset:
            buf.extend(bytes(offset - len(buf)))
        buf[offset:offset + len(data)] = data
        return numpy.int64(len(data)) if "numpy" in self.quirks else len(data)

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        buf = self.data[path]
        del buf[length:]
        buf.extend(bytes(length - len(buf)))
        return 0

    def unlink(self, path: str) -> int:
        self.files.pop(path)
        self.data.pop(path, None)
        return 0

    def mkdir(self, path: str, mode: int) -> int:
        self.files[path] = {"st_mode": stat.S_IFDIR | mode, "st_nlink": 2}
        return 0

    def rmdir(self, path: str) -> int:
        self.files.pop(path)
        return 0

    def rename(self, old: str, new: str) -> int:
        self.files[new] = self.files.pop(old)
        if old in self.data:
            self.data[new] = self.data.pop(old)
        return 0

    def chmod(self, path: str, mode: int) -> int:
        if "errnoless" in self.quirks:
            raise io.UnsupportedOperation("chmod is not supported here")
        self.files[path]["st_mode"] = (self.files[path]["st_mode"] & ~0o7777) | mode
        return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        if "notimpl" in self.quirks:
            raise NotImplementedError("no owners here")
        self.files[path]["st_uid"], self.files[path]["st_gid"] = uid, gid
        return 0

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        atime, mtime = times or (time.time_ns(), time.time_ns())
        self.files[path]["st_atime"], self.files[path]["st_mtime"] = atime, mtime
        return 0

    def _utimens_short(self, path: str) -> int:
        return 0

    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        if "raises" in self.quirks:
            raise KeyError(name)
        raise mfusepy.FuseOSError(errno.ENODATA)
