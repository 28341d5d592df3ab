"""Drivers that try to make their host hold too much or outlive their domain: each
is a recorded *resource* or *misbehaved* failure, recovered, with the host's memory
bounded, and nothing of the driver left running."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nooks.control import ControlServer
from nooks.fs.mkfs import mkfs_vfat
from tests.integration.fsutil import mounted, wait_for

pytestmark = [pytest.mark.timeout(300),
              pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse")]

HOST_RSS_LIMIT = 200 << 20


@pytest.fixture(params=["host", "direct"])
def mode(request: pytest.FixtureRequest) -> tuple[str, ...]:
    return ("--mode", str(request.param))


def rss(pid: int) -> int:
    """The most memory process ``pid`` has held (its peak resident set: a flood that
    grew the host and was let go still counts)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) << 10
    raise AssertionError(f"no VmHWM for {pid}")


def processes_with(marker: str) -> list[int]:
    """The ``sleep MARKER`` processes running."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if f.read().split(b"\0")[:2] == [b"sleep", marker.encode()]:
                        out.append(int(entry))
            except OSError:
                continue
    return out


def test_a_descriptor_leak_is_a_resource_failure_not_emfile(tmp_path: Path,
                                                            mode: tuple[str, ...]) -> None:
    with mounted(str(tmp_path), "tests.drivers.hostile:Leaky",
                 extra=(*mode, "--state", "volatile", "--max-fds", "64")) as m:
        host = m.status()["host_pid"]
        f = Path(m.path) / "f.txt"
        f.write_text("leak")
        for _ in range(200):  # three times what the domain may hold
            assert f.read_text() == "leak"
        recs = m.status()["recoveries"]
        assert rss(host) < HOST_RSS_LIMIT
    assert recs and all(r["ok"] for r in recs)
    assert {r["kind"] for r in recs} == {"resource"}
    assert "Too many open files" in recs[0]["detail"]


def test_a_drivers_children_die_with_it_and_are_bounded(tmp_path: Path,
                                                        mode: tuple[str, ...]) -> None:
    marker = f"{time.time_ns() % 10**9}.{os.getpid()}"  # a sleep no one else runs
    with mounted(str(tmp_path), "tests.drivers.hostile:Forking",
                 extra=(*mode, "--state", "volatile", "--max-tasks", "24"), ctor=(marker,)) as m:
        host = m.status()["host_pid"]
        wait_for(lambda: len(processes_with(marker)) == 1, 30, "the driver's first child")
        first = processes_with(marker)
        with pytest.raises(OSError, match="Resource temporarily unavailable") as e:
            os.mkdir(Path(m.path) / "spawn-100")  # more than it may have
        assert e.value.errno == errno.EAGAIN  # (a fresh driver, asked again, says the same)
        assert 1 < len(processes_with(marker)) < 24
        recs = m.status()["recoveries"]
        assert [r["kind"] for r in recs] == ["resource"], recs
        assert "task limit refused a fork" in recs[0]["detail"]
        assert not set(first) & set(processes_with(marker))  # the first driver's are gone
        assert rss(host) < HOST_RSS_LIMIT
        second = processes_with(marker)
        m.inject("segv")  # the domain dies: everything it started dies with it
        wait_for(lambda: not set(second) & set(processes_with(marker)), 30,
                 "the children of the crashed domain to die")
        wait_for(lambda: len(processes_with(marker)) == 1, 30, "the new driver's child")
    wait_for(lambda: not processes_with(marker), 30, "the last children to die")


def test_a_posted_write_flood_is_bounded(tmp_path: Path, mode: tuple[str, ...]) -> None:
    image = tmp_path / "disk.img"
    mkfs_vfat(str(image), 16 << 20)
    with mounted(str(tmp_path), "tests.drivers.hostile:Flooding",
                 extra=(*mode, "--image", str(image), "--check-interval", "0")) as m:
        host = m.status()["host_pid"]
        with pytest.raises(OSError, match="Input/output error") as e:
            (Path(m.path) / "flood").write_text("x")
        assert e.value.errno == errno.EIO
        st = m.status()
        assert rss(host) < HOST_RSS_LIMIT
        # (the test driver keeps its files in memory: a fresh one starts empty)
        (Path(m.path) / "after").write_text("ok")
        assert (Path(m.path) / "after").read_text() == "ok"
    kinds = [r["kind"] for r in st["recoveries"]]
    assert "resource" in kinds
    assert any("MiB to the block device" in r["detail"] for r in st["recoveries"])


def test_garbage_and_oversize_answers_are_misbehaviour(tmp_path: Path,
                                                       mode: tuple[str, ...]) -> None:
    with mounted(str(tmp_path), "tests.drivers.hostile:Garbage",
                 extra=(*mode, "--state", "volatile", "--deadline", "30")) as m:
        host = m.status()["host_pid"]
        f = Path(m.path) / "f.txt"
        f.write_text("data")
        t0 = time.monotonic()
        if mode[1] == "host":
            with pytest.raises(OSError, match="Input/output error"):
                os.stat(Path(m.path) / "garbage")
        else:
            # the domain answers the kernel itself: its own answer (there is no such
            # file) may be written before the host reads the garbage and kills it
            with pytest.raises(OSError, match=r"No such file|Input/output error") as e:
                os.stat(Path(m.path) / "garbage")
            assert e.value.errno in (errno.ENOENT, errno.EIO)
            wait_for(lambda: any("garbage on the channel" in r["detail"]
                                 for r in m.status()["recoveries"]), 20, "the garbage's record")
        assert time.monotonic() - t0 < 20  # seen as garbage at once, not as a hang later
        with pytest.raises(OSError, match="Input/output error"):
            os.getxattr(f, "user.big")
        assert rss(host) < HOST_RSS_LIMIT
        with pytest.raises(OSError, match="Input/output error"):
            os.stat(Path(m.path) / "negative")
        big = Path(m.path) / "big.bin"
        big.write_bytes(bytes(300_000))  # reads of it fill what the kernel asks, and more
        with pytest.raises(OSError, match="Input/output error"):
            big.read_bytes()
        recs = m.status()["recoveries"]
    details = [r["detail"] for r in recs]
    assert any("garbage on the channel" in d for d in details), details
    if mode[1] == "host":  # (the domain's server checks the size against the kernel's)
        assert any("more than 67108864 bytes" in d for d in details), details
    assert any("Expected `int` >= 0" in d for d in details), details
    assert any("were asked" in d for d in details), details
    assert {r["kind"] for r in recs} == {"misbehaved"}


def test_a_driver_cannot_reach_its_host(tmp_path: Path, mode: tuple[str, ...]) -> None:
    """Not its memory or environment under /proc, not its control socket, not a kill
    of its pid, not another domain's memory (the default hardening of a root domain;
    what root's file permissions reach, /sys and /proc/sys, it still reaches)."""
    with mounted(str(tmp_path), "tests.drivers.hostile:Snooping",
                 extra=(*mode, "--state", "volatile")) as m:
        f = Path(m.path) / "f"
        f.write_text("x")
        got = json.loads(os.getxattr(f, "user.snoop"))
        assert m.status()["recoveries"] == []
    assert got["environ"] == got["mem"] == "PermissionError", got
    assert "may not use a host's control socket" in got["control"], got
    assert got["signal"] == "PermissionError", got
    assert got["domains"] == "PermissionError", got  # other domains are not dumpable


def test_the_control_socket_refuses_a_domain(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Where a domain reaches a host's socket at all (one that could not have a mount
    namespace of its own), the host refuses it: its process carries the domains'
    marker."""
    monkeypatch.setenv("NOOKS_RUN_DIR", str(tmp_path))
    server = ControlServer("refusing", lambda req: {"ok": True})
    try:
        ask = [sys.executable, "-c", "import sys; from nooks.control import request; "
               "print(request(sys.argv[1], {'cmd': 'status'}))", server.path]
        plain = subprocess.run(ask, capture_output=True, text=True, check=True)
        assert "'ok': True" in plain.stdout
        marked = subprocess.run(ask, capture_output=True, text=True, check=True,
                                env=dict(os.environ, NOOKS_DOMAIN="a-driver"))
        assert "may not use a host's control socket" in marked.stdout, marked.stdout
    finally:
        server.close()
