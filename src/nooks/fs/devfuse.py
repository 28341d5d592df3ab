"""The host's hold on a FUSE connection: ``/dev/fuse`` opened and mounted by the
host itself, FUSE_INIT answered here, and the connection kept however often the
process that serves it dies.

Whoever holds a duplicate of ``fd`` may read requests and write replies; the
mount lives as long as one descriptor of it is open, so a serving process can
be killed with requests in flight and another take its place. Requests the dead
one had read are lost to it, not to the kernel: ``resend`` (Linux 6.9 and
later, protocol 7.40: ``FUSE_NOTIFY_RESEND``) queues every one of them again for
whoever reads next.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import select
import struct

from nooks.fs import kernelproto as kp

MS_NOSUID, MS_NODEV = 0x2, 0x4
MNT_DETACH = 0x2
INIT_TIMEOUT = 5.0  # seconds the kernel may take to send FUSE_INIT once mounted
MAX_WRITE = 1 << 17
SPOKEN = 38  # the protocol minor answered (libfuse 3.14's): no later layout is used

_libc = ctypes.CDLL(None, use_errno=True)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")


class Connection:
    """A FUSE mount at ``mountpoint`` whose ``/dev/fuse`` descriptor this process
    holds; ``init`` answers the kernel's FUSE_INIT."""

    def __init__(self, mountpoint: str, *, fsname: str = "nooks", subtype: str = "nooks",
                 allow_other: bool = False, default_permissions: bool = False,
                 mount: bool = True) -> None:
        """``subtype`` "": the mount's type is plain ``fuse`` (as libfuse's); without
        ``mount``, ``/dev/fuse`` is opened and the mount made later (``mount``)."""
        self.mountpoint = os.path.abspath(mountpoint)
        self.fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
        self._opts = (f"fd={self.fd},rootmode=40000,user_id={os.getuid()},"
                      f"group_id={os.getgid()}" + (",allow_other" if allow_other else "")
                      + (",default_permissions" if default_permissions else ""))
        self._source = fsname
        self._fstype = f"fuse.{subtype}" if subtype else "fuse"
        self.mounted = False
        self.minor = 0  # the protocol spoken, once INIT is answered
        self.kernel_minor = self.kernel_flags = self.kernel_flags2 = 0
        if mount:
            try:
                self.mount()
            except BaseException:
                os.close(self.fd)
                raise

    def mount(self) -> None:
        """Mount the connection at its mountpoint (the kernel then sends FUSE_INIT)."""
        _check(_libc.mount(self._source.encode(), self.mountpoint.encode(),
                           self._fstype.encode(), MS_NOSUID | MS_NODEV, self._opts.encode()),
               f"mount {self.mountpoint}")
        self.mounted = True

    @property
    def can_resend(self) -> bool:
        """Whether the kernel re-delivers the requests a dead server had read."""
        return self.kernel_minor >= 40 and bool(self.kernel_flags2 & kp.HAS_RESEND)

    def init(self, flags: int = 0) -> bytes:
        """Read the kernel's FUSE_INIT and answer it, asking for the ``flags`` it
        offers; the reply (what a fresh server must be told it agreed to)."""
        ready, _, _ = select.select([self.fd], [], [], INIT_TIMEOUT)
        if not ready:
            raise TimeoutError(f"no FUSE_INIT from the kernel in {INIT_TIMEOUT:g} s")
        buf = bytearray(kp.MIN_READ_BUFFER + MAX_WRITE)
        n = os.readv(self.fd, [buf])
        op, unique, _, _, _, _ = kp.header(buf, n)
        if op != kp.Op.INIT:
            raise kp.Malformed(f"the kernel's first request is {op}, not FUSE_INIT")
        major, minor, readahead, kflags, kflags2 = kp.init_in(buf, n)
        if major != kp.KERNEL_MAJOR:
            os.write(self.fd, kp.reply(unique, error=errno.EPROTO))
            raise OSError(errno.EPROTO, f"the kernel speaks FUSE {major}.{minor}")
        self.minor = min(minor, SPOKEN)
        self.kernel_minor, self.kernel_flags, self.kernel_flags2 = minor, kflags, kflags2
        body = kp.init_out(self.minor, readahead, flags=flags & kflags, max_write=MAX_WRITE)
        os.write(self.fd, kp.reply(unique, body))
        return body

    def resend(self) -> None:
        """Queue again every request a server read and did not answer."""
        if not self.can_resend:
            raise OSError(errno.ENOSYS, "this kernel does not resend FUSE requests")
        os.write(self.fd, kp.notification(kp.Notify.RESEND))

    def invalidate(self, node: int) -> bool:
        """Drop what the kernel caches of ``node``: its attributes and its pages, as
        libfuse's ``fuse_invalidate_path``; whether the kernel knew it."""
        try:
            os.write(self.fd, kp.notification(kp.Notify.INVAL_INODE,
                                              struct.pack("<Qqq", node, 0, 0)))
        except OSError as e:
            if e.errno == errno.ENOENT:
                return False
            raise
        return True

    def unmount(self) -> None:
        """Unmount (lazily: a process still inside the mount keeps it until it
        leaves); the descriptor stays open."""
        if self.mounted:
            self.mounted = False
            with contextlib.suppress(OSError):
                _check(_libc.umount2(self.mountpoint.encode(), MNT_DETACH),
                       f"umount {self.mountpoint}")

    def close(self) -> None:
        """Unmount and let the connection go."""
        self.unmount()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
