"""The FUSE kernel protocol: the layouts of what ``/dev/fuse`` carries.

A server reads one request per ``read(2)`` — a 40-byte header (length, opcode,
request id, node id, the caller's uid, gid and pid) and the opcode's arguments —
and answers with one ``write(2)``: a 16-byte header (length, ``-errno`` or 0,
the request id) and the opcode's reply. A notification is a reply with request
id 0 and the notification's code where the error goes. Everything is
little-endian and padded to 8 bytes as ``include/uapi/linux/fuse.h`` lays it
out (protocol 7.31 and later; the fields added since are tolerated, not used).

Nothing here trusts a request: a body shorter than its opcode's arguments, a
name without its terminating NUL or a length field that disagrees with what was
read is ``Malformed``.
"""

from __future__ import annotations

import enum
import struct

KERNEL_MAJOR, KERNEL_MINOR = 7, 31  # the protocol this module speaks (at least)
ROOT_ID = 1
MIN_READ_BUFFER = 8192


class Op(enum.IntEnum):
    LOOKUP = 1
    FORGET = 2  # (no reply)
    GETATTR = 3
    SETATTR = 4
    READLINK = 5
    SYMLINK = 6
    MKNOD = 8
    MKDIR = 9
    UNLINK = 10
    RMDIR = 11
    RENAME = 12
    LINK = 13
    OPEN = 14
    READ = 15
    WRITE = 16
    STATFS = 17
    RELEASE = 18
    FSYNC = 20
    SETXATTR = 21
    GETXATTR = 22
    LISTXATTR = 23
    REMOVEXATTR = 24
    FLUSH = 25
    INIT = 26
    OPENDIR = 27
    READDIR = 28
    RELEASEDIR = 29
    FSYNCDIR = 30
    ACCESS = 34
    CREATE = 35
    INTERRUPT = 36
    DESTROY = 38
    BATCH_FORGET = 42  # (no reply)
    FALLOCATE = 43
    READDIRPLUS = 44
    RENAME2 = 45
    LSEEK = 46


class Notify(enum.IntEnum):
    POLL = 1
    INVAL_INODE = 2
    INVAL_ENTRY = 3
    STORE = 4
    RETRIEVE = 5
    DELETE = 6
    RESEND = 7  # (7.40: the kernel queues again every request a server had read)


# INIT flags (the first word; ``flags2`` holds bit 32 and up)
ASYNC_READ, ATOMIC_O_TRUNC, BIG_WRITES = 1 << 0, 1 << 3, 1 << 5
DONT_MASK, MAX_PAGES, INIT_EXT = 1 << 6, 1 << 22, 1 << 30
HAS_RESEND = 1 << (39 - 32)  # in flags2

IN_HEADER = struct.Struct("<IIQQIIIHH")
OUT_HEADER = struct.Struct("<IiQ")
ATTR = struct.Struct("<QQQQQQIIIIIIIIII")
ENTRY_OUT = struct.Struct("<QQQQII")  # then ATTR
ATTR_OUT = struct.Struct("<QII")  # then ATTR
OPEN_OUT = struct.Struct("<QIi")
WRITE_OUT = struct.Struct("<II")
STATFS_OUT = struct.Struct("<QQQQQIIII24x")
INIT_IN = struct.Struct("<IIII")  # major, minor, max_readahead, flags (then flags2: 7.36)
INIT_OUT = struct.Struct("<IIIIHHIIHHII24x")
DIRENT = struct.Struct("<QQII")  # then the name, padded to 8 bytes
# arguments, by opcode
GETATTR_IN = struct.Struct("<IIQ")
SETATTR_IN = struct.Struct("<IIQQQQQQIIIIIIII")
MKNOD_IN = struct.Struct("<IIII")
MKDIR_IN = struct.Struct("<II")
RENAME_IN = struct.Struct("<Q")
RENAME2_IN = struct.Struct("<QII")
LINK_IN = struct.Struct("<Q")
OPEN_IN = struct.Struct("<II")
CREATE_IN = struct.Struct("<IIII")
READ_IN = struct.Struct("<QQIIQII")  # also READDIR's; WRITE's has the same layout
RELEASE_IN = struct.Struct("<QIIQ")
FLUSH_IN = struct.Struct("<QIIQ")
FSYNC_IN = struct.Struct("<QII")
ACCESS_IN = struct.Struct("<II")
FORGET_IN = struct.Struct("<Q")
BATCH_FORGET_IN = struct.Struct("<II")
FORGET_ONE = struct.Struct("<QQ")
INTERRUPT_IN = struct.Struct("<Q")
GETXATTR_IN = struct.Struct("<II")  # size, padding (also LISTXATTR's)
SETXATTR_IN = struct.Struct("<II")  # size, flags (without FUSE_SETXATTR_EXT); name, value
GETXATTR_OUT = struct.Struct("<II")  # the size a value needs (asked with size 0)


class Malformed(ValueError):
    """A request that does not parse as its opcode's arguments."""


def header(buf: bytes | bytearray | memoryview, n: int) -> tuple[int, int, int, int, int, int]:
    """The header of the request in the first ``n`` bytes of ``buf`` (one ``read(2)``):
    opcode, request id, node id, and the caller's uid, gid and pid. Its arguments
    follow at ``IN_HEADER.size`` (``args``, ``names``)."""
    if n < IN_HEADER.size:
        raise Malformed(f"a request of {n} bytes is shorter than its header")
    length, opcode, unique, nodeid, uid, gid, pid, _, _ = IN_HEADER.unpack_from(buf)
    if length != n:
        raise Malformed(f"a request says it has {length} bytes, {n} were read")
    return opcode, unique, nodeid, uid, gid, pid


def args(s: struct.Struct, buf: bytes | bytearray | memoryview, n: int,
         at: int = IN_HEADER.size) -> tuple[int, ...]:
    """The fixed arguments at ``at`` of a request of ``n`` bytes."""
    if n - at < s.size:
        raise Malformed(f"{n - at} bytes of arguments, {s.size} expected")
    return s.unpack_from(buf, at)


def name(buf: bytes | bytearray, n: int, at: int = IN_HEADER.size) -> bytes:
    """The NUL-terminated name at ``at``, in a request of ``n`` bytes (``names`` of one)."""
    end = buf.find(b"\0", at, n)
    if end < 0:
        raise Malformed("a name without its terminating NUL")
    return bytes(buf[at:end])


def names(buf: bytes | bytearray | memoryview, n: int, count: int,
          at: int = IN_HEADER.size) -> list[bytes]:
    """``count`` NUL-terminated names from ``at`` on, in a request of ``n`` bytes."""
    raw = bytes(buf[at:n])
    out = raw.split(b"\0", count)
    if len(out) <= count:
        raise Malformed("a name without its terminating NUL")
    return out[:count]


def reply(unique: int, body: bytes = b"", error: int = 0) -> bytes:
    """A reply: ``error`` is an errno (positive), 0 for success."""
    return OUT_HEADER.pack(OUT_HEADER.size + len(body), -error if error else 0, unique) + body


def notification(code: Notify, body: bytes = b"") -> bytes:
    return OUT_HEADER.pack(OUT_HEADER.size + len(body), int(code), 0) + body


def attr(ino: int, mode: int, *, nlink: int = 1, uid: int = 0, gid: int = 0, rdev: int = 0,
         size: int = 0, blocks: int = 0, blksize: int = 4096, atime_ns: int = 0,
         mtime_ns: int = 0, ctime_ns: int = 0) -> bytes:
    """A ``fuse_attr``."""
    a, an = divmod(atime_ns, 10**9)
    m, mn = divmod(mtime_ns, 10**9)
    c, cn = divmod(ctime_ns, 10**9)
    return ATTR.pack(ino, size, blocks, a, m, c, an, mn, cn, mode, nlink, uid, gid, rdev,
                     blksize, 0)


def _valid(seconds: float) -> tuple[int, int]:
    whole = int(seconds)
    return whole, int((seconds - whole) * 1e9)


def entry_out(nodeid: int, attr: bytes, entry_valid: float = 0.0, attr_valid: float = 0.0,
              generation: int = 0) -> bytes:
    """A ``fuse_entry_out`` for the node ``nodeid`` whose ``attr`` is given."""
    (es, ens), (as_, ans) = _valid(entry_valid), _valid(attr_valid)
    return ENTRY_OUT.pack(nodeid, generation, es, as_, ens, ans) + attr


_NOT_CACHED = ATTR_OUT.pack(0, 0, 0)


def attr_out(attr: bytes, valid: float = 0.0) -> bytes:
    if not valid:
        return _NOT_CACHED + attr
    s, ns = _valid(valid)
    return ATTR_OUT.pack(s, ns, 0) + attr


FOPEN_DIRECT_IO = 1 << 0  # (open_out's flags) bypass the page cache for this file


def open_out(fh: int, flags: int = 0) -> bytes:
    return OPEN_OUT.pack(fh, flags, 0)


def write_out(size: int) -> bytes:
    return WRITE_OUT.pack(size, 0)


def statfs_out(*, blocks: int, bfree: int, bavail: int, files: int, ffree: int,
               bsize: int, namelen: int, frsize: int) -> bytes:
    return STATFS_OUT.pack(blocks, bfree, bavail, files, ffree, bsize, namelen, frsize, 0)


def dirent(ino: int, off: int, name: bytes, kind: int) -> bytes:
    """One directory entry: ``kind`` is the file type (``mode >> 12``), ``off`` what
    the next READDIR passes to continue after it."""
    raw = DIRENT.pack(ino, off, len(name), kind) + name
    return raw + bytes(-len(raw) % 8)


def init_in(buf: bytes | bytearray | memoryview, n: int) -> tuple[int, int, int, int, int]:
    """FUSE_INIT's arguments: major, minor, max_readahead, flags, flags2 (0 from a
    kernel before 7.36)."""
    major, minor, readahead, flags = args(INIT_IN, buf, n)
    at = IN_HEADER.size + INIT_IN.size
    flags2 = int.from_bytes(buf[at:at + 4], "little") if n >= at + 4 else 0
    return major, minor, readahead, flags, flags2


def init_out(minor: int, max_readahead: int, *, flags: int, max_write: int,
             max_pages: int = 32, flags2: int = 0) -> bytes:
    return INIT_OUT.pack(KERNEL_MAJOR, minor, max_readahead, flags, 16, 12, max_write, 1,
                         max_pages, 0, flags2, 0)


def forgets(op: int, node: int, buf: bytes | bytearray | memoryview,
            n: int) -> list[tuple[int, int]]:
    """The (node, lookups) a FORGET or BATCH_FORGET request lets go of."""
    if op == Op.FORGET:
        return [(node, args(FORGET_IN, buf, n)[0])]
    count, _ = args(BATCH_FORGET_IN, buf, n)
    at = IN_HEADER.size + BATCH_FORGET_IN.size
    out = []
    for i in range(count):
        nodeid, nlookup = args(FORGET_ONE, buf, n, at + i * FORGET_ONE.size)
        out.append((nodeid, nlookup))
    return out
