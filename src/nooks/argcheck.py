"""Checked numbers for command-line options: argparse ``type=`` callables.

Each factory returns a callable that turns an option's text into a number or
raises ``argparse.ArgumentTypeError`` with a message that says what was
expected and what was given (the fault is the caller's, and the message says
so in one line). Rules:

* ``seconds(lo, hi)``: a finite number of seconds, ``lo <= x <= hi``; nan and
  the infinities are refused whatever the range (``zero=True``: 0 too, meaning
  never).
* ``count(lo, hi)``: a whole number (decimal digits, optionally signed),
  ``lo <= n <= hi``.
* ``size(lo, hi)``: a byte count, with an optional K, M, G or T suffix (powers
  of 1024, ``KiB``/``KB`` spellings too), ``lo <= n <= hi``.
* ``user``: a user name or uid; ``env``: ``NAME=VALUE``, or ``NAME`` for its
  value here.

Usage errors are one line: ``Parser`` prints them so, for every command, and
its help shows each option's default (``Formatter``).
"""

from __future__ import annotations

import argparse
import math
import os
import pwd
from collections.abc import Callable
from typing import Any, NoReturn

_UNITS = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def _human(n: int) -> str:
    for suffix, unit in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= unit and n % unit == 0:
            return f"{n // unit}{suffix}"
    return str(n)


def seconds(lo: float, hi: float, *, zero: bool = False) -> Callable[[str], float]:
    """Seconds from ``lo`` to ``hi`` (both included), finite; with ``zero``, 0 too."""
    if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
        raise ValueError(f"bad range {lo}..{hi}")

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a number of seconds, not {text!r}") from None
        if zero and value == 0:
            return 0.0
        if not math.isfinite(value) or not lo <= value <= hi:
            also = " (or 0)" if zero else ""
            raise argparse.ArgumentTypeError(
                f"expected seconds from {lo:g} to {hi:g}{also}, not {text!r}")
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
    name, sep, value = text.partition("=")
    if not name or not (name[0].isalpha() or name[0] == "_") \
            or not all(c.isalnum() or c == "_" for c in name):
        raise argparse.ArgumentTypeError(f"not a variable name: {name!r}")
    if not sep:
        if name not in os.environ:
            raise argparse.ArgumentTypeError(f"{name} is not set here (give NAME=VALUE)")
        value = os.environ[name]
    return name, value


class Formatter(argparse.HelpFormatter):
    """Help that shows each option's default, unless its text already does."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "%(default)" in text or "default:" in text or "default " in text:
            return text
        if action.default in (None, False, [], argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """A parser whose errors are one line, and whose help shows defaults."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")
