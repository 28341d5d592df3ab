"""``nooks net`` as a user runs it: it serves, answers status and inject, recovers
its driver with ping going on, and on SIGTERM removes what it made. With
``--native`` the same fault takes the host down, and what it left is swept by the
next host."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from pyroute2 import netns

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces)")]


def _nooks(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nooks", *args], capture_output=True,
                          text=True, timeout=60, env=env, check=False)


def _start(name: str, env: dict[str, str], *extra: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-m", "nooks", "net", "rtl8139", "--name", name,
                             *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    assert proc.stdout is not None and proc.stderr is not None
    line = proc.stdout.readline()  # the host's first line says it serves
    assert line.startswith("serving rtl8139 as nooks0 in nooks-"), line + proc.stderr.read()
    return proc


def _ping(ns: str, count: int = 5) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, "ping", "-c", str(count), "-i", "0.05",
                           "-W", "2", "10.77.0.2"], capture_output=True, text=True, timeout=30,
                          check=False)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "NOOKS_RUN_DIR": str(tmp_path / "run")}


def test_serve_status_inject_and_stop(env: dict[str, str]) -> None:
    name = f"cli-{os.getpid()}"
    proc = _start(name, env)
    try:
        assert " 5 received" in _ping(f"nooks-{name}").stdout
        st = json.loads(_nooks("status", name, "--json", env=env).stdout)
        assert st["class"] == "net" and st["driver"] == "rtl8139" and st["mac"]
        r = _nooks("inject", name, "--fault", "segv", env=env)
        assert r.returncode == 0 and "recovered" in r.stdout, r.stdout + r.stderr
        assert " 5 received" in _ping(f"nooks-{name}").stdout
        st = json.loads(_nooks("status", name, "--json", env=env).stdout)
        assert len(st["recoveries"]) == 1 and st["up"] and not st["promisc"]
        assert "01:00:5e:00:00:01" in st["groups"]  # all-hosts, as the system joined it
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    assert not [n for n in netns.listnetns() if n.startswith(f"nooks-{name}")]


def test_natively_the_fault_takes_the_host_down_and_the_next_host_sweeps(
        env: dict[str, str]) -> None:
    name = f"nat-{os.getpid()}"
    proc = _start(name, env, "--native")
    try:
        assert " 5 received" in _ping(f"nooks-{name}").stdout
        r = _nooks("inject", name, "--fault", "segv", env=env)
        assert r.returncode == 0, r.stderr  # armed: the next call meets it
        _ping(f"nooks-{name}", count=2)
        assert proc.wait(30) == -signal.SIGSEGV  # the whole host died with its driver
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert f"nooks-{name}" in netns.listnetns()  # left behind, as a crash leaves things
    again = _start(name, env)  # the next host with that name sweeps them and starts
    try:
        assert " 5 received" in _ping(f"nooks-{name}").stdout
    finally:
        again.send_signal(signal.SIGTERM)
        assert again.wait(30) == 0
    assert not [n for n in netns.listnetns() if n.startswith(f"nooks-{name}")]


def test_daemon_detaches_once_it_serves_and_says_why_when_it_cannot(
        env: dict[str, str], tmp_path: Path) -> None:
    name = f"dmn-{os.getpid()}"
    log = tmp_path / "host.log"
    r = _nooks("net", "e1000", "--name", name, "--daemon", "--log", str(log), env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"serving e1000 as nooks0 in nooks-{name} "), r.stdout
    pid = int(r.stdout.rsplit("host pid ", 1)[1].rstrip(")\n"))
    gone = os.pidfd_open(pid)  # readable once the detached host has exited
    try:
        assert " 5 received" in _ping(f"nooks-{name}").stdout
        st = json.loads(_nooks("status", name, "--json", env=env).stdout)
        assert st["driver"] == "e1000" and st["host_pid"] == pid
        again = _nooks("net", "e1000", "--name", name, "--daemon", env=env)
        assert again.returncode == 1 and len(again.stderr.strip().splitlines()) == 1
        assert again.stderr.startswith("nooks net: "), again.stderr
    finally:
        os.kill(pid, signal.SIGTERM)
    try:
        assert select.select([gone], [], [], 30)[0], "the host did not stop on SIGTERM"
    finally:
        os.close(gone)
    assert not [n for n in netns.listnetns() if n.startswith(f"nooks-{name}")]
    assert log.exists()


def test_status_shows_a_killed_host_and_removes_the_namespaces_it_left(
        env: dict[str, str]) -> None:
    name = f"kld-{os.getpid()}"
    r = _nooks("net", "rtl8139", "--name", name, "--daemon", env=env)
    assert r.returncode == 0, r.stderr
    pid = int(r.stdout.rsplit("host pid ", 1)[1].rstrip(")\n"))
    gone = os.pidfd_open(pid)
    try:
        os.kill(pid, signal.SIGKILL)  # no clean-up at all
        assert select.select([gone], [], [], 30)[0]
    finally:
        os.close(gone)
    assert f"nooks-{name}" in netns.listnetns()
    st = json.loads(_nooks("status", "--json", env=env).stdout)
    dead = [h for h in st if h["name"] == name]
    assert dead and dead[0]["state"] == "dead", st
    assert set(dead[0]["swept"]) == {f"nooks-{name}", f"nooks-{name}-wire",
                                     f"nooks-{name}-peer"}
    assert not [n for n in netns.listnetns() if n.startswith(f"nooks-{name}")]
