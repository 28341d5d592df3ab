"""A control group per domain: everything a driver starts dies with it, and counts.

The host puts each domain process in a cgroup of its own, under ``nooks/`` in
the machine's cgroup v2 hierarchy, before the driver's code is loaded.
Whatever the driver forks, double-forks or daemonises stays in it, so:

* ``kill`` ends every process in it at once (``cgroup.kill``), however deep or
  detached; a domain's children never outlive it;
* ``tasks`` bounds the processes and threads it may have (``pids.max``, from
  the v2 pids controller, or the v1 one on a hybrid machine); a fork past it
  fails with EAGAIN inside the domain, and is counted (``forks_refused``): the
  engine makes a driver that answers EAGAIN after one a *resource* failure.

Where no cgroup can be made (no cgroup2 mount, no permission), ``create``
returns None and the host falls back on the domain's process group (every
domain is a session leader; see ``Incarnation``): a child that leaves the
group with setsid() then escapes. Directories of domains whose host died are
removed when the next domain of any host is made.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time

log = logging.getLogger(__name__)

BASE = "nooks"  # (nooks.control recognises domains by it: /nooks/ in their cgroup path)


def _mounts() -> list[tuple[str, str, str]]:
    out = []
    with contextlib.suppress(OSError), open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 4:
                out.append((fields[1], fields[2], fields[3]))
    return out


def _roots() -> tuple[str | None, str | None]:
    """(the cgroup2 mount, a cgroup v1 pids mount) of this machine, if any."""
    v2 = pids = None
    for mnt, fstype, opts in _mounts():
        if fstype == "cgroup2" and v2 is None:
            v2 = mnt
        elif fstype == "cgroup" and "pids" in opts.split(",") and pids is None:
            pids = mnt
    return v2, pids


def own_events() -> str | None:
    """The ``pids.events`` file that counts this process's refused forks: its v1 pids
    cgroup's on a hybrid machine, else its cgroup2 cgroup's (None if it has neither)."""
    v2, pids = _roots()
    with contextlib.suppress(OSError), open("/proc/self/cgroup") as f:
        lines = [line.rstrip("\n").split(":", 2) for line in f]
        for _, controllers, path in (x for x in lines if len(x) == 3):
            if pids is not None and "pids" in controllers.split(","):
                return os.path.join(pids, path.lstrip("/"), "pids.events")
        for _, controllers, path in (x for x in lines if len(x) == 3):
            if controllers == "" and v2 is not None:
                return os.path.join(v2, path.lstrip("/"), "pids.events")
    return None


def refused_in(events: str) -> int:
    """How many forks a ``pids.events`` file says were refused (0 if it cannot say)."""
    with contextlib.suppress(OSError, ValueError), open(events) as f:
        for line in f:
            key, _, value = line.partition(" ")
            if key == "max":
                return int(value)
    return 0


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


class DomainCgroup:
    """The cgroup (or pair: v2 for killing, v1 for counting) of one domain."""

    def __init__(self, v2: str, relative: str, pids_dir: str | None) -> None:
        self.path = v2
        self.relative = relative  # as /proc/PID/cgroup shows it
        self.pids_dir = pids_dir  # a v1 pids cgroup, when v2 has no pids controller

    @staticmethod
    def create(label: str, tasks: int | None) -> DomainCgroup | None:
        """A new, empty cgroup for a domain called ``label``; None if cgroups cannot
        be used here (the reason is logged once)."""
        v2root, pids_root = _roots()
        if v2root is None:
            _unavailable("no cgroup2 file system is mounted")
            return None
        base = os.path.join(v2root, BASE)
        name = f"{label}-{os.getpid()}-{time.monotonic_ns()}"
        try:
            os.makedirs(base, exist_ok=True)
            _sweep(base)
            path = os.path.join(base, name)
            os.mkdir(path)
        except OSError as e:
            _unavailable(f"cannot make a cgroup under {base}: {e.strerror}")
            return None
        cg = DomainCgroup(path, f"/{BASE}/{name}", None)
        if tasks is not None:
            cg._limit_tasks(base, name, pids_root, tasks)
        return cg

    def _limit_tasks(self, base: str, name: str, pids_root: str | None, tasks: int) -> None:
        try:
            with open(os.path.join(base, "cgroup.controllers")) as f:
                v2_pids = "pids" in f.read().split()
            if v2_pids:
                with contextlib.suppress(OSError):
                    _write(os.path.join(base, "cgroup.subtree_control"), "+pids")
                _write(os.path.join(self.path, "pids.max"), str(tasks))
                return
        except OSError:
            pass
        if pids_root is None:
            return
        try:
            v1base = os.path.join(pids_root, BASE)
            os.makedirs(v1base, exist_ok=True)
            _sweep(v1base)
            self.pids_dir = os.path.join(v1base, name)
            os.mkdir(self.pids_dir)
            _write(os.path.join(self.pids_dir, "pids.max"), str(tasks))
        except OSError as e:
            log.warning("cannot limit a domain's tasks: %s", e)
            self.pids_dir = None

    def add(self, pid: int) -> None:
        """Move process ``pid`` (a domain that has not loaded its driver yet) in."""
        for d in (self.path, self.pids_dir):
            if d is not None:
                with contextlib.suppress(OSError):
                    _write(os.path.join(d, "cgroup.procs"), str(pid))

    def forks_refused(self) -> int:
        """How many forks the task limit has refused so far (``pids.events``)."""
        for d in (self.pids_dir, self.path):
            if d is not None:
                n = refused_in(os.path.join(d, "pids.events"))
                if n:
                    return n
        return 0

    def pids(self) -> list[int]:
        with contextlib.suppress(OSError), open(os.path.join(self.path, "cgroup.procs")) as f:
            return [int(x) for x in f.read().split()]
        return []

    def kill(self) -> None:
        """SIGKILL everything in the cgroup."""
        try:
            _write(os.path.join(self.path, "cgroup.kill"), "1")
            return
        except OSError:
            pass
        for _ in range(100):  # no cgroup.kill (kernel < 5.14): one by one, until empty
            left = self.pids()
            if not left:
                return
            for pid in left:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)

    def remove(self, timeout: float = 2.0) -> bool:
        """Remove the (emptied) cgroup; False if it is still busy after ``timeout``."""
        end = time.monotonic() + timeout
        for d in (self.pids_dir, self.path):
            if d is None:
                continue
            while True:
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > end:
                        return False
                    time.sleep(0.005)  # the last processes are being reaped
        return True


def _sweep(base: str) -> None:
    """Remove empty cgroups left by hosts that died (rmdir fails on busy ones)."""
    with contextlib.suppress(OSError):
        for entry in os.listdir(base):
            path = os.path.join(base, entry)
            if os.path.isdir(path):
                pid = entry.rsplit("-", 2)[-2] if entry.count("-") >= 2 else ""
                if pid.isdigit() and not process_alive(int(pid)):
                    with contextlib.suppress(OSError):
                        os.rmdir(path)


def process_alive(pid: object) -> bool:
    """Whether ``pid`` names a process that exists and has not exited (one we may
    not signal counts; a zombie, exited and not yet reaped, does not)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rpartition(b")")[2].split()[0]
    except (OSError, IndexError):
        return True
    return state not in (b"Z", b"X")


_warned = False


def _unavailable(why: str) -> None:
    global _warned
    if not _warned:
        _warned = True
        log.warning("domains get no cgroups (%s): a domain's children that leave its "
                    "process group can outlive it, and its task limit does not apply", why)
