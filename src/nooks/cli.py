"""The ``nooks`` command line."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import threading
import time
from typing import Any

import msgspec
from rich.console import Console
from rich.table import Table

from nooks.domain.config import FAULTS, FaultPlan

# into a pipe or a file, tables keep whole lines rather than wrap at 80 columns
console = Console() if sys.stdout.isatty() else Console(width=200)
errors = Console(stderr=True, soft_wrap=True, highlight=False)


def _error(text: str) -> None:
    """A clear error on stderr, one line, unwrapped."""
    errors.print(f"[red]{text}[/red]")


def _bench(args: argparse.Namespace) -> int:
    if args.what == "web":
        from nooks.bench import web

        with console.status("benchmarking the web class") as status:
            result = web.run(workers=args.workers, quick=args.quick,
                             progress=lambda s: status.update(f"web: {s}"))
        _print_web(result)
    elif args.what == "fs":
        from nooks.bench import fs

        with console.status("benchmarking the filesystem class") as status:
            result = fs.run(driver=args.driver, quick=args.quick, placement=args.placement,
                            progress=lambda s: status.update(f"fs: {s}"))
        _print_fs(result)
    else:
        from nooks.bench import xpc

        with console.status("benchmarking XPC") as status:
            result = xpc.run(quick=args.quick, progress=lambda s: status.update(f"XPC: {s}"))
        _print_xpc(result)
    if args.json:
        text = json.dumps(result, indent=2)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w") as f:
                f.write(text + "\n")
    return 0 if all(result["targets_met"].values()) else 1


def _print_xpc(r: dict[str, Any]) -> None:
    t = Table(title="XPC: one crossing, measured in this run (medians)")
    t.add_column("what")
    t.add_column("figure", justify="right")
    t.add_column("vs", justify="right")
    floor, null = r["socketpair_rtt_us"], r["null_rtt_us"]
    t.add_row("socketpair ping-pong (floor)", f"{floor:.1f} µs", "1.00× floor")
    t.add_row("null call through nooks", f"{null:.1f} µs", f"{null / floor:.2f}× floor")
    t.add_row("  same, across cores: floor / nooks",
              f"{r['socketpair_rtt_cross_core_us']:.1f} / {r['null_rtt_cross_core_us']:.1f} µs",
              f"{r['null_rtt_cross_core_us'] / r['socketpair_rtt_cross_core_us']:.2f}× floor")
    t.add_row("  across cores, nooks polling (default)",
              f"{r['null_rtt_cross_core_polling_us']:.1f} µs",
              f"{r['null_rtt_cross_core_polling_us'] / r['socketpair_rtt_cross_core_us']:.2f}×"
              " floor")
    t.add_row("native null call (in-process)", f"{r['native_call_us']:.2f} µs", "")
    t.add_row("4 KiB echo (inline)", f"{r['rtt_4k_us']:.1f} µs",
              f"{r['rtt_4k_us'] / null:.2f}× null")
    t.add_row("4 KiB echo (arenas)", f"{r['rtt_4k_arena_us']:.1f} µs",
              f"{r['rtt_4k_arena_us'] / null:.2f}× null")
    t.add_row("128 KiB in, 128 KiB out (arenas)", f"{r['rtt_128k_us']:.1f} µs",
              f"{r['rtt_128k_us'] / null:.2f}× null")
    t.add_row("128 KiB in (arenas)", f"{r['rtt_128k_in_us']:.1f} µs",
              f"{r['rtt_128k_in_us'] / null:.2f}× null")
    t.add_row("native 128 KiB echo", f"{r['native_128k_us']:.2f} µs", "")
    t.add_row("kernel call (nested, driver→host)", f"{r['kernel_call_rtt_us']:.1f} µs", "")
    t.add_row("calls/s unbatched", f"{r['calls_per_s_unbatched']:,.0f}", "")
    t.add_row("calls/s batched (64 per crossing)", f"{r['calls_per_s_batched']:,.0f}",
              f"{r['ratio_batched_to_unbatched']:.1f}× unbatched")
    t.add_row("restart from warm spare, p50", f"{r['restart_ms_p50']:.2f} ms",
              f"max {r['restart_ms_max']:.2f} ms")
    t.add_row("restart incl. driver construction, p50",
              f"{r['restart_constructed_ms_p50']:.2f} ms", "")
    t.add_row("cold start (no spare)", f"{r['cold_start_ms']:.1f} ms", "")
    console.print(t)
    for target, met in r["targets_met"].items():
        mark = "[green]met[/green]" if met else "[red]MISSED[/red]"
        console.print(f"  target {target}: {mark}")


def _print_fs(r: dict[str, Any]) -> None:
    t = Table(title=f"Filesystem: {r['driver']}, one run, placement {r['placement']}")
    for col in ("workload", "direct mfusepy", "native", "nooks", "nooks/native",
                "nooks/direct"):
        t.add_column(col, justify="right")
    units = {"stat_ops_s": "stat/s", "create_unlink_ops_s": "create+unlink/s",
             "write_mb_s": "write MB/s", "read_mb_s": "read MB/s", "build_s": "build-like s"}
    unchecked = r.get("ratio_unchecked_to_native")
    if unchecked is not None:
        t.add_column("without checkpoints ÷ native", justify="right")
    for key, label in units.items():
        row = [label, f"{r['direct'][key]:,.1f}", f"{r['native'][key]:,.1f}",
               f"{r['nooks'][key]:,.1f}", f"{r['ratio_to_native'][key]:.2f}×",
               f"{r['ratio_to_direct'][key]:.2f}×"]
        if unchecked is not None:
            row.append(f"{unchecked[key]:.2f}×")
        t.add_row(*row)
    console.print(t)
    console.print(f"recovery under a stat() load: p50 {r['recovery_ms_p50']:.1f} ms, "
                  f"p99 {r['recovery_ms_p99']:.1f} ms over {r['recoveries']} SIGSEGVs")
    for target, met in r["targets_met"].items():
        mark = "[green]met[/green]" if met else "[red]MISSED[/red]"
        console.print(f"  target {target}: {mark}")


def _print_web(r: dict[str, Any]) -> None:
    t = Table(title=f"Web: requests/s with wrk, {r['workers']} workers, "
              f"{r['connections']} connections, one run")
    for col in ("extension", "nooks", "native", "gunicorn", "nooks/native", "nooks/gunicorn",
                "nooks p99"):
        t.add_column(col, justify="right")
    for key, label in (("static_4k", "4 KiB static page"), ("flask", "Flask route")):
        x = r[key]
        t.add_row(label, f"{x['nooks']['requests_s']:,.0f}", f"{x['native']['requests_s']:,.0f}",
                  f"{x['gunicorn']['requests_s']:,.0f}",
                  f"{r['ratios'][key]['nooks/native']:.2f}×",
                  f"{r['ratios'][key]['nooks/gunicorn']:.2f}×",
                  f"{x['nooks']['p99_ms']:.1f} ms")
    console.print(t)
    for target, met in r["targets_met"].items():
        mark = "[green]met[/green]" if met else "[red]MISSED[/red]"
        console.print(f"  target {target}: {mark}")


def _crash_matrix() -> bool:
    from nooks.crashes import MATRIX, run_case
    from nooks.domain.host import Domain
    from nooks.domain.spec import DriverSpec
    from nooks.drivers.probe import ProbeInterface

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
        _print_xpc(result)
        return 0 if _crash_matrix() else 1
    from nooks import demo

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


def _fuse_options(text: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for raw in (text or "").split(","):
        item = raw.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        out[key] = value if sep else True
    return out


def _mount(args: argparse.Namespace) -> int:
    from nooks.fs.drivers import resolve
    from nooks.fs.host import FsHost

    if len(args.rest) < 1:
        _error("nooks mount: give the driver's arguments and a mountpoint")
        return 2
    *driver_args, mountpoint = args.rest
    if not 0 <= args.check_interval <= 86400:
        _error("nooks mount: --check-interval must be between 0 and 86400 seconds, not "
               f"{args.check_interval}")
        return 2
    try:
        checker = tuple(shlex.split(args.checker)) if args.checker is not None else None
        if checker == ():
            raise ValueError("--checker needs a command")
        if checker and shutil.which(checker[0]) is None:
            raise ValueError(f"--checker: {checker[0]}: command not found")
        driver = resolve(args.driver, [*driver_args, *args.ctor_args], state=args.state,
                         image=args.image, checker=checker)
    except ValueError as e:
        _error(f"nooks mount: {e}")
        return 2
    if not os.path.isdir(mountpoint):
        _error(f"nooks mount: {mountpoint}: not a directory")
        return 2
    ready_w = -1
    if args.daemon:
        ready_r, ready_w = os.pipe()
        pid = os.fork()
        if pid:
            os.close(ready_w)
            with os.fdopen(ready_r, "rb") as r:
                ok = r.read(1) == b"1"
            if not ok:
                os.waitpid(pid, 0)
                _error("nooks mount: the host failed to start")
                return 1
            console.print(f"mounted {mountpoint} (host pid {pid})")
            return 0
        os.close(ready_r)
        os.setsid()
        # detach from the terminal before anything starts (domains inherit these)
        devnull = os.open(os.devnull, os.O_RDWR)
        log = os.open(args.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640) \
            if args.log else devnull
        os.dup2(devnull, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)

    def ready() -> None:
        if ready_w >= 0:
            os.write(ready_w, b"1")
            os.close(ready_w)

    try:
        fault = msgspec.json.decode(args.fault_plan, type=FaultPlan) if args.fault_plan else None
        host = FsHost(driver, mountpoint, name=args.name, native=args.native,
                      threads=args.threads, deadline=args.deadline,
                      options=_fuse_options(args.options), on_ready=ready, fault=fault,
                      record_lines=args.record_lines, check_interval=args.check_interval)
    except Exception as e:
        _error(f"nooks mount: the driver did not start: {e}")
        return 1
    host.run()
    return 0


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
                       retry_safe=tuple(args.retry_safe), fault=fault, on_ready=ready)
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


def _status(args: argparse.Namespace) -> int:
    from nooks.control import hosts

    if args.name:
        found = _find_host(args.name)
        if found is None:
            _error(f"no running nooks host named {args.name!r}")
            return 1
        statuses = [found[1]]
    else:
        statuses = [st for _, st in hosts()]
    if args.json:
        print(json.dumps(statuses[0] if args.name else statuses, indent=2))
        return 0
    t = Table(title="nooks hosts")
    for col in ("name", "driver", "domain pid", "state", "calls", "recoveries", "last"):
        t.add_column(col)
    for st in statuses:
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
    reply = request(found[0], req)
    if "error" in reply:
        _error(f"{reply['error']}")
        return 1
    console.print(f"injected {args.fault} into {found[1]['name']}")
    return 0


def _umount(args: argparse.Namespace) -> int:
    import subprocess

    return subprocess.call(["fusermount3", "-u", args.mountpoint])


def _mkfs(args: argparse.Namespace) -> int:
    from nooks.fs.mkfs import mkfs_vfat

    try:
        mkfs_vfat(args.image, args.size)
    except (ValueError, RuntimeError, OSError) as e:
        _error(f"nooks mkfs: {e}")
        return 1
    console.print(f"made a FAT filesystem of {args.size:,} bytes in {args.image}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from nooks.faults import campaign, report

    drivers = args.driver or list(campaign.DRIVERS)
    for d in drivers:
        if d not in campaign.DRIVERS:
            _error(f"nooks eval: no campaign set-up for driver {d!r} "
                   f"(known: {', '.join(campaign.DRIVERS)})")
            return 2
    if args.faults < 1 or args.jobs < 1:
        _error("nooks eval: --faults and --jobs must be at least 1")
        return 2
    command = " ".join(["nooks eval reliability", *(f"--driver {d}" for d in drivers),
                        f"--faults {args.faults}", f"--jobs {args.jobs}", f"--seed {args.seed}",
                        f"--out {args.out}"])
    counts: dict[str, int] = {}
    total = len(drivers) * args.faults * 2 if args.only is None else len(drivers) * 2
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("coverage dry runs, then faults", total=total)

        def seen(r: Any) -> None:
            counts[f"{r.mode}: {r.outcome}"] = counts.get(f"{r.mode}: {r.outcome}", 0) + 1
            progress.advance(task)
            progress.update(task, description=", ".join(
                f"{k} {v}" for k, v in sorted(counts.items())))

        results = campaign.campaign(drivers, args.faults, jobs=args.jobs, seed=args.seed,
                                    out_dir=args.out, only=args.only, progress=seen)
    summary = report.write(results, args.out, command, args.seed)
    t = Table(title="Reliability: faults injected into drivers")
    for col in ("driver", "faults", "native failures", "prevented", "non-fatal (native)",
                "app-visible errors (nooks)", "data-check failures (nooks)"):
        t.add_column(col, justify="right")
    for d, s in sorted(summary.items()):
        pct = f" ({100 * s['prevented'] / s['native_failures']:.0f}%)" \
            if s["native_failures"] else ""
        t.add_row(d, str(s["faults"]), str(s["native_failures"]), f"{s['prevented']}{pct}",
                  str(s["non_fatal"]), str(s["app_visible_errors"]),
                  str(s["data_check_failures"]))
    console.print(t)
    console.print(f"report: {os.path.join(args.out, 'report.md')}, "
                  f"{os.path.join(args.out, 'summary.json')}, "
                  f"{os.path.join(args.out, 'chart.png')}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nooks", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("bench", help="run a benchmark")
    b.add_argument("what", choices=["xpc", "fs", "web"])
    b.add_argument("--workers", type=int, default=2, help="web benchmark: workers per server")
    b.add_argument("--driver", default="passthrough", choices=["passthrough", "vfat"],
                   help="driver for the fs benchmark")
    b.add_argument("--placement", default="one-core", choices=["one-core", "free"],
                   help="fs benchmark: everything on one CPU, or where the scheduler puts it")
    b.add_argument("--json", metavar="PATH", help="also write the figures as JSON ('-': stdout)")
    b.add_argument("--quick", action="store_true", help="fewer rounds")
    b.set_defaults(func=_bench)
    d = sub.add_parser("demo", help="a FAT filesystem survives its driver failing "
                       "(or: demo xpc, the XPC benchmark and the crash matrix)")
    d.add_argument("what", nargs="?", default="fs", choices=["fs", "xpc"])
    d.add_argument("--files", type=int, default=None, help="copy only this many files")
    d.add_argument("--quick", action="store_true")
    d.set_defaults(func=_demo)

    mt = sub.add_parser("mount", help="mount a filesystem driver through nooks",
                        description="nooks mount DRIVER [ARGS...] MOUNTPOINT [-- CTOR_ARGS]: "
                        "DRIVER is vfat (IMAGE), passthrough (DIR) or module:Class")
    mt.add_argument("driver")
    mt.add_argument("rest", nargs="+", metavar="ARGS... MOUNTPOINT")
    mt.add_argument("--native", action="store_true", help="run the driver in-process, unprotected")
    mt.add_argument("-o", dest="options", help="FUSE options, comma-separated")
    mt.add_argument("--name", help="name for status and inject (default: the mountpoint)")
    mt.add_argument("--daemon", action="store_true", help="detach once the mount is ready")
    mt.add_argument("--log", metavar="PATH", help="with --daemon: append messages to PATH")
    mt.add_argument("--threads", action="store_true", help="multi-threaded FUSE loop")
    mt.add_argument("--state", choices=["volatile", "persistent"],
                    help="where a module:Class driver keeps its files: in its own memory "
                    "(nooks journals every change and replays it into a restarted driver) "
                    "or in storage it reaches (only open files are re-opened)")
    mt.add_argument("--deadline", type=float, default=10.0,
                    help="seconds a request may take before the driver counts as hung")
    mt.add_argument("--image", metavar="PATH",
                    help="module:Class drivers: a disk image the host owns; the driver gets "
                    "it as its first constructor argument (a file object whose writes the "
                    "host commits per request; natively, the path)")
    mt.add_argument("--checker", metavar="'CMD ARGS'",
                    help="a command that checks the image (exit 0: consistent), run with the "
                    "image's path added (vfat: 'fsck.fat -n')")
    mt.add_argument("--check-interval", type=float, default=1.0, metavar="SECONDS",
                    help="vfat: check the image with fsck.fat -n this often while it changes, "
                    "and before unmounting; an inconsistent image is rolled back and redone "
                    "by a fresh driver (0: never)")
    # for the reliability campaign: a fault in the driver's code, and a coverage dry run
    mt.add_argument("--fault-plan", help=argparse.SUPPRESS)
    mt.add_argument("--record-lines", help=argparse.SUPPRESS)
    mt.set_defaults(func=_mount, ctor_args=[])

    from nooks.argcheck import count, one_line_errors, seconds, size

    sv = sub.add_parser("serve", help="serve a web application through nooks",
                        description="nooks serve module:app | static:DIR: the application "
                        "runs in domains behind the host's HTTP listener")
    one_line_errors(sv)
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
    sv.add_argument("--fault-plan", help=argparse.SUPPRESS)
    sv.set_defaults(func=_serve)

    um = sub.add_parser("umount", help="unmount a nooks mount")
    um.add_argument("mountpoint")
    um.set_defaults(func=_umount)

    stp = sub.add_parser("status", help="running nooks hosts, their drivers and recoveries")
    stp.add_argument("name", nargs="?")
    stp.add_argument("--json", action="store_true")
    stp.set_defaults(func=_status)

    ij = sub.add_parser("inject", help="make a running driver fail now")
    ij.add_argument("name")
    ij.add_argument("--fault", required=True, choices=list(FAULTS))
    ij.add_argument("--worker", type=int, help="web hosts: which worker (default: each in turn)")
    ij.set_defaults(func=_inject)

    ev = sub.add_parser("eval", help="run an evaluation campaign")
    ev.add_argument("what", choices=["reliability"])
    ev.add_argument("--driver", action="append", help="vfat, passthrough (repeatable; "
                    "default: all)")
    ev.add_argument("--faults", type=int, default=400, help="faults per driver")
    ev.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ev.add_argument("--seed", type=int, default=1)
    ev.add_argument("--out", default="out/reliability", help="results directory (resumable)")
    ev.add_argument("--only", type=int, help="run only the fault with this index (replay)")
    ev.set_defaults(func=_eval)

    mk = sub.add_parser("mkfs", help="make a filesystem image")
    mk.add_argument("fstype", choices=["vfat"])
    mk.add_argument("image")
    mk.add_argument("--size", type=_parse_size, default=64 << 20)
    mk.set_defaults(func=_mkfs)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
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
