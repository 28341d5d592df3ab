# mypy: disable-error-code="empty-body"
"""The filesystem class's interface: the fusepy ``Operations`` calls, declared.

Every call carries the FUSE context of the process that made the request
(``ctx``: uid, gid, pid), because a driver in a domain has no FUSE session of
its own to ask. Errors a driver means to return are ``OSError`` with an errno
(fusepy's ``FuseOSError`` is one); they come back to the host as
``FuseOSError`` with the same errno. Anything else a driver raises is a failure.
"""

from __future__ import annotations

import errno
import os
from typing import Annotated, Any, Literal, TypedDict

import msgspec

from nooks.wrappers import Handle, Interface, Ordinary, changes, closes, opens

Ctx = tuple[int, int, int]
# FUSE hands a path from the mount's root, however deep the directory it names (the
# kernel's PATH_MAX bounds what a program passes, not this); names are the kernel's
# at most 1024 bytes (FUSE_NAME_MAX), xattr names at most 255
Path = Annotated[str, msgspec.Meta(max_length=1 << 20)]
Name = Annotated[str, msgspec.Meta(max_length=1024)]
U32 = Annotated[int, msgspec.Meta(ge=0, le=(1 << 32) - 1)]
U64 = Annotated[int, msgspec.Meta(ge=0)]  # msgpack holds no integer above 2**64 - 1
Size = Annotated[int, msgspec.Meta(ge=0, le=(1 << 63) - 1)]  # sizes, offsets: never negative
Fh = U64
# arguments that name a handle the shadow handed out (an open file, an open directory;
# getattr's may be either)
FileFh = Annotated[Fh, Handle("file")]
DirFh = Annotated[Fh, Handle("dir")]
AnyFh = Annotated[Fh, Handle("any")]
Int = int
Data = Annotated[bytes, msgspec.Meta(max_length=16 << 20)]
# a time: seconds (int or float) or, for drivers with use_ns, nanoseconds; finite
Time = (Annotated[int, msgspec.Meta(ge=-(1 << 63), le=(1 << 63) - 1)]
        | Annotated[float, msgspec.Meta(ge=-9.2e18, le=9.2e18)])


class Attrs(TypedDict, total=False):
    """A getattr answer as mfusepy reads it into ``struct stat`` (other keys are not
    used by mfusepy and are dropped in the domain). Out-of-range values — a negative
    size, a NaN time, a mode wider than 32 bits — would reach the kernel wrongly:
    the driver has misbehaved."""

    st_mode: U32
    st_ino: U64
    st_dev: U64
    st_nlink: U64
    st_uid: U32
    st_gid: U32
    st_rdev: U64
    st_size: Size
    st_blksize: Size
    st_blocks: Size
    st_atime: Time
    st_mtime: Time
    st_ctime: Time


class StatFs(TypedDict, total=False):
    """A statfs answer as mfusepy reads it into ``struct statvfs``."""

    f_bsize: U64
    f_frsize: U64
    f_blocks: U64
    f_bfree: U64
    f_bavail: U64
    f_files: U64
    f_ffree: U64
    f_favail: U64
    f_fsid: U64
    f_flag: U64
    f_namemax: U64


class DirAttrs(TypedDict, total=False):
    """What mfusepy takes from a readdir entry's attributes: the type and the inode."""

    st_mode: U32
    st_ino: U64


# (a bare name is bounded by the message size: msgspec cannot take a constrained str in
# this union)
DirEntry = str | tuple[Name, DirAttrs | U32 | None, Size]
Status = int | None

# the operations a bridge may register with libfuse, in fusepy's naming
OPERATIONS = (
    "getattr", "readlink", "mknod", "mkdir", "unlink", "rmdir", "symlink", "rename", "link",
    "chmod", "chown", "truncate", "open", "read", "write", "statfs", "flush", "release",
    "fsync", "setxattr", "getxattr", "listxattr", "removexattr", "opendir", "readdir",
    "releasedir", "fsyncdir", "access", "create", "utimens", "destroy",
)
# what a driver may say it implements: these names and no others
Operation = Literal[
    "getattr", "readlink", "mknod", "mkdir", "unlink", "rmdir", "symlink", "rename", "link",
    "chmod", "chown", "truncate", "open", "read", "write", "statfs", "flush", "release",
    "fsync", "setxattr", "getxattr", "listxattr", "removexattr", "opendir", "readdir",
    "releasedir", "fsyncdir", "access", "create", "utimens", "destroy",
]


def os_error(errno: int) -> OSError:
    """The error a driver returns on purpose, as mfusepy expects it (its FuseOSError)."""
    return OSError(errno, os.strerror(errno))


def _einval(exc: Exception) -> OSError:
    return os_error(errno.EINVAL)


class FsInterface(Interface):
    ordinary = (Ordinary(OSError, "errno", make=os_error),)
    # mfusepy answers an exception it did not expect with EINVAL (and logs it)
    unexpected = staticmethod(_einval)

    # what the driver implements (as mfusepy would register it) and its flags
    def implemented(self) -> list[Operation]: ...
    def uses_ns(self) -> bool: ...
    def init(self, ctx: Ctx, path: Path) -> None: ...
    def destroy(self, ctx: Ctx, path: Path) -> None: ...

    def getattr(self, ctx: Ctx, path: Path, fh: AnyFh | None = None) -> Attrs: ...
    def readlink(self, ctx: Ctx, path: Path) -> Path: ...
    @changes(done_if=[errno.EEXIST])
    def mknod(self, ctx: Ctx, path: Path, mode: Int, dev: Int) -> Status: ...
    @changes(done_if=[errno.EEXIST])
    def mkdir(self, ctx: Ctx, path: Path, mode: Int) -> Status: ...
    @changes(done_if=[errno.ENOENT])
    def unlink(self, ctx: Ctx, path: Path) -> Status: ...
    @changes(done_if=[errno.ENOENT])
    def rmdir(self, ctx: Ctx, path: Path) -> Status: ...
    @changes(done_if=[errno.EEXIST])
    def symlink(self, ctx: Ctx, target: Path, source: Path) -> Status: ...
    @changes(done_if=[errno.ENOENT])
    def rename(self, ctx: Ctx, old: Path, new: Path) -> Status: ...
    @changes(done_if=[errno.EEXIST])
    def link(self, ctx: Ctx, target: Path, source: Path) -> Status: ...
    @changes()
    def chmod(self, ctx: Ctx, path: Path, mode: Int) -> Status: ...
    @changes()
    def chown(self, ctx: Ctx, path: Path, uid: Int, gid: Int) -> Status: ...
    @changes()
    def truncate(self, ctx: Ctx, path: Path, length: Int, fh: FileFh | None = None) -> Status: ...
    @opens("file")
    def open(self, ctx: Ctx, path: Path, flags: Int) -> Fh: ...
    def read(self, ctx: Ctx, path: Path, size: Int, offset: Int, fh: FileFh) -> Data: ...
    @changes()
    def write(self, ctx: Ctx, path: Path, data: Data, offset: Int, fh: FileFh) -> Int: ...
    def statfs(self, ctx: Ctx, path: Path) -> StatFs: ...
    def flush(self, ctx: Ctx, path: Path, fh: FileFh) -> Status: ...
    @closes("file", done_if=[errno.EBADF])
    def release(self, ctx: Ctx, path: Path, fh: FileFh) -> Status: ...
    def fsync(self, ctx: Ctx, path: Path, datasync: Int, fh: FileFh) -> Status: ...
    @changes()
    def setxattr(self, ctx: Ctx, path: Path, name: Name, value: Data,  # noqa: PLR0917
                 options: Int, position: Int = 0) -> Status: ...
    def getxattr(self, ctx: Ctx, path: Path, name: Name, position: Int = 0) -> Data: ...
    def listxattr(self, ctx: Ctx, path: Path) -> list[Name]: ...
    @changes()
    def removexattr(self, ctx: Ctx, path: Path, name: Name) -> Status: ...
    @opens("dir")
    def opendir(self, ctx: Ctx, path: Path) -> Fh: ...
    def readdir(self, ctx: Ctx, path: Path, fh: DirFh) -> list[DirEntry]: ...
    @closes("dir", done_if=[errno.EBADF])
    def releasedir(self, ctx: Ctx, path: Path, fh: DirFh) -> Status: ...
    def fsyncdir(self, ctx: Ctx, path: Path, datasync: Int, fh: DirFh) -> Status: ...
    def access(self, ctx: Ctx, path: Path, amode: Int) -> Status: ...
    @opens("file")
    def create(self, ctx: Ctx, path: Path, mode: Int, flags: Int) -> Fh: ...
    @changes()
    def utimens(self, ctx: Ctx, path: Path,
                times: tuple[int | float, int | float] | None = None) -> Status: ...


# the driver calls that change what a filesystem stores (a volatile driver's journal)
Journaled = Literal["chmod", "chown", "create", "link", "mkdir", "mknod", "open", "release",
                    "removexattr", "rename", "rmdir", "setxattr", "symlink", "truncate",
                    "unlink", "utimens", "write"]


class ServedInterface(FsInterface):
    """A domain that serves ``/dev/fuse`` itself (direct mode, ``nooks.fs.served``):
    the host's word that it may, and a volatile driver's journal redone."""

    def replay(self, at: U64, op: Journaled,
               args: Annotated[list[Any], msgspec.Meta(max_length=8)]) -> Any: ...

    def served_go(self, can_resend: bool,
                  handles: Annotated[dict[U64, U64], msgspec.Meta(max_length=1 << 20)],
                  journaled: Annotated[list[U64], msgspec.Meta(max_length=1 << 20)],
                  written: Annotated[list[Path], msgspec.Meta(max_length=1 << 20)]
                  ) -> None: ...

    # a checkpoint's quiet moment (nooks.fs.checkpointed): held at once (between
    # requests), or False: the server finishes its request, then pauses (fs_pause)
    def served_hold(self) -> bool: ...

    def served_resume(self, checkpoint: bool) -> None: ...
