"""The nooks command line against real mounts: clear errors for bad input,
daemon mode, clean unmount on SIGTERM, and a control socket that survives garbage."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from nooks.control import request, socket_path
from tests.integration.fsutil import mounted, wait_for

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse")]


def nooks(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nooks", *args], capture_output=True,
                          text=True, check=False, timeout=60, env=env)


def test_bad_input_gets_clear_errors(tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = nooks("mkfs", "vfat", str(tmp_path / "x.img"), "--size", "lots")
    assert r.returncode == 2 and "expected a size" in r.stderr
    r = nooks("mkfs", "vfat", str(tmp_path / "x.img"), "--size", "1k")
    assert r.returncode == 2 and "from 64K to 16T" in r.stderr
    r = nooks("mount", "vfat", str(tmp_path / "missing.img"), str(mnt))
    assert r.returncode == 2 and "no such image file" in r.stderr
    r = nooks("mount", "passthrough", str(tmp_path), str(tmp_path / "nowhere"))
    assert r.returncode == 2 and "not a directory" in r.stderr
    r = nooks("mount", "some.module:Driver", str(mnt))
    assert r.returncode == 2 and "--state" in r.stderr
    r = nooks("mount", "no_such_module_x:Driver", str(mnt), "--state", "persistent")
    assert r.returncode == 1 and "ModuleNotFoundError" in r.stderr
    r = nooks("inject", "no-such-host", "--fault", "segv")
    assert r.returncode == 1 and "no running nooks host" in r.stderr
    r = nooks("inject", "x", "--fault", "melt")
    assert r.returncode == 2 and "invalid choice" in r.stderr
    assert not os.path.ismount(mnt)


def test_daemon_mode_and_umount(tmp_path: Path) -> None:
    backing, mnt = tmp_path / "backing", tmp_path / "mnt"
    backing.mkdir()
    mnt.mkdir()
    name = f"daemon-{os.getpid()}"
    r = nooks("mount", "passthrough", str(backing), str(mnt), "--daemon", "--name", name)
    try:
        assert r.returncode == 0, r.stdout + r.stderr
        assert os.path.ismount(mnt)
        (mnt / "f").write_text("daemon")
        assert (backing / "f").read_text() == "daemon"
        st = request(socket_path(name), {"cmd": "status"})
        host_pid = st["host_pid"]
        assert st["state"] == "live" and st["domain_pid"] > 0
    finally:
        u = nooks("umount", str(mnt))
    assert u.returncode == 0
    assert not os.path.ismount(mnt)
    wait_for(lambda: not os.path.exists(f"/proc/{host_pid}"), 30, "the host to exit")


def test_sigterm_unmounts_cleanly(tmp_path: Path) -> None:
    backing = tmp_path / "backing"
    backing.mkdir()
    with mounted(str(tmp_path), "passthrough", str(backing)) as m:
        st = m.status()
        domain_pid = st["domain_pid"]
        m.proc.send_signal(signal.SIGTERM)
        assert m.proc.wait(timeout=30) == 0
        assert not os.path.ismount(m.path)
        wait_for(lambda: not os.path.exists(f"/proc/{domain_pid}"), 30, "the domain to exit")
        assert not os.path.exists(socket_path(m.name))


def test_control_socket_survives_garbage(tmp_path: Path) -> None:
    backing = tmp_path / "backing"
    backing.mkdir()
    with mounted(str(tmp_path), "passthrough", str(backing)) as m:
        path = socket_path(m.name)
        for junk in (b"\xff\xfe not json\n", b"[1, 2]\n", b'{"cmd": 7}\n',
                     b'{"cmd": "inject", "fault": "melt"}\n', b'{"cmd": "reboot"}\n',
                     b"x" * 100_000):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(10)
                s.connect(path)
                s.sendall(junk)
                s.shutdown(socket.SHUT_WR)
                reply = s.recv(65536)
            assert b'"error"' in reply
        assert request(path, {"cmd": "status"})["state"] == "live"
        assert m.status()["recoveries"] == []


def test_version_help_and_json_to_stdout() -> None:
    r = nooks("--version")
    assert r.returncode == 0 and r.stdout.startswith("nooks ")
    r = nooks("mount", "--help")
    assert r.returncode == 0 and "(default: 10.0)" in r.stdout and "(default: 1024)" in r.stdout
    r = nooks("bench", "xpc", "--quick", "--json", "-")
    assert json.loads(r.stdout)["null_rtt_us"] > 0  # stdout is the JSON and nothing else
