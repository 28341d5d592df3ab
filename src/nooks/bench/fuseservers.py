"""Three ways for Python to serve one FUSE mount, for ``nooks.bench.fuse``.

Each serves the same tree — a root directory holding one file, ``f`` — with
kernel caching off (entries and attributes valid for 0 s), so that every
``stat`` of ``f`` is a LOOKUP and a GETATTR answered by this process:

* ``kernel``: the kernel's protocol spoken directly on ``/dev/fuse`` (the mount
  made with mount(2), FUSE_INIT answered here, each request read and each reply
  written with one system call);
* ``lowlevel``: libfuse 3's low-level API through ctypes (libfuse reads and
  parses, a ctypes callback per request, ``fuse_reply_*``);
* ``highlevel``: an mfusepy ``Operations`` object (libfuse's high-level API: its
  node table and path resolution, then mfusepy's ctypes callback), as a
  filesystem driver is mounted today.

And a real driver two ways — the passthrough driver over a directory holding
``f`` (``SIZE`` bytes), with ``attr_timeout``/``entry_timeout`` 0:

* ``passthrough-mfusepy``: mounted directly with mfusepy (libfuse's high level);
* ``passthrough-direct``: served by direct mode's FUSE layer
  (``nooks.fs.serve``) on a mount the host holds (``nooks.fs.devfuse``).

``python -m nooks.bench.fuseservers KIND MOUNTPOINT [ROOT]``: prints ``ready``
once mounted, serves until the mount goes away.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat as st
import sys
import time
from typing import Any

from nooks.fs import kernelproto as kp

ROOT, FILE = 1, 2
SIZE = 123
MS_NOSUID, MS_NODEV = 2, 4
GETATTR, LOOKUP = int(kp.Op.GETATTR), int(kp.Op.LOOKUP)  # (plain ints: compared per request)



def _attr(ino: int) -> bytes:
    now = time.time_ns()
    if ino == ROOT:
        return kp.attr(ROOT, st.S_IFDIR | 0o755, nlink=2, atime_ns=now, mtime_ns=now,
                       ctime_ns=now)
    return kp.attr(FILE, st.S_IFREG | 0o644, size=SIZE, blocks=1, atime_ns=now,
                   mtime_ns=now, ctime_ns=now)


def serve_kernel(mountpoint: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    opts = f"fd={fd},rootmode=40000,user_id=0,group_id=0".encode()
    if libc.mount(b"nooks-bench", mountpoint.encode(), b"fuse.nooks-bench",
                  MS_NOSUID | MS_NODEV, opts) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), mountpoint)
    print("ready", flush=True)
    buf = bytearray(1 << 20 | 4096)
    write = os.write
    while True:
        try:
            n = os.readv(fd, [buf])
        except OSError as e:
            if e.errno == errno.ENODEV:  # unmounted
                return
            if e.errno in (errno.EINTR, errno.ENOENT):  # (ENOENT: an interrupted request)
                continue
            raise
        op, unique, node, _, _, _ = kp.header(buf, n)
        if op == GETATTR:
            write(fd, kp.reply(unique, kp.attr_out(_attr(node))))
        elif op == LOOKUP:
            if kp.names(buf, n, 1) != [b"f"]:
                write(fd, kp.reply(unique, error=errno.ENOENT))
            else:
                write(fd, kp.reply(unique, kp.entry_out(FILE, _attr(FILE))))
        elif op == kp.Op.INIT:
            _, _, readahead, _, _ = kp.init_in(buf, n)
            # 7.31, no flags: nothing asked for that the others would not do either
            write(fd, kp.reply(unique, kp.init_out(31, readahead, flags=0, max_write=1 << 17)))
        elif op not in (kp.Op.FORGET, kp.Op.BATCH_FORGET):  # (those: no reply)
            write(fd, kp.reply(unique, error=errno.ENOSYS))


class _Timespec(ctypes.Structure):
    _fields_ = [("sec", ctypes.c_long), ("nsec", ctypes.c_long)]


class _Stat(ctypes.Structure):  # struct stat, x86-64
    _fields_ = [("st_dev", ctypes.c_uint64), ("st_ino", ctypes.c_uint64),
                ("st_nlink", ctypes.c_uint64), ("st_mode", ctypes.c_uint32),
                ("st_uid", ctypes.c_uint32), ("st_gid", ctypes.c_uint32),
                ("pad0", ctypes.c_int32), ("st_rdev", ctypes.c_uint64),
                ("st_size", ctypes.c_int64), ("st_blksize", ctypes.c_int64),
                ("st_blocks", ctypes.c_int64), ("st_atim", _Timespec),
                ("st_mtim", _Timespec), ("st_ctim", _Timespec),
                ("reserved", ctypes.c_int64 * 3)]


class _EntryParam(ctypes.Structure):
    _fields_ = [("ino", ctypes.c_uint64), ("generation", ctypes.c_uint64), ("attr", _Stat),
                ("attr_timeout", ctypes.c_double), ("entry_timeout", ctypes.c_double)]


class _Args(ctypes.Structure):
    _fields_ = [("argc", ctypes.c_int), ("argv", ctypes.POINTER(ctypes.c_char_p)),
                ("allocated", ctypes.c_int)]


_LOOKUP = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_char_p)
_GETATTR = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_void_p)


class _Ops(ctypes.Structure):  # the first members of struct fuse_lowlevel_ops
    _fields_ = [("init", ctypes.c_void_p), ("destroy", ctypes.c_void_p), ("lookup", _LOOKUP),
                ("forget", ctypes.c_void_p), ("getattr", _GETATTR)]


def _fill(s: _Stat, ino: int) -> None:
    now = int(time.time())
    s.st_ino = ino
    if ino == ROOT:
        s.st_mode, s.st_nlink = st.S_IFDIR | 0o755, 2
    else:
        s.st_mode, s.st_nlink, s.st_size, s.st_blocks = st.S_IFREG | 0o644, 1, SIZE, 1
    s.st_atim.sec = s.st_mtim.sec = s.st_ctim.sec = now
    s.st_blksize = 4096


def serve_lowlevel(mountpoint: str) -> None:
    lib = ctypes.CDLL("libfuse3.so.3")
    lib.fuse_reply_attr.argtypes = [ctypes.c_void_p, ctypes.POINTER(_Stat), ctypes.c_double]
    lib.fuse_reply_entry.argtypes = [ctypes.c_void_p, ctypes.POINTER(_EntryParam)]
    lib.fuse_reply_err.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.fuse_session_new.restype = ctypes.c_void_p
    lib.fuse_session_new.argtypes = [ctypes.POINTER(_Args), ctypes.POINTER(_Ops),
                                     ctypes.c_size_t, ctypes.c_void_p]
    lib.fuse_session_mount.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.fuse_session_loop.argtypes = [ctypes.c_void_p]

    def lookup(req: int, parent: int, name: bytes) -> None:
        if name != b"f":
            lib.fuse_reply_err(req, errno.ENOENT)
            return
        e = _EntryParam()  # (timeouts 0: nothing cached)
        e.ino = FILE
        _fill(e.attr, FILE)
        lib.fuse_reply_entry(req, ctypes.byref(e))

    def getattr(req: int, ino: int, fi: int) -> None:
        s = _Stat()
        _fill(s, ino)
        lib.fuse_reply_attr(req, ctypes.byref(s), 0.0)

    ops = _Ops()
    ops.lookup, ops.getattr = _LOOKUP(lookup), _GETATTR(getattr)
    argv = (ctypes.c_char_p * 1)(b"nooks-bench")
    args = _Args(1, argv, 0)
    se = lib.fuse_session_new(ctypes.byref(args), ctypes.byref(ops), ctypes.sizeof(ops), None)
    if not se or lib.fuse_session_mount(se, mountpoint.encode()) != 0:
        raise OSError(errno.EIO, "libfuse could not mount", mountpoint)
    print("ready", flush=True)
    lib.fuse_session_loop(se)


def serve_highlevel(mountpoint: str) -> None:
    os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")
    import mfusepy

    class Tree(mfusepy.Operations):  # type: ignore[misc]
        def getattr(self, path: str, fh: Any = None) -> dict[str, Any]:
            now = time.time()
            times = {"st_atime": now, "st_mtime": now, "st_ctime": now}
            if path == "/":
                return {"st_mode": st.S_IFDIR | 0o755, "st_nlink": 2, **times}
            if path == "/f":
                return {"st_mode": st.S_IFREG | 0o644, "st_nlink": 1, "st_size": SIZE,
                        "st_blocks": 1, **times}
            raise mfusepy.FuseOSError(errno.ENOENT)

    print("ready", flush=True)  # (libfuse mounts before it serves: the first stat waits)
    mfusepy.FUSE(Tree(), mountpoint, foreground=True, nothreads=True, attr_timeout=0,
                 entry_timeout=0, negative_timeout=0)


def serve_passthrough_mfusepy(mountpoint: str, root: str) -> None:
    os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")
    import mfusepy

    from nooks.drivers.passthrough import Passthrough

    print("ready", flush=True)
    mfusepy.FUSE(Passthrough(root), mountpoint, foreground=True, nothreads=True,
                 attr_timeout=0, entry_timeout=0, negative_timeout=0)


def serve_passthrough_direct(mountpoint: str, root: str) -> None:
    import mmap

    from nooks.fs.adapter import FsAdapter
    from nooks.fs.devfuse import Connection
    from nooks.fs.nodes import Nodes
    from nooks.fs.serve import Server
    from nooks.fs.statelog import StateLog, size_for

    log = StateLog(memoryview(mmap.mmap(-1, size_for(1 << 20))))
    with Connection(mountpoint) as conn:
        conn.init()
        print("ready", flush=True)
        ops = FsAdapter("nooks.drivers.passthrough:Passthrough", [root], {})
        Server(conn.fd, ops, Nodes(log)).serve()


SERVERS = {"kernel": serve_kernel, "lowlevel": serve_lowlevel, "highlevel": serve_highlevel}
DRIVEN = {"passthrough-mfusepy": serve_passthrough_mfusepy,
          "passthrough-direct": serve_passthrough_direct}

if __name__ == "__main__":
    if sys.argv[1] in DRIVEN:
        DRIVEN[sys.argv[1]](sys.argv[2], sys.argv[3])
    else:
        SERVERS[sys.argv[1]](sys.argv[2])
