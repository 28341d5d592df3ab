"""Checked command-line values: argparse ``type=`` callables that refuse what is not
finite, not a number, or out of range, with a message that says what is allowed."""

from __future__ import annotations

import argparse
import math
import pwd
from collections.abc import Callable

_UNITS = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def seconds(lo: float, hi: float, *, zero: bool = False) -> Callable[[str], float]:
    """A duration in seconds in [lo, hi] (``zero``: 0 is allowed too, meaning never)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
        if zero and value == 0:
            return 0.0
        if not math.isfinite(value) or not lo <= value <= hi:
            also = " (or 0)" if zero else ""
            raise argparse.ArgumentTypeError(
                f"must be between {lo:g} and {hi:g} seconds{also}, not {text}")
        return value

    return parse


def count(lo: int, hi: int) -> Callable[[str], int]:
    """A whole number in [lo, hi]."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be between {lo} and {hi}, not {value}")
        return value

    return parse


def size(lo: int, hi: int) -> Callable[[str], int]:
    """A size in bytes, with an optional K, M, G or T suffix (powers of 1024)."""
    def parse(text: str) -> int:
        t = text.strip().lower().removesuffix("b").removesuffix("i")
        try:
            if t and t[-1] in _UNITS:
                number = float(t[:-1])
                if not math.isfinite(number):
                    raise ValueError
                value = int(number * _UNITS[t[-1]])
            else:
                value = int(t)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 64M)") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be between {_human(lo)} and {_human(hi)}, "
                                             f"not {text}")
        return value

    return parse


def user(text: str) -> int:
    """A user name or uid (the uid)."""
    if text.isdigit():
        return int(text)
    try:
        return pwd.getpwnam(text).pw_uid
    except KeyError:
        raise argparse.ArgumentTypeError(f"no such user: {text!r}") from None


def env(text: str) -> tuple[str, str]:
    """NAME=VALUE, or NAME alone for the variable's value in this environment."""
    import os

    name, sep, value = text.partition("=")
    if not name or not (name[0].isalpha() or name[0] == "_") \
            or not all(c.isalnum() or c == "_" for c in name):
        raise argparse.ArgumentTypeError(f"not a variable name: {name!r}")
    if not sep:
        if name not in os.environ:
            raise argparse.ArgumentTypeError(f"{name} is not set here (give NAME=VALUE)")
        value = os.environ[name]
    return name, value


def _human(n: int) -> str:
    for unit, factor in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= factor and n % factor == 0:
            return f"{n // factor}{unit}"
    return str(n)
