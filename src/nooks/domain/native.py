"""Native mode: the same driver and interface, called in-process without isolation.

The baseline of every performance ratio and the "without nooks" column of every
reliability table. Nothing is checked and nothing survives: a driver that
crashes takes the host with it, which is what native mode is for.
"""

from __future__ import annotations

import functools
from typing import Any

from nooks.domain import child
from nooks.domain.incarnation import KernelContext
from nooks.domain.spec import DriverSpec
from nooks.domain.tracker import ObjectTracker
from nooks.wrappers import declare, load
from nooks.xpc.arena import map_writable


class _DirectKernel:
    """Kernel calls straight to the implementation (no checks, no tracking of ids)."""

    def __init__(self, impl: Any) -> None:
        self._impl = impl

    def call(self, name: str, *args: Any) -> Any:
        return getattr(self._impl, name)(*args)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._impl, name)


class NativeDomain:
    """Same surface as ``Domain`` for calls; the driver lives in this process."""

    def __init__(self, spec: DriverSpec) -> None:
        self.spec = spec
        self.name = spec.label
        self.iface = declare(spec.interface)
        self.calls = 0
        self.tracker = ObjectTracker(self.name)
        if spec.kernel_impl is not None:
            impl = spec.kernel_impl(KernelContext(self.name, self.tracker))
            child.set_native_kernel(_DirectKernel(impl))
        # the driver reaches the host's own mapping of each region
        child.set_native_regions({r.name: map_writable(r.fd, r.size) for r in spec.regions})
        factory = load(spec.target)
        self.driver = factory(*spec.args, **spec.kwargs)
        self._methods: dict[str, Any] = {}
        for s in self.iface.methods:
            if spec.call_style == "__call__":
                self._methods[s.name] = functools.partial(self.driver.__call__, s.name)
            else:
                self._methods[s.name] = getattr(self.driver, s.name, None)

    def call(self, name: str, *args: Any, deadline: float | None = None, **kwargs: Any) -> Any:
        self.calls += 1
        return self._methods[name](*args, **kwargs)

    def close(self) -> None:
        self.tracker.release_all()

    def __repr__(self) -> str:
        return f"<NativeDomain {self.name} calls={self.calls}>"
