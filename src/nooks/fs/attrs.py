"""A driver's getattr answer, checked and packed for the kernel in one step.

Every LOOKUP and GETATTR a direct-mode server answers (``nooks.fs.serve``) turns
the driver's dictionary into a ``fuse_attr``. ``Stat`` holds the same fields with
the same bounds as the declaration (``nooks.fs.interface.Attrs``), and the
defaults a missing key has; one ``msgspec.convert`` checks it (a bound broken is
the driver's misbehaviour, as the declaration says) and ``packed`` writes it.
"""

from __future__ import annotations

from typing import Any

import msgspec

from nooks.fs import kernelproto as kp
from nooks.fs.interface import U32, U64, Size, Time

_NS = 10**9


class Stat(msgspec.Struct):
    st_mode: U32 = 0
    st_ino: U64 = 0
    st_dev: U64 = 0
    st_nlink: U64 = 1
    st_uid: U32 = 0
    st_gid: U32 = 0
    st_rdev: U64 = 0
    st_size: Size = 0
    st_blksize: Size = 0
    st_blocks: Size = 0
    st_atime: Time = 0
    st_mtime: Time = 0
    st_ctime: Time = 0


def stat_of(value: Any) -> Stat:
    """``value`` checked as a getattr answer (msgspec.ValidationError if it is not)."""
    return msgspec.convert(value, Stat)


def packed(node: int, st: Stat, use_ns: bool) -> bytes:
    """The ``fuse_attr`` of ``node``; times are nanoseconds if ``use_ns``, else seconds,
    split as mfusepy splits them (the whole seconds, then what is left in ns)."""
    if use_ns:
        a_s, a_n = divmod(int(st.st_atime), _NS)
        m_s, m_n = divmod(int(st.st_mtime), _NS)
        c_s, c_n = divmod(int(st.st_ctime), _NS)
    else:
        a, m, c = st.st_atime, st.st_mtime, st.st_ctime
        a_s, m_s, c_s = int(a), int(m), int(c)
        a_n, m_n, c_n = int((a - a_s) * 1e9), int((m - m_s) * 1e9), int((c - c_s) * 1e9)
    return kp.ATTR.pack(node, st.st_size, st.st_blocks, a_s, m_s, c_s, a_n, m_n, c_n,
                        st.st_mode, st.st_nlink, st.st_uid, st.st_gid, st.st_rdev,
                        st.st_blksize, 0)
