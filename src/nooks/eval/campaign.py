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
``results.jsonl`` as they come, so a campaign can be resumed (``results``).

Rules for stopping: everything a run starts — its temp dir, its mount, the
``nooks mount`` host and each program, every process in a session of its own —
is in the run's ``Scope`` (``registry``), which tears it down when the run ends,
however it ends. ``Registry.interrupt`` (SIGINT, SIGTERM, or a run that raised)
kills every run's processes at once; the runs in flight then end quickly, are
not recorded, and nothing new starts. The campaign waits up to ``GRACE`` seconds
for them, tears down whatever is still open and returns what was done
(``Done.stopped_by`` says why it stopped); a rerun does the rest.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from nooks.control import request, socket_path
from nooks.domain.config import FaultPlan
from nooks.eval.registry import Interrupted, Registry
from nooks.eval.results import RunResult, append_result, key, load_results, pairs
from nooks.eval.workload import recheck, workload
from nooks.faults.mutate import FAULT_TYPES, Fault, NoSite, mutate
from nooks.fs.mkfs import mkfs_vfat
from nooks.tools.fsprocess import is_mounted, stop_mount, wait_mounted

__all__ = ["DRIVERS", "Done", "Planned", "RunResult", "campaign", "load_results", "pairs",
           "plan", "run_one"]

DRIVERS = ("vfat", "passthrough")
DEADLINE = "2"  # seconds a driver call may take under nooks before it counts as hung
TEMP_PREFIX = "nooks-eval-"  # every temp dir of a campaign: nooks-eval-cov-*, nooks-eval-run-*
GRACE = 10.0  # seconds the runs in flight have to end once the campaign is stopped


@dataclass(frozen=True)
class Planned:
    driver: str
    index: int
    kind: str
    seed: int


@dataclass
class Done:
    """What a campaign did: every result in the out dir, old and new; how many runs
    the command plans and how many of those have a result; what stopped it early,
    if anything ("SIGINT", "SIGTERM"), and the signal's number."""
    results: list[RunResult]
    planned: int
    done: int
    stopped_by: str | None = None
    signum: int | None = None


def driver_args(driver: str, tmp: str) -> list[str]:
    if driver == "vfat":
        image = os.path.join(tmp, "disk.img")
        mkfs_vfat(image, 64 << 20, session=True)
        return [image]
    if driver == "passthrough":
        d = os.path.join(tmp, "backing")
        os.mkdir(d)
        return [d]
    raise ValueError(f"no campaign set-up for driver {driver!r}")


def _mount_cmd(driver: str, args: list[str], mnt: str, name: str, *, native: bool,
               extra: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "nooks", "mount", driver, *args, mnt, "--name", name,
           "--deadline", DEADLINE, *extra]
    return [*cmd, "--native"] if native else cmd


def coverage(driver: str, out_dir: str, registry: Registry) -> list[int]:
    """Lines of the driver's module that the workload executes (cached in ``out_dir``)."""
    path = os.path.join(out_dir, f"coverage-{driver}.json")
    if os.path.exists(path):
        with open(path) as f:
            return list(json.load(f))
    with registry.scope() as scope:
        tmp = scope.tempdir(TEMP_PREFIX + "cov-")
        args = driver_args(driver, tmp)
        mnt = os.path.join(tmp, "mnt")
        os.mkdir(mnt)
        lines_file = os.path.join(tmp, "lines.json")
        name = f"cov-{os.getpid()}-{driver}"
        scope.mount(mnt)
        scope.host(name)
        proc = scope.popen(_mount_cmd(driver, args, mnt, name, native=True,
                                      extra=["--record-lines", lines_file]),
                           stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        try:
            wait_mounted(mnt, proc)
            errors = workload(scope, mnt, 0)
        finally:
            if not registry.stopped:
                stop_mount(mnt, proc)
                scope.reaped(proc)
        registry.check()
        if errors:
            raise RuntimeError(f"the workload fails on {driver} without faults: {errors}")
        with open(lines_file) as f:
            lines = list(json.load(f))
    with open(path + ".tmp", "w") as f:
        json.dump(lines, f)
    os.replace(path + ".tmp", path)
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


def run_one(p: Planned, native: bool, lines: list[int],
            registry: Registry | None = None) -> RunResult:
    """One fault, one mode, on a fresh image and mount; ``Interrupted`` if the
    campaign was stopped meanwhile (what it saw then does not count)."""
    registry = registry or Registry()
    mode = "native" if native else "nooks"
    fault = FaultPlan(module=resolve_module(p.driver), kind=p.kind, seed=p.seed, lines=lines)
    t0 = time.monotonic()
    with registry.scope() as scope:
        tmp = scope.tempdir(TEMP_PREFIX + "run-")
        args = driver_args(p.driver, tmp)
        mnt = os.path.join(tmp, "mnt")
        os.mkdir(mnt)
        name = f"eval-{os.getpid()}-{p.driver}-{p.index}-{mode}"
        cmd = _mount_cmd(p.driver, args, mnt, name, native=native,
                         extra=["--fault-plan", msgspec.json.encode(fault).decode()])
        scope.mount(mnt)
        scope.host(name)
        site: str | None = None
        recoveries = 0
        proc = scope.popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        try:
            wait_mounted(mnt, proc, timeout=30)
        except RuntimeError as e:
            registry.check()
            return RunResult(driver=p.driver, index=p.index, mode=mode, kind=p.kind,
                             seed=p.seed, site=None, outcome="system failure", data_ok=False,
                             detail=f"did not mount: {e}", recoveries=0,
                             seconds=time.monotonic() - t0)

        def on_hang() -> None:
            scope.kill(proc)

        try:
            with contextlib.suppress(OSError, msgspec.DecodeError):
                site = request(socket_path(name), {"cmd": "status"}).get("fault_site")
            errors = workload(scope, mnt, p.seed, on_hang=on_hang)
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
                        errors = recheck(scope, mnt, on_hang=on_hang)
                    st = request(socket_path(name), {"cmd": "status"}, timeout=5)
                    recoveries = len(st["recoveries"]) + len(st.get("start_failures", []))
                except (OSError, msgspec.DecodeError):
                    alive = False
        finally:
            if not registry.stopped:  # stopped: the scope takes it all down at once
                stop_mount(mnt, proc, timeout=5)
                scope.reaped(proc)
        registry.check()
        fsck_ok = True
        if p.driver == "vfat":
            fsck = scope.popen(["fsck.fat", "-n", args[0]], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
            fsck_ok = fsck.wait() == 0
            scope.reaped(fsck)
        registry.check()
    return _classify(p, mode, site, errors, alive=alive, fsck_ok=fsck_ok,
                     recoveries=recoveries, seconds=time.monotonic() - t0)


def _classify(p: Planned, mode: str, site: str | None, errors: list[str], *, alive: bool,
              fsck_ok: bool, recoveries: int, seconds: float) -> RunResult:
    native = mode == "native"
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
                     recoveries=recoveries, seconds=seconds)


def _runs(drivers: list[str], faults: int, only: int | None) -> int:
    """How many runs the command plans: each fault twice, natively and under nooks."""
    per_driver = faults if only is None else int(0 <= only < faults)
    return len(drivers) * per_driver * 2


def campaign(drivers: list[str], faults: int, *, jobs: int, seed: int, out_dir: str,
             only: int | None = None, registry: Registry | None = None,
             progress: Callable[[RunResult], None] = lambda r: None) -> Done:
    """Run (or resume) a campaign until it is done or ``registry`` is stopped.

    A run that raises stops the others; once everything is torn down, its
    exception is raised here.
    """
    registry = registry or Registry()
    os.makedirs(out_dir, exist_ok=True)
    results_path = os.path.join(out_dir, "results.jsonl")
    failures: list[BaseException] = []
    try:
        finished = {key(r) for r in load_results(results_path)}
        todo: list[tuple[Planned, bool, list[int]]] = []
        for driver in drivers:
            lines = coverage(driver, out_dir, registry)
            for p in plan(driver, faults, seed, lines):
                if only is not None and p.index != only:
                    continue
                for native in (True, False):
                    if (p.driver, p.index, "native" if native else "nooks") not in finished:
                        todo.append((p, native, lines))
        _run_all(todo, jobs=jobs, results_path=results_path, registry=registry,
                 progress=progress, failures=failures)
    except Exception:
        if not registry.stopped:
            raise  # the finally tears down what this left
        # else: it failed because everything was being killed (or was refused)
    finally:
        registry.teardown()
    if failures:
        raise failures[0]
    results = load_results(results_path)
    wanted = set(drivers)
    count = sum(1 for r in results if r.driver in wanted
                and (r.index == only if only is not None else r.index < faults))
    return Done(results=results, planned=_runs(drivers, faults, only), done=count,
                stopped_by=signal_name(registry.signum) if registry.stopped else None,
                signum=registry.signum if registry.stopped else None)


def signal_name(signum: int | None) -> str:
    return signal.Signals(signum).name if signum is not None else "an error"


def _run_all(todo: list[tuple[Planned, bool, list[int]]], *, jobs: int, results_path: str,
             registry: Registry, progress: Callable[[RunResult], None],
             failures: list[BaseException]) -> None:
    """Run ``todo`` on ``jobs`` threads; return when all are done, or ``GRACE`` seconds
    after the registry was stopped (the scopes still open are then torn down)."""
    items = iter(todo)
    lock = threading.Lock()

    def worker() -> None:
        while not registry.stopped:
            with lock:
                item = next(items, None)
            if item is None:
                return
            try:
                r = run_one(*item, registry)
            except Interrupted:
                return
            except BaseException as e:
                if not registry.stopped:
                    failures.append(e)
                    registry.interrupt()
                return
            # a result returned was seen whole before any stop (run_one checks last)
            with lock:
                append_result(results_path, r)
            progress(r)

    threads = [threading.Thread(target=worker, name=f"campaign-{i}", daemon=True)
               for i in range(max(1, min(jobs, len(todo))))]
    for t in threads:
        t.start()
    end: float | None = None
    for t in threads:
        while t.is_alive():
            t.join(0.1)
            if registry.stopped:
                end = end or time.monotonic() + GRACE
                if time.monotonic() > end:
                    return
