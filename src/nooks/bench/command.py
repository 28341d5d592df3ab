"""The ``bench`` command: run a benchmark, print its table, optionally its JSON.

``nooks bench xpc|fs|fuse|web|net`` and ``python -m nooks.bench ...`` are the same
command (``add_parser`` registers it with the ``nooks`` command line).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from rich.console import Console
from rich.table import Table

from nooks import argcheck

NICS = ["ne2000", "rtl8139", "e1000", "virtio-net"]  # (nooks.net.host.DRIVERS, unimported)

# into a pipe or a file, tables keep whole lines rather than wrap at 80 columns
console = Console() if sys.stdout.isatty() else Console(width=200)


def add_parser(sub: Any) -> None:
    """Register ``bench`` with a subparsers object."""
    add_arguments(sub.add_parser("bench", help="run a benchmark"))


def add_arguments(b: argparse.ArgumentParser) -> None:
    """The bench command's arguments, on its own parser or as a subcommand."""
    b.add_argument("what", choices=["xpc", "fs", "fuse", "web", "net"],
                   help="what to measure")
    b.add_argument("--workers", type=argcheck.count(1, 64), default=2,
                   help="web benchmark: workers per server")
    b.add_argument("--driver", default="passthrough", choices=["passthrough", "vfat"],
                   help="driver for the fs benchmark")
    b.add_argument("--mode", default="host", choices=["host", "direct"],
                   help="fs benchmark: the mode the nooks mount serves in (default: host)")
    b.add_argument("--placement", default="one-core", choices=["one-core", "free"],
                   help="fs and fuse benchmarks: everything on one CPU, or where the "
                   "scheduler puts it")
    b.add_argument("--nic", action="append", choices=NICS, metavar="DRIVER",
                   help="net benchmark: a network driver (repeatable; default: all of "
                   f"{', '.join(NICS)})")
    b.add_argument("--json", metavar="PATH", help="also write the figures as JSON ('-': stdout)")
    b.add_argument("--quick", action="store_true", help="fewer rounds")
    b.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    global console
    if args.json == "-":
        console = Console(stderr=True)  # stdout carries the JSON, nothing else
    if args.what == "net":
        from nooks.bench import net

        with console.status("benchmarking the network class") as status:
            result = net.run(args.nic or NICS, quick=args.quick,
                             progress=lambda s: status.update(f"net: {s}"))
        print_net(result)
    elif args.what == "web":
        from nooks.bench import web

        with console.status("benchmarking the web class") as status:
            result = web.run(workers=args.workers, quick=args.quick,
                             progress=lambda s: status.update(f"web: {s}"))
        print_web(result)
    elif args.what == "fuse":
        from nooks.bench import fuse

        with console.status("benchmarking ways to serve FUSE") as status:
            result = fuse.run(quick=args.quick, placement=args.placement,
                              progress=lambda s: status.update(f"fuse: {s}"))
        print_fuse(result)
    elif args.what == "fs":
        from nooks.bench import fs

        with console.status("benchmarking the filesystem class") as status:
            result = fs.run(driver=args.driver, quick=args.quick, placement=args.placement,
                            mode=args.mode, progress=lambda s: status.update(f"fs: {s}"))
        print_fs(result)
    else:
        from nooks.bench import xpc

        with console.status("benchmarking XPC") as status:
            result = xpc.run(quick=args.quick, progress=lambda s: status.update(f"XPC: {s}"))
        print_xpc(result)
    if args.json:
        text = json.dumps(result, indent=2)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w") as f:
                f.write(text + "\n")
    return 0 if all(result["targets_met"].values()) else 1


def print_fuse(r: dict[str, Any]) -> None:
    t = Table(title=f"FUSE from Python: stat (a LOOKUP and a GETATTR), caching off, "
              f"{r['placement']} (medians)")
    for col in ("served by", "µs per stat", "stat/s", "speed vs mfusepy"):
        t.add_column(col, justify="left" if col == "served by" else "right")
    names = {"kernel": "the kernel's protocol on /dev/fuse",
             "lowlevel": "libfuse low-level API (ctypes)",
             "highlevel": "libfuse high-level API (mfusepy)",
             "passthrough-mfusepy": "passthrough driver, mounted with mfusepy",
             "passthrough-direct": "passthrough driver, direct mode's FUSE layer"}
    for kind, s in r["servers"].items():
        t.add_row(names[kind], f"{s['stat_us']:.1f}", f"{s['stat_ops_s']:,.0f}",
                  f"{s['speed_vs_mfusepy']:.2f}×")
    console.print(t)


def print_xpc(r: dict[str, Any]) -> None:
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


def print_fs(r: dict[str, Any]) -> None:
    t = Table(title=f"Filesystem: {r['driver']}, {r['mode']} mode, one run, placement "
              f"{r['placement']}")
    for col in ("workload", "direct mfusepy", "native", "nooks", "nooks/native",
                "nooks/direct"):
        t.add_column(col, justify="right")
    units = {"stat_ops_s": "stat/s", "create_unlink_ops_s": "create+unlink/s",
             "write_mb_s": "write MB/s", "read_mb_s": "read MB/s", "build_s": "build-like s",
             "tree_cached_s": "cached tree s"}
    unchecked = r.get("ratio_unchecked_to_native")
    if unchecked is not None:
        t.add_column("without checkpoints ÷ native", justify="right")
    for key, label in units.items():
        row = [label, f"{r['direct'][key]:,.1f}", f"{r['native'][key]:,.1f}",
               f"{r['nooks'][key]:,.1f}", f"{r['ratio_to_native'][key]:.2f}×",
               f"{r['ratio_to_direct'][key]:.2f}×"]
        if unchecked is not None:
            row.append(f"{unchecked[key]:.2f}×" if key in unchecked else "")
        t.add_row(*row)
    console.print(t)
    console.print(f"recovery under a stat() load: p50 {r['recovery_ms_p50']:.1f} ms, "
                  f"p99 {r['recovery_ms_p99']:.1f} ms over {r['recoveries']} SIGSEGVs")
    for target, met in r["targets_met"].items():
        mark = "[green]met[/green]" if met else "[red]MISSED[/red]"
        console.print(f"  target {target}: {mark}")


def print_net(r: dict[str, Any]) -> None:
    t = Table(title=f"Network: iperf3 {r['seconds']:g} s each way (the lower), ping, CPU; "
              "one run")
    for col in ("driver", "nooks Gbit/s", "native Gbit/s", "nooks/native", "nooks/veth",
                "ping nooks / native µs", "CPU s/GB nooks / native", "recovery p50 / p99"):
        t.add_column(col, justify="right")
    for name, x in r["drivers"].items():
        t.add_row(name, f"{x['nooks_gbit_s']:.3f}", f"{x['native_gbit_s']:.3f}",
                  f"{x['ratio_to_native']:.2f}×", f"{x['ratio_to_veth']:.3f}×",
                  f"{x['ping_rtt_us']:.0f} / {x['native_ping_rtt_us']:.0f}",
                  f"{x['cpu_s_per_gb']:.1f} / {x['native_cpu_s_per_gb']:.1f}",
                  f"{x['recovery_ms_p50']:.1f} / {x['recovery_ms_p99']:.1f} ms")
    v = r["veth"]
    t.add_row("direct veth", f"{v['gbit_s']:.3f}", "", "", "1×", f"{v['ping_rtt_us']:.0f}",
              f"{v['cpu_s_per_gb']:.2f}", "")
    console.print(t)
    for target, met in r["targets_met"].items():
        mark = "[green]met[/green]" if met else "[red]MISSED[/red]"
        console.print(f"  target {target}: {mark}")


def print_web(r: dict[str, Any]) -> None:
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
