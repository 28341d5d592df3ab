"""The reliability campaign: inject faults into a driver's code, run real programs
on it natively and under nooks, and classify what happened.

One *run* is one fault (type, seed) in one mode. Each run gets a fresh image (or
backing directory) and a fresh mount, runs the workload — ``cp -a`` and
``sha256sum -c``, ``tar`` out and back, a Python writer with fsync and rename,
``sqlite3`` transactions — then (under nooks, after the checkpoint a host takes
before unmounting) checks the copies again, unmounts and checks the image
(checksums, sqlite's integrity check, ``fsck.fat -n`` for vfat). Outcomes:

* ``system failure``: the host died, the mount went away, the workload hung, or
  applications got ENOTCONN — or, natively, EIO (for a kernel: the crash);
* ``app-visible error``: the system kept running but a program failed or saw
  wrong data;
* ``recovered``: the driver failed and nooks recovered it, nobody noticed;
* ``no effect``: the fault did not show.

Faults land on lines the workload executes: a coverage dry run (the workload
on a native mount, tracing the driver's file) gives the lines, as the seed
placed its faults in the driver's text. Results are appended to
``results.jsonl`` as they come, so a campaign can be resumed.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import importlib.util
import json
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import msgspec

from nooks.control import request, socket_path
from nooks.domain.config import FaultPlan
from nooks.faults.mutate import FAULT_TYPES, Fault, NoSite, mutate
from nooks.fs.mkfs import mkfs_vfat
from nooks.fs.process import is_mounted, start_mount, stop_mount

DRIVERS = ("vfat", "passthrough")
STEP_TIMEOUT = 10.0
DEADLINE = "2"  # seconds a driver call may take under nooks before it counts as hung

WRITER = """
import os, sys, hashlib, random
d, seed = sys.argv[1], int(sys.argv[2])
rng = random.Random(seed)
path, final = os.path.join(d, "w.tmp"), os.path.join(d, "w.dat")
blocks = [rng.randbytes(rng.randrange(1, 100_000)) for _ in range(4)]
fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_TRUNC, 0o644)
for b in blocks:
    os.write(fd, b)
os.lseek(fd, 5, os.SEEK_SET)
os.write(fd, b"PATCH")
os.fsync(fd)
os.close(fd)
os.rename(path, final)
want = bytearray(b"".join(blocks))
want[5:10] = b"PATCH"
with open(final, "rb") as f:
    ok = hashlib.sha256(f.read()).digest() == hashlib.sha256(want).digest()
sys.exit(0 if ok else 3)
"""


class RunResult(msgspec.Struct, kw_only=True):
    driver: str
    index: int
    mode: str  # "native" or "nooks"
    kind: str
    seed: int
    site: str | None
    outcome: str
    data_ok: bool
    detail: str
    recoveries: int
    seconds: float


@dataclass(frozen=True)
class Planned:
    driver: str
    index: int
    kind: str
    seed: int


def tree_source() -> str:
    return os.path.join(os.path.dirname(os.__file__), "json")


def driver_args(driver: str, tmp: str) -> list[str]:
    if driver == "vfat":
        image = os.path.join(tmp, "disk.img")
        mkfs_vfat(image, 64 << 20)
        return [image]
    if driver == "passthrough":
        d = os.path.join(tmp, "backing")
        os.mkdir(d)
        return [d]
    raise ValueError(f"no campaign set-up for driver {driver!r}")


def _step(cmd: list[str] | str, on_hang: Callable[[], None], stdin: str | None = None,
          timeout: float = STEP_TIMEOUT) -> tuple[int, str]:
    """Run one program; (exit status, the end of what it said). -1: it hung.

    Nothing here touches the mount before the program runs (no ``cwd=`` on it: a
    chdir into a stuck mount would hang before the timeout starts to count).
    """
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, shell=isinstance(cmd, str))
    except OSError as e:
        return -2, f"could not start: {e}"
    try:
        out, err = proc.communicate(stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        # a program waiting on a stuck FUSE request cannot even be killed (the kernel
        # waits for some requests uninterruptibly) until the server is gone
        on_hang()
        proc.kill()
        proc.communicate()
        return -1, "hung"
    return proc.returncode, (err or out).strip()[-300:]


def workload(mnt: str, seed: int, on_hang: Callable[[], None] = lambda: None) -> list[str]:
    """Run the programs; what went wrong (empty: nothing).

    ``on_hang`` is called when a program hangs: it must take the mount down.
    """
    def step(cmd: list[str] | str, stdin: str | None = None) -> tuple[int, str]:
        return _step(cmd, on_hang, stdin=stdin)

    errors: list[str] = []
    src = tree_source()
    sums = subprocess.run("find . -type f -print0 | sort -z | xargs -0 sha256sum", shell=True,
                          cwd=src, capture_output=True, text=True, check=True).stdout
    dest = os.path.join(mnt, "tree")  # only ever touched by child processes
    steps: list[tuple[str, Callable[[], tuple[int, str]]]] = [
        ("cp -a", lambda: step(["cp", "-a", src, dest])),
        ("sha256sum -c", lambda: step(f"cd {shlex.quote(dest)} && sha256sum -c --quiet -",
                                       stdin=sums)),
        ("tar -c", lambda: step(["tar", "-cf", os.path.join(mnt, "t.tar"), "-C", dest, "."])),
        ("tar -x", lambda: step(f"cd {shlex.quote(mnt)} && mkdir -p x && tar -xf t.tar -C x")),
        ("tar round trip", lambda: step(f"cd {shlex.quote(mnt)}/x && sha256sum -c --quiet -",
                                         stdin=sums)),
        ("python writer", lambda: step([sys.executable, "-c", WRITER, mnt, str(seed)])),
        ("sqlite3", lambda: step(["sqlite3", os.path.join(mnt, "db.sqlite")],
                                  stdin="CREATE TABLE IF NOT EXISTS t (k INTEGER PRIMARY KEY, "
                                  "v TEXT);\nBEGIN;\n" + "".join(
                                      f"INSERT INTO t (v) VALUES ('{i}');\n" for i in range(50))
                                  + "COMMIT;\nPRAGMA integrity_check;\n")),
    ]
    for name, run in steps:
        rc, out = run()
        if rc != 0:
            errors.append(f"{name}: {'hung' if rc == -1 else f'exit {rc}'}: {out}")
            if rc == -1 or "Transport endpoint" in out:
                break  # the filesystem is gone or stuck: the rest would only wait too
        elif name == "sqlite3" and not out.endswith("ok"):
            errors.append(f"sqlite3 integrity: {out}")
    return errors


def recheck(mnt: str, on_hang: Callable[[], None] = lambda: None) -> list[str]:
    """After the workload (and, under nooks, the final checkpoint): the copies it made
    still hold what was written; what went wrong (empty: nothing)."""
    src = tree_source()
    sums = subprocess.run("find . -type f -print0 | sort -z | xargs -0 sha256sum", shell=True,
                          cwd=src, capture_output=True, text=True, check=True).stdout
    errors = []
    for where in ("tree", "x"):
        rc, out = _step(f"cd {shlex.quote(os.path.join(mnt, where))} && sha256sum -c --quiet -",
                        on_hang, stdin=sums)
        if rc != 0:
            errors.append(f"recheck of {where}: {'hung' if rc == -1 else f'exit {rc}'}: {out}")
    return errors


def _mount_cmd(driver: str, args: list[str], mnt: str, name: str, *, native: bool,
               extra: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "nooks", "mount", driver, *args, mnt, "--name", name,
           "--deadline", DEADLINE, *extra]
    return [*cmd, "--native"] if native else cmd


def coverage(driver: str, out_dir: str) -> list[int]:
    """Lines of the driver's module that the workload executes (cached in ``out_dir``)."""
    path = os.path.join(out_dir, f"coverage-{driver}.json")
    if os.path.exists(path):
        with open(path) as f:
            return list(json.load(f))
    with tempfile.TemporaryDirectory(prefix="nooks-cov-") as tmp:
        args = driver_args(driver, tmp)
        mnt = os.path.join(tmp, "mnt")
        os.mkdir(mnt)
        lines_file = os.path.join(tmp, "lines.json")
        cmd = _mount_cmd(driver, args, mnt, f"cov-{os.getpid()}-{driver}", native=True,
                         extra=["--record-lines", lines_file])
        proc = start_mount(cmd, mnt)
        try:
            errors = workload(mnt, 0)
        finally:
            stop_mount(mnt, proc)
        if errors:
            raise RuntimeError(f"the workload fails on {driver} without faults: {errors}")
        with open(lines_file) as f:
            lines = list(json.load(f))
    with open(path, "w") as f:
        json.dump(lines, f)
    return lines


def _source(driver: str) -> str:
    spec = importlib.util.find_spec(resolve_module(driver))
    if spec is None or spec.origin is None:
        raise ValueError(f"cannot find the source of {driver}")
    with open(spec.origin) as f:
        return f.read()


def resolve_module(driver: str) -> str:
    return {"vfat": "nooks.drivers.vfat", "passthrough": "nooks.drivers.passthrough"}[driver]


def plan(driver: str, faults: int, seed: int, lines: list[int]) -> list[Planned]:
    """The faults of a campaign: types in turn, each seed giving a site on a covered line.

    A type with no site on the covered lines is left out (the campaign says so).
    """
    source = _source(driver)
    covered = set(lines)
    kinds = []
    for kind in FAULT_TYPES:
        try:
            mutate(source, "<driver>", Fault(kind, 0), covered)
            kinds.append(kind)
        except NoSite:
            continue
    return [Planned(driver, i, kinds[i % len(kinds)], seed * 1_000_003 + i)
            for i in range(faults)]


def run_one(p: Planned, native: bool, lines: list[int]) -> RunResult:
    """One fault, one mode, on a fresh image and mount."""
    mode = "native" if native else "nooks"
    fault = FaultPlan(module=resolve_module(p.driver), kind=p.kind, seed=p.seed, lines=lines)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="nooks-run-", ignore_cleanup_errors=True) as tmp:
        args = driver_args(p.driver, tmp)
        mnt = os.path.join(tmp, "mnt")
        os.mkdir(mnt)
        name = f"eval-{os.getpid()}-{p.driver}-{p.index}-{mode}"
        cmd = _mount_cmd(p.driver, args, mnt, name, native=native,
                         extra=["--fault-plan", msgspec.json.encode(fault).decode()])
        site: str | None = None
        recoveries = 0
        try:
            proc = start_mount(cmd, mnt, timeout=30)
        except RuntimeError as e:
            return RunResult(driver=p.driver, index=p.index, mode=mode, kind=p.kind,
                             seed=p.seed, site=None, outcome="system failure", data_ok=False,
                             detail=f"did not mount: {e}", recoveries=0,
                             seconds=time.monotonic() - t0)
        try:
            with contextlib.suppress(OSError):
                site = request(socket_path(name), {"cmd": "status"}).get("fault_site")
            errors = workload(mnt, p.seed, on_hang=proc.kill)
            # never touch the mount from this process: a stuck driver would stick it too
            alive = proc.poll() is None and is_mounted(mnt)
            if alive:
                try:
                    if not native:
                        # the check the host makes before unmounting, made now, so
                        # that a rollback it leads to is counted with the recoveries
                        request(socket_path(name), {"cmd": "checkpoint"}, timeout=30)
                    if not errors:
                        # and what the programs wrote is still there after it
                        errors = recheck(mnt, on_hang=proc.kill)
                    st = request(socket_path(name), {"cmd": "status"}, timeout=5)
                    recoveries = len(st["recoveries"]) + len(st.get("start_failures", []))
                except OSError:
                    alive = False
        finally:
            stop_mount(mnt, proc, timeout=5)
        fsck_ok = True
        if p.driver == "vfat":
            r = subprocess.run(["fsck.fat", "-n", args[0]], capture_output=True, text=True,
                               check=False)
            fsck_ok = r.returncode == 0
        lost_mount = any("Transport endpoint" in e or "connection abort" in e.lower()
                         or (native and "Input/output error" in e) for e in errors)
        hung = any(": hung:" in e for e in errors)
        if not alive or lost_mount or hung:
            outcome = "system failure"
        elif errors:
            outcome = "app-visible error"
        elif recoveries:
            outcome = "recovered"
        else:
            outcome = "no effect"
        data_ok = fsck_ok and not any(("sha256sum" in e or "tar round trip" in e
                                       or "integrity" in e or "writer" in e
                                       or "recheck" in e) for e in errors)
        detail = "; ".join(errors)[:500] if errors else ("fsck.fat found problems"
                                                        if not fsck_ok else "")
    return RunResult(driver=p.driver, index=p.index, mode=mode, kind=p.kind, seed=p.seed,
                     site=site, outcome=outcome, data_ok=data_ok, detail=detail,
                     recoveries=recoveries, seconds=time.monotonic() - t0)


def load_results(path: str) -> list[RunResult]:
    out: list[RunResult] = []
    if not os.path.exists(path):
        return out
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                out.append(msgspec.json.decode(line, type=RunResult))
    return out


def campaign(drivers: list[str], faults: int, *, jobs: int, seed: int, out_dir: str,
             only: int | None = None,
             progress: Callable[[RunResult], None] = lambda r: None) -> list[RunResult]:
    """Run (or resume) a campaign; every result, old and new."""
    os.makedirs(out_dir, exist_ok=True)
    results_path = os.path.join(out_dir, "results.jsonl")
    done = {(r.driver, r.index, r.mode) for r in load_results(results_path)}
    lock = threading.Lock()
    todo: list[tuple[Planned, bool, list[int]]] = []
    for driver in drivers:
        lines = coverage(driver, out_dir)
        for p in plan(driver, faults, seed, lines):
            if only is not None and p.index != only:
                continue
            for native in (True, False):
                if (p.driver, p.index, "native" if native else "nooks") not in done:
                    todo.append((p, native, lines))

    def work(item: tuple[Planned, bool, list[int]]) -> None:
        r = run_one(*item)
        with lock, open(results_path, "ab") as f:
            f.write(msgspec.json.encode(r) + b"\n")
        progress(r)

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for fut in concurrent.futures.as_completed([pool.submit(work, t) for t in todo]):
            fut.result()
    return load_results(results_path)


def pairs(results: list[RunResult]) -> Iterator[tuple[RunResult, RunResult]]:
    """(native, nooks) results of the same fault."""
    by: dict[tuple[str, int], dict[str, RunResult]] = {}
    for r in results:
        by.setdefault((r.driver, r.index), {})[r.mode] = r
    for key in sorted(by):
        d = by[key]
        if "native" in d and "nooks" in d:
            yield d["native"], d["nooks"]

