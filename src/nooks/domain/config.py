"""What the host tells a new domain at start-up (passed on its command line)."""

from __future__ import annotations

import msgspec

from nooks.xpc.messages import MAX_MESSAGE, SOCKET_BUFFER

__all__ = ["FAULTS", "MAX_MESSAGE", "SOCKET_BUFFER", "ChildConfig", "FaultPlan",
           "apply_seccomp"]

FAULTS = ("segv", "abort", "exit", "exception", "hang", "memory")


class FaultPlan(msgspec.Struct, frozen=True, kw_only=True):
    """A fault to inject into a driver module as the domain loads it (see nooks.faults)."""

    module: str
    kind: str
    seed: int
    lines: list[int] | None = None  # only sites on these lines (a coverage dry run's)


class ChildConfig(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    target: str  # module:attribute of the driver class or factory
    interface: str  # module:attribute of the driver's Interface declaration
    kernel: str | None  # module:attribute of the kernel-call Interface, if any
    sock_fd: int
    kernel_arena_fd: int
    domain_arena_fd: int
    arena_size: int
    inline_max: int
    threads: int = 0  # 0: calls run one at a time on the main thread
    call_style: str = "method"  # "method": getattr(driver, name); "__call__": driver(name, ...)
    seccomp: list[str] | None = None  # syscalls allowed once the driver is constructed
    preload: list[str] = []  # modules a warm spare imports ahead
    spin_us: float = 0.0  # poll this long for the next message before sleeping
    busy_spin_us: float = 0.0  # and this long while messages stream (nooks.xpc.poll)
    fault: FaultPlan | None = None
    host_pid: int = 0  # the domain ends when this process does (0: not watched)
    harden: bool = False  # drop capabilities and deny syscalls (nooks.domain.harden)
    cgroup: str | None = None  # the domain waits to be in it before loading the driver
    hide: list[str] = []  # mounts the driver is built without (its own mountpoint)
    # the domain's own descriptors (its channel, the host's pidfd) are moved to this
    # number or above, away from the driver's: a driver that uses a wrong descriptor
    # number hits one of its own, or none (EBADF), never the channel
    fd_floor: int = 0
    # shared memory the driver reaches directly (a device's registers, its DMA
    # memory): (name, descriptor, size), mapped read-write, then closed
    regions: list[tuple[str, int, int]] = []
    # kernel channels the driver serves itself: (name, descriptor), kept open
    descriptors: list[tuple[str, int]] = []
    runs: str | None = None  # the built driver's method run on a thread of its own


def apply_seccomp(extra: list[str]) -> None:
    """Kill the process (SIGSYS) on any syscall outside the runtime's needs plus ``extra``."""
    import pyseccomp

    f = pyseccomp.SyscallFilter(defaction=pyseccomp.KILL_PROCESS)
    for name in (*RUNTIME_SYSCALLS, *extra):
        try:
            f.add_rule(pyseccomp.ALLOW, name)
        except (ValueError, RuntimeError, OSError):
            # a name this architecture does not have
            continue
    f.load()


# What the domain runtime itself needs to serve calls once the driver is built:
# the channel, memory, time, threads, signals and dying.
RUNTIME_SYSCALLS = (
    "read", "write", "readv", "writev", "recvfrom", "sendto", "recvmsg", "sendmsg",
    "close", "fstat", "newfstatat", "lseek", "futex", "mmap", "munmap", "mremap", "mprotect",
    "brk", "madvise", "clock_gettime", "clock_nanosleep", "nanosleep", "gettimeofday",
    "getpid", "gettid", "getrandom", "sched_yield", "sched_getaffinity", "poll", "ppoll",
    "select", "pselect6", "epoll_wait", "epoll_pwait", "epoll_ctl", "rt_sigprocmask",
    "rt_sigaction", "rt_sigreturn", "sigaltstack", "tgkill", "kill", "exit", "exit_group",
    "restart_syscall", "set_robust_list", "rseq", "clone", "clone3", "getrusage",
    "fcntl", "ioctl", "dup", "getcwd", "getuid", "geteuid", "getgid", "getegid",
)
