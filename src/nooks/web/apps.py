"""The web extensions nooks can serve: ``static:DIR`` or any WSGI ``module:app``."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from typing import Any

from nooks.domain.config import FaultPlan
from nooks.domain.spec import DriverSpec, Limits
from nooks.web.interface import WebInterface
from nooks.xpc.arena import DEFAULT_SLOT_SIZE

ADAPTER = "nooks.web.adapter:WsgiAdapter"


@dataclass(frozen=True)
class WebApp:
    """A WSGI application to serve: ``target`` names it; with ``args`` it is a class
    or factory called with them, without it the application itself
    (``module:factory()`` calls a factory without arguments)."""

    target: str
    args: tuple[Any, ...] | None = None
    label: str = ""

    @property
    def module(self) -> str:
        return self.target.partition(":")[0]

    def spec(self, *, name: str, deadline: float, limits: Limits, max_body: int = 0,
             retry_safe: tuple[str, ...] = (), fault: FaultPlan | None = None) -> DriverSpec:
        # a request body crosses in one arena slot: slots as large as the largest body
        # (the arenas are shared memory touched only where written)
        slot = DEFAULT_SLOT_SIZE
        while slot < max_body:
            slot *= 2
        return DriverSpec(
            target=ADAPTER, args=self._ctor(retry_safe), interface=WebInterface, name=name,
            deadline=deadline, limits=limits, preload=(self.module,), fault=fault,
            host_spin_us=0.0, slot_size=slot)

    def native_spec(self, *, name: str, retry_safe: tuple[str, ...] = ()) -> DriverSpec:
        return DriverSpec(target=ADAPTER, args=self._ctor(retry_safe), interface=WebInterface,
                          name=name)

    def _ctor(self, retry_safe: tuple[str, ...]) -> tuple[Any, ...]:
        return (self.target, list(self.args) if self.args is not None else None,
                list(retry_safe))


def resolve(app: str) -> WebApp:
    """``static:DIR`` (the static-file server) or ``module:app`` / ``module:factory()``."""
    kind, sep, rest = app.partition(":")
    if kind == "static" and sep:
        root = os.path.realpath(rest)
        if not os.path.isdir(root):
            raise ValueError(f"{rest}: not a directory")
        return WebApp("nooks.drivers.static:StaticFiles", (root,), label=f"static {root}")
    if not sep or not kind or not rest:
        raise ValueError(f"{app!r}: give static:DIR or a WSGI application as module:app")
    try:
        found = importlib.util.find_spec(kind)
    except (ImportError, ValueError) as e:
        raise ValueError(f"{app}: cannot find module {kind!r}: {e}") from None
    if found is None:
        raise ValueError(f"{app}: no module named {kind!r} (on PYTHONPATH or in the "
                         "current directory)")
    return WebApp(app, label=app)
