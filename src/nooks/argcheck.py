"""Checked numbers for command-line options: argparse ``type=`` callables.

Each factory returns a callable that turns an option's text into a number or
raises ``argparse.ArgumentTypeError`` with a message that says what was
expected and what was given (the fault is the caller's, and the message says
so in one line). Rules:

* ``seconds(lo, hi)``: a finite number of seconds, ``lo <= x <= hi``; nan and
  the infinities are refused whatever the range.
* ``count(lo, hi)``: a whole number (decimal digits, optionally signed),
  ``lo <= n <= hi``.
* ``size(lo, hi)``: a byte count, with an optional K, M or G suffix (powers
  of 1024, ``KiB``/``KB`` spellings too), ``lo <= n <= hi``.

``one_line_errors(parser)`` makes a parser report a usage error as one line
(``PROG: error: MESSAGE``) and exit 2, without printing the usage first.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from typing import NoReturn

_UNITS = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def _human(n: int) -> str:
    for suffix, unit in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= unit and n % unit == 0:
            return f"{n // unit}{suffix}"
    return str(n)


def seconds(lo: float, hi: float) -> Callable[[str], float]:
    """Seconds from ``lo`` to ``hi`` (both included), finite."""
    if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
        raise ValueError(f"bad range {lo}..{hi}")

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a number of seconds, not {text!r}") from None
        if not math.isfinite(value) or not lo <= value <= hi:
            raise argparse.ArgumentTypeError(
                f"expected seconds from {lo:g} to {hi:g}, not {text!r}")
        return value

    parse.__name__ = "seconds"  # argparse names the type in some messages
    return parse


def count(lo: int, hi: int) -> Callable[[str], int]:
    """A whole number from ``lo`` to ``hi`` (both included)."""
    if lo > hi:
        raise ValueError(f"bad range {lo}..{hi}")

    def parse(text: str) -> int:
        t = text.strip()
        digits = t[1:] if t[:1] in "+-" else t
        if not digits.isdigit() or not digits.isascii():
            raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}")
        value = int(t)
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(
                f"expected a whole number from {lo:,} to {hi:,}, not {text!r}")
        return value

    parse.__name__ = "count"
    return parse


def size(lo: int, hi: int) -> Callable[[str], int]:
    """A byte count from ``lo`` to ``hi`` (both included), e.g. ``512``, ``64K``, ``8M``."""
    if lo > hi:
        raise ValueError(f"bad range {lo}..{hi}")

    def parse(text: str) -> int:
        t = text.strip().lower().removesuffix("b").removesuffix("i")
        unit = 1
        if t and t[-1] in _UNITS:
            t, unit = t[:-1], _UNITS[t[-1]]
        try:
            number = float(t)
        except ValueError:
            number = math.nan
        if not t or not math.isfinite(number) or number < 0:
            raise argparse.ArgumentTypeError(f"expected a size such as 64K or 8M, "
                                             f"not {text!r}")
        value = int(number * unit)
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(
                f"expected a size from {_human(lo)} to {_human(hi)}, not {text!r}")
        return value

    parse.__name__ = "size"
    return parse


def one_line_errors(parser: argparse.ArgumentParser) -> None:
    """Make ``parser`` print its usage errors as one line and exit 2."""

    def error(message: str) -> NoReturn:
        sys.stderr.write(f"{parser.prog}: error: {message}\n")
        sys.exit(2)

    setattr(parser, "error", error)  # noqa: B010  (an instance's own error handler)
