"""The FUSE kernel protocol's layouts: the sizes fuse.h gives, requests parsed and
refused, replies and notifications as the kernel reads them."""

from __future__ import annotations

import errno
import struct

import pytest

from nooks.fs import kernelproto as kp


def _request(op: int, body: bytes, unique: int = 42, nodeid: int = 1) -> bytearray:
    n = kp.IN_HEADER.size + len(body)
    return bytearray(kp.IN_HEADER.pack(n, op, unique, nodeid, 1000, 100, 4321, 0, 0) + body)


def test_the_layouts_have_the_sizes_the_kernel_uses() -> None:
    # (include/uapi/linux/fuse.h: fuse_in_header, fuse_out_header, fuse_attr, ...)
    assert (kp.IN_HEADER.size, kp.OUT_HEADER.size, kp.ATTR.size) == (40, 16, 88)
    assert len(kp.entry_out(2, kp.attr(2, 0o100644))) == 128
    assert len(kp.attr_out(kp.attr(2, 0o100644))) == 104
    assert len(kp.init_out(31, 0, flags=0, max_write=4096)) == 64
    assert kp.STATFS_OUT.size == 80 and kp.SETATTR_IN.size == 88
    assert (kp.READ_IN.size, kp.RELEASE_IN.size, kp.OPEN_OUT.size) == (40, 24, 16)


def test_a_request_is_parsed_from_what_one_read_returned() -> None:
    buf = _request(kp.Op.LOOKUP, b"name\0", unique=7, nodeid=3)
    assert kp.header(buf, len(buf)) == (kp.Op.LOOKUP, 7, 3, 1000, 100, 4321)
    assert kp.names(buf, len(buf), 1) == [b"name"]
    ren = _request(kp.Op.RENAME, kp.RENAME_IN.pack(9) + b"old\0new\0")
    (newdir,) = kp.args(kp.RENAME_IN, ren, len(ren))
    assert newdir == 9
    assert kp.names(ren, len(ren), 2, kp.IN_HEADER.size + kp.RENAME_IN.size) == [b"old",
                                                                                b"new"]


def test_a_request_that_does_not_parse_is_malformed() -> None:
    buf = _request(kp.Op.LOOKUP, b"name\0")
    with pytest.raises(kp.Malformed):
        kp.header(buf, kp.IN_HEADER.size - 1)  # shorter than a header
    with pytest.raises(kp.Malformed):
        kp.header(buf + b"x", len(buf) + 1)  # its length field says less than was read
    unterminated = _request(kp.Op.LOOKUP, b"name")
    with pytest.raises(kp.Malformed):
        kp.names(unterminated, len(unterminated), 1)
    short = _request(kp.Op.READ, bytes(kp.READ_IN.size - 1))
    with pytest.raises(kp.Malformed):
        kp.args(kp.READ_IN, short, len(short))


def test_init_reads_flags2_only_from_a_kernel_that_sends_it() -> None:
    old = _request(kp.Op.INIT, kp.INIT_IN.pack(7, 31, 131072, 0x123))
    new = _request(kp.Op.INIT, kp.INIT_IN.pack(7, 45, 131072, 0x123)
                   + struct.pack("<I", kp.HAS_RESEND) + bytes(44))
    assert kp.init_in(old, len(old)) == (7, 31, 131072, 0x123, 0)
    assert kp.init_in(new, len(new)) == (7, 45, 131072, 0x123, kp.HAS_RESEND)


def test_replies_and_notifications() -> None:
    assert kp.OUT_HEADER.unpack(kp.reply(42, error=errno.ENOENT)) == (16, -errno.ENOENT, 42)
    ok = kp.reply(42, kp.write_out(5))
    assert kp.OUT_HEADER.unpack_from(ok) == (24, 0, 42) and ok[16:20] == b"\x05\0\0\0"
    # the resend notification: a bare header, the code where the error goes, id 0
    assert kp.notification(kp.Notify.RESEND) == struct.pack("<IiQ", 16, 7, 0)


def test_attributes_split_nanoseconds_and_entries_say_how_long_they_hold() -> None:
    raw = kp.attr(5, 0o100600, nlink=2, size=10, atime_ns=3_000_000_007,
                  mtime_ns=4 * 10**9, ctime_ns=1)
    f = kp.ATTR.unpack(raw)
    assert (f[0], f[1], f[3], f[6], f[4], f[7], f[5], f[8]) == (5, 10, 3, 7, 4, 0, 0, 1)
    assert (f[9], f[10]) == (0o100600, 2)
    out = kp.entry_out(5, raw, entry_valid=1.5, attr_valid=0.25)
    assert kp.ENTRY_OUT.unpack_from(out) == (5, 0, 1, 0, 500_000_000, 250_000_000)
    assert kp.ATTR_OUT.unpack_from(kp.attr_out(raw, 2.0)) == (2, 0, 0)


def test_directory_entries_are_padded_to_eight_bytes() -> None:
    for name in (b"a", b"abcdefgh", b"x" * 13):
        d = kp.dirent(7, 3, name, 0o10)
        assert len(d) % 8 == 0 and len(d) >= kp.DIRENT.size + len(name)
        assert kp.DIRENT.unpack_from(d) == (7, 3, len(name), 0o10)
        assert d[kp.DIRENT.size:kp.DIRENT.size + len(name)] == name
