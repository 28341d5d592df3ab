"""Third-party and buggy drivers under nooks: poison requests fail alone; the
mfusepy example filesystems behave as when mounted directly, and survive crashes."""

from __future__ import annotations

import errno
import os
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration.fsutil import direct_mount, mounted, outcome, wait_for

pytestmark = [pytest.mark.timeout(300),
              pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse")]


@pytest.mark.parametrize("mode", ["host", "direct"])
def test_poison_request_fails_alone(tmp_path: Path, mode: str) -> None:
    backing = tmp_path / "backing"
    backing.mkdir()
    (backing / "poison.txt").write_text("this file kills the driver")
    (backing / "fine.txt").write_text("fine")
    with mounted(str(tmp_path), "tests.drivers.poison:PoisonedPassthrough",
                 extra=("--state", "persistent", "--mode", mode), ctor=(str(backing),)) as m:
        stop = threading.Event()
        bystander_errors: list[BaseException] = []
        reads = [0]

        def bystander() -> None:
            try:
                while not stop.is_set():
                    with open(os.path.join(m.path, "fine.txt")) as f:
                        assert f.read() == "fine"
                    reads[0] += 1
            except BaseException as e:
                bystander_errors.append(e)

        th = threading.Thread(target=bystander)
        th.start()
        try:
            with pytest.raises(OSError, match="Input/output error") as e, \
                    open(os.path.join(m.path, "poison.txt")) as f:
                f.read()
            assert e.value.errno == errno.EIO
            with open(os.path.join(m.path, "new.txt"), "w") as f:
                f.write("still working")
        finally:
            stop.set()
            th.join(timeout=60)
        assert not bystander_errors
        assert reads[0] > 0
        assert (backing / "new.txt").read_text() == "still working"
        st = m.status()
        assert st["poisoned"] >= 1
        assert st["state"] == "live"
        assert len(st["recoveries"]) >= 3  # it was tried, and recovered, each time


# -- the mfusepy examples, direct vs through nooks ----------------------------------------

EXAMPLES = "tests.thirdparty.mfusepy_examples"
def script(root: str) -> list[Callable[[], Any]]:
    """A sequence of operations; each returns something comparable."""
    def p(name: str) -> str:
        return os.path.join(root, name)

    def write(name: str, data: bytes, mode: str = "wb") -> int:
        with open(p(name), mode) as f:
            return f.write(data)

    def read(name: str) -> bytes:
        with open(p(name), "rb") as f:
            return f.read()

    def stat(name: str) -> tuple[int, int]:
        st = os.stat(p(name))
        return st.st_size, st.st_mode & 0o170000

    return [
        lambda: write("a.txt", b"hello world\n"),
        lambda: read("a.txt"),
        lambda: write("a.txt", b"more\n", "ab"),
        lambda: read("a.txt"),
        lambda: stat("a.txt"),
        lambda: os.rename(p("a.txt"), p("b.txt")),
        lambda: read("a.txt"),
        lambda: read("b.txt"),
        lambda: os.truncate(p("b.txt"), 5),
        lambda: read("b.txt"),
        lambda: os.mkdir(p("d")),
        lambda: os.mkdir(p("d")),
        lambda: stat("d"),
        lambda: os.rmdir(p("d")),
        lambda: write("big.bin", bytes(range(256)) * 2000),
        lambda: read("big.bin")[1000:1100],
        lambda: sorted(os.listdir(root)),
        lambda: os.unlink(p("b.txt")),
        lambda: os.unlink(p("b.txt")),
        lambda: sorted(os.listdir(root)),
        lambda: os.symlink("big.bin", p("link")),
        lambda: os.readlink(p("link")),
        lambda: stat("nothing-here"),
        lambda: os.chmod(p("big.bin"), 0o600),
        lambda: os.stat(p("big.bin")).st_mode & 0o777,
    ]


def run_script(root: str, between: Callable[[int], None] = lambda i: None) -> list[Any]:
    out = []
    for i, step in enumerate(script(root)):
        between(i)
        out.append(outcome(step))
    return out


@pytest.mark.parametrize(("cls", "state", "mode"),
                         [("memory:Memory", "volatile", "host"),
                          ("memory:Memory", "volatile", "direct"),
                          ("loopback:Loopback", "persistent", "host"),
                          ("loopback:Loopback", "persistent", "direct")])
def test_mfusepy_examples_match_direct_mount_and_survive_crashes(
        tmp_path: Path, cls: str, state: str, mode: str) -> None:
    module, _, name = cls.partition(":")
    args: list[str] = []
    if name == "Loopback":
        for sub in ("b1", "b2"):
            (tmp_path / sub).mkdir()
    with direct_mount(tmp_path, f"{EXAMPLES}.{module}", name,
                      *([str(tmp_path / "b1")] if name == "Loopback" else [])) as mnt:
        expected = run_script(mnt)
    if name == "Loopback":
        args = [str(tmp_path / "b2")]
    with mounted(str(tmp_path), f"{EXAMPLES}.{cls}", extra=("--state", state, "--mode", mode),
                 ctor=tuple(args)) as m:
        faults = ["segv", "exception", "abort", "segv", "exit"]

        def crash(i: int) -> None:
            if i % 5 == 2:
                before = len(m.status()["recoveries"])
                m.inject(faults[(i // 5) % len(faults)])
                # the fault lands when the driver is idle; wait until it was recovered
                wait_for(lambda: len(m.status()["recoveries"]) > before, 30, "the recovery")

        got = run_script(m.path, crash)
        st = m.status()
    assert got == expected
    assert len(st["recoveries"]) == 5
    assert all(r["ok"] for r in st["recoveries"])




@pytest.mark.parametrize("mode", ["host", "direct"])
def test_suspect_errors_get_a_second_opinion(tmp_path: Path, mode: str) -> None:
    """EIO, or EBADF for an open handle, from a driver whose state is corrupt: a
    fresh driver is asked again and the application reads its data. An error
    the fresh driver repeats (a bad sector) reaches the application, once asked."""
    backing = tmp_path / "backing"
    backing.mkdir()
    for name in ("flaky.txt", "stale.txt", "bad.txt"):
        (backing / name).write_text(f"contents of {name}")
    with mounted(str(tmp_path), "tests.drivers.flaky:FlakyPassthrough",
                 extra=("--state", "persistent", "--mode", mode), ctor=(str(backing),)) as m:
        for name in ("flaky.txt", "stale.txt"):
            assert (Path(m.path) / name).read_text() == f"contents of {name}"
        # (the fresh driver may answer before the recovery is written down)
        wait_for(lambda: m.status()["recoveries"], 10, "the recovery's record")
        recs = m.status()["recoveries"]
        assert [r["kind"] for r in recs] == ["misbehaved"]  # one restart cured both
        assert "asking a fresh driver" in recs[0]["detail"]
        for _ in range(3):
            with pytest.raises(OSError, match="Input/output error") as e:
                (Path(m.path) / "bad.txt").read_text()
            assert e.value.errno == errno.EIO
        wait_for(lambda: len(m.status()["recoveries"]) >= 2, 10, "the recovery's record")
        st = m.status()
        assert len(st["recoveries"]) == 2  # asked once; then the error was trusted
        assert st["second_opinions"] == 2
    (backing / ".first-incarnation-done").unlink()
    with mounted(str(tmp_path / "native"), "tests.drivers.flaky:FlakyPassthrough",
                 native=True, extra=("--state", "persistent"), ctor=(str(backing),)) as m:
        with pytest.raises(OSError, match="Input/output error") as e:
            (Path(m.path) / "flaky.txt").read_text()
        assert e.value.errno == errno.EIO


@pytest.mark.parametrize("mode", ["host", "direct"])
@pytest.mark.parametrize("case", ["mkdir", "unlink", "read", "access", "readdir"])
def test_wrong_answers_get_a_second_opinion(tmp_path: Path, case: str, mode: str) -> None:
    """A driver that answers success without doing the work: the shadow's
    postcondition (checked with the driver's own getattr) fails, a fresh driver
    is asked again, and the application sees the right outcome."""
    backing = tmp_path / "backing"
    backing.mkdir()
    data = os.urandom(300_000)
    (backing / "stuck.txt").write_text("remove me")
    (backing / "short.bin").write_bytes(data)
    (backing / "locked").mkdir()
    (backing / "listless").mkdir()
    (backing / "listless" / "in-it.txt").write_text("listed")
    with mounted(str(tmp_path), "tests.drivers.flaky:QuietlyWrongPassthrough",
                 extra=("--state", "persistent", "--mode", mode), ctor=(str(backing),)) as m:
        root = Path(m.path)
        if case == "mkdir":
            (root / "lost").mkdir()
            assert (backing / "lost").is_dir()
        elif case == "unlink":
            (root / "stuck.txt").unlink()
            assert not (backing / "stuck.txt").exists()
        elif case == "read":
            assert (root / "short.bin").read_bytes() == data
        elif case == "readdir":
            assert os.listdir(root / "listless") == ["in-it.txt"]
        else:
            assert os.access(root / "locked", os.X_OK)
            subprocess.run(["sh", "-c", "cd locked && pwd"], cwd=root, check=True,
                           capture_output=True)
        wait_for(lambda: m.status()["recoveries"], 10, "the recovery's record")
        st = m.status()
        assert [r["kind"] for r in st["recoveries"]] == ["misbehaved"]
        assert "asking a fresh driver" in st["recoveries"][0]["detail"]
