"""mfusepy's contract, in the domain: what a driver's answers mean, as mfusepy reads them.

An unmodified driver must get from nooks the answers mfusepy and libfuse would
give its applications. These functions run in the domain, between the driver
and the wire, and make a driver's answer into what mfusepy would hand libfuse
-- no stricter, no looser:

* attribute dicts (getattr, statfs, readdir entries): keys mfusepy does not
  read are dropped (``"type": "file"``, a None value); values are converted
  as ctypes converts them (``True`` is 1; numpy integers and floats are
  numbers). A value ctypes refuses raises what mfusepy would raise (then the
  driver's exception is handled as mfusepy handles it: see the adapter);
* results that are numbers (write's count, a file handle, a status) are
  converted likewise; a file handle is an unsigned 64-bit field (-1 wraps);
  a falsy write result is 0, as mfusepy's ``or 0`` makes it;
* errors: an ``OSError`` whose errno is not a positive int, or any exception
  mfusepy would catch, is EINVAL -- at once for ``NotImplementedError`` and for
  a call the driver's method cannot even take (a TypeError binding its
  arguments: nothing of the driver ran); an errno of 1000 or more is ERANGE,
  as libfuse answers it.

What mfusepy would pass on and the kernel should not get -- a negative size,
a NaN time, a read longer than asked -- is not this module's business: the
host's checks of the interface (``nooks.fs.interface``) catch it as
misbehaviour.
"""

from __future__ import annotations

import errno
import inspect
import operator
import os
from collections.abc import Callable
from typing import Any

os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")

import mfusepy  # after choosing libfuse 3

__all__ = ["count", "dir_entry", "error", "handle", "mfusepy", "os_error", "stat", "statfs",
           "status", "unbindable"]

STAT_INTS = frozenset({"st_mode", "st_ino", "st_dev", "st_nlink", "st_uid", "st_gid",
                       "st_rdev", "st_size", "st_blksize", "st_blocks"})
TIMES = frozenset({"st_atime", "st_mtime", "st_ctime"})
STATFS = frozenset({"f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files",
                    "f_ffree", "f_favail", "f_fsid", "f_flag", "f_namemax"})
DIR_KEYS = ("st_mode", "st_ino")
_U64 = (1 << 64) - 1


def stat(attrs: Any, use_ns: bool) -> dict[str, int | float]:
    """A getattr answer as mfusepy reads it (see the module docstring)."""
    if type(attrs) is dict and _plain(attrs):
        return attrs
    mfusepy.set_st_attrs(mfusepy.c_stat(), attrs, use_ns)  # raises as mfusepy would
    out: dict[str, int | float] = {}
    for key, value in attrs.items():
        if key in STAT_INTS:
            out[key] = operator.index(value)
        elif key in TIMES:
            out[key] = int(value) if use_ns or isinstance(value, int) else float(value)
    return out


def _plain(attrs: dict[Any, Any]) -> bool:
    """Nothing to convert: known keys, exact ints (and floats for times)."""
    for key, value in attrs.items():
        kind = type(value)
        if kind is int:
            if key not in STAT_INTS and key not in TIMES:
                return False
        elif kind is not float or key not in TIMES:
            return False
    return True


def statfs(attrs: Any) -> dict[str, int]:
    """A statfs answer as mfusepy reads it into ``struct statvfs``."""
    stv = mfusepy.c_statvfs()
    out = {}
    for key, value in attrs.items():
        if hasattr(stv, key):
            setattr(stv, key, value)  # raises as mfusepy would
            if key in STATFS:
                out[key] = operator.index(value)
    return out


def dir_entry(item: Any) -> Any:
    """One readdir entry as mfusepy reads it: a name, or (name, mode or attributes of
    which only the mode and inode count, offset)."""
    if isinstance(item, str):
        return item
    name, attrs, offset = item  # raises as mfusepy's unpacking would
    if not isinstance(name, str):
        raise TypeError(f"a directory entry's name must be str, not {type(name).__name__}")
    if isinstance(attrs, int):
        attrs = operator.index(attrs)
    elif isinstance(attrs, dict):
        st = mfusepy.c_stat()
        kept = {}
        for key in DIR_KEYS:
            if key in attrs:
                setattr(st, key, attrs[key])  # raises as mfusepy would
                kept[key] = operator.index(attrs[key])
        attrs = kept
    else:
        attrs = None  # mfusepy ignores anything else
    return (name, attrs, operator.index(offset))


def count(value: Any) -> int:
    """write's result: what mfusepy returns to libfuse (``result or 0``)."""
    return operator.index(value) if value else 0


def handle(value: Any) -> int:
    """A file handle, as mfusepy stores it in ``fuse_file_info.fh`` (uint64)."""
    return operator.index(value) & _U64


def status(value: Any) -> Any:
    """A status result (0 or None for success): numbers made plain, the rest as is."""
    if value is None or type(value) is int:
        return value
    try:
        return operator.index(value)
    except TypeError:
        return value


def error(exc: OSError) -> OSError:
    """The error mfusepy and libfuse answer for ``exc``."""
    code = exc.errno
    if type(code) is bool:
        code = int(code)
    if type(code) is not int or code <= 0:
        return os_error(errno.EINVAL)
    if code >= 1000:
        return os_error(errno.ERANGE)  # libfuse: "bad error value"
    return exc


def os_error(code: int) -> OSError:
    return OSError(code, os.strerror(code))


def unbindable(func: Callable[..., Any], args: tuple[Any, ...], exc: TypeError) -> bool:
    """Whether ``exc`` came from calling ``func`` with arguments it cannot take (no
    code of the driver ran), rather than from inside it."""
    tb = exc.__traceback__
    if tb is not None and tb.tb_next is not None:
        return False  # raised in a frame below the call: the driver's own code
    try:
        inspect.signature(func).bind(*args)
    except TypeError:
        return True
    except ValueError:
        return False  # no signature to check (a builtin): assume the driver's own
    return False
