"""Serving ``/dev/fuse`` for a path-based driver (an mfusepy ``Operations``), as
libfuse's high-level API and mfusepy would: the first cut of direct mode's FUSE
layer (not yet wired to a domain).

Each request names nodes; ``Nodes`` gives their paths and keeps the table in a
``StateLog``. The driver is called as mfusepy calls it — the same methods, the
same arguments (times in nanoseconds if it says ``use_ns``, in seconds
otherwise), its ``FuseOSError``/``OSError`` answered with their errno and any
other exception with EINVAL — and attributes go to the kernel with the node id
as the inode number (libfuse's default, without ``use_ino``).

Served so far: lookup, forget, getattr, setattr (mode, owner, size, times),
readlink, symlink, mknod, mkdir, unlink, rmdir, rename, link, open, read, write,
flush, fsync, release, opendir, readdir, releasedir, statfs, access, create.
Anything else is ENOSYS.
"""

from __future__ import annotations

import errno
import inspect
import os
import time
from collections.abc import Callable
from typing import Any

from nooks.fs import kernelproto as kp
from nooks.fs.handles import REOPEN_STRIP, Handles
from nooks.fs.nodes import Nodes

FATTR_MODE, FATTR_UID, FATTR_GID, FATTR_SIZE = 1 << 0, 1 << 1, 1 << 2, 1 << 3
FATTR_ATIME, FATTR_MTIME, FATTR_FH = 1 << 4, 1 << 5, 1 << 6
FATTR_ATIME_NOW, FATTR_MTIME_NOW = 1 << 7, 1 << 8
GETATTR_FH = 1
UTIME_OMIT = (1 << 30) - 2
BUFFER = kp.MIN_READ_BUFFER + (1 << 17)
UNKNOWN_INO = 0xFFFFFFFF  # what libfuse's high level puts in a directory entry


class Server:
    def __init__(self, fd: int, ops: Any, nodes: Nodes, handles: Handles | None = None, *,
                 attr_timeout: float = 0.0, entry_timeout: float = 0.0) -> None:
        """``handles``: the kernel is given virtual handles from it (a successor
        re-opens them); without, the driver's own."""
        self.fd = fd
        self.ops = ops
        self.nodes = nodes
        self.handles = handles
        self.use_ns = bool(getattr(ops, "use_ns", False))
        self.attr_timeout, self.entry_timeout = attr_timeout, entry_timeout
        self.listings: dict[int, list[tuple[bytes, int]]] = {}  # a directory handle's
        create = getattr(ops, "create", None)
        self._create_flags = create is not None and len(
            inspect.signature(create).parameters) > 2
        self._handlers: dict[int, Callable[[int, int, bytearray, int], bytes | None]] = {
            kp.Op.LOOKUP: self._lookup, kp.Op.GETATTR: self._getattr,
            kp.Op.SETATTR: self._setattr, kp.Op.READLINK: self._readlink,
            kp.Op.SYMLINK: self._symlink, kp.Op.MKNOD: self._mknod, kp.Op.MKDIR: self._mkdir,
            kp.Op.UNLINK: self._unlink, kp.Op.RMDIR: self._rmdir, kp.Op.RENAME: self._rename,
            kp.Op.RENAME2: self._rename2, kp.Op.LINK: self._link, kp.Op.OPEN: self._open,
            kp.Op.READ: self._read, kp.Op.WRITE: self._write, kp.Op.FLUSH: self._flush,
            kp.Op.FSYNC: self._fsync, kp.Op.RELEASE: self._release,
            kp.Op.OPENDIR: self._opendir, kp.Op.READDIR: self._readdir,
            kp.Op.RELEASEDIR: self._releasedir, kp.Op.STATFS: self._statfs,
            kp.Op.ACCESS: self._access, kp.Op.CREATE: self._create}

    # -- the loop ----------------------------------------------------------------------

    def serve(self) -> None:
        """Serve until the mount goes away."""
        buf = bytearray(BUFFER)
        while True:
            try:
                n = os.readv(self.fd, [buf])
            except OSError as e:
                if e.errno == errno.ENODEV:
                    return
                if e.errno in (errno.EINTR, errno.ENOENT, errno.EAGAIN):
                    continue  # (ENOENT: a request interrupted before it was read)
                raise
            out = self.handle(buf, n)
            if out is not None:
                try:
                    os.write(self.fd, out)
                except OSError as e:
                    if e.errno == errno.ENODEV:
                        return
                    if e.errno != errno.ENOENT:  # (its caller was interrupted: gone)
                        raise

    def handle(self, buf: bytearray, n: int) -> bytes | None:
        """The reply to the request in ``buf[:n]`` (None for those that get none)."""
        op, unique, node, _, _, _ = kp.header(buf, n)
        if op == kp.Op.FORGET:
            self.nodes.forget(node, kp.args(kp.FORGET_IN, buf, n)[0])
            return None
        if op == kp.Op.BATCH_FORGET:
            count, _ = kp.args(kp.BATCH_FORGET_IN, buf, n)
            at = kp.IN_HEADER.size + kp.BATCH_FORGET_IN.size
            for i in range(count):
                nodeid, nlookup = kp.args(kp.FORGET_ONE, buf, n, at + i * kp.FORGET_ONE.size)
                self.nodes.forget(nodeid, nlookup)
            return None
        if op == kp.Op.INTERRUPT:
            return None  # (a request runs to its end; the kernel drops its answer)
        handler = self._handlers.get(op)
        if handler is None:
            return kp.reply(unique, error=errno.ENOSYS)
        try:
            return kp.reply(unique, handler(node, op, buf, n) or b"")
        except OSError as e:
            code = e.errno if isinstance(e.errno, int) and e.errno > 0 else errno.EINVAL
            return kp.reply(unique, error=code)
        except kp.Malformed:
            return kp.reply(unique, error=errno.EINVAL)
        except Exception:  # (mfusepy answers a driver's own exception so)
            return kp.reply(unique, error=errno.EINVAL)

    # -- helpers -----------------------------------------------------------------------

    def _path(self, node: int, name: bytes | None = None) -> str:
        base = self.nodes.path(node)
        if base is None:
            raise OSError(errno.ENOENT, "a node without a name")
        if name is not None:
            if not name or b"/" in name:
                raise OSError(errno.EINVAL, "not a name")
            base = base + name if base == b"/" else base + b"/" + name
        return os.fsdecode(base)

    def _ns(self, value: Any) -> int:
        return int(value) if self.use_ns else int(float(value) * 1e9)

    def _attr(self, node: int, st: dict[str, Any]) -> bytes:
        return kp.attr(node, int(st.get("st_mode", 0)), nlink=int(st.get("st_nlink", 1)),
                       uid=int(st.get("st_uid", 0)), gid=int(st.get("st_gid", 0)),
                       rdev=int(st.get("st_rdev", 0)), size=int(st.get("st_size", 0)),
                       blocks=int(st.get("st_blocks", 0)),
                       blksize=int(st.get("st_blksize", 0)),
                       atime_ns=self._ns(st.get("st_atime", 0)),
                       mtime_ns=self._ns(st.get("st_mtime", 0)),
                       ctime_ns=self._ns(st.get("st_ctime", 0)))

    def _entry(self, parent: int, name: bytes) -> bytes:
        """Look ``name`` up in ``parent`` (the driver's getattr) and count it."""
        st = self.ops.getattr(self._path(parent, name))
        node = self.nodes.lookup(parent, name)
        return kp.entry_out(node, self._attr(node, st), self.entry_timeout, self.attr_timeout)

    def _name(self, buf: bytearray, n: int, at: int = kp.IN_HEADER.size) -> bytes:
        return kp.names(buf, n, 1, at)[0]

    def _handed(self, node: int, flags: int, driver: Any, directory: bool = False) -> int:
        """The handle the kernel is given for what the driver opened as ``driver``."""
        fh = int(driver or 0)
        if self.handles is None:
            return fh
        return self.handles.opened(node, flags, fh, directory=directory)

    def _fh(self, handle: int) -> int:
        """The driver's handle behind the kernel's ``handle``: re-opened by path if
        this server's driver never opened it."""
        if self.handles is None:
            return handle
        h = self.handles.handles.get(handle)
        if h is None:
            raise OSError(errno.EBADF, "no such handle")
        if h.driver is None:
            path = self._path(h.node)
            opened = self.ops.opendir(path) if h.directory else \
                self.ops.open(path, h.flags & ~REOPEN_STRIP)
            h.driver = int(opened or 0)
        return h.driver

    def _closed(self, handle: int) -> None:
        if self.handles is not None:
            self.handles.closed(handle)

    # -- the operations ----------------------------------------------------------------

    def _lookup(self, node: int, op: int, buf: bytearray, n: int) -> bytes:
        return self._entry(node, self._name(buf, n))

    def _getattr(self, node: int, op: int, buf: bytearray, n: int) -> bytes:
        flags, _, fh = kp.args(kp.GETATTR_IN, buf, n)
        path = self._path(node)
        st = self.ops.getattr(path, self._fh(fh)) if flags & GETATTR_FH else \
            self.ops.getattr(path)
        return kp.attr_out(self._attr(node, st), self.attr_timeout)

    def _setattr(self, node: int, op: int, buf: bytearray, n: int) -> bytes:
        (valid, _, fh, size, _, atime, mtime, _, atimens, mtimens, _, mode, _, uid, gid,
         _) = kp.args(kp.SETATTR_IN, buf, n)
        path = self._path(node)
        if valid & FATTR_MODE:
            self.ops.chmod(path, mode)
        if valid & (FATTR_UID | FATTR_GID):
            self.ops.chown(path, uid if valid & FATTR_UID else -1,
                           gid if valid & FATTR_GID else -1)
        if valid & FATTR_SIZE:
            if valid & FATTR_FH:
                self.ops.truncate(path, size, self._fh(fh))
            else:
                self.ops.truncate(path, size)
        if valid & (FATTR_ATIME | FATTR_MTIME):
            now = time.time_ns()

            def when(set_: int, now_: int, sec: int, nsec: int) -> int:
                if valid & now_:
                    return now
                if valid & set_:
                    return sec * 10**9 + nsec
                return UTIME_OMIT

            times = (when(FATTR_ATIME, FATTR_ATIME_NOW, atime, atimens),
                     when(FATTR_MTIME, FATTR_MTIME_NOW, mtime, mtimens))
            if not self.use_ns:
                self.ops.utimens(path, tuple(t / 1e9 for t in times))
            else:
                self.ops.utimens(path, times)
        st = self.ops.getattr(path, self._fh(fh)) if valid & FATTR_FH else \
            self.ops.getattr(path)
        return kp.attr_out(self._attr(node, st), self.attr_timeout)

    def _readlink(self, node: int, op: int, buf: bytearray, n: int) -> bytes:
        return os.fsencode(self.ops.readlink(self._path(node)))

    def _symlink(self, node: int, op: int, buf: bytearray, n: int) -> bytes:
        name, target = kp.names(buf, n, 2)
        self.ops.symlink(self._path(node, name), os.fsdecode(target))
        return self._entry(node, name)

    def _mknod(self, node: int, op: int, buf: bytearray, n: int) -> bytes:
        mode, rdev, _, _ = kp.args(kp.MKNOD_IN, buf, n)
        name = self._name(buf, n, kp.IN_HEADER.size + kp.MKNOD_IN.size)
        self.ops.mknod(self._path(node, name), mode, rdev)
        return self._entry(node, name)

    def _mkdir(self, node: int, op: int, buf: bytearray, n: int) -> bytes:
        mode, _ = kp.args(kp.MKDIR_IN, buf, n)
        name = self._name(buf, n, kp.IN_HEADER.size + kp.MKDIR_IN.size)
        self.ops.mkdir(self._path(node, name), mode)
        return self._entry(node, name)

    def _unlink(self, node: int, op: int, buf: bytearray, n: int) -> bytes:
        name = self._name(buf, n)
        self.ops.unlink(self._path(node, name))
        self.nodes.removed(node, name)
        return b""

    def _rmdir(self, node: int, op: int, buf: bytearray, n: int) -> bytes:
        name = self._name(buf, n)
        self.ops.rmdir(self._path(node, name))
        self.nodes.removed(node, name)
        return b""

    def _renamed(self, node: int, newdir: int, buf: bytearray, n: int, at: int) -> bytes:
        old, new = kp.names(buf, n, 2, at)
        self.ops.rename(self._path(node, old), self._path(newdir, new))
        self.nodes.moved(node, old, newdir, new)
        return b""

    def _rename(self, node: int, op: int, buf: bytearray, n: int) -> bytes:
        (newdir,) = kp.args(kp.RENAME_IN, buf, n)
        return self._renamed(node, newdir, buf, n, kp.IN_HEADER.size + kp.RENAME_IN.size)

    def _rename2(self, node: int, op: int, buf: bytearray, n: int) -> bytes:
        newdir, flags, _ = kp.args(kp.RENAME2_IN, buf, n)
        if flags:  # (an Operations rename takes none: libfuse answers so)
            raise OSError(errno.EINVAL, "rename flags")
        return self._renamed(node, newdir, buf, n, kp.IN_HEADER.size + kp.RENAME2_IN.size)

    def _link(self, node: int, op: int, buf: bytearray, n: int) -> bytes:
        (old,) = kp.args(kp.LINK_IN, buf, n)
        name = self._name(buf, n, kp.IN_HEADER.size + kp.LINK_IN.size)
        self.ops.link(self._path(node, name), self._path(old))
        return self._entry(node, name)

    def _open(self, node: int, op: int, buf: bytearray, n: int) -> bytes:
        flags, _ = kp.args(kp.OPEN_IN, buf, n)
        return kp.open_out(self._handed(node, flags, self.ops.open(self._path(node), flags)))

    def _read(self, node: int, op: int, buf: bytearray, n: int) -> bytes:
        fh, offset, size, _, _, _, _ = kp.args(kp.READ_IN, buf, n)
        data = self.ops.read(self._path(node), size, offset, self._fh(fh))
        return bytes(data[:size])

    def _write(self, node: int, op: int, buf: bytearray, n: int) -> bytes:
        fh, offset, size, _, _, _, _ = kp.args(kp.READ_IN, buf, n)
        at = kp.IN_HEADER.size + kp.READ_IN.size
        if n - at < size:
            raise kp.Malformed("a write shorter than it says")
        written = self.ops.write(self._path(node), bytes(buf[at:at + size]), offset,
                                 self._fh(fh))
        return kp.write_out(int(written))

    def _flush(self, node: int, op: int, buf: bytearray, n: int) -> bytes:
        fh, _, _, _ = kp.args(kp.FLUSH_IN, buf, n)
        self.ops.flush(self._path(node), self._fh(fh))
        return b""

    def _fsync(self, node: int, op: int, buf: bytearray, n: int) -> bytes:
        fh, flags, _ = kp.args(kp.FSYNC_IN, buf, n)
        self.ops.fsync(self._path(node), flags & 1, self._fh(fh))
        return b""

    def _release(self, node: int, op: int, buf: bytearray, n: int) -> bytes:
        fh, _, _, _ = kp.args(kp.RELEASE_IN, buf, n)
        try:
            self.ops.release(self._path(node), self._fh(fh))
        finally:
            self._closed(fh)
        return b""

    def _opendir(self, node: int, op: int, buf: bytearray, n: int) -> bytes:
        path = self._path(node)
        return kp.open_out(self._handed(node, 0, self.ops.opendir(path), directory=True))

    def _readdir(self, node: int, op: int, buf: bytearray, n: int) -> bytes:
        fh, offset, size, _, _, _, _ = kp.args(kp.READ_IN, buf, n)
        listing = self.listings.get(fh) if offset else None
        if listing is None:
            listing = []
            for entry in self.ops.readdir(self._path(node), self._fh(fh)):
                name, attrs = (entry, None) if isinstance(entry, str) else (entry[0],
                                                                            entry[1])
                kind = (int(attrs["st_mode"]) >> 12) if attrs and "st_mode" in attrs else 0
                listing.append((os.fsencode(name), kind))
            self.listings[fh] = listing
        out = bytearray()
        for i in range(offset, len(listing)):
            name, kind = listing[i]
            d = kp.dirent(UNKNOWN_INO, i + 1, name, kind)
            if len(out) + len(d) > size:
                break
            out += d
        return bytes(out)

    def _releasedir(self, node: int, op: int, buf: bytearray, n: int) -> bytes:
        fh, _, _, _ = kp.args(kp.RELEASE_IN, buf, n)
        self.listings.pop(fh, None)
        try:
            self.ops.releasedir(self._path(node), self._fh(fh))
        finally:
            self._closed(fh)
        return b""

    def _statfs(self, node: int, op: int, buf: bytearray, n: int) -> bytes:
        st = self.ops.statfs(self._path(node))
        return kp.statfs_out(blocks=int(st.get("f_blocks", 0)), bfree=int(st.get("f_bfree", 0)),
                             bavail=int(st.get("f_bavail", 0)),
                             files=int(st.get("f_files", 0)), ffree=int(st.get("f_ffree", 0)),
                             bsize=int(st.get("f_bsize", 0)),
                             namelen=int(st.get("f_namemax", 255)),
                             frsize=int(st.get("f_frsize", 0)))

    def _access(self, node: int, op: int, buf: bytearray, n: int) -> bytes:
        mask, _ = kp.args(kp.ACCESS_IN, buf, n)
        self.ops.access(self._path(node), mask)
        return b""

    def _create(self, node: int, op: int, buf: bytearray, n: int) -> bytes:
        flags, mode, _, _ = kp.args(kp.CREATE_IN, buf, n)
        name = self._name(buf, n, kp.IN_HEADER.size + kp.CREATE_IN.size)
        path = self._path(node, name)
        # (as mfusepy: a create that takes the open flags is given them)
        fh = self.ops.create(path, mode, flags) if self._create_flags else \
            self.ops.create(path, mode)
        entry = self._entry(node, name)
        return entry + kp.open_out(self._handed(kp.ENTRY_OUT.unpack_from(entry)[0], flags, fh))
