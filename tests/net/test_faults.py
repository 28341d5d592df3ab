"""Each card's driver made to fail again and again under real programs: an iperf3
transfer each way keeps its connection, a 50 MB HTTP download matches its
sha256, and ping loses only what was sent inside a recovery. Natively the same
fault takes the host down and the programs see it."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pyroute2 import netns

from nooks.errors import NotTaken
from nooks.net.host import DRIVERS, NetHost
from nooks.net.topology import Plan
from nooks.tools.netprocess import iperf_server

pytestmark = [pytest.mark.timeout(240),
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces)")]

FAULTS = ("segv", "exception", "hang")
DEADLINE = 0.5  # seconds before a driver that stopped answering is hung
PEER = "10.77.0.2"


@pytest.fixture(params=sorted(DRIVERS))
def host(request: pytest.FixtureRequest) -> Iterator[NetHost]:
    name = f"f{request.param[:6]}-{os.getpid()}"
    h = NetHost(request.param, Plan(name=name), deadline=DEADLINE)
    try:
        h.start()
        yield h
    finally:
        h.close()
    assert not [n for n in netns.listnetns() if n.startswith(f"nooks-{name}")]


def _in(ns: str, *cmd: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *cmd]


def _frames(host: NetHost) -> int:
    return int(host.counts["tx_frames"] + host.counts["rx_frames"])


def _fail_while(host: NetHost, running: Callable[[], bool], faults: int,
                progress: Callable[[], int], every: int) -> int:
    """Make the driver fail ``faults`` times in turn while ``running()``, each once
    ``progress()`` has grown by ``every`` (the transfer is under way); how many."""
    assert host.sup is not None
    done = 0
    while done < faults and running():
        start = progress()
        end = time.monotonic() + 30
        while progress() < start + every and running() and time.monotonic() < end:
            time.sleep(0.005)
        if not running():
            break
        try:
            host.sup.inject(FAULTS[done % len(FAULTS)])
        except NotTaken:  # (between two drivers: the next one is tried)
            continue
        done += 1
    return done


@pytest.mark.parametrize("reverse", [False, True], ids=["send", "receive"])
def test_iperf3_keeps_its_connection_through_ten_failures(host: NetHost,
                                                          reverse: bool) -> None:
    server = iperf_server(host.topology.peer, PEER)
    try:
        client = subprocess.Popen(_in(host.topology.this, "iperf3", "-c", PEER, "-t", "10",
                                      "-J", "--connect-timeout", "5000",
                                      *(["-R"] if reverse else [])),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        failed = _fail_while(host, lambda: client.poll() is None, 10, lambda: _frames(host),
                             every=500)
        out, err = client.communicate(timeout=60)
        assert client.returncode == 0, out[-2000:] + err
        result = json.loads(out)
        assert "error" not in result, result["error"]
        assert result["end"]["sum_received"]["bytes"] > 0
        assert failed == 10
        recs = host.status()["recoveries"]
        assert len(recs) >= 10 and all(r["ok"] for r in recs)
    finally:
        server.kill()
        server.wait()


def test_a_50_mb_download_matches_its_checksum_through_failures(host: NetHost,
                                                                tmp_path: Path) -> None:
    data = os.urandom(50 << 20)
    (tmp_path / "blob").write_bytes(data)
    server = subprocess.Popen(_in(host.topology.peer, sys.executable, "-m", "http.server",
                                  "--bind", PEER, "8000"), cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = tmp_path / "got"
    try:
        client = subprocess.Popen(_in(host.topology.this, "curl", "-sS", "--retry", "30",
                                      "--retry-connrefused", "--retry-delay", "0",
                                      "--max-time", "120", "--limit-rate", "5M",
                                      "-o", str(out),
                                      f"http://{PEER}:8000/blob"),
                                  stderr=subprocess.PIPE, text=True)
        def got() -> int:
            return out.stat().st_size if out.exists() else 0

        def clock() -> int:
            return int(time.monotonic() * 1000)

        # a failure every quarter of a second once it has begun (curl keeps its average
        # rate, catching up after each pause: paced by bytes, ten would not fit)
        end = time.monotonic() + 30
        while client.poll() is None and not got() and time.monotonic() < end:
            time.sleep(0.005)  # until the first bytes have come
        failed = _fail_while(host, lambda: client.poll() is None and got() < 48 << 20, 10,
                             clock, every=250)
        _, err = client.communicate(timeout=150)
        assert client.returncode == 0, err
        assert hashlib.sha256(out.read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()
        assert failed == 10 and len(host.status()["recoveries"]) >= 10
    finally:
        server.kill()
        server.wait()


_REPLY = re.compile(r"icmp_seq=(\d+)")


def test_ping_loses_only_what_was_sent_inside_a_recovery(host: NetHost) -> None:
    interval, count = 0.01, 500
    t0 = time.time()
    ping = subprocess.Popen(_in(host.topology.this, "ping", "-c", str(count), "-i",
                                str(interval), "-W", "1", PEER),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    failed = _fail_while(host, lambda: ping.poll() is None, 6, lambda: _frames(host),
                         every=100)
    out, err = ping.communicate(timeout=60)
    assert failed == 6, out + err
    got = {int(m.group(1)) for m in _REPLY.finditer(out)}
    lost = set(range(1, count + 1)) - got
    windows = [(r["at"] - DEADLINE - 0.05, r["at"] + r["duration_ms"] / 1000 + 0.05)
               for r in host.status()["recoveries"]]
    # when each lost one was sent (ping paces itself from its start: a lower bound)
    outside = [seq for seq in lost
               if not any(a <= t0 + (seq - 1) * interval <= b + 1.0 for a, b in windows)]
    assert not outside, f"lost outside recoveries: {sorted(outside)[:20]} of {len(lost)}"


@pytest.mark.parametrize("driver", sorted(DRIVERS))
def test_natively_the_programs_see_the_failure(driver: str, tmp_path: Path) -> None:
    env = {**os.environ, "NOOKS_RUN_DIR": str(tmp_path / "run")}
    name = f"n{driver[:6]}-{os.getpid()}"
    proc = subprocess.Popen([sys.executable, "-m", "nooks", "net", driver, "--name", name,
                             "--native"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    this, peer = f"nooks-{name}", f"nooks-{name}-peer"
    server = client = None
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith(f"serving {driver} ")
        server = iperf_server(peer, PEER)
        client = subprocess.Popen(_in(this, "iperf3", "-c", PEER, "-t", "10", "-J",
                                      "--connect-timeout", "5000", "--rcv-timeout", "3000"),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        ping = subprocess.run(_in(this, "ping", "-c", "3", "-i", "0.2", "-W", "2", PEER),
                              capture_output=True, text=True, timeout=30, check=False)
        assert " 3 received" in ping.stdout  # the transfer and ping are going through
        r = subprocess.run([sys.executable, "-m", "nooks", "inject", name, "--fault", "segv"],
                           capture_output=True, text=True, timeout=30, env=env, check=False)
        assert r.returncode == 0, r.stderr
        assert proc.wait(30) == -signal.SIGSEGV  # the host died with its driver
        out, _ = client.communicate(timeout=60)
        assert client.returncode != 0 or "error" in json.loads(out), out[-500:]
    finally:
        for p in (client, server, proc):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
        for ns in (this, f"nooks-{name}-wire", peer):
            if ns in netns.listnetns():
                netns.remove(ns)
