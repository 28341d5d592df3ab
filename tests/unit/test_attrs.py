"""A getattr answer checked and packed in one step (``nooks.fs.attrs``): the same
fields and bounds as the declaration, and times split as mfusepy splits them."""

from __future__ import annotations

import typing

import msgspec
import pytest

from nooks.fs import kernelproto as kp
from nooks.fs.attrs import Stat, packed, stat_of
from nooks.fs.compat import mfusepy
from nooks.fs.interface import Attrs


def test_the_fields_and_bounds_are_the_declarations() -> None:
    declared = typing.get_type_hints(Attrs, include_extras=True)
    assert typing.get_type_hints(Stat, include_extras=True) == declared


@pytest.mark.parametrize("bad", [{"st_size": -1}, {"st_mode": 1 << 32}, {"st_atime": "x"},
                                 {"st_nlink": True}, {"st_mtime": float("nan")}])
def test_what_the_declaration_refuses_is_refused(bad: dict[str, object]) -> None:
    with pytest.raises(msgspec.ValidationError):
        stat_of(bad)


@pytest.mark.parametrize("when", [1733212345.123456789, 0.5, 1e9 + 0.999999999, 7])
def test_times_in_seconds_reach_the_kernel_as_mfusepy_puts_them(when: float) -> None:
    st = mfusepy.c_stat()
    mfusepy.set_st_attrs(st, {"st_mtime": when}, False)
    out = kp.ATTR.unpack(packed(5, stat_of({"st_mtime": when, "st_mode": 0o100644}), False))
    assert (out[4], out[7]) == (st.st_mtimespec.tv_sec, st.st_mtimespec.tv_nsec)
    assert out[0] == 5 and out[9] == 0o100644 and out[10] == 1  # (nlink 1 if not given)


def test_times_in_ns_are_split_exactly() -> None:
    out = kp.ATTR.unpack(packed(2, stat_of({"st_ctime": 1_733_212_345_123_456_789}), True))
    assert (out[5], out[8]) == (1_733_212_345, 123_456_789)
