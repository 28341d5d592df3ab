"""The filesystem adapter: runs inside the domain, between the runtime and the driver.

It builds the unmodified fusepy-style driver and presents it through
``FsInterface``. What it smooths over is what mfusepy would do for the driver
in a direct mount, so that the driver sees the same calls:

* ``fuse_get_context()`` answers with the context of the request being served
  (the domain has no FUSE session of its own);
* a driver that defines ``__call__`` (fusepy-era path prefixing) is called
  through it; otherwise the method is called;
* ``create`` gets the flags only if the driver's ``create`` takes three
  arguments;
* ``readdir`` generators and ``listxattr`` iterables are made into lists;
* answers and errors are read as mfusepy reads them (``nooks.fs.compat``):
  unused keys dropped, numbers made plain, errno-less errors, unsupported
  calls and ``NotImplementedError`` made EINVAL;
* a constructor argument ``{"$kernel": "blockdev"}`` is replaced by a file
  object over the host's block device (``nooks.fs.blockdev``);
* a journaled call made again (``replay``) sees the wall clock of the first.
"""

from __future__ import annotations

import errno
import functools
import inspect
import sys
import threading
import typing
from collections.abc import Callable
from typing import Any

import msgspec

from nooks.fs import compat
from nooks.fs.attrs import Stat, stat_of
from nooks.fs.clock import wall_clock_at
from nooks.fs.compat import mfusepy
from nooks.fs.interface import OPERATIONS, Journaled
from nooks.wrappers import load

_ctx = threading.local()
_JOURNALED = frozenset(typing.get_args(Journaled))


def _context() -> tuple[int, int, int]:
    return getattr(_ctx, "value", (0, 0, 0))


_ORIGINAL = mfusepy.fuse_get_context


def _patch_context(factory: Any) -> None:
    """Make ``fuse_get_context`` answer for the request being served, wherever the
    driver finds it: mfusepy, a fusepy-era ``fuse`` module it imported itself (only
    if it did: importing fusepy without libfuse 2 fails), or its own module's
    namespace (``from fuse import fuse_get_context``)."""
    modules = [mfusepy, sys.modules.get("fuse"), sys.modules.get(getattr(factory, "__module__",
                                                                         ""))]
    for module in modules:
        if module is None:
            continue
        current = getattr(module, "fuse_get_context", None)
        if current is _ORIGINAL or (module is sys.modules.get("fuse") and current is not None):
            module.fuse_get_context = _context


def _resolve(arg: Any, devices: list[Any]) -> Any:
    if isinstance(arg, dict) and set(arg) == {"$kernel"}:
        from nooks.fs.blockdev import BlockDeviceFile

        if arg["$kernel"] != "blockdev":
            raise ValueError(f"unknown kernel object {arg['$kernel']!r}")
        device = BlockDeviceFile()
        devices.append(device)
        return device
    return arg


class FsAdapter:
    def __init__(self, target: str, args: list[Any], kwargs: dict[str, Any]) -> None:
        factory = load(target)
        _patch_context(factory)
        self._devices: list[Any] = []
        self.driver = factory(*[_resolve(a, self._devices) for a in args],
                              **{k: _resolve(v, self._devices) for k, v in kwargs.items()})
        self._via_call = callable(self.driver)
        self._ops: dict[str, Callable[..., Any]] = {}
        self._ns = bool(getattr(self.driver, "use_ns", False))
        create = getattr(self.driver, "create", None)
        self._create_flags = create is not None and _arity(create) >= 3

    def _op(self, name: str) -> Callable[..., Any]:
        op = self._ops.get(name)
        if op is None:
            if self._via_call:
                call = self.driver
                op = functools.partial(call, name)
            else:
                op = getattr(self.driver, name)
            self._ops[name] = op
        return op

    def stores_per_request(self) -> bool:
        """Whether ``request_done`` has anything to do (a block device's writes)."""
        return bool(self._devices)

    # whether each call is a request of its own (a host call, committed as its reply
    # is read); a server of the kernel's requests marks them itself (request_started)
    epoch_per_call = True

    def request_started(self) -> None:
        """A request of the kernel's begins (it may call several of the driver's methods:
        their writes to the block device are one request's)."""
        for device in self._devices:
            device.request_started()

    def request_done(self) -> None:
        """The request is answered next (direct mode): the block device's writes are
        committed before the kernel hears of it."""
        for device in self._devices:
            device.request_done()

    def implemented(self) -> list[str]:
        out = []
        for name in OPERATIONS:
            value = getattr(self.driver, name, None)
            if value is not None and not getattr(value, "libfuse_ignore", False):
                out.append(name)
        return out

    def uses_ns(self) -> bool:
        return self._ns

    def replay(self, at: int, op: str, args: list[Any]) -> Any:
        """Make a journaled call again (``ServedInterface``) with the wall clock it
        was first made with (``nooks.fs.clock``): a driver that stamps its files with
        the time gives them the times the first driver gave them."""
        if op not in _JOURNALED:
            raise ValueError(f"{op} is not a call that is journaled")
        with wall_clock_at(at):
            return getattr(self, op)(*args)

    def _call(self, ctx: tuple[int, int, int], name: str, *args: Any) -> Any:
        _ctx.value = ctx
        if self._devices and self.epoch_per_call:
            for device in self._devices:
                device.request_started()
        op = self._op(name)
        try:
            return op(*args)
        except OSError as e:
            raise compat.error(e) from None
        except NotImplementedError:
            raise compat.os_error(errno.EINVAL) from None  # "not supported", as mfusepy says
        except TypeError as e:
            if compat.unbindable(op, args, e):
                raise compat.os_error(errno.EINVAL) from None
            raise

    def init(self, ctx: tuple[int, int, int], path: str) -> None:
        init = getattr(self.driver, "init", None)
        if init is not None and not getattr(init, "libfuse_ignore", False):
            self._call(ctx, "init", path)

    def create(self, ctx: tuple[int, int, int], path: str, mode: int, flags: int) -> int:
        if self._create_flags:
            return compat.handle(self._call(ctx, "create", path, mode, flags))
        return compat.handle(self._call(ctx, "create", path, mode))

    def open(self, ctx: tuple[int, int, int], path: str, flags: int) -> int:
        return compat.handle(self._call(ctx, "open", path, flags))

    def opendir(self, ctx: tuple[int, int, int], path: str) -> int:
        return compat.handle(self._call(ctx, "opendir", path))

    def readdir(self, ctx: tuple[int, int, int], path: str, fh: int) -> list[Any]:
        return [compat.dir_entry(e) for e in self._call(ctx, "readdir", path, fh)]

    def listxattr(self, ctx: tuple[int, int, int], path: str) -> list[str]:
        return list(self._call(ctx, "listxattr", path) or ())

    def read(self, ctx: tuple[int, int, int], path: str, size: int, offset: int,
             fh: int) -> bytes:
        data = self._call(ctx, "read", path, size, offset, fh)
        return data if isinstance(data, bytes) else bytes(data or b"")

    def write(self, ctx: tuple[int, int, int], path: str, data: bytes, offset: int,
              fh: int) -> int:
        return compat.count(self._call(ctx, "write", path, data, offset, fh))

    def getattr(self, ctx: tuple[int, int, int], path: str, fh: int | None = None) -> Any:
        return compat.stat(self._call(ctx, "getattr", path, fh), self._ns)

    def stat(self, ctx: tuple[int, int, int], path: str, fh: int | None = None) -> Stat:
        """``getattr``, checked as its declaration says (msgspec.ValidationError): a
        plain answer at once, any other as mfusepy reads it first."""
        attrs = self._call(ctx, "getattr", path, fh)
        try:
            return stat_of(attrs)
        except msgspec.ValidationError:
            return stat_of(compat.stat(attrs, self._ns))

    def statfs(self, ctx: tuple[int, int, int], path: str) -> Any:
        return compat.statfs(self._call(ctx, "statfs", path))


def _passthrough(name: str) -> Callable[..., Any]:
    def op(self: FsAdapter, ctx: tuple[int, int, int], *args: Any) -> Any:
        return compat.status(self._call(ctx, name, *args))

    op.__name__ = name
    return op


for _name in OPERATIONS:
    if not hasattr(FsAdapter, _name):
        setattr(FsAdapter, _name, _passthrough(_name))


def _arity(func: Callable[..., Any]) -> int:
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return 3
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return 3
    return sum(1 for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))
