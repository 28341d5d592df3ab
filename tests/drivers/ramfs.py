"""A tree of files in the driver's memory, fusepy-style (mfusepy's ``memory``
example keeps one level only): a volatile driver whose files a fresh driver
has only if nooks replays what made them.

Directories, regular files, symlinks and hard links; modes, owners and times;
rename of a whole subtree. Handles are counters (the driver does not use them).
"""

from __future__ import annotations

import errno
import os
import stat
import time
from typing import Any

import mfusepy

Attrs = dict[str, Any]


def _error(code: int) -> mfusepy.FuseOSError:
    return mfusepy.FuseOSError(code)


class Node:
    def __init__(self, mode: int) -> None:
        now = time.time_ns()
        self.attrs: Attrs = {"st_mode": mode, "st_nlink": 1, "st_uid": 0, "st_gid": 0,
                             "st_atime": now, "st_mtime": now, "st_ctime": now}
        self.data = bytearray()
        self.children: dict[str, Node] = {}
        self.target = ""  # a symlink's


class RamFs(mfusepy.Operations):  # type: ignore[misc]
    use_ns = True

    def __init__(self) -> None:
        self.root = Node(stat.S_IFDIR | 0o755)
        self.root.attrs["st_nlink"] = 2
        self.fh = 0

    # -- the tree --------------------------------------------------------------------

    def _node(self, path: str) -> Node:
        node = self.root
        for part in filter(None, path.split("/")):
            if not stat.S_ISDIR(node.attrs["st_mode"]):
                raise _error(errno.ENOTDIR)
            child = node.children.get(part)
            if child is None:
                raise _error(errno.ENOENT)
            node = child
        return node

    def _parent(self, path: str) -> tuple[Node, str]:
        head, name = os.path.split(path.rstrip("/"))
        parent = self._node(head or "/")
        if not stat.S_ISDIR(parent.attrs["st_mode"]):
            raise _error(errno.ENOTDIR)
        return parent, name

    def _add(self, path: str, node: Node) -> Node:
        parent, name = self._parent(path)
        if name in parent.children:
            raise _error(errno.EEXIST)
        parent.children[name] = node
        if stat.S_ISDIR(node.attrs["st_mode"]):
            parent.attrs["st_nlink"] += 1
        return node

    def _touch(self, node: Node) -> None:
        node.attrs["st_mtime"] = node.attrs["st_ctime"] = time.time_ns()

    # -- mfusepy's operations ----------------------------------------------------------

    def getattr(self, path: str, fh: Any = None) -> Attrs:
        node = self._node(path)
        attrs = dict(node.attrs)
        attrs["st_size"] = len(node.target) if stat.S_ISLNK(node.attrs["st_mode"]) \
            else len(node.data)
        return attrs

    def readdir(self, path: str, fh: Any) -> list[str]:
        return [".", "..", *self._node(path).children]

    def statfs(self, path: str) -> dict[str, int]:
        return {"f_bsize": 4096, "f_frsize": 4096, "f_blocks": 1 << 20, "f_bfree": 1 << 19,
                "f_bavail": 1 << 19, "f_files": 1 << 16, "f_ffree": 1 << 15,
                "f_namemax": 255}

    def mkdir(self, path: str, mode: int) -> int:
        node = self._add(path, Node(stat.S_IFDIR | (mode & 0o7777)))
        node.attrs["st_nlink"] = 2
        return 0

    def rmdir(self, path: str) -> int:
        parent, name = self._parent(path)
        node = self._node(path)
        if not stat.S_ISDIR(node.attrs["st_mode"]):
            raise _error(errno.ENOTDIR)
        if node.children:
            raise _error(errno.ENOTEMPTY)
        del parent.children[name]
        parent.attrs["st_nlink"] -= 1
        return 0

    def create(self, path: str, mode: int, fi: Any = None) -> int:
        self._add(path, Node(stat.S_IFREG | (mode & 0o7777)))
        self.fh += 1
        return self.fh

    def open(self, path: str, flags: int) -> int:
        self._node(path)
        self.fh += 1
        return self.fh

    def read(self, path: str, size: int, offset: int, fh: Any) -> bytes:
        return bytes(self._node(path).data[offset:offset + size])

    def write(self, path: str, data: bytes, offset: int, fh: Any) -> int:
        node = self._node(path)
        if offset > len(node.data):
            node.data.extend(bytes(offset - len(node.data)))
        node.data[offset:offset + len(data)] = data
        self._touch(node)
        return len(data)

    def truncate(self, path: str, length: int, fh: Any = None) -> int:
        node = self._node(path)
        del node.data[length:]
        node.data.extend(bytes(length - len(node.data)))
        self._touch(node)
        return 0

    def unlink(self, path: str) -> int:
        parent, name = self._parent(path)
        node = self._node(path)
        if stat.S_ISDIR(node.attrs["st_mode"]):
            raise _error(errno.EISDIR)
        del parent.children[name]
        node.attrs["st_nlink"] -= 1
        return 0

    def rename(self, old: str, new: str) -> int:
        node = self._node(old)
        src, name = self._parent(old)
        dst, new_name = self._parent(new)
        there = dst.children.get(new_name)
        if there is node:
            return 0
        if there is not None:
            if stat.S_ISDIR(there.attrs["st_mode"]):
                if not stat.S_ISDIR(node.attrs["st_mode"]):
                    raise _error(errno.EISDIR)
                if there.children:
                    raise _error(errno.ENOTEMPTY)
                dst.attrs["st_nlink"] -= 1
            elif stat.S_ISDIR(node.attrs["st_mode"]):
                raise _error(errno.ENOTDIR)
        if stat.S_ISDIR(node.attrs["st_mode"]) and (new + "/").startswith(old + "/"):
            raise _error(errno.EINVAL)  # into itself
        del src.children[name]
        dst.children[new_name] = node
        if stat.S_ISDIR(node.attrs["st_mode"]):
            src.attrs["st_nlink"] -= 1
            dst.attrs["st_nlink"] += 1
        return 0

    def link(self, target: str, source: str) -> int:
        node = self._node(source)
        if stat.S_ISDIR(node.attrs["st_mode"]):
            raise _error(errno.EPERM)
        self._add(target, node)
        node.attrs["st_nlink"] += 1
        return 0

    def symlink(self, target: str, source: str) -> int:
        node = self._add(target, Node(stat.S_IFLNK | 0o777))
        node.target = source
        return 0

    def readlink(self, path: str) -> str:
        return self._node(path).target

    def chmod(self, path: str, mode: int) -> int:
        node = self._node(path)
        node.attrs["st_mode"] = stat.S_IFMT(node.attrs["st_mode"]) | (mode & 0o7777)
        node.attrs["st_ctime"] = time.time_ns()
        return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        node = self._node(path)
        if uid not in (-1, 0xFFFFFFFF):  # (-1: unchanged)
            node.attrs["st_uid"] = uid
        if gid not in (-1, 0xFFFFFFFF):
            node.attrs["st_gid"] = gid
        return 0

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        node = self._node(path)
        now = time.time_ns()
        atime, mtime = times if times is not None else (now, now)
        node.attrs["st_atime"], node.attrs["st_mtime"] = atime, mtime
        return 0

    def release(self, path: str, fh: Any) -> int:
        return 0

    def fsync(self, path: str, datasync: int, fh: Any) -> int:
        return 0
