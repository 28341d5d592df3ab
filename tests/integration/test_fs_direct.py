"""Direct mode's crash matrix: a driver serving the mount itself fails in each way
there is, in the middle of a program's request; each failure is seen as its kind,
the driver is recovered, the request is answered by the fresh driver (the
program never sees the failure), and no domain is left behind."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.drivers.crashing import KINDS
from tests.integration.fsutil import direct_mount, mounted, outcome, wait_for

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse")]

SEEN_AS = {"segv": "crashed", "abort": "crashed", "exit": "crashed", "exception": "misbehaved",
           "hang": "hung", "memory": "resource", "garbage": "misbehaved", "arena": "crashed",
           "kernel": "misbehaved"}


def domains_of(host_pid: int) -> list[int]:
    """The domain processes that host ``host_pid`` started and that are still there."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if b"nooks.domain" in cmdline and f'"host_pid":{host_pid},'.encode() in cmdline:
            out.append(int(entry))
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_each_failure_is_recovered_under_the_request(tmp_path: Path, kind: str) -> None:
    backing = tmp_path / "backing"
    backing.mkdir()
    (backing / f"crash-{kind}").write_text("its contents")
    (backing / f".crash-{kind}").touch()
    with mounted(str(tmp_path), "tests.drivers.crashing:CrashingPassthrough",
                 extra=("--state", "persistent", "--mode", "direct", "--deadline", "1",
                        "--memory", "256M"), ctor=(str(backing),)) as m:
        before = m.status()
        r = subprocess.run(["cat", os.path.join(m.path, f"crash-{kind}")], capture_output=True,
                           text=True, timeout=60, check=False)
        assert (r.returncode, r.stdout, r.stderr) == (0, "its contents", "")
        # (the fresh driver may answer before the recovery is written down)
        wait_for(lambda: m.status()["recoveries"], 10, "the recovery's record")
        st = m.status()
        assert not (backing / f".crash-{kind}").exists()  # (it did fail)
        assert [x["kind"] for x in st["recoveries"]] == [SEEN_AS[kind]], st["recoveries"]
        assert st["recoveries"][0]["ok"]
        assert st["poisoned"] == 0
        assert st["serving"] == "direct"
        # no request left waiting (cat's close is answered before the record is cleared)
        wait_for(lambda: m.status()["direct"]["in_flight"] == [], 10, "an empty record")
        assert st["domain_pid"] != before["domain_pid"]
        assert sorted(os.listdir(m.path)) == [f"crash-{kind}"]
    assert m.proc.returncode == 0
    assert domains_of(m.proc.pid) == []


@pytest.mark.parametrize("driver", ["passthrough", "vfat"])
def test_a_file_held_open_across_failures_keeps_reading_and_writing(tmp_path: Path,
                                                                    driver: str) -> None:
    """One descriptor, opened before the first failure, written and read after each:
    the fresh drivers re-open its handle by path, and what it wrote is all there."""
    if driver == "vfat":
        from nooks.fs.mkfs import mkfs_vfat

        arg = tmp_path / "disk.img"
        mkfs_vfat(str(arg), 32 << 20)
    else:
        arg = tmp_path / "backing"
        arg.mkdir()
    want = bytearray()
    with mounted(str(tmp_path), driver, str(arg), extra=("--mode", "direct", "--deadline", "1")) \
            as m:
        fd = os.open(os.path.join(m.path, "held"), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            for i, fault in enumerate(("segv", "exception", "hang", "exit", "abort")):
                chunk = bytes([65 + i]) * (70_000 + i)
                assert os.write(fd, chunk) == len(chunk)
                want += chunk
                got = m.inject(fault)
                assert got.get("recovered") is True, got
                assert os.pread(fd, len(want) + 10, 0) == want
            os.fsync(fd)
        finally:
            os.close(fd)
        st = m.status()
        assert [r["kind"] for r in st["recoveries"]] == \
            ["crashed", "misbehaved", "hung", "crashed", "crashed"]
        assert (Path(m.path) / "held").read_bytes() == want
    if driver == "vfat":
        r = subprocess.run(["fsck.fat", "-n", str(arg)], capture_output=True, text=True,
                           check=False)
        assert r.returncode == 0, r.stdout + r.stderr
    else:
        assert (arg / "held").read_bytes() == want


def test_xattrs_and_a_drivers_own_exception_get_mfusepys_answers(tmp_path: Path) -> None:
    """The xattr calls, and an exception the driver raises in one, answered as when
    it is mounted directly with mfusepy; the exception costs one recovery."""
    def script(root: str) -> list[Any]:
        f = os.path.join(root, "f")
        steps: list[Callable[[], Any]] = [
            lambda: Path(f).write_bytes(b"data"),
            lambda: os.setxattr(f, "user.a", b"one"),
            lambda: os.getxattr(f, "user.a"),
            lambda: sorted(os.listxattr(f)),
            lambda: os.getxattr(f, "user.none"),
            lambda: os.getxattr(f, "user.bug"),
            lambda: os.getxattr(f, "user.bug"),
            lambda: os.removexattr(f, "user.a"),
            lambda: os.listxattr(f),
        ]
        return [outcome(step) for step in steps]

    for sub in ("b1", "b2"):
        (tmp_path / sub).mkdir()
    with direct_mount(tmp_path, "tests.drivers.crashing", "XattrPassthrough",
                      str(tmp_path / "b1")) as mnt:
        expected = script(mnt)
    with mounted(str(tmp_path), "tests.drivers.crashing:XattrPassthrough",
                 extra=("--state", "persistent", "--mode", "direct"),
                 ctor=(str(tmp_path / "b2"),)) as m:
        got = script(m.path)
        wait_for(lambda: m.status()["recoveries"], 10, "the recovery's record")
        st = m.status()
    assert got == expected
    assert expected[5] == ("errno", errno.EINVAL)
    assert [(r["kind"], r["ok"]) for r in st["recoveries"]] == [("misbehaved", True)]
    assert st["poisoned"] == 0


def test_sigterm_unmounts_and_ends_the_driver_in_order(tmp_path: Path) -> None:
    backing = tmp_path / "backing"
    backing.mkdir()
    with mounted(str(tmp_path), "passthrough", str(backing), extra=("--mode", "direct")) as m:
        (Path(m.path) / "kept").write_bytes(b"before the signal")
        domain = m.status()["domain_pid"]
        m.proc.terminate()
        assert m.proc.wait(timeout=30) == 0
        assert not os.path.ismount(m.path)
        assert not os.path.exists(f"/proc/{domain}")
    assert (backing / "kept").read_bytes() == b"before the signal"


def test_a_file_unlinked_while_open_as_libfuse_keeps_it(tmp_path: Path) -> None:
    """Unlinked (or renamed over) while open, a file stays readable and writable
    through its descriptor — libfuse renames it to a hidden name, and removes it at
    the last close — in direct mode as on a direct mfusepy mount."""
    def script(root: str) -> list[Any]:
        f, g = os.path.join(root, "f"), os.path.join(root, "g")
        fds: list[int] = []

        def opened(path: str) -> int:
            fds.append(os.open(path, os.O_RDWR | os.O_CREAT, 0o644))
            return fds[-1]

        steps: list[Callable[[], Any]] = [
            lambda: os.write(opened(f), b"first"),
            lambda: os.unlink(f),
            lambda: os.pwrite(fds[0], b" and more", 5),
            lambda: os.pread(fds[0], 100, 0),
            lambda: os.fstat(fds[0]).st_size,
            lambda: len([n for n in os.listdir(root) if n.startswith(".fuse_hidden")]),
            lambda: os.close(fds[0]),
            lambda: os.listdir(root),
            lambda: os.write(opened(g), b"old"),
            lambda: Path(f).write_bytes(b"new"),
            lambda: os.rename(f, g),
            lambda: os.pread(fds[1], 10, 0),
            lambda: os.close(fds[1]),
            lambda: (sorted(os.listdir(root)), Path(g).read_bytes()),
        ]
        return [outcome(step) for step in steps]

    for sub in ("b1", "b2"):
        (tmp_path / sub).mkdir()
    with direct_mount(tmp_path, "nooks.drivers.passthrough", "Passthrough",
                      str(tmp_path / "b1")) as mnt:
        expected = script(mnt)
    with mounted(str(tmp_path), "passthrough", str(tmp_path / "b2"),
                 extra=("--mode", "direct")) as m:
        got = script(m.path)
        assert m.status()["recoveries"] == []
    assert got == expected
    assert expected[3] == ("ok", b"first and more") and expected[5] == ("ok", 1)
    assert sorted(os.listdir(tmp_path / "b2")) == ["g"]
