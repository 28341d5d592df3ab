"""The campaign's registry and results file, directly: a scope takes down the whole
process group of what it started (orphans included), the mounts, the sockets of
hosts that died and its temp dirs; nothing starts once stopped; results.jsonl
survives a line cut short and never counts a run twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import msgspec
import pytest

from nooks.control import socket_path
from nooks.eval.registry import Interrupted, Registry, group_members
from nooks.eval.results import RunResult, append_result, load_results
from nooks.tools.fsprocess import is_mounted, wait_mounted
from tests.integration.fsutil import wait_for

pytestmark = pytest.mark.timeout(60)


def children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
            except (OSError, ValueError):
                continue
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


@pytest.fixture(autouse=True)
def _temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))


def test_interrupt_kills_the_whole_group_and_close_reaps_it(tmp_path: Path) -> None:
    reg = Registry()
    with reg.scope() as scope:
        d = scope.tempdir("nooks-test-")
        # a shell whose child outlives it: the child is an orphan in the same group
        proc = scope.popen(["sh", "-c", "sleep 300 & echo $!; wait"], stdout=subprocess.PIPE,
                           text=True)
        assert proc.stdout is not None
        child = int(proc.stdout.readline())
        assert os.getpgid(child) == proc.pid != os.getpgid(0)
        reg.interrupt(signal.SIGTERM)
        assert reg.stopped and reg.signum == signal.SIGTERM
        with pytest.raises(Interrupted):
            scope.popen(["true"])
        with pytest.raises(Interrupted):
            scope.tempdir("nooks-test-")
    assert proc.returncode == -signal.SIGKILL
    assert not _alive(child)
    assert group_members(proc.pid) == []
    assert not os.path.exists(d)


def test_close_after_a_host_died_removes_mount_socket_and_dir(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not os.path.exists("/dev/fuse"):
        pytest.skip("needs /dev/fuse")
    monkeypatch.setenv("NOOKS_RUN_DIR", str(tmp_path / "run"))
    reg = Registry()
    with reg.scope() as scope:
        d = scope.tempdir("nooks-test-")
        backing, mnt = os.path.join(d, "backing"), os.path.join(d, "mnt")
        os.mkdir(backing)
        os.mkdir(mnt)
        scope.mount(mnt)
        scope.host("teardown-test")
        host = scope.popen([sys.executable, "-m", "nooks", "mount", "passthrough", backing,
                            mnt, "--name", "teardown-test"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.STDOUT)
        wait_mounted(mnt, host, timeout=60)
        assert os.path.exists(socket_path("teardown-test"))
        # domains are sessions of their own (a terminal's signals reach only the host),
        # and they end with their host
        domains = children(host.pid)
        assert domains, "a nooks host runs its driver in a domain"
        scope.kill(host)  # dies as a crashed host would: mount and socket left behind
        host.wait()
        assert is_mounted(mnt)
    # a domain sees its host die (a pidfd) and ends with everything it started
    wait_for(lambda: not any(_alive(p) for p in domains), 30, "the domains to end")
    assert not is_mounted(mnt)
    assert not os.path.exists(socket_path("teardown-test"))
    assert not os.path.exists(d)


def _result(index: int, mode: str = "native") -> RunResult:
    return RunResult(driver="passthrough", index=index, mode=mode, kind="source", seed=index,
                     site=None, outcome="no effect", data_ok=True, detail="", recoveries=0,
                     seconds=0.1)


def test_results_skip_a_line_cut_short_and_count_each_run_once(tmp_path: Path) -> None:
    path = str(tmp_path / "results.jsonl")
    append_result(path, _result(0))
    with open(path, "ab") as f:  # killed while it wrote the next line
        f.write(msgspec.json.encode(_result(1))[:40])
    assert [r.index for r in load_results(path)] == [0]
    append_result(path, _result(1))
    append_result(path, _result(0))  # twice: counted once
    assert [(r.index, r.mode) for r in load_results(path)] == [(0, "native"), (1, "native")]
    lines = Path(path).read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) == 5
