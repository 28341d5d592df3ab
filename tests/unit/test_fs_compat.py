"""mfusepy's contract as pure functions: answers and errors read as mfusepy reads them."""

from __future__ import annotations

import errno
import io
from typing import Any

import numpy
import pytest

from nooks.fs import compat


def test_plain_answers_pass_untouched() -> None:
    attrs = {"st_mode": 0o100644, "st_size": 5, "st_mtime": 1.5}
    assert compat.stat(attrs, use_ns=False) is attrs


def test_unused_keys_are_dropped_and_numbers_made_plain() -> None:
    attrs: dict[str, Any] = {"st_mode": 0o100644, "st_nlink": True, "type": "file",
                             "comment": None, "st_size": numpy.int64(7),
                             "st_mtime": numpy.float64(2.5), "st_birthtime": 3}
    out = compat.stat(attrs, use_ns=False)
    assert out == {"st_mode": 0o100644, "st_nlink": 1, "st_size": 7, "st_mtime": 2.5}
    assert all(type(v) in (int, float) for v in out.values())


@pytest.mark.parametrize("bad", [None, "5", 1.5, [1]])
def test_what_ctypes_refuses_raises_as_mfusepy_would(bad: Any) -> None:
    with pytest.raises(TypeError):
        compat.stat({"st_size": bad}, use_ns=False)


def test_statfs_and_readdir_entries() -> None:
    assert compat.statfs({"f_bsize": numpy.uint32(4096), "f_kind": "memory", "x": None}) == \
        {"f_bsize": 4096}
    assert compat.dir_entry("a") == "a"
    assert compat.dir_entry(("b", {"st_mode": 0o40755, "type": "x", "st_size": 5}, 0)) == \
        ("b", {"st_mode": 0o40755}, 0)
    assert compat.dir_entry(("c", numpy.int64(3), numpy.int64(9))) == ("c", None, 9)
    assert compat.dir_entry(("d", True, 0)) == ("d", 1, 0)
    with pytest.raises(ValueError, match="unpack"):
        compat.dir_entry(("e", None))


def test_results_as_mfusepy_hands_them_on() -> None:
    assert compat.count(numpy.int64(12)) == 12
    assert compat.count(None) == 0
    assert compat.handle(-1) == (1 << 64) - 1
    assert compat.handle(numpy.uint64(3)) == 3
    assert compat.status(numpy.int32(0)) == 0
    assert compat.status(None) is None


@pytest.mark.parametrize(("exc", "code"), [
    (OSError(errno.ENOENT, "gone"), errno.ENOENT),
    (io.UnsupportedOperation("no"), errno.EINVAL),
    (OSError(-3, "negative"), errno.EINVAL),
    (OSError(1200, "too big"), errno.ERANGE),
    (OSError(True, "a bool"), errno.EPERM),
])
def test_errors_as_mfusepy_and_libfuse_answer_them(exc: OSError, code: int) -> None:
    assert compat.error(exc).errno == code


def test_a_call_the_method_cannot_take_is_told_from_its_own_typeerror() -> None:
    def short(path: str) -> int:
        return 0

    def broken(path: str, times: Any) -> int:
        raise TypeError("inside")

    for func, args, expected in ((short, ("/", (1, 2)), True), (broken, ("/", None), False)):
        with pytest.raises(TypeError) as info:
            func(*args)
        assert compat.unbindable(func, args, info.value) is expected
