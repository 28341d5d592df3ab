"""The network benchmark: iperf3 throughput each way, ping latency and CPU per
gigabyte, for each card's driver under nooks, natively (the same driver in the
host's process) and over a direct veth (no driver at all: the floor here).

Each driver is served by ``nooks net DRIVER`` (and ``--native``) in a process of
its own, as a user runs it, between two namespaces it makes; the veth floor is a
pair of namespaces joined by a veth. For each: ``iperf3 -t T`` one way and the
other (``-R``), the lower of the two the figure; ``ping`` at 5 ms intervals,
its mean round trip; the machine's CPU time (all cores, from ``/proc/stat``)
per gigabyte moved. Under nooks the driver is then killed (SIGSEGV) twenty
times while ping runs, and each recovery's duration is read from the host.

The modes run one after another, one driver at a time, in one run: every ratio
is against figures measured minutes apart on the same machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

from pyroute2 import NetNS, netns

from nooks import control
from nooks.tools.netprocess import iperf_server

PEER = "10.77.0.2"
RECOVERIES = 20
VETH = ("nooks-bench-veth-a", "nooks-bench-veth-b")


def _in(ns: str, *cmd: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *cmd]


def _busy_s() -> float:
    """CPU seconds all cores have spent busy so far (``/proc/stat``)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def iperf(this: str, peer: str, address: str, seconds: float,
          reverse: bool) -> dict[str, float]:
    server = iperf_server(peer, address)
    try:
        busy = _busy_s()
        out = subprocess.run(_in(this, "iperf3", "-c", address, "-t", f"{seconds:g}", "-J",
                                 "--connect-timeout", "5000", *(["-R"] if reverse else [])),
                             capture_output=True, text=True, timeout=seconds + 60, check=False)
        busy = _busy_s() - busy
        result = json.loads(out.stdout or "{}")
        if out.returncode != 0 or "error" in result:
            raise RuntimeError(f"iperf3 failed: {result.get('error', out.stderr.strip())}")
        got = result["end"]["sum_received"]
        return {"gbit_s": got["bits_per_second"] / 1e9,
                "cpu_s_per_gb": busy / (got["bytes"] / 1e9)}
    finally:
        server.kill()
        server.wait()


def ping_rtt_us(this: str, address: str, count: int) -> float:
    out = subprocess.run(_in(this, "ping", "-q", "-c", str(count), "-i", "0.005", "-W", "1",
                             address), capture_output=True, text=True, timeout=60,
                         check=False).stdout
    m = re.search(r"= [\d.]+/([\d.]+)/", out)
    if m is None:
        raise RuntimeError(f"ping printed no round trip:\n{out}")
    return float(m.group(1)) * 1000


def measure(this: str, peer: str, address: str, *, seconds: float,
            progress: Callable[[str], None], what: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for direction, reverse in (("send", False), ("receive", True)):
        progress(f"{what}: iperf3 {direction}")
        out[direction] = iperf(this, peer, address, seconds, reverse)
    out["gbit_s"] = min(out["send"]["gbit_s"], out["receive"]["gbit_s"])
    out["cpu_s_per_gb"] = max(out["send"]["cpu_s_per_gb"], out["receive"]["cpu_s_per_gb"])
    progress(f"{what}: ping")
    out["ping_rtt_us"] = ping_rtt_us(this, address, 400)
    return out


@contextlib.contextmanager
def serving(driver: str, name: str, native: bool, run_dir: str) -> Iterator[subprocess.Popen[str]]:
    env = {**os.environ, "NOOKS_RUN_DIR": run_dir}
    log = os.path.join(run_dir, f"{name}.log")
    with open(log, "w") as err:  # (a file: a pipe no one reads fills and blocks the host)
        proc = subprocess.Popen([sys.executable, "-m", "nooks", "net", driver, "--name",
                                 name, *(["--native"] if native else [])],
                                stdout=subprocess.PIPE, stderr=err, text=True, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("serving "):
            with open(log) as f:
                said = f.read()[-2000:]
            raise RuntimeError(f"nooks net {driver} did not start: {line}{said}")
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def recoveries(name: str, run_dir: str, this: str, count: int) -> list[float]:
    """Kill the driver ``count`` times while ping runs; each recovery's milliseconds."""
    old = os.environ.get("NOOKS_RUN_DIR")
    os.environ["NOOKS_RUN_DIR"] = run_dir
    ping = subprocess.Popen(_in(this, "ping", "-q", "-i", "0.01", PEER),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        path = control.socket_path(name)
        for _ in range(count):
            control.request(path, {"cmd": "settle"}, timeout=30)  # a warm spare waits
            reply = control.request(path, {"cmd": "inject", "fault": "segv"}, timeout=30)
            if isinstance(reply, dict) and "error" in reply:
                raise RuntimeError(f"inject: {reply['error']}")
        st = control.request(path, {"cmd": "status"}, timeout=30)
        return [float(r["duration_ms"]) for r in st["recoveries"]]
    finally:
        ping.terminate()
        ping.wait()
        if old is None:
            os.environ.pop("NOOKS_RUN_DIR", None)
        else:
            os.environ["NOOKS_RUN_DIR"] = old


@contextlib.contextmanager
def veth_pair() -> Iterator[tuple[str, str]]:
    """Two namespaces joined by a veth, 10.78.0.1 and .2: the floor."""
    a, b = VETH
    for ns in (a, b):
        if ns in netns.listnetns():
            netns.remove(ns)
        netns.create(ns)
    try:
        with NetNS(a) as na:
            na.link("add", ifname="veth0", kind="veth", peer={"ifname": "veth1", "net_ns_fd": b})
            i = na.link_lookup(ifname="veth0")[0]
            na.addr("add", index=i, address="10.78.0.1", prefixlen=24)
            na.link("set", index=i, state="up")
        with NetNS(b) as nb:
            i = nb.link_lookup(ifname="veth1")[0]
            nb.addr("add", index=i, address="10.78.0.2", prefixlen=24)
            nb.link("set", index=i, state="up")
        yield a, b
    finally:
        for ns in (a, b):
            with contextlib.suppress(OSError):
                netns.remove(ns)


def _p(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def run(drivers: list[str], quick: bool = False,
        progress: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    seconds = 2.0 if quick else 5.0
    with veth_pair() as (a, b):
        progress("veth")
        veth = measure(a, b, "10.78.0.2", seconds=seconds, progress=progress, what="veth")
    out: dict[str, Any] = {"seconds": seconds, "veth": veth, "drivers": {}}
    with tempfile.TemporaryDirectory(prefix="nooks-bench-net-") as run_dir:
        for driver in drivers:
            figures: dict[str, Any] = {}
            for mode in ("native", "nooks"):
                name = f"bench-{driver}-{mode}"
                with serving(driver, name, mode == "native", run_dir):
                    figures[mode] = measure(f"nooks-{name}", f"nooks-{name}-peer", PEER,
                                            seconds=seconds, progress=progress,
                                            what=f"{driver} {mode}")
                    if mode == "nooks":
                        progress(f"{driver}: {RECOVERIES} recoveries")
                        rec = recoveries(name, run_dir, f"nooks-{name}",
                                         5 if quick else RECOVERIES)
            n, nat = figures["nooks"], figures["native"]
            out["drivers"][driver] = {
                "nooks_gbit_s": n["gbit_s"], "native_gbit_s": nat["gbit_s"],
                "veth_gbit_s": veth["gbit_s"],
                "ratio_to_native": n["gbit_s"] / nat["gbit_s"],
                "ratio_to_veth": n["gbit_s"] / veth["gbit_s"],
                "ping_rtt_us": n["ping_rtt_us"], "native_ping_rtt_us": nat["ping_rtt_us"],
                "veth_ping_rtt_us": veth["ping_rtt_us"],
                "cpu_s_per_gb": n["cpu_s_per_gb"], "native_cpu_s_per_gb": nat["cpu_s_per_gb"],
                "veth_cpu_s_per_gb": veth["cpu_s_per_gb"],
                "recovery_ms_p50": statistics.median(rec) if rec else float("nan"),
                "recovery_ms_p99": _p(rec, 0.99), "recoveries": len(rec),
                "nooks": n, "native": nat}
    d = out["drivers"]
    out["targets_met"] = {
        "nooks >= 0.9x native, every driver": all(x["ratio_to_native"] >= 0.9
                                                   for x in d.values()),
        "best driver >= 0.5x direct veth": max(x["ratio_to_veth"] for x in d.values()) >= 0.5,
        "recovery p99 <= 50 ms": all(x["recovery_ms_p99"] <= 50 for x in d.values()),
    }
    return out
