"""Helpers for filesystem integration tests: real mounts through the real CLI,
and a fault injector that works through the real control socket."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nooks.control import request, socket_path
from nooks.tools.fsprocess import fail_and_wait, start_mount, stop_mount

STDLIB = os.path.dirname(os.__file__)
TREE_DIRS = ("json", "email", "asyncio", "logging", "http", "xml", "urllib")


@dataclass
class Mount:
    path: str
    name: str
    proc: subprocess.Popen[bytes]
    log: str

    def status(self) -> Any:
        return request(socket_path(self.name), {"cmd": "status"})

    def inject(self, fault: str) -> Any:
        """Make the driver fail; the reply says the failure and its recovery."""
        return request(socket_path(self.name), {"cmd": "inject", "fault": fault},
                       timeout=120.0)

    def inject_later(self, fault: str) -> Any:
        """Send the fault and return at once: the driver takes it when it next reads."""
        return request(socket_path(self.name), {"cmd": "inject", "fault": fault,
                                                "wait": False})


def wait_for(cond: Any, timeout: float, what: str) -> None:
    """Poll ``cond`` until true; fail after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)


@contextmanager
def mounted(tmp: str, driver: str, *args: str, native: bool = False,
            extra: tuple[str, ...] = (), ctor: tuple[str, ...] = ()) -> Iterator[Mount]:
    mnt = os.path.join(tmp, "mnt")
    os.makedirs(mnt, exist_ok=True)
    name = f"test-{os.getpid()}-{abs(hash(tmp))}"
    log = os.path.join(tmp, "host.log")
    cmd = [sys.executable, "-m", "nooks", "mount", driver, *args, mnt, "--name", name, *extra]
    if native:
        cmd.append("--native")
    if ctor:
        cmd += ["--", *ctor]
    try:
        with open(log, "wb") as out:
            proc = start_mount(cmd, mnt, output=out)
    except RuntimeError as e:
        with open(log) as f:
            raise RuntimeError(f"{e}: {f.read()}") from None
    try:
        yield Mount(mnt, name, proc, log)
    finally:
        stop_mount(mnt, proc)


@dataclass
class Injector:
    """Fails the driver every ``interval`` seconds, cycling through ``faults``.

    "sigkill" kills the domain process from outside; the others are injected
    through the control socket.
    """

    mount: Mount
    faults: tuple[str, ...]
    interval: float = 0.3
    done: dict[str, int] = field(default_factory=dict)
    errors: list[BaseException] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def count(self) -> int:
        return sum(self.done.values())

    def _run(self) -> None:
        i = 0
        deadline = time.monotonic() + 600
        while not self._stop.wait(self.interval) and time.monotonic() < deadline:
            fault = self.faults[i % len(self.faults)]
            i += 1
            try:
                # one fault at a time: each is met and recovered before the next
                fail_and_wait(self.mount.name, fault)
                self.done[fault] = self.done.get(fault, 0) + 1
            except ProcessLookupError:
                continue
            except BaseException as e:
                self.errors.append(e)
                return

    def __enter__(self) -> Injector:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


# a driver mounted directly with mfusepy, in a process of its own: the reference
DIRECT = """
import os, sys
os.environ["FUSE_LIBRARY_NAME"] = "fuse3"
import mfusepy, importlib
module, cls, mnt, *args = sys.argv[1:]
ops = getattr(importlib.import_module(module), cls)(*args)
mfusepy.FUSE(ops, mnt, foreground=True)
"""


@contextmanager
def direct_mount(tmp: Path, module: str, cls: str, *args: str) -> Iterator[str]:
    mnt = tmp / "direct"
    mnt.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", DIRECT, module, cls, str(mnt), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            cwd=os.getcwd())
    try:
        wait_for(lambda: os.path.ismount(mnt) or proc.poll() is not None, 30, "direct mount")
        assert proc.poll() is None
        yield str(mnt)
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True, check=False)
        proc.wait(timeout=30)


def outcome(fn: Callable[[], Any]) -> Any:
    """("ok", what ``fn`` returned) or ("errno", the errno of the OSError it raised)."""
    try:
        return ("ok", fn())
    except OSError as e:
        return ("errno", e.errno)


def make_tree(dest: str) -> int:
    """Copy part of the standard library to ``dest``; the number of files."""
    import shutil

    n = 0
    for d in TREE_DIRS:
        shutil.copytree(os.path.join(STDLIB, d), os.path.join(dest, d),
                        ignore=shutil.ignore_patterns("__pycache__"))
    for _, _, files in os.walk(dest):
        n += len(files)
    return n


def manifest(root: str) -> str:
    """sha256sum lines for every file under ``root`` (paths relative to it)."""
    out = subprocess.run("find . -type f -print0 | sort -z | xargs -0 sha256sum",
                         shell=True, cwd=root, capture_output=True, check=True, text=True)
    return out.stdout
