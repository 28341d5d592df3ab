"""The ``nooks`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from typing import Any

import msgspec
from rich.console import Console
from rich.table import Table

from nooks import argcheck, limitflags
from nooks.argcheck import Formatter, Parser
from nooks.bench import command as bench_command
from nooks.domain.config import FAULTS, FaultPlan

# into a pipe or a file, tables keep whole lines rather than wrap at 80 columns
console = Console() if sys.stdout.isatty() else Console(width=200)
errors = Console(stderr=True, soft_wrap=True, highlight=False)


def _error(text: str) -> None:
    """A clear error on stderr, one line, unwrapped."""
    errors.print(f"[red]{text}[/red]")


def _say(text: str) -> None:
    """One plain line on stdout, at once (tools read it)."""
    print(text, flush=True)


def _crash_matrix() -> bool:
    from nooks.domain.host import Domain
    from nooks.domain.spec import DriverSpec
    from nooks.drivers.probe import ProbeInterface
    from nooks.tools.crashes import MATRIX, run_case

    # a bystander domain keeps serving while the others crash
    bystander = Domain(DriverSpec(target="nooks.drivers.probe:Probe", interface=ProbeInterface,
                                  name="bystander"))
    stop = threading.Event()
    served = [0]
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            while not stop.is_set():
                assert bystander.call("add", served[0], 1) == served[0] + 1
                served[0] += 1
        except BaseException as e:
            errors.append(e)

    th = threading.Thread(target=serve)
    th.start()
    t = Table(title="Crash matrix: each failure detected, classified and recovered")
    for col in ("fault", "detected as", "report", "detect", "restart", "ok"):
        t.add_column(col)
    all_ok = True
    t0 = time.monotonic()
    for case in MATRIX:
        with console.status(f"crash: {case.name}"):
            o = run_case(case)
        r = o.report
        all_ok &= o.ok
        t.add_row(case.name, r.kind.value if r else "-", (r.detail if r else "not detected")[:60],
                  f"{o.detect_ms:.0f} ms", f"{o.restart_ms:.0f} ms",
                  "[green]yes[/green]" if o.ok else "[red]NO[/red]")
    stop.set()
    th.join()
    bystander.close()
    console.print(t)
    console.print(f"bystander domain served {served[0]:,} calls meanwhile "
                  f"({served[0] / (time.monotonic() - t0):,.0f}/s), errors: {len(errors)}")
    return all_ok and not errors


def _demo(args: argparse.Namespace) -> int:
    if args.what == "xpc":
        from nooks.bench import xpc

        console.rule("nooks: XPC and the crash matrix")
        with console.status("benchmarking XPC") as status:
            result = xpc.run(quick=args.quick, progress=lambda s: status.update(f"XPC: {s}"))
        bench_command.print_xpc(result)
        return 0 if _crash_matrix() else 1
    from nooks.tools import demo

    return demo.main(console, limit=args.files)


def _parse_size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower().removesuffix("b").removesuffix("i")
    try:
        if t and t[-1] in units:
            return int(float(t[:-1]) * units[t[-1]])
        return int(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 64M)") from None


def _parse_bind(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text
    try:
        number = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT") from None
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"port {number} is out of range")
    return host.strip("[]") or "127.0.0.1", number


def _serve(args: argparse.Namespace) -> int:
    import resource

    from nooks.web.apps import resolve
    from nooks.web.host import FDS_BESIDES_CONNECTIONS, WebHost
    from nooks.web.http import HttpLimits

    # like other WSGI servers: applications are found from the current directory
    sys.path.insert(0, os.getcwd())
    try:
        app = resolve(args.app)
    except ValueError as e:
        _error(f"nooks serve: {e}")
        return 2
    need = args.max_connections + FDS_BESIDES_CONNECTIONS
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and need > hard:
        _error(f"nooks serve: --max-connections {args.max_connections} needs {need:,} file "
               f"descriptors; this process may open at most {hard:,} (ulimit -Hn)")
        return 2

    def ready() -> None:
        where = f"{host.address[0]}:{host.address[1]}"
        # one plain line, first on stdout: tools read the address from it
        print(f"serving {app.label} on http://{where} with {args.workers} "
              f"{'native ' if args.native else ''}worker(s)", flush=True)

    try:
        fault = msgspec.json.decode(args.fault_plan, type=FaultPlan) if args.fault_plan else None
        host = WebHost(app, args.bind, workers=args.workers, native=args.native,
                       name=args.name, deadline=args.timeout, queue_timeout=args.queue_timeout,
                       max_connections=args.max_connections,
                       limits=HttpLimits(max_body=args.max_body,
                                         request_timeout=args.request_timeout,
                                         idle_timeout=args.idle_timeout,
                                         send_timeout=args.send_timeout),
                       retry_safe=tuple(args.retry_safe), fault=fault, on_ready=ready,
                       domain_limits=limitflags.limits(args), record_lines=args.record_lines)
    except OSError as e:
        _error(f"nooks serve: cannot listen on {args.bind[0]}:{args.bind[1]}: {e.strerror}")
        return 1
    except Exception as e:
        _error(f"nooks serve: the application did not start: {e}")
        return 1
    try:
        host.run()
    except RuntimeError as e:  # e.g. another host has this name
        _error(f"nooks serve: {e}")
        return 1
    return 0


def _find_host(name: str) -> tuple[str, Any] | None:
    from nooks.control import hosts

    real = os.path.realpath(name)
    for path, st in hosts():
        if st.get("name") in (name, real) or st.get("mountpoint") == real:
            return path, st
    return None


def _dead_hosts() -> list[dict[str, Any]]:
    """Hosts that died without cleaning up, as status entries."""
    from nooks.control import stale
    from nooks.fs.mounts import entry

    out = []
    dead = stale()
    swept: list[str] = []
    if any(rec.get("class") == "net" for _, rec in dead):
        from nooks.net.topology import sweep

        swept = sweep()  # the namespaces a dead network host left
    for _, rec in dead:
        mnt = rec.get("mountpoint")
        mounted = isinstance(mnt, str) and entry(mnt) is not None
        hint = f"nooks umount {mnt}" if mounted else "nooks status clears it"
        left = [ns for ns in swept if ns in (rec.get("netns"), rec.get("peer_netns"))
                or ns == f"{rec.get('netns')}-wire"]
        if left:
            hint = f"namespaces it left removed: {', '.join(left)}"
        out.append({"name": rec.get("name", "?"), "class": rec.get("class"),
                    "driver": rec.get("driver", "?"), "mountpoint": mnt, "state": "dead",
                    "host_pid": rec.get("pid"), "stale_mount": mounted, "hint": hint,
                    "swept": left})
    return out


def _status(args: argparse.Namespace) -> int:
    from nooks.control import forget, hosts, stale

    if args.name:
        found = _find_host(args.name)
        if found is None:
            real = os.path.realpath(args.name)
            dead = [d for d in _dead_hosts() if d["name"] in (args.name, real)
                    or d["mountpoint"] == real]
            if dead:
                statuses = dead
            else:
                _error(f"no running nooks host named {args.name!r}")
                return 1
        else:
            statuses = [found[1]]
    else:
        statuses = [st for _, st in hosts()] + _dead_hosts()
    # a dead host with nothing left mounted needs no clearing: forget it once shown
    for path, rec in stale():
        if not any(d.get("stale_mount") for d in statuses if d.get("host_pid") == rec.get("pid")):
            forget(path)
    if args.json:
        print(json.dumps(statuses[0] if args.name else statuses, indent=2))
        return 0
    t = Table(title="nooks hosts")
    for col in ("name", "driver", "domain pid", "state", "calls", "recoveries", "last"):
        t.add_column(col)
    for st in statuses:
        if st["state"] == "dead":
            t.add_row(st["name"], st["driver"], "-", "[red]dead[/red]", "-", "-",
                      f"host pid {st['host_pid']} is gone"
                      + (f"; stale mount: {st['hint']}" if st["stale_mount"] else "")
                      + (f"; {st['hint']}" if st.get("swept") else ""))
            continue
        recs = st.get("recoveries", [])
        last = (f"{recs[-1]['kind']} ({recs[-1]['detail']}), {recs[-1]['duration_ms']:.1f} ms"
                if recs else "")
        t.add_row(st["name"], st["driver"], str(st.get("domain_pid") or "-"),
                  f"{st['state']}/{st['mode']}", f"{st['calls']:,}", str(len(recs)), last)
    console.print(t)
    return 0


def _inject(args: argparse.Namespace) -> int:
    from nooks.control import request

    found = _find_host(args.name)
    if found is None:
        _error(f"no running nooks host named {args.name!r}")
        return 1
    req: dict[str, Any] = {"cmd": "inject", "fault": args.fault}
    if args.worker is not None:
        req["worker"] = args.worker
    reply = request(found[0], req, timeout=120.0)
    name = found[1]["name"]
    if "error" in reply:
        _error(f"nooks inject: {args.fault} into {name}: {reply['error']}")
        return 1
    if reply.get("armed"):
        console.print(f"armed {args.fault} in {name}: native mode, it happens at the next "
                      "request")
        return 0
    failure = reply.get("failure")
    if failure is None:
        console.print(f"injected {args.fault} into {name}")
        return 0
    how = (f"recovered in {reply['recovery_ms']:.1f} ms" if reply.get("recovered")
           else "NOT recovered" if reply.get("recovered") is False else "recovering")
    console.print(f"injected {args.fault} into {name}: driver {failure['kind']} "
                  f"({failure['detail']}); {how}")
    return 0 if reply.get("recovered") is not False else 1


def _eval(args: argparse.Namespace) -> int:
    """The campaign. SIGINT and SIGTERM stop it: every host, domain, mount, program and
    temp dir it started is taken down, a partial report is written, and it exits
    with 128 + the signal's number (130, 143); the same command resumes it."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from nooks.eval import campaign, report
    from nooks.eval.registry import Registry

    drivers = args.driver or list(campaign.DRIVERS)
    for d in drivers:
        if d not in campaign.DRIVERS:
            _error(f"nooks eval: no campaign set-up for driver {d!r} "
                   f"(known: {', '.join(campaign.DRIVERS)})")
            return 2
    if args.faults < 1 or args.jobs < 1:
        _error("nooks eval: --faults and --jobs must be at least 1")
        return 2
    for d in drivers:
        if args.mode not in campaign.TARGETS[d].modes:
            _error(f"nooks eval: {d} has no {args.mode} mode")
            return 2
    command = " ".join(["nooks eval reliability", *(f"--driver {d}" for d in drivers),
                        f"--faults {args.faults}", f"--jobs {args.jobs}", f"--seed {args.seed}",
                        *([f"--mode {args.mode}"] if args.mode != "host" else []),
                        f"--out {args.out}"])
    counts: dict[str, int] = {}
    total = len(drivers) * args.faults * 2 if args.only is None else len(drivers) * 2
    registry = Registry()
    with registry.signals():  # until the report is written: a signal only stops the runs
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=console) as progress:
            task = progress.add_task("coverage dry runs, then faults", total=total)

            def seen(r: Any) -> None:
                counts[f"{r.mode}: {r.outcome}"] = counts.get(f"{r.mode}: {r.outcome}", 0) + 1
                progress.advance(task)
                progress.update(task, description=", ".join(
                    f"{k} {v}" for k, v in sorted(counts.items())))

            done = campaign.campaign(drivers, args.faults, jobs=args.jobs, seed=args.seed,
                                     out_dir=args.out, only=args.only, registry=registry,
                                     serving=args.mode,
                                     progress=seen)
        written = report.write(done.results, args.out, command, args.seed,
                               report.Progress(done.done, done.planned, done.stopped_by))
    t = Table(title="Reliability: faults injected into drivers")
    for col in ("driver", "faults", "native failures", "prevented", "non-fatal (native)",
                "app-visible errors (nooks)", "data-check failures (nooks)",
                "worse than native (nooks)"):
        t.add_column(col, justify="right")
    for d, s in sorted(written.summary.items()):
        pct = f" ({100 * s['prevented'] / s['native_failures']:.0f}%)" \
            if s["native_failures"] else ""
        t.add_row(d, str(s["faults"]), str(s["native_failures"]), f"{s['prevented']}{pct}",
                  str(s["non_fatal"]), str(s["app_visible_errors"]),
                  str(s["data_check_failures"]), str(s["worse_than_native"]))
    console.print(t)
    if written.chart_note is not None:
        console.print(written.chart_note, markup=False)
    console.print(f"report: {', '.join(written.paths)}", markup=False)
    if done.stopped_by is not None:
        console.print(f"interrupted by {done.stopped_by}: {done.done} of {done.planned} runs "
                      "done, the report is partial; run the same command again to resume")
        return 128 + done.signum if done.signum is not None else 1
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nooks")
    except PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    from nooks.fs import command
    from nooks.net import command as net_command

    p = Parser(prog="nooks", description="Driver isolation and recovery for user-space "
                "drivers: filesystems behind FUSE, web applications behind HTTP.")
    p.add_argument("--version", action="version", version=f"nooks {_version()}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    command.add_parsers(sub, Formatter, _error, console.print)
    net_command.add_parser(sub, Formatter, _error, _say)
    bench_command.add_parser(sub)
    d = sub.add_parser("demo", help="a FAT filesystem survives its driver failing "
                       "(or: demo xpc, the XPC benchmark and the crash matrix)")
    d.add_argument("what", nargs="?", default="fs", choices=["fs", "xpc"],
                   help="fs: a FAT image through nooks while its driver fails; xpc: the XPC "
                   "benchmark and the crash matrix")
    d.add_argument("--files", type=argcheck.count(1, 1 << 30), default=None,
                   help="copy only this many files (default: all of the standard library)")
    d.add_argument("--quick", action="store_true", help="xpc: fewer rounds")
    d.set_defaults(func=_demo)

    from nooks.argcheck import count, seconds, size

    sv = sub.add_parser("serve", help="serve a web application through nooks",
                        description="nooks serve module:app | static:DIR: the application "
                        "runs in domains behind the host's HTTP listener")
    sv.add_argument("app", help="a WSGI application (module:app or module:factory()) or "
                    "static:DIR")
    sv.add_argument("--bind", type=_parse_bind, default=("127.0.0.1", 8080),
                    help="HOST:PORT to listen on (default 127.0.0.1:8080; port 0: any)")
    sv.add_argument("--workers", type=count(1, 64), default=2,
                    help="domains running the application, 1 to 64 (default 2)")
    sv.add_argument("--native", action="store_true",
                    help="run the application in-process, unprotected (default: off)")
    sv.add_argument("--name", help="name for status and inject (default: the bind address)")
    sv.add_argument("--timeout", type=seconds(0.01, 3600), default=30.0,
                    help="seconds a request may run before the application counts as hung, "
                    "0.01 to 3600 (default 30)")
    sv.add_argument("--queue-timeout", type=seconds(0.01, 3600), default=10.0,
                    help="seconds a request may wait for a worker before it is answered 503, "
                    "0.01 to 3600 (default 10)")
    sv.add_argument("--max-connections", type=count(1, 100_000), default=512,
                    help="connections open at once, 1 to 100000; at the limit a new "
                    "client takes the place of one idle or slow to send its request, "
                    "else waits in the listener's backlog (default 512)")
    sv.add_argument("--request-timeout", type=seconds(0.01, 3600), default=10.0,
                    help="seconds from a request's first byte to its last (slow clients: "
                    "408), 0.01 to 3600 (default 10)")
    sv.add_argument("--idle-timeout", type=seconds(0.01, 3600), default=5.0,
                    help="seconds a kept-alive connection may wait for its next request, "
                    "0.01 to 3600 (default 5)")
    sv.add_argument("--send-timeout", type=seconds(0.01, 3600), default=30.0,
                    help="seconds a response may wait for the client to read before the "
                    "connection is closed, 0.01 to 3600 (default 30)")
    sv.add_argument("--max-body", type=size(1, 64 << 20), default=8 << 20,
                    help="largest request body, 1 to 64M (default 8M)")
    sv.add_argument("--retry-safe", action="append", default=[], metavar="'METHOD /PATTERN'",
                    help="a route safe to run again after a failure even though its method "
                    "is not idempotent (repeatable; default: none)")
    limitflags.add(sv)
    sv.add_argument("--fault-plan", help=argparse.SUPPRESS)
    sv.add_argument("--record-lines", help=argparse.SUPPRESS)
    sv.set_defaults(func=_serve)

    stp = sub.add_parser("status", help="running nooks hosts, their drivers and recoveries")
    stp.add_argument("name", nargs="?", help="one host, by name or mountpoint (default: all)")
    stp.add_argument("--json", action="store_true", help="print JSON instead of a table")
    stp.set_defaults(func=_status)

    ij = sub.add_parser("inject", help="make a running driver fail now, and say what happened")
    ij.add_argument("name", help="the host, by name or mountpoint")
    ij.add_argument("--fault", required=True, choices=list(FAULTS), help="how it fails")
    ij.add_argument("--worker", type=argcheck.count(0, 1 << 16),
                    help="web hosts: which worker (default: each in turn)")
    ij.set_defaults(func=_inject)

    ev = sub.add_parser("eval", help="run an evaluation campaign",
                        description="nooks eval reliability: the fault-injection campaign "
                        "(docs/RELIABILITY.md). SIGINT or SIGTERM stops it, cleans up what it "
                        "started and writes a partial report; it then exits 130 or 143, and "
                        "the same command resumes it.")
    ev.add_argument("what", choices=["reliability"])
    ev.add_argument("--driver", action="append", help="vfat, passthrough, static, flask "
                    "(repeatable; default: all)")
    ev.add_argument("--faults", type=int, default=400, help="faults per driver")
    ev.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ev.add_argument("--seed", type=int, default=1)
    ev.add_argument("--out", default="out/reliability", help="results directory (resumable)")
    ev.add_argument("--only", type=int, help="run only the fault with this index (replay)")
    ev.add_argument("--mode", choices=["host", "direct"], default="host",
                    help="the mode isolated filesystem hosts serve in (default: host; use a "
                    "results directory of its own for each mode)")
    ev.set_defaults(func=_eval)

    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    ctor_args: list[str] = []
    if argv[:1] == ["mount"] and "--" in argv:
        at = argv.index("--")
        argv, ctor_args = argv[:at], argv[at + 1:]
    args = build_parser().parse_args(argv)
    if ctor_args:
        args.ctor_args = ctor_args
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
