"""The FUSE edge: an mfusepy ``Operations`` object that forwards every request.

Thin by design: each libfuse callback becomes ``call(op, ctx, *args)`` with the
FUSE context of the requesting process. Only the operations the driver
implements are registered, exactly as mfusepy would register them for the
driver mounted directly, so the kernel sees the same filesystem.
"""

from __future__ import annotations

import ctypes
import inspect
import os
from collections.abc import Callable
from typing import Any

os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")

import mfusepy  # after choosing libfuse 3

# captured before anything in this process can replace it (native mode's adapter does)
_fuse_context = mfusepy.fuse_get_context

Call = Callable[..., Any]


def _forward(call: Call, name: str) -> Callable[..., Any]:
    def op(self: object, path: Any, *args: Any) -> Any:
        return call(name, _fuse_context(), path, *args)

    op.__name__ = name
    return op


def make_operations(call: Call, implemented: list[str], use_ns: bool,
                    on_init: Callable[[], None] | None = None) -> object:
    """An Operations object for ``mfusepy.FUSE`` that forwards to ``call``."""
    ns: dict[str, Any] = {"use_ns": use_ns}
    for name in implemented:
        ns[name] = _forward(call, name)
    if "create" in implemented:
        def create(self: object, path: str, mode: int, flags: int = 0) -> Any:
            return call("create", _fuse_context(), path, mode, flags)
        # mfusepy asks inspect.signature(create) on every create: answer it once
        create.__signature__ = inspect.signature(create)  # type: ignore[attr-defined]
        ns["create"] = create

    def init(self: object, path: str) -> None:
        if on_init is not None:
            on_init()

    ns["init"] = init
    return type("NooksOperations", (), ns)()


class KernelCache:
    """The kernel's cached attributes and data of paths on this mount, which the host
    can invalidate when the files change behind the kernel's back (a rollback)."""

    def __init__(self) -> None:
        self._fuse: int | None = None
        lib = mfusepy._libfuse
        self._invalidate = lib.fuse_invalidate_path
        self._invalidate.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        self._invalidate.restype = ctypes.c_int
        self._context = lib.fuse_get_context

    def capture(self) -> None:
        """Called inside a FUSE request (init): remember the mount's ``struct fuse``."""
        self._fuse = self._context().contents.fuse

    def invalidate(self, paths: list[str]) -> int:
        """Drop what the kernel caches of ``paths`` (those it does not know are
        skipped); how many it knew."""
        if self._fuse is None:
            return 0
        known = 0
        for path in paths:
            known += self._invalidate(self._fuse, os.fsencode(path)) == 0
        return known


def mount(operations: object, mountpoint: str, *, threads: bool, fsname: str,
          options: dict[str, Any]) -> None:
    """Serve the mount until it is unmounted (SIGINT/SIGTERM unmount it cleanly)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            mfusepy.FUSE(operations, mountpoint, foreground=True, nothreads=not threads,
                         fsname=fsname, **options)
        except RuntimeError as e:
            # fuse_main_real returns 8 when its loop was ended by a signal (SIGINT,
            # SIGTERM, SIGHUP: libfuse has unmounted by then); anything else is an error
            if str(e) != "8":
                raise
