"""Running ``nooks mount`` (or any FUSE server) as a child process, for tools.

Used by the demo, the benchmarks, the reliability campaign and the tests: start a
mount (or take one started elsewhere), wait until the kernel shows it, unmount it
and reap the process; and make a running host's driver fail and wait until it has
been recovered.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from typing import IO

from nooks.control import request, socket_path
from nooks.fs.mounts import is_mounted

__all__ = ["fail_and_wait", "is_mounted", "start_mount", "stop_mount", "wait_mounted"]


def start_mount(cmd: list[str], mnt: str, *, timeout: float = 60.0,
                env: dict[str, str] | None = None,
                output: int | IO[bytes] | None = subprocess.DEVNULL) -> subprocess.Popen[bytes]:
    """Start ``cmd`` and wait until ``mnt`` is a mountpoint; RuntimeError if it dies."""
    proc = subprocess.Popen(cmd, env=env, stdout=output, stderr=subprocess.STDOUT)
    wait_mounted(mnt, proc, timeout=timeout)
    return proc


def wait_mounted(mnt: str, proc: subprocess.Popen[bytes], *, timeout: float = 60.0) -> None:
    """Wait until ``mnt`` is a mountpoint of the already started server ``proc``;
    RuntimeError if it dies first, or (after stopping it) if it takes over ``timeout``."""
    end = time.monotonic() + timeout
    while not is_mounted(mnt):
        if proc.poll() is not None:
            what = " ".join(str(a) for a in proc.args[:5]) \
                if isinstance(proc.args, list) else str(proc.args)
            raise RuntimeError(f"{what} ... exited with {proc.returncode} before mounting")
        if time.monotonic() > end:
            stop_mount(mnt, proc)
            raise RuntimeError(f"{mnt} was not mounted within {timeout:g} s")
        time.sleep(0.02)


def stop_mount(mnt: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Unmount ``mnt`` and reap its server; lazily and by force if it does not go."""
    with contextlib.suppress(subprocess.TimeoutExpired):
        subprocess.run(["fusermount3", "-u", mnt], capture_output=True, check=False,
                       timeout=timeout)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if is_mounted(mnt):  # a dead server's mount stays until it is detached
        subprocess.run(["fusermount3", "-uz", mnt], capture_output=True, check=False)


def fail_and_wait(name: str, fault: str, timeout: float = 30.0) -> None:
    """Make host ``name``'s driver fail (``sigkill`` kills the domain from outside;
    other faults are injected) and wait until the failure has been recovered."""
    path = socket_path(name)
    st = request(path, {"cmd": "status"})
    before = len(st["recoveries"])
    if fault == "sigkill":
        if st["domain_pid"] is None:  # (being replaced: there is nothing to kill now)
            raise ProcessLookupError(f"{name}: no domain to kill while it is replaced")
        os.kill(st["domain_pid"], signal.SIGKILL)
    else:
        request(path, {"cmd": "inject", "fault": fault})
    end = time.monotonic() + timeout
    while len(request(path, {"cmd": "status"})["recoveries"]) <= before:
        if time.monotonic() > end:
            raise TimeoutError(f"{name}: no recovery from {fault} within {timeout:g} s")
        time.sleep(0.005)
