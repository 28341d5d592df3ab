"""The network class's plumbing, with real parts: namespaces and a veth made with
pyroute2, the host's TAP device, an AF_PACKET port on the wire, and real programs
(ping, curl, python -m http.server) on either machine. Frames go TAP ⇄ wire through
a forwarder in the test (no card, no driver yet): what the class's hosts stand on."""

from __future__ import annotations

import hashlib
import os
import select
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyroute2 import netns

from nooks.hw.wire import Wire
from nooks.net.tap import Tap
from nooks.net.topology import WIRE_IF, Plan, Topology, sweep

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces)")]


class Forwarder:
    """TAP ⇄ wire, frame by frame, until stopped."""

    def __init__(self, tap: Tap, wire: Wire) -> None:
        self.tap, self.wire = tap, wire
        self.counts = {"out": 0, "in": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self.tap.fileno(), self.wire.fileno()], [], [], 0.05)
            if self.tap.fileno() in ready:
                self.wire.send(self.tap.read())
                self.counts["out"] += 1
            if self.wire.fileno() in ready:
                frame = self.wire.receive()
                if frame is not None:
                    self.tap.write(frame)
                    self.counts["in"] += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.fixture
def machines() -> Iterator[tuple[Topology, Forwarder]]:
    topo = Topology(Plan(name=f"test-{os.getpid()}"))
    tap = wire = None
    fwd = None
    try:
        tap = Tap(topo.this, topo.plan.ifname)
        topo.configure_tap(tap.ifname, tap.mtu)
        wire = Wire(topo.wire, WIRE_IF)
        fwd = Forwarder(tap, wire)
        yield topo, fwd
    finally:
        if fwd is not None:
            fwd.stop()
        for part in (wire, tap):
            if part is not None:
                part.close()
        topo.close()
    assert not [n for n in netns.listnetns() if n.startswith(f"nooks-test-{os.getpid()}")]


def _in(ns: str, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True,
                          timeout=timeout, check=False)


def test_ping_crosses_from_the_tap_to_the_other_machine(
        machines: tuple[Topology, Forwarder]) -> None:
    topo, fwd = machines
    r = _in(topo.this, "ping", "-c", "5", "-i", "0.05", "-W", "2", "10.77.0.2")
    assert r.returncode == 0, r.stdout + r.stderr
    assert " 5 received" in r.stdout
    assert fwd.counts["out"] >= 5 and fwd.counts["in"] >= 5


def test_a_download_from_the_other_machine_arrives_whole(
        machines: tuple[Topology, Forwarder], tmp_path: Path) -> None:
    topo, _ = machines
    data = os.urandom(3 << 20)
    (tmp_path / "blob").write_bytes(data)
    server = subprocess.Popen(["ip", "netns", "exec", topo.peer, sys.executable, "-m",
                               "http.server", "--bind", "10.77.0.2", "8000"],
                              cwd=tmp_path, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        out = tmp_path / "got"
        r = _in(topo.this, "curl", "-sS", "--retry", "20", "--retry-connrefused",
                "--retry-delay", "0", "--max-time", "60", "-o", str(out),
                "http://10.77.0.2:8000/blob")
        assert r.returncode == 0, r.stderr
        assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(data).digest()
    finally:
        server.kill()
        server.wait()


def test_namespaces_of_a_host_that_died_are_swept(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOOKS_RUN_DIR", str(tmp_path))
    dead = subprocess.Popen(["true"])
    dead.wait()
    ns = f"nooks-swept-{os.getpid()}"
    netns.create(ns)
    (tmp_path / f"netns-{ns}.owner").write_text(str(dead.pid))
    assert sweep() == [ns]
    assert ns not in netns.listnetns()
    assert not (tmp_path / f"netns-{ns}.owner").exists()


def test_a_plan_is_checked() -> None:
    with pytest.raises(ValueError, match="15 bytes"):
        Plan(name="x", ifname="an-interface-name-too-long")
    with pytest.raises(ValueError, match="one network"):
        Plan(name="x", address="10.1.0.1/24", peer_address="10.2.0.1/24")
    with pytest.raises(ValueError, match="namespace name"):
        Plan(name="x", netns="../etc")
