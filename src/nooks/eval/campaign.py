"""The reliability campaign: inject faults into a driver's code, run real programs
against it natively and under nooks, and classify what happened.

The campaign is the same for every driver class; what a class contributes — how
to start its host, its workload, its data checks and its outcome rules — is its
``Target`` (``nooks.eval.target``; the filesystem's in ``nooks.eval.fs``, the
web's in ``nooks.eval.web``). One *run* is one fault (type, seed) in one mode,
on a fresh state (an image, a backing directory, a document root, a ledger) and
a fresh host. Under nooks, after the workload, the host does what it does before
it stops (the filesystem's checkpoint), then the run looks again at what the
workload left (in both modes); once the host is gone, the state it left is
checked (fsck, the ledger). Outcomes:

* ``system failure``: the host died or hung, or the workload met what the class
  calls the system's failure (a lost mount, a refused connection; natively, for
  the filesystem, EIO — for a kernel: the crash);
* ``app-visible error``: the system kept running but a program failed or saw
  wrong data;
* ``recovered``: the driver failed and nooks recovered it, nobody noticed;
* ``no effect``: the fault did not show.

Faults land on lines the workload executes: a coverage dry run (the workload
on a native host, tracing the driver's file) gives the lines, as the seed
placed its faults in the driver's text. Results are appended to
``results.jsonl`` as they come, so a campaign can be resumed (``results``).

Rules for stopping: everything a run starts — its temp dir, its mount, the
host and each program, every process in a session of its own — is in the run's
``Scope`` (``registry``), which tears it down when the run ends, however it
ends. ``Registry.interrupt`` (SIGINT, SIGTERM, or a run that raised) kills
every run's processes at once; the runs in flight then end quickly, are not
recorded, and nothing new starts. The campaign waits up to ``GRACE`` seconds
for them, tears down whatever is still open and returns what was done
(``Done.stopped_by`` says why it stopped); a rerun does the rest.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from nooks.domain.config import FaultPlan
from nooks.eval import fs, net, web
from nooks.eval.registry import Interrupted, Registry
from nooks.eval.results import RunResult, append_result, key, load_results, pairs
from nooks.eval.target import NotStarted, Run, Target
from nooks.faults.mutate import FAULT_TYPES, Fault, NoSite, mutate

__all__ = ["DRIVERS", "Done", "Planned", "RunResult", "campaign", "load_results", "pairs",
           "plan", "run_one"]

TARGETS: dict[str, Target] = {t.driver: t for t in (*fs.TARGETS, *web.TARGETS,
                                                    *net.TARGETS)}
DRIVERS = tuple(TARGETS)
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


def coverage(driver: str, out_dir: str, registry: Registry) -> list[int]:
    """Lines of the driver's module that the workload executes (cached in ``out_dir``)."""
    path = os.path.join(out_dir, f"coverage-{driver}.json")
    if os.path.exists(path):
        with open(path) as f:
            return list(json.load(f))
    target = TARGETS[driver]
    with registry.scope() as scope:
        tmp = scope.tempdir(TEMP_PREFIX + "cov-")
        lines_file = os.path.join(tmp, "lines.json")
        try:
            run = target.start(scope, tmp, f"cov-{os.getpid()}-{driver}", native=True,
                               extra=["--record-lines", lines_file])
        except NotStarted as e:
            registry.check()
            raise RuntimeError(f"{driver} does not start without faults: {e}") from e
        try:
            errors = run.workload(0, lambda: None)
        finally:
            if not registry.stopped:
                run.stop()
        registry.check()
        errors += run.after()
        if errors:
            raise RuntimeError(f"the workload fails on {driver} without faults: {errors}")
        with open(lines_file) as f:
            lines = list(json.load(f))
    with open(path + ".tmp", "w") as f:
        json.dump(lines, f)
    os.replace(path + ".tmp", path)
    return lines


def plan(driver: str, faults: int, seed: int, lines: list[int]) -> list[Planned]:
    """The faults of a campaign: types in turn, each seed giving a site on a covered line.

    A type with no site on the covered lines is left out (the campaign says so).
    """
    source = TARGETS[driver].source()
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
            registry: Registry | None = None, serving: str = "host") -> RunResult:
    """One fault, one mode, on a fresh state and host; ``Interrupted`` if the
    campaign was stopped meanwhile (what it saw then does not count); ``serving``:
    the mode the isolated run's host serves in (``Target.modes``)."""
    registry = registry or Registry()
    target = TARGETS[p.driver]
    mode = "native" if native else "nooks"
    fault = FaultPlan(module=target.module, kind=p.kind, seed=p.seed, lines=lines)
    t0 = time.monotonic()

    def result(outcome: str, errors: list[str], problems: list[str], site: str | None,
               recoveries: int) -> RunResult:
        return RunResult(driver=p.driver, index=p.index, mode=mode, kind=p.kind,
                         seed=p.seed, site=site, outcome=outcome,
                         data_ok=not problems and not any(map(target.data_error, errors)),
                         detail="; ".join(errors + problems)[:500], recoveries=recoveries,
                         seconds=time.monotonic() - t0)

    with registry.scope() as scope:
        tmp = scope.tempdir(TEMP_PREFIX + "run-")
        name = f"eval-{os.getpid()}-{p.driver}-{p.index}-{mode}"
        try:
            extra = ["--fault-plan", msgspec.json.encode(fault).decode()]
            if not native and serving != "host":
                extra += ["--mode", serving]
            run = target.start(scope, tmp, name, native=native, extra=extra)
        except NotStarted as e:
            registry.check()
            return result("system failure", [str(e)], [], None, 0)
        site: str | None = None
        recoveries = 0
        try:
            st = run.status()
            site = st.get("fault_site") if st is not None else None
            errors, alive = _exercise(run, p.seed)
            if alive:
                st = run.status()
                if st is None:
                    alive = False
                else:
                    recoveries = len(st["recoveries"]) + len(st.get("start_failures", []))
        finally:
            if not registry.stopped:  # stopped: the scope takes it all down at once
                run.stop()
        registry.check()
        problems = run.after()
        registry.check()
    return result(_outcome(target, native, errors, alive=alive, recoveries=recoveries),
                  errors, problems, site, recoveries)


def _exercise(run: Run, seed: int) -> tuple[list[str], bool]:
    """The workload, then (under nooks) what the host does before it stops, then the
    recheck: what went wrong, and whether the host is still alive."""
    def on_hang() -> None:
        run.scope.kill(run.proc)

    errors = run.workload(seed, on_hang)
    alive = run.alive()
    if alive:
        try:
            if not run.native:
                # the check the host makes before it stops, made now, so that a
                # rollback it leads to is counted with the recoveries
                run.checkpoint()
            if not errors:
                # and what the programs wrote is still there after it
                errors = run.recheck(on_hang)
        except (OSError, msgspec.DecodeError):
            alive = False
        alive = alive and run.alive()
    return errors, alive


def _outcome(target: Target, native: bool, errors: list[str], *, alive: bool,
             recoveries: int) -> str:
    if not alive or any(target.lost(e, native) for e in errors):
        return "system failure"
    if errors:
        return "app-visible error"
    return "recovered" if recoveries else "no effect"


def _runs(drivers: list[str], faults: int, only: int | None) -> int:
    """How many runs the command plans: each fault twice, natively and under nooks."""
    per_driver = faults if only is None else int(0 <= only < faults)
    return len(drivers) * per_driver * 2


def campaign(drivers: list[str], faults: int, *, jobs: int, seed: int, out_dir: str,
             only: int | None = None, registry: Registry | None = None, serving: str = "host",
             progress: Callable[[RunResult], None] = lambda r: None) -> Done:
    """Run (or resume) a campaign until it is done or ``registry`` is stopped.

    A run that raises stops the others; once everything is torn down, its
    exception is raised here. ``serving``: the mode isolated hosts serve in.
    """
    for driver in drivers:
        if serving not in TARGETS[driver].modes:
            raise ValueError(f"{driver} has no {serving} mode")
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
                 progress=progress, failures=failures, serving=serving)
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
             failures: list[BaseException], serving: str) -> None:
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
                r = run_one(*item, registry, serving)
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
