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
"""

from __future__ import annotations

import ctypes
import errno
import os
import select
import signal
import threading

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


def deny_syscalls(host_pid: int) -> None:
    """Refuse (EPERM) the syscalls in DENIED_SYSCALLS, and signals to ``host_pid``,
    its process group or every process; everything else is allowed."""
    import pyseccomp

    f = pyseccomp.SyscallFilter(defaction=pyseccomp.ALLOW)
    eperm = pyseccomp.ERRNO(errno.EPERM)
    for name in DENIED_SYSCALLS:
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


def protect_host() -> None:
    """Make this (host) process non-dumpable: its memory, descriptors and environment
    under /proc are then out of reach of processes without CAP_SYS_PTRACE, which
    hardened domains do not have."""
    _PR_SET_DUMPABLE = 4
    _libc().prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)


def watch_host(host_pid: int) -> None:
    """End this domain's process group when process ``host_pid`` exits (a thread
    waiting on its pidfd); at once if it has exited already."""
    try:
        fd = os.pidfd_open(host_pid)
    except OSError:
        fd = -1
    if fd < 0 or os.getppid() != host_pid:
        _end_group()

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
