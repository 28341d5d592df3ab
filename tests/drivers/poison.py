"""A passthrough driver with a bug: any request on a path containing "poison"
kills it (SIGSEGV). Used to show that such a request fails alone."""

from __future__ import annotations

import ctypes
from typing import Any

from nooks.drivers.passthrough import Passthrough


class PoisonedPassthrough(Passthrough):
    def __getattribute__(self, name: str) -> Any:
        value = super().__getattribute__(name)
        if name.startswith("_") or not callable(value):
            return value

        def checked(path: Any = None, *args: Any) -> Any:
            if isinstance(path, str) and "poison" in path:
                ctypes.string_at(0)
            return value(path, *args)

        checked.libfuse_ignore = getattr(value, "libfuse_ignore", False)  # type: ignore[attr-defined]
        return checked
