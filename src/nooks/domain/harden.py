"""What a domain does to itself before it loads a driver: fewer privileges, a watch
on its host.

Runs inside the domain process, in the domain runtime's own code, before any
driver code is imported. Rules:

* A driver keeps the capabilities that file and device work needs (owners,
  permissions, device nodes, leases, immutable flags, file capabilities) and
  loses the others, from its bounding set too: it cannot ptrace, read other
  processes' memory, load modules, administer the system, use raw I/O or the
  network's admin side, signal processes it does not own, or raise its own
  limits. A domain that runs as an ordinary user has none to lose.
* Syscalls that reach beyond the domain are refused with EPERM (the driver
  sees an ordinary error, as it would unprivileged): ptrace and other
  processes' memory or descriptors, mounts, namespaces, modules, reboot,
  kexec, clocks, BPF, perf, keyrings, handles to arbitrary inodes, and
  signals to the host process or everything (kill -1).
* ``watch_host`` ends the domain and everything it started when its host
  process dies, even while the driver is stuck in a loop that never reads the
  channel: nothing of a dead host is left running.
* ``beneath`` builds a driver, in a root domain, in a mount namespace of its
  own without its filesystem's mount: it sees what lies beneath, as it did when
  it was first built, before the mount existed, so a driver that looks at its
  own mountpoint never waits for itself. The namespace lasts only while the
  driver is built (one kept would pin every mount of the machine it copied);
  the capabilities and syscalls it needs are dropped once the driver is built.
* Domains are not dumpable: another domain (the next driver, say) cannot reach
  their memory under /proc.

What this does not stop: a driver running as root can still use root's file
permissions (``/sys``, ``/proc/sys``, its cgroup, other hosts' files),
devices, and signals to other processes of root (threads of its host
included). Drivers that are not trusted should run as another user.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import select
import signal
import threading
from collections.abc import Iterator
from typing import Any

# linux/capability.h
KEEP_CAPABILITIES = frozenset({
    0,   # CAP_CHOWN
    1,   # CAP_DAC_OVERRIDE
    2,   # CAP_DAC_READ_SEARCH
    3,   # CAP_FOWNER
    4,   # CAP_FSETID
    6,   # CAP_SETGID
    7,   # CAP_SETUID
    9,   # CAP_LINUX_IMMUTABLE
    14,  # CAP_IPC_LOCK
    27,  # CAP_MKNOD
    28,  # CAP_LEASE
    31,  # CAP_SETFCAP
})
_PR_CAPBSET_DROP = 24
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_CAP_VERSION_3 = 0x20080522

DENIED_SYSCALLS = (
    "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "kcmp",
    "mount", "umount2", "pivot_root", "move_mount", "open_tree", "fsopen", "fsmount",
    "fsconfig", "fspick", "mount_setattr", "unshare", "setns", "chroot",
    "swapon", "swapoff", "reboot", "kexec_load", "kexec_file_load",
    "init_module", "finit_module", "delete_module", "bpf", "perf_event_open",
    "keyctl", "add_key", "request_key", "settimeofday", "clock_settime", "clock_adjtime",
    "adjtimex", "sethostname", "setdomainname", "iopl", "ioperm", "acct", "quotactl",
    "syslog", "open_by_handle_at", "name_to_handle_at", "userfaultfd", "vhangup",
    "lookup_dcookie",
)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def drop_capabilities(keep: frozenset[int] = KEEP_CAPABILITIES) -> None:
    """Drop every capability not in ``keep`` from the bounding, ambient, effective,
    permitted and inheritable sets (a no-op for a process that has none)."""
    libc = _libc()
    last = _last_capability()
    for cap in range(last + 1):
        if cap not in keep:
            # EINVAL: a capability this kernel does not know
            libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0)
    libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    header = _CapHeader(_CAP_VERSION_3, 0)
    data = (_CapData * 2)()
    if libc.capget(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capget failed")
    for i in range(2):
        mask = sum(1 << (cap - 32 * i) for cap in keep if 32 * i <= cap < 32 * (i + 1))
        data[i].effective &= mask
        data[i].permitted &= mask
        data[i].inheritable = 0
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset failed")


def _last_capability() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 40


def deny_syscalls(host_pid: int, until_built: bool = False) -> None:
    """Refuse (EPERM) the syscalls in DENIED_SYSCALLS, and signals to ``host_pid``,
    its process group or every process; everything else is allowed. With
    ``until_built``, those ``beneath`` needs stay allowed (``built`` refuses them)."""
    import pyseccomp

    f = _filter(pyseccomp)
    eperm = pyseccomp.ERRNO(errno.EPERM)
    for name in DENIED_SYSCALLS:
        if until_built and name in NAMESPACE_SYSCALLS:
            continue
        try:
            f.add_rule(eperm, name)
        except (ValueError, RuntimeError, OSError):
            continue  # a name this architecture does not have
    mask = 0xFFFFFFFF  # pid_t is 32 bits: compare only those
    targets = (host_pid, -host_pid & mask, -1 & mask)
    for name in ("kill", "tkill", "tgkill", "pidfd_open"):
        for target in targets:
            f.add_rule(eperm, name, pyseccomp.Arg(0, pyseccomp.MASKED_EQ, mask, target))
    f.load()


_CLONE_NEWNS = 0x00020000
_MS_REC = 16384
_MS_PRIVATE = 1 << 18
_MNT_DETACH = 2
_CAP_SYS_CHROOT = 18
_CAP_SYS_ADMIN = 21
# kept, until the driver is built, by a domain that may build it beneath its mount
NAMESPACE_CAPABILITIES = frozenset({_CAP_SYS_CHROOT, _CAP_SYS_ADMIN})
NAMESPACE_SYSCALLS = ("unshare", "setns", "mount", "umount2")


@contextlib.contextmanager
def beneath(hide: list[str]) -> Iterator[bool]:
    """While the driver is built: a mount namespace of its own without the mounts at
    ``hide`` (its filesystem's own mountpoint), so that it sees what lies beneath, as
    it did when it was first built, before the mount existed, and never sends a
    request to that mount; then back in the host's namespace, as natively after
    mounting (the namespace used is gone: it pins no mount). Yields whether it
    could (it cannot when the process is not privileged or has other threads:
    then the driver is built where it is)."""
    libc = _libc()
    hidden = [p for p in hide if _is_mountpoint(p)]
    if not hidden or threading.active_count() > 1:
        yield False
        return
    home = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    here = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if libc.unshare(_CLONE_NEWNS) != 0:
            yield False
            return
        try:
            if libc.mount(None, b"/", None, ctypes.c_ulong(_MS_REC | _MS_PRIVATE), None) != 0:
                raise OSError(ctypes.get_errno(), "making the namespace private")
            for path in hidden:
                while _is_mountpoint(path):  # mounts stacked on it: all of them
                    if libc.umount2(_normal(path).encode(), _MNT_DETACH) != 0:
                        break
            os.fchdir(here)
            yield True
        finally:
            if libc.setns(home, _CLONE_NEWNS) != 0:
                raise OSError(ctypes.get_errno(), "going back to the host's mount namespace")
            os.fchdir(here)  # setns moves to the namespace's root
    finally:
        os.close(home)
        os.close(here)


def _mountinfo() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4].replace("\\040", " ") for line in f if len(line.split()) > 4]


def _is_mountpoint(path: str) -> bool:
    return _normal(path) in _mountinfo()


def _normal(path: str) -> str:
    parent, name = os.path.split(os.path.abspath(path))
    return os.path.join(os.path.realpath(parent), name)


def _filter(pyseccomp: Any) -> Any:
    """A filter that allows what it does not refuse, checked in a binary tree: every
    syscall the driver makes passes through it, most of them allowed, and a list of
    fifty tests would cost each of them microseconds."""
    f = pyseccomp.SyscallFilter(defaction=pyseccomp.ALLOW)
    with contextlib.suppress(ValueError, RuntimeError, OSError, AttributeError):
        f.set_attr(pyseccomp.Attr.CTL_OPTIMIZE, 2)
    return f


def built() -> None:
    """The driver is built: drop what only building it beneath its mount needed."""
    import pyseccomp

    drop_capabilities(KEEP_CAPABILITIES)
    f = _filter(pyseccomp)
    for name in NAMESPACE_SYSCALLS:
        with contextlib.suppress(ValueError, RuntimeError, OSError):
            f.add_rule(pyseccomp.ERRNO(errno.EPERM), name)
    f.load()


def not_dumpable() -> None:
    """Make this process non-dumpable: its memory, descriptors and environment under
    /proc are then out of reach of processes without CAP_SYS_PTRACE."""
    _PR_SET_DUMPABLE = 4
    _libc().prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)


def protect_host() -> None:
    """Make this (host) process non-dumpable, out of reach of hardened domains, which
    have no CAP_SYS_PTRACE."""
    not_dumpable()


def open_host(host_pid: int) -> int:
    """A pidfd of the host, for ``watch_host`` (opened before ``deny_syscalls``, which
    refuses pidfd_open of the host); ends the domain at once if the host is gone."""
    try:
        fd = os.pidfd_open(host_pid)
    except OSError:
        fd = -1
    if fd < 0 or os.getppid() != host_pid:
        _end_group()
    return fd


def watch_host(fd: int) -> None:
    """End this domain's process group when the host (pidfd ``fd``, from ``open_host``)
    exits: a thread waiting on it."""

    def watch() -> None:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        while not poller.poll():
            pass
        _end_group()

    threading.Thread(target=watch, name="nooks-host-watch", daemon=True).start()


def _end_group() -> None:
    try:
        os.killpg(0, signal.SIGKILL)
    finally:
        os._exit(1)
