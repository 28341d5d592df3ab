"""The network class in the campaign: each card's driver served by ``nooks net``
between this machine and the other (namespaces it makes for the run), with the
far side's servers (``iperf3 -s``, ``python -m http.server`` over a file of
random bytes) started in the other machine.

Workload, through the driver: ``ping`` (20 echoes), an ``iperf3`` transfer (one
second; this machine sending for an even seed, receiving for an odd one), an
HTTP download checked against the file's sha256, then ping again.

Outcome rules: a host that died or did not start, or a ping that got no answer
at all, is the system's failure (the machine lost its network); a broken
iperf3 connection, a failed download or a wrong checksum is a data error (what
the issue of record asks of this class: a connection broken is data lost);
echoes lost while others came back are an application-visible error.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import select
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from nooks.eval.programs import capture
from nooks.eval.registry import Scope
from nooks.eval.target import NotStarted, Run, Target
from nooks.net import topology
from nooks.tools.netprocess import iperf_server

PEER = "10.77.0.2"
DEADLINE = "1"  # seconds a call may take under nooks before the driver counts as hung
FILE = 4 << 20  # bytes downloaded
STOP_TIMEOUT = 15.0
START_WAIT = 60.0  # seconds a host may take to serve
_COUNTS = re.compile(r"(\d+) packets transmitted, (\d+) received")


def _in(ns: str, *cmd: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *cmd]


class NetRun(Run):
    def __init__(self, scope: Scope, name: str, proc: subprocess.Popen[Any], native: bool,
                 *, this: str, peer: str, tmp: str, digest: str) -> None:
        super().__init__(scope, name, proc, native)
        self.this = this
        self.peer = peer
        self.tmp = tmp
        self.digest = digest

    def _ping(self, on_hang: Any) -> str | None:
        # (at most 3 s: with the network gone, ping would try each echo for a second)
        _, out, err = capture(self.scope, _in(self.this, "ping", "-c", "20", "-i", "0.02",
                                              "-W", "1", "-w", "3", PEER), on_hang, timeout=15)
        # (with -w, ping sends on until it has 20 replies: what it sent says the loss)
        got = _COUNTS.search(out)
        sent, received = (int(got.group(1)), int(got.group(2))) if got else (0, 0)
        if received == 0:
            return f"lost: ping got no reply ({(err or out).strip()[-120:]})"
        if received < sent:
            return f"app: ping lost {sent - received} of {sent} echoes"
        return None

    def _iperf(self, on_hang: Any, reverse: bool) -> str | None:
        try:
            server = iperf_server(self.peer, PEER, self.scope.popen)
        except RuntimeError as e:
            return f"lost: {e}"
        try:
            rc, out, err = capture(self.scope, _in(self.this, "iperf3", "-c", PEER, "-t", "1",
                                                   "-J", "--connect-timeout", "3000",
                                                   *(["-R", "--rcv-timeout", "3000"]
                                                     if reverse else [])),
                                   on_hang, timeout=20)
            with contextlib.suppress(ValueError):
                result = json.loads(out)
                if rc == 0 and "error" not in result:
                    return None
                err = str(result.get("error", err))
            way = "receiving" if reverse else "sending"
            return f"data: iperf3 {way}: the connection broke ({err.strip()[-160:]})"
        finally:
            self.scope.kill(server)
            server.wait()
            self.scope.reaped(server)

    def _download(self, on_hang: Any) -> str | None:
        got = os.path.join(self.tmp, "got")
        # (refused: the server is not listening yet; a transfer broken off is not retried)
        rc, _, err = capture(self.scope, _in(self.this, "curl", "-sS", "--max-time", "15",
                                             "--retry", "5", "--retry-connrefused",
                                             "--retry-delay", "0", "-o", got,
                                             f"http://{PEER}:8000/blob"),
                             on_hang, timeout=20)
        if rc != 0:
            return f"data: the download broke off ({err.strip()[-160:]})"
        with open(got, "rb") as f:
            if hashlib.sha256(f.read()).hexdigest() != self.digest:
                return "data: the download's sha256 is wrong"
        return None

    def workload(self, seed: int, on_hang: Any) -> list[str]:
        errors: list[str] = []
        steps: list[Callable[[], str | None]] = [
            lambda: self._ping(on_hang), lambda: self._iperf(on_hang, bool(seed & 1)),
            lambda: self._download(on_hang), lambda: self._ping(on_hang)]
        for step in steps:
            problem = step()
            if problem is not None:
                errors.append(problem)
                if not self.alive():
                    break
        return errors

    def alive(self) -> bool:
        if self.proc.poll() is not None:
            return False
        return self.status() is not None

    def stop(self) -> None:
        self.terminate(STOP_TIMEOUT)


class NetTarget(Target):
    limit = 20.0

    def __init__(self, driver: str, module: str) -> None:
        self.driver = driver
        self.module = module

    def start(self, scope: Scope, tmp: str, name: str, *, native: bool,
              extra: list[str]) -> Run:
        blob = random.Random(name).randbytes(FILE)
        with open(os.path.join(tmp, "blob"), "wb") as f:
            f.write(blob)
        cmd = [sys.executable, "-m", "nooks", "net", self.driver, "--name", name,
               "--deadline", DEADLINE, *extra, *(["--native"] if native else [])]
        scope.host(name)
        scope.cleanup(topology.sweep)  # (a host killed at a stop leaves its namespaces)
        log = os.path.join(tmp, "host.log")
        with open(log, "w") as err:  # (its log goes to a file: a pipe no one reads fills)
            proc = scope.popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
        assert proc.stdout is not None
        # (a driver that hangs while it is built is found out after the domain's start
        # deadline, 30 s; the host then serves from a fresh one)
        ready, _, _ = select.select([proc.stdout], [], [], START_WAIT)
        line = proc.stdout.readline() if ready else ""
        if not line.startswith("serving "):
            scope.kill(proc)
            proc.wait()
            scope.reaped(proc)
            with open(log) as f:
                said = f.read()
            raise NotStarted(f"did not start: {(line + said).strip()[-300:]}")
        this = line.split(" in ", 1)[1].split()[0]
        peer = line.split("the other machine is ", 1)[1].split()[0]
        web = scope.popen(_in(peer, sys.executable, "-m", "http.server", "--bind", PEER,
                              "8000"), cwd=tmp, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
        del web  # (the scope stops it with the run)
        return NetRun(scope, name, proc, native, this=this, peer=peer, tmp=tmp,
                      digest=hashlib.sha256(blob).hexdigest())

    def lost(self, error: str, native: bool) -> bool:
        return error.startswith(("lost:", "did not start"))

    def data_error(self, error: str) -> bool:
        return error.startswith("data:")


TARGETS = tuple(NetTarget(d, m) for d, m in (
    ("ne2000", "nooks.drivers.ne2000"), ("rtl8139", "nooks.drivers.rtl8139"),
    ("e1000", "nooks.drivers.e1000"), ("virtio-net", "nooks.drivers.virtio_net")))
