"""The FUSE-serving benchmark: what Python pays to answer the kernel, three ways.

The same tree served by ``nooks.bench.fuseservers`` — the kernel's protocol
spoken directly on ``/dev/fuse``, libfuse's low-level API through ctypes, and
libfuse's high-level API through mfusepy (how a driver is mounted today) — and
``stat`` of one file timed from this process, with kernel caching off: each
``stat`` is a LOOKUP and a GETATTR, a round trip through the kernel each. The
servers run in turns, several rounds; each figure is the median. With
``placement="one-core"`` the server and this process share CPU 0 (the figure
is then the CPU a request costs); ``"free"``, where the scheduler puts them.

It is what a filesystem class that serves ``/dev/fuse`` itself chooses its
FUSE layer by (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from nooks.bench.fuseservers import DRIVEN, SERVERS, SIZE

WARMUP = 200  # stats before the clock starts
READY_TIMEOUT = 10.0  # seconds a server may take to mount


def wait_mounted(proc: subprocess.Popen[str], mountpoint: str) -> None:
    """Returns once the server ``proc`` said it is ready and its mount is there."""
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        raise RuntimeError(f"the server did not start (exit {proc.wait()})")
    deadline = time.monotonic() + READY_TIMEOUT
    while not os.path.ismount(mountpoint):  # (libfuse's high level mounts after it said so)
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the server did not mount")
        time.sleep(0.01)


def _stat_rate(path: str, seconds: float) -> float:
    """Microseconds per ``stat`` of ``path``."""
    for _ in range(WARMUP):
        os.stat(path)
    n, t0 = 0, time.perf_counter()
    end = t0 + seconds
    while True:
        for _ in range(100):
            os.stat(path)
        n += 100
        now = time.perf_counter()
        if now >= end:
            return (now - t0) / n * 1e6


def _one(kind: str, seconds: float, one_core: bool) -> float:
    with tempfile.TemporaryDirectory(prefix="nooks-bench-fuse-") as mp, \
            tempfile.TemporaryDirectory(prefix="nooks-bench-fuse-root-") as root:
        with open(os.path.join(root, "f"), "wb") as f:
            f.write(bytes(SIZE))
        proc = subprocess.Popen([sys.executable, "-m", "nooks.bench.fuseservers", kind, mp,
                                 *([root] if kind in DRIVEN else [])],
                                stdout=subprocess.PIPE, text=True)
        mine = os.sched_getaffinity(0)
        try:
            if one_core:
                os.sched_setaffinity(proc.pid, {0})
                os.sched_setaffinity(0, {0})
            wait_mounted(proc, mp)
            return _stat_rate(os.path.join(mp, "f"), seconds)
        finally:
            os.sched_setaffinity(0, mine)
            if os.path.ismount(mp):
                subprocess.run(["umount", mp], check=False)
            try:
                proc.wait(READY_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            with contextlib.suppress(OSError):
                os.rmdir(mp)


def run(*, quick: bool = False, placement: str = "one-core",
        progress: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    rounds, seconds = (1, 1.0) if quick else (3, 2.0)
    one_core = placement == "one-core"
    kinds = [*SERVERS, *DRIVEN]
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for r in range(rounds):
        for kind in kinds:  # (in turns: a drift of the machine meets each alike)
            progress(f"{kind}, round {r + 1} of {rounds}")
            times[kind].append(_one(kind, seconds, one_core))
    servers = {}
    for kind, got in times.items():
        # (each against mfusepy: the tree's servers against its own, the driver's
        # against the driver mounted directly with it)
        base = statistics.median(times["passthrough-mfusepy" if kind in DRIVEN
                                       else "highlevel"])
        us = statistics.median(got)
        servers[kind] = {"stat_us": us, "stat_ops_s": 1e6 / us,
                         "speed_vs_mfusepy": base / us, "rounds_us": got}
    return {"placement": placement, "seconds": seconds, "servers": servers,
            "targets_met": {}}
