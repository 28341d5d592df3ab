"""What a domain runs and under which limits."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nooks.domain.config import FaultPlan
from nooks.wrappers import Interface
from nooks.xpc.arena import DEFAULT_SLOT_SIZE, DEFAULT_SLOTS


@dataclass(frozen=True)
class Limits:
    """Resource limits the host puts on a domain (None: no limit).

    ``seccomp`` is the allow-list of syscalls the driver needs beyond the domain
    runtime's own once it is constructed; None installs no filter. ``user`` is a
    uid to run the domain as.
    """

    address_space: int | None = 2 << 30
    cpu_seconds: int | None = None
    open_files: int | None = 1024
    seccomp: tuple[str, ...] | None = None
    user: int | None = None


@dataclass(frozen=True)
class DriverSpec:
    """A driver to run in a domain.

    ``target`` is ``module:attribute`` naming a class or factory, called with
    ``args`` and ``kwargs`` inside the domain. ``interface`` declares the calls
    the host makes; ``kernel`` the calls the driver may make, served by the object
    ``kernel_impl(context)`` returns (one per domain incarnation).
    """

    target: str
    interface: type[Interface]
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    kernel: type[Interface] | None = None
    kernel_impl: Callable[[Any], Any] | None = None
    threads: int = 0
    call_style: str = "method"
    deadline: float = 5.0
    start_deadline: float = 30.0
    limits: Limits = Limits()
    slot_size: int = DEFAULT_SLOT_SIZE
    slots: int = DEFAULT_SLOTS
    inline_max: int = 16 << 10
    preload: tuple[str, ...] = ()  # modules the warm spare imports ahead (the driver's)
    # both sides poll this long for the next message before sleeping (0: never);
    # only where the process may use more than one CPU (see nooks.xpc.poll)
    spin_us: float = 50.0
    # the host side's own polling, if it differs: a host whose many threads share
    # one interpreter lock does better asleep than spinning (the web class)
    host_spin_us: float | None = None
    # a fault injected into the first domain's driver code as it loads (restarts
    # load the code from disk, as a reloaded kernel module would)
    fault: FaultPlan | None = None

    @property
    def label(self) -> str:
        return self.name or self.target.rpartition(":")[2]


def ref(obj: Any) -> str:
    """``module:qualname`` of a class or function, for passing it to a domain."""
    return f"{obj.__module__}:{obj.__qualname__}"
