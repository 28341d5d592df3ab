"""The filesystem class in the campaign: ``vfat`` (a fresh 64 MiB image each run)
and ``passthrough`` (a fresh backing directory), mounted with ``nooks mount``.

Workload: ``nooks.eval.fsload``. Under nooks the host is asked for the checkpoint
it takes before unmounting, then the copies are checked again (in both modes).
Once unmounted, a vfat image must pass ``fsck.fat -n``.

Outcome rules: the mount went away (ENOTCONN, a connection abort), a program hung,
or — natively — EIO (for a kernel: the crash) is the system's failure. A failed
checksum, tar round trip, sqlite integrity check, writer or recheck is a data error,
as is a failed fsck.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from nooks.control import request, socket_path
from nooks.eval.fsload import recheck, workload
from nooks.eval.registry import Scope
from nooks.eval.target import NotStarted, Run, Target
from nooks.fs.mkfs import mkfs_vfat
from nooks.tools.fsprocess import is_mounted, stop_mount, wait_mounted

DEADLINE = "2"  # seconds a driver call may take under nooks before it counts as hung
DATA_STEPS = ("sha256sum", "tar round trip", "integrity", "writer", "recheck")


class FsRun(Run):
    def __init__(self, scope: Scope, name: str, proc: subprocess.Popen[Any], native: bool,
                 *, mnt: str, image: str | None) -> None:
        super().__init__(scope, name, proc, native)
        self.mnt = mnt
        self.image = image

    def checkpoint(self) -> bool:
        request(socket_path(self.name), {"cmd": "checkpoint"}, timeout=30)
        return True

    def workload(self, seed: int, on_hang: Any) -> list[str]:
        return workload(self.scope, self.mnt, seed, on_hang=on_hang)

    def recheck(self, on_hang: Any) -> list[str]:
        return recheck(self.scope, self.mnt, on_hang=on_hang)

    def alive(self) -> bool:
        # never touch the mount from this process: a stuck driver would stick it too
        return self.proc.poll() is None and is_mounted(self.mnt)

    def stop(self) -> None:
        stop_mount(self.mnt, self.proc, timeout=5)
        self.scope.reaped(self.proc)

    def after(self) -> list[str]:
        if self.image is None:
            return []
        fsck = self.scope.popen(["fsck.fat", "-n", self.image], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        ok = fsck.wait() == 0
        self.scope.reaped(fsck)
        return [] if ok else ["fsck.fat found problems"]


class FsTarget(Target):
    modes = ("host", "direct")

    def __init__(self, driver: str, module: str) -> None:
        self.driver = driver
        self.module = module

    def start(self, scope: Scope, tmp: str, name: str, *, native: bool,
              extra: list[str]) -> Run:
        image: str | None = None
        if self.driver == "vfat":
            image = os.path.join(tmp, "disk.img")
            mkfs_vfat(image, 64 << 20, session=True)
            where = image
        else:
            where = os.path.join(tmp, "backing")
            os.mkdir(where)
        mnt = os.path.join(tmp, "mnt")
        os.mkdir(mnt)
        cmd = [sys.executable, "-m", "nooks", "mount", self.driver, where, mnt, "--name", name,
               "--deadline", DEADLINE, *extra, *(["--native"] if native else [])]
        scope.mount(mnt)
        scope.host(name)
        proc = scope.popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        run = FsRun(scope, name, proc, native, mnt=mnt, image=image)
        try:
            wait_mounted(mnt, proc, timeout=30)
        except RuntimeError as e:
            raise NotStarted(f"did not mount: {e}") from e
        return run

    def lost(self, error: str, native: bool) -> bool:
        return ("Transport endpoint" in error or "connection abort" in error.lower()
                or (native and "Input/output error" in error) or ": hung:" in error)

    def data_error(self, error: str) -> bool:
        return any(step in error for step in DATA_STEPS) or "fsck" in error


TARGETS = (FsTarget("vfat", "nooks.drivers.vfat"),
           FsTarget("passthrough", "nooks.drivers.passthrough"))
