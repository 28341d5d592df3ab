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
import threading
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


def make_operations(call: Call, implemented: list[str], use_ns: bool, *,
                    on_init: Callable[[], None] | None = None,
                    on_destroy: Callable[[], None] | None = None,
                    on_close: Call | None = None) -> object:
    """An Operations object for ``mfusepy.FUSE`` that forwards to ``call``; ``on_init``
    and ``on_destroy`` run in libfuse's init and destroy, before the driver's.

    ``on_close(op, ctx, path, fh)`` is told of the releases of handles the driver hands
    out but does not release itself (it implements open but not release): libfuse
    answers those without the driver either way, so the kernel sees no difference."""
    ns: dict[str, Any] = {"use_ns": use_ns}
    for name in implemented:
        ns[name] = _forward(call, name)
    if on_close is not None:
        for opener, closer in (("open", "release"), ("create", "release"),
                               ("opendir", "releasedir")):
            if opener in implemented and closer not in implemented:
                ns[closer] = _forward(on_close, closer)
    if "create" in implemented:
        def create(self: object, path: str, mode: int, flags: int = 0) -> Any:
            return call("create", _fuse_context(), path, mode, flags)
        # mfusepy asks inspect.signature(create) on every create: answer it once
        create.__signature__ = inspect.signature(create)  # type: ignore[attr-defined]
        ns["create"] = create

    def init(self: object, path: str) -> None:
        if on_init is not None:
            on_init()

    def destroy(self: object, path: str) -> None:
        if on_destroy is not None:
            on_destroy()
        if "destroy" in implemented:
            call("destroy", _fuse_context(), path)

    ns["init"] = init
    ns["destroy"] = destroy
    return type("NooksOperations", (), ns)()


class KernelCache:
    """The kernel's cached attributes and data of paths on this mount, which the host
    can invalidate when the files change behind the kernel's back (a rollback)."""

    def __init__(self) -> None:
        self._fuse: int | None = None
        self._lock = threading.Lock()
        lib = mfusepy._libfuse
        self._invalidate = getattr(lib, "fuse_invalidate_path", None)  # libfuse 3 only
        if self._invalidate is not None:
            self._invalidate.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
            self._invalidate.restype = ctypes.c_int
        self._context = lib.fuse_get_context

    def capture(self) -> None:
        """Called inside a FUSE request (init): remember the mount's ``struct fuse``."""
        with self._lock:
            self._fuse = self._context().contents.fuse

    def forget(self) -> None:
        """Called in destroy: the ``struct fuse`` is about to be freed."""
        with self._lock:
            self._fuse = None

    def invalidate(self, paths: list[str]) -> int:
        """Drop what the kernel caches of ``paths`` (those it does not know are
        skipped); how many it knew."""
        known = 0
        with self._lock:
            for path in paths:
                if self._fuse is None or self._invalidate is None:
                    break
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
