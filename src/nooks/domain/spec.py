"""What a domain runs and under which limits."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nooks.domain.config import FaultPlan
from nooks.wrappers import Interface
from nooks.xpc.arena import DEFAULT_SLOT_SIZE, DEFAULT_SLOTS


@dataclass(frozen=True)
class Limits:
    """What the host lets a domain use and do (None: no limit).

    * ``address_space`` (bytes), ``cpu_seconds``, ``open_files``: rlimits; going
      past them is a *resource* failure.
    * ``tasks``: processes and threads the domain and everything it starts may
      have at once (a pids cgroup; without cgroups, RLIMIT_NPROC for a domain that
      runs as another user). Everything the domain starts dies with it.
    * ``harden``: the domain drops the capabilities a driver has no use for
      (ptrace, admin, modules, raw I/O, networking, killing, raising its own
      limits: see ``nooks.domain.harden``) and refuses the syscalls that reach
      beyond it (EPERM: ptrace, other processes' memory, mounts, modules, reboot,
      namespaces, signals to its host), from before the driver's code is loaded.
    * ``seccomp``: the allow-list of syscalls the driver needs beyond the domain
      runtime's own once it is constructed (anything else kills it: *misbehaved*);
      None installs no allow-list.
    * ``user``/``group``: ids to run the domain as (None: the host's).
    * ``env``: variables the domain gets besides its minimal environment.
    """

    address_space: int | None = 2 << 30
    cpu_seconds: int | None = None
    open_files: int | None = 1024
    tasks: int | None = 256
    harden: bool = True
    seccomp: tuple[str, ...] | None = None
    user: int | None = None
    group: int | None = None
    env: tuple[tuple[str, str], ...] = ()


def import_path() -> tuple[str, ...]:
    """Where a domain finds the driver's modules: this process's path as it is now,
    with the current directory made absolute (a host may change directory later:
    libfuse moves to / when it mounts, and later domains must still find them)."""
    cwd = os.getcwd()
    paths = [cwd, *(os.path.join(cwd, p) if p else cwd for p in sys.path)]
    return tuple(dict.fromkeys(p for p in paths if os.path.isdir(p)))


@dataclass(frozen=True)
class Region:
    """Shared memory a driver maps (a device's registers, its DMA memory): the host
    owns ``fd`` and keeps it across incarnations; each domain maps it read-write."""

    name: str
    fd: int
    size: int


@dataclass(frozen=True)
class Descriptor:
    """A kernel channel a driver serves itself (a ``/dev/fuse`` connection): the host
    owns ``fd`` and keeps it across incarnations; each domain gets a duplicate
    (``nooks.domain.child.descriptor``)."""

    name: str
    fd: int


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
    # a domain that serves a channel of its own (``runs``): what it is serving, for a
    # failure's report when no call of the host's is in flight
    serving: Callable[[], str | None] | None = None
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
    # and this long while calls come closer together than that (0: as ``spin_us``):
    # a stream of calls then never waits for a sleeping CPU (nooks.xpc.poll.Poller)
    busy_spin_us: float = 0.0
    # the host side's own polling, if it differs: a host whose many threads share
    # one interpreter lock does better asleep than spinning (the web class)
    host_spin_us: float | None = None
    # a fault injected into the first domain's driver code as it loads (restarts
    # load the code from disk, as a reloaded kernel module would)
    fault: FaultPlan | None = None
    # seconds a driver has to finish at close (its destroy is the class's business:
    # this is the interpreter's exit, finalizers and atexit) before it is killed
    exit_timeout: float = 5.0
    # the module search path of every domain of this spec, fixed when it is made
    path: tuple[str, ...] = field(default_factory=import_path)
    # mounts the driver is built without (a filesystem's own mountpoint: it sees what
    # lies beneath, as when it was first built); see nooks.domain.harden.beneath
    hide: tuple[str, ...] = ()
    # shared memory mapped into every domain of this spec (nooks.domain.child.region)
    regions: tuple[Region, ...] = ()
    # descriptors handed to every domain of this spec (nooks.domain.child.descriptor)
    descriptors: tuple[Descriptor, ...] = ()
    # a method of the built driver that the domain runs on a thread of its own from
    # the moment it is built (a driver that serves its own kernel channel); anything
    # that escapes it is the driver's failure
    runs: str | None = None

    @property
    def label(self) -> str:
        return self.name or self.target.rpartition(":")[2]


def ref(obj: Any) -> str:
    """``module:qualname`` of a class or function, for passing it to a domain."""
    return f"{obj.__module__}:{obj.__qualname__}"
