"""The filesystem benchmark: nooks against native mode and a direct mfusepy mount.

One run mounts the same driver three ways — through nooks (isolated, shadowed),
in native mode (the same bridge, the driver in-process) and directly with
mfusepy (no nooks at all) — and runs the same workloads on each:

* metadata: stat() of one file, and create+unlink of empty files (ops/s);
* bulk: sequential write and read of a file with 128 KiB requests (MB/s);
* build-like: extract a tarball of source files, read every file, delete the tree (s);
* cached tree: the same tree with libfuse's default caching, through real programs
  (tar -x, find, cat of every file twice, grep -r, rm -rf) on a second set of
  mounts (s).

The three mounts run side by side and are measured in turns, the order
rotating, for three rounds; each figure is the median round (every round is
kept in the JSON).

Every mount uses ``attr_timeout=0,entry_timeout=0,negative_timeout=0,direct_io`` so
that each operation reaches the driver rather than the kernel's caches. Then
faults are injected into the nooks mount under a stat() load to measure
recovery times.
"""

from __future__ import annotations

import contextlib
import io
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from nooks.control import request, socket_path
from nooks.tools.fsprocess import fail_and_wait, start_mount, stop_mount

OPTIONS = "attr_timeout=0,entry_timeout=0,negative_timeout=0,direct_io"
CHUNK = 128 << 10
HOWS = ("direct", "native", "nooks")
# drivers on a checked image are also measured without consistency checkpoints
UNCHECKED = "nooks-unchecked"

_DIRECT = """
import os, sys
os.environ["FUSE_LIBRARY_NAME"] = "fuse3"
import warnings
warnings.simplefilter("ignore")
import mfusepy
from nooks.fs.drivers import resolve
from nooks.wrappers import load
driver = resolve(sys.argv[1], sys.argv[2:-1], state="persistent")
args = driver.native_args if driver.native_args is not None else driver.args
ops = load(driver.target)(*args)
opts = dict(kv.split("=") if "=" in kv else (kv, True) for kv in sys.argv[-1].split(",") if kv)
mfusepy.FUSE(ops, os.environ["NOOKS_BENCH_MNT"], foreground=True, nothreads=True, **opts)
"""


@contextmanager
def _mount(how: str, driver: str, args: list[str], mnt: str, name: str, *,
           mode: str, options: str = OPTIONS) -> Iterator[None]:
    """``options`` "": libfuse's defaults (the kernel caches for a second)."""
    if how == "direct":
        env = dict(os.environ, NOOKS_BENCH_MNT=mnt)
        cmd = [sys.executable, "-c", _DIRECT, driver, *args, options]
    else:
        env = dict(os.environ)
        cmd = [sys.executable, "-m", "nooks", "mount", driver, *args, mnt, "--name", name,
               *(["-o", options] if options else [])]
        if how == "native":
            cmd.append("--native")
        else:
            cmd += ["--mode", mode]
        if how == UNCHECKED:
            cmd += ["--check-interval", "0"]
    proc = start_mount(cmd, mnt, env=env)
    try:
        yield
    finally:
        stop_mount(mnt, proc)


def _rate(fn: Callable[[], object], seconds: float) -> float:
    """Calls per second of ``fn`` over about ``seconds``."""
    n = 0
    t0 = time.perf_counter()
    end = t0 + seconds
    while True:
        for _ in range(50):
            fn()
        n += 50
        now = time.perf_counter()
        if now >= end:
            return n / (now - t0)


def _tarball() -> bytes:
    src = os.path.dirname(os.__file__)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for d in ("json", "email", "asyncio", "logging", "http", "xml", "urllib"):
            tar.add(os.path.join(src, d), arcname=d,
                    filter=lambda ti: None if "__pycache__" in ti.name else ti)
    return buf.getvalue()


def workloads(mnt: str, seconds: float, size: int, tarball: bytes) -> dict[str, float]:
    out: dict[str, float] = {}
    probe = os.path.join(mnt, "probe")
    with open(probe, "w") as f:
        f.write("x")
    out["stat_ops_s"] = _rate(lambda: os.stat(probe), seconds)
    counter = [0]

    def create_unlink() -> None:
        p = os.path.join(mnt, f"c{counter[0]}")
        counter[0] += 1
        os.close(os.open(p, os.O_CREAT | os.O_WRONLY, 0o644))
        os.unlink(p)

    out["create_unlink_ops_s"] = _rate(create_unlink, seconds)

    data = os.urandom(CHUNK)
    big = os.path.join(mnt, "big.bin")
    t0 = time.perf_counter()
    fd = os.open(big, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    for _ in range(size // CHUNK):
        os.write(fd, data)
    os.fsync(fd)
    os.close(fd)
    out["write_mb_s"] = size / (time.perf_counter() - t0) / 1e6
    t0 = time.perf_counter()
    fd = os.open(big, os.O_RDONLY)
    while os.read(fd, CHUNK):
        pass
    os.close(fd)
    out["read_mb_s"] = size / (time.perf_counter() - t0) / 1e6
    os.unlink(big)

    tree = os.path.join(mnt, "tree")
    os.mkdir(tree)
    t0 = time.perf_counter()
    with tarfile.open(fileobj=io.BytesIO(tarball)) as tar:
        tar.extractall(tree, filter="data")
    for root, _, files in os.walk(tree):
        for name in files:
            with open(os.path.join(root, name), "rb") as src:
                while src.read(CHUNK):
                    pass
    subprocess.run(["rm", "-rf", tree], check=True)
    out["build_s"] = time.perf_counter() - t0
    return out


def cached_tree(mnt: str, tarball: str) -> float:
    """Seconds real programs take over a source tree with the kernel's caches on:
    untar, find, cat every file twice, grep, rm."""
    tree = os.path.join(mnt, "tree")
    os.mkdir(tree)
    t0 = time.perf_counter()
    for cmd in (["tar", "-xf", tarball, "-C", tree], ["find", tree],
                ["find", tree, "-type", "f", "-exec", "cat", "{}", "+"],
                ["find", tree, "-type", "f", "-exec", "cat", "{}", "+"],
                ["grep", "-r", "-c", "import", tree], ["rm", "-rf", tree]):
        r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
        if r.returncode not in (0, 1) or (r.returncode == 1 and cmd[0] != "grep"):
            raise RuntimeError(f"{' '.join(cmd[:2])} failed: {r.stderr.decode()[-200:]}")
    return time.perf_counter() - t0


def recovery_times(mnt: str, name: str, faults: int) -> list[float]:
    """Inject ``faults`` SIGSEGVs under a stat() load; each recovery's duration (ms).

    Faults come one at a time, each once the warm spare of the last recovery is
    up (tens of milliseconds): faster than that, a recovery waits for the spare.
    """
    probe = os.path.join(mnt, "probe")
    stop = threading.Event()
    errors: list[BaseException] = []

    def load() -> None:
        try:
            while not stop.is_set():
                os.stat(probe)
        except BaseException as e:
            errors.append(e)

    th = threading.Thread(target=load)
    th.start()
    path = socket_path(name)
    try:
        for _ in range(faults):
            request(path, {"cmd": "settle"}, timeout=60.0)  # a spare starting on a busy CPU
            fail_and_wait(name, "segv")
    finally:
        stop.set()
        th.join()
    if errors:
        raise RuntimeError(f"the load saw an error during recoveries: {errors[0]}")
    recs = request(path, {"cmd": "status"})["recoveries"]
    return [float(r["duration_ms"]) for r in recs]


def _percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def run(driver: str = "passthrough", quick: bool = False, placement: str = "one-core",
        progress: Callable[[str], None] = lambda s: None, mode: str = "host") -> dict[str, Any]:
    """Run every workload on every kind of mount; figures, ratios and targets;
    ``mode``: the mode the nooks mount serves in ("host" or "direct").

    ``placement`` "one-core" runs the benchmark, the hosts and their domains on
    one CPU (set before anything is started, inherited by every process); "free"
    leaves them to the scheduler. Every mount of a run has the same placement.
    """
    saved = os.sched_getaffinity(0)
    if placement == "one-core":
        os.sched_setaffinity(0, {min(saved)})
    try:
        out = _run(driver, quick, progress, mode)
    finally:
        os.sched_setaffinity(0, saved)
    out["placement"] = placement
    out["mode"] = mode
    return out


def _run(driver: str, quick: bool, progress: Callable[[str], None],
         mode: str) -> dict[str, Any]:
    seconds = 1.0 if quick else 3.0
    size = (16 if quick else 64) << 20
    faults = 10 if quick else 40
    rounds = 1 if quick else 3
    tarball = _tarball()
    out: dict[str, Any] = {"driver": driver, "seconds_per_metadata_test": seconds,
                           "bulk_bytes": size, "options": OPTIONS, "rounds": rounds}
    # backing stores in memory, so that the disk's own latency does not blur the ratios
    where = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(prefix="nooks-bench-", dir=where) as tmp, \
            contextlib.ExitStack() as mounts:
        mnts: dict[str, str] = {}
        # (direct mode has no checkpoints to go without)
        hows = (*HOWS, UNCHECKED) if driver == "vfat" and mode == "host" else HOWS
        for how in hows:
            progress(f"{driver}: mounting {how}")
            args = _prepare(driver, tmp, how)
            mnt = os.path.join(tmp, f"mnt-{how}")
            os.mkdir(mnt)
            mounts.enter_context(_mount(how, driver, args, mnt, f"bench-{os.getpid()}-{how}",
                                        mode=mode))
            mnts[how] = mnt
        # the three mounts side by side, measured in turns (the order rotating): one
        # run can be off by a third on a small machine, so each figure is the median
        runs: dict[str, list[dict[str, float]]] = {how: [] for how in hows}
        for r in range(rounds):
            for how in hows[r % len(hows):] + hows[:r % len(hows)]:
                progress(f"{driver} {how}, round {r + 1} of {rounds}")
                runs[how].append(workloads(mnts[how], seconds, size, tarball))
        # the tree again, with libfuse's default caching
        tar_path = os.path.join(tmp, "tree.tar")
        with open(tar_path, "wb") as f:
            f.write(tarball)
        cached: dict[str, str] = {}
        for how in HOWS:
            progress(f"{driver}: mounting {how} with the kernel's caches")
            args = _prepare(driver, tmp, f"{how}-cached")
            mnt = os.path.join(tmp, f"mnt-{how}-cached")
            os.mkdir(mnt)
            mounts.enter_context(_mount(how, driver, args, mnt,
                                        f"bench-{os.getpid()}-{how}-cached", mode=mode,
                                        options=""))
            cached[how] = mnt
        for r in range(rounds):
            for how in HOWS[r % len(HOWS):] + HOWS[:r % len(HOWS)]:
                progress(f"{driver} {how} cached, round {r + 1} of {rounds}")
                runs[how][r]["tree_cached_s"] = cached_tree(cached[how], tar_path)
        for how, rs in runs.items():
            out[how] = {k: statistics.median(x[k] for x in rs if k in x) for k in rs[0]}
            out[how]["rounds"] = rs
        progress(f"{driver}: recoveries under load")
        times = recovery_times(mnts["nooks"], f"bench-{os.getpid()}-nooks", faults)
        out["recovery_ms_p50"] = statistics.median(times)
        out["recovery_ms_p99"] = _percentile(times, 0.99)
        out["recoveries"] = len(times)
    keys = [k for k in out["nooks"] if k != "rounds"]
    ratios = {k: _ratio(k, out["nooks"][k], out["native"][k]) for k in keys}
    out["ratio_to_native"] = ratios
    out["ratio_to_direct"] = {k: _ratio(k, out["nooks"][k], out["direct"][k]) for k in keys}
    if UNCHECKED in out:
        out["ratio_unchecked_to_native"] = {k: _ratio(k, out[UNCHECKED][k], out["native"][k])
                                            for k in keys if k in out[UNCHECKED]}
    meta = min(ratios["stat_ops_s"], ratios["create_unlink_ops_s"])
    bulk = min(ratios["write_mb_s"], ratios["read_mb_s"])
    out["targets_met"] = {
        "metadata >= 0.8x native": meta >= 0.8,
        "bulk I/O >= 0.9x native": bulk >= 0.9,
        "recovery p99 <= 100 ms": out["recovery_ms_p99"] <= 100,
    }
    return out


def _ratio(key: str, ours: float, base: float) -> float:
    """How ``ours`` compares with ``base``, > 1 meaning better: rates divide, times invert."""
    return base / ours if key.endswith("_s") and not key.endswith(("ops_s", "mb_s")) \
        else ours / base


def _prepare(driver: str, tmp: str, how: str) -> list[str]:
    if driver == "passthrough":
        d = os.path.join(tmp, f"backing-{how}")
        os.mkdir(d)
        return [d]
    if driver == "vfat":
        from nooks.fs.mkfs import mkfs_vfat

        image = os.path.join(tmp, f"disk-{how}.img")
        mkfs_vfat(image, 256 << 20)
        return [image]
    raise ValueError(f"no benchmark set-up for driver {driver!r}")
