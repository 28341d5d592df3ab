"""Everything a campaign has started, so that all of it can be torn down: at the end
of every run, on an error, and on SIGINT or SIGTERM.

Rules:

* Each run (and the coverage dry run) has a ``Scope``. Every process started for
  it — the ``nooks mount`` host, each workload program, ``fsck.fat`` — is started
  by ``Scope.popen`` in a session of its own, so that its process group (a host
  with its domains and the helpers they run, a shell with its pipeline) is killed
  as a unit: ``killpg`` with SIGKILL, no grace (a killed host leaves its mount and
  socket behind, and the scope removes those). Being out of the terminal's
  process group, none of them gets the terminal's Ctrl-C: only the campaign does,
  and it decides.
* A group is signalled only while its leader is unreaped, and once more right
  after reaping it (``Scope.reaped``), to catch members left behind, which it
  waits for (zombies aside: the orphans' are init's to reap); then it is
  forgotten, never signalled again: its number may be reused.
* Every temp dir comes from ``Scope.tempdir``; every mountpoint is named to
  ``Scope.mount`` and every host to ``Scope.host`` before the host starts.
* ``Registry.interrupt`` (what the signal handlers call) sets the stop flag and
  kills the groups of every open scope, and nothing else: it takes no lock, so a
  handler may run it whatever the code it interrupted was holding. Once stopped,
  ``popen`` and ``tempdir`` raise ``Interrupted``: nothing new starts.
* ``Scope.close`` tears down in this order: kill the groups, reap them, detach
  every mount still mounted (``fusermount3 -uz``, then ``umount -l``), remove the
  sockets of hosts that no longer answer, remove the temp dirs — a temp dir with
  something still mounted under it is left, and said so, rather than emptied
  through the mount. ``Registry.teardown`` does it for every scope still open.
* A run cut short by the stop does not count: it is not recorded (the campaign
  checks ``stopped`` before writing a result), and a rerun does it again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

from nooks.control import remove_stale
from nooks.tools.fsprocess import is_mounted

log = logging.getLogger(__name__)

# seconds a SIGKILLed process may take to go (one waiting on FUSE goes once its
# server is gone, which the same sweep kills)
REAP_TIMEOUT = 5.0


class Interrupted(Exception):
    """The campaign was told to stop; the run in progress does not count."""


def _kill_group(proc: subprocess.Popen[Any]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def group_members(pgid: int) -> list[int]:
    """The processes of group ``pgid`` that are not zombies (a killed host's domains
    are orphans whose zombies init reaps in its own time)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return []
    except PermissionError:
        pass
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            out.append(int(entry))
    return out


def _wait_group(pgid: int, timeout: float = REAP_TIMEOUT) -> bool:
    """Wait until group ``pgid`` has no live member left; whether it has none."""
    end = time.monotonic() + timeout
    while group_members(pgid):
        if time.monotonic() > end:
            return False
        time.sleep(0.005)
    return True


def mounts_under(path: str) -> list[str]:
    """Mountpoints at or below ``path`` (as /proc/self/mounts spells them); only the
    parent of ``path`` is resolved, so a stuck mount at ``path`` is not touched."""
    parent, name = os.path.split(os.path.abspath(path))
    root = os.path.join(os.path.realpath(parent), name).encode()
    out = []
    with open("/proc/self/mounts", "rb") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 1:
                mnt = fields[1].replace(b"\\040", b" ")
                if mnt == root or mnt.startswith(root + b"/"):
                    out.append(os.fsdecode(mnt))
    return out


def detach(mnt: str) -> bool:
    """Lazily unmount ``mnt`` if it is mounted; whether it is gone."""
    for cmd in (["fusermount3", "-uz", mnt], ["umount", "-l", mnt]):
        if not is_mounted(mnt):
            return True
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            subprocess.run(cmd, capture_output=True, check=False, timeout=REAP_TIMEOUT)
    return not is_mounted(mnt)


class Scope:
    """What one run started; ``close`` tears it down (see the module's rules)."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        self.procs: list[subprocess.Popen[Any]] = []
        self.dirs: list[str] = []
        self.mounts: list[str] = []
        self.hosts: list[str] = []
        self.cleanups: list[Callable[[], object]] = []

    def popen(self, cmd: list[str] | str, **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``cmd`` (Popen's arguments) in a session of its own."""
        self._registry.check()
        proc: subprocess.Popen[Any] = subprocess.Popen(cmd, start_new_session=True, **kwargs)
        self.procs.append(proc)
        if self._registry.stopped:  # the sweep may have run before it was listed
            _kill_group(proc)
            raise Interrupted
        return proc

    def kill(self, proc: subprocess.Popen[Any]) -> None:
        """Kill ``proc``'s process group now (it is reaped later)."""
        if proc.returncode is None:
            _kill_group(proc)

    def reaped(self, proc: subprocess.Popen[Any]) -> bool:
        """``proc`` has been waited for: kill what is left of its group and wait until
        it has gone, then forget it; whether it has gone."""
        _kill_group(proc)
        gone = _wait_group(proc.pid)
        with contextlib.suppress(ValueError):
            self.procs.remove(proc)
        return gone

    def tempdir(self, prefix: str) -> str:
        self._registry.check()
        path = tempfile.mkdtemp(prefix=prefix)
        self.dirs.append(path)
        return path

    def mount(self, mnt: str) -> None:
        self.mounts.append(mnt)

    def host(self, name: str) -> None:
        self.hosts.append(name)

    def cleanup(self, fn: Callable[[], object]) -> None:
        """Call ``fn`` at ``close``, once the run's processes are gone (what a killed
        host could not remove itself: its network namespaces)."""
        self.cleanups.append(fn)

    def kill_all(self) -> None:
        for proc in list(self.procs):
            self.kill(proc)

    def close(self) -> list[str]:
        """Tear down everything; what could not be (empty: nothing)."""
        left: list[str] = []
        self.kill_all()
        for proc in list(self.procs):
            try:
                proc.wait(timeout=REAP_TIMEOUT)
            except subprocess.TimeoutExpired:
                left.append(f"process {proc.pid} did not exit")
                continue
            if not self.reaped(proc):
                left.append(f"process group {proc.pid} did not exit")
        for mnt in self.mounts:
            if not detach(mnt):
                left.append(f"{mnt} is still mounted")
        for name in self.hosts:
            remove_stale(name)
        for fn in self.cleanups:
            try:
                fn()
            except Exception as e:
                left.append(f"clean-up {getattr(fn, '__name__', fn)} failed: {e}")
        for d in self.dirs:
            if not os.path.exists(d):
                continue
            if mounts_under(d):
                left.append(f"{d} left: something is still mounted under it")
                continue
            shutil.rmtree(d, ignore_errors=True)
        self._registry.closed(self)
        for what in left:
            log.warning("campaign clean-up: %s", what)
        return left


class Registry:
    """The open scopes of a campaign and its stop flag."""

    def __init__(self) -> None:
        self.stopped = False
        self.signum: int | None = None  # the signal that stopped it (None: not a signal)
        self._scopes: dict[int, Scope] = {}

    def check(self) -> None:
        if self.stopped:
            raise Interrupted

    @contextlib.contextmanager
    def scope(self) -> Iterator[Scope]:
        s = Scope(self)
        self._scopes[id(s)] = s
        try:
            yield s
        finally:
            s.close()

    def closed(self, scope: Scope) -> None:
        self._scopes.pop(id(scope), None)

    def interrupt(self, signum: int | None = None) -> None:
        """Stop: nothing new starts, and every process group started is killed."""
        if not self.stopped:
            self.signum = signum
        self.stopped = True
        for s in list(self._scopes.values()):
            s.kill_all()

    def teardown(self) -> list[str]:
        """Close every scope still open (after ``interrupt``: the runs cut short)."""
        for s in list(self._scopes.values()):
            s.kill_all()
        left: list[str] = []
        for s in list(self._scopes.values()):
            left += s.close()
        return left

    @contextlib.contextmanager
    def signals(self) -> Iterator[None]:
        """SIGINT and SIGTERM call ``interrupt`` while inside (main thread only)."""
        def handler(signum: int, frame: FrameType | None) -> None:
            self.interrupt(signum)

        if threading.current_thread() is not threading.main_thread():
            yield
            return
        old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)
