"""The ``nooks`` command line."""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from typing import Any

from rich.console import Console
from rich.table import Table

console = Console()


def _bench(args: argparse.Namespace) -> int:
    if args.what != "xpc":
        console.print(f"[red]unknown benchmark {args.what!r}[/red] (known: xpc)")
        return 2
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
    from nooks.bench import xpc

    console.rule("nooks: driver isolation and recovery")
    with console.status("benchmarking XPC") as status:
        result = xpc.run(quick=args.quick, progress=lambda s: status.update(f"XPC: {s}"))
    _print_xpc(result)
    ok = _crash_matrix()
    return 0 if ok else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nooks", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("bench", help="run a benchmark")
    b.add_argument("what", choices=["xpc"])
    b.add_argument("--json", metavar="PATH", help="also write the figures as JSON ('-': stdout)")
    b.add_argument("--quick", action="store_true", help="fewer rounds")
    b.set_defaults(func=_bench)
    d = sub.add_parser("demo", help="XPC benchmark and the crash matrix")
    d.add_argument("--quick", action="store_true")
    d.set_defaults(func=_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
