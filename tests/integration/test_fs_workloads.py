"""Real programs on a real FUSE mount while the driver is killed, made to raise
and made to hang: every program exits 0, every check passes, in both modes
(the host passing every request on, and the domain serving the mount itself,
a volatile driver's journal with it);
with --native the same fault takes the mount down and the program sees it."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.fsutil import Injector, Mount, make_tree, manifest, mounted

pytestmark = [pytest.mark.timeout(600),
              pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse")]

FAULTS = ("segv", "sigkill", "exception", "hang")
MIN_FAILURES = 10
MAX_SECONDS = 180
MEMORY = "tests.drivers.ramfs:RamFs"


def has_vfat() -> bool:
    import importlib.util

    return importlib.util.find_spec("nooks.drivers.vfat") is not None


# the driver, its arguments, and the flags of the mode it is mounted in
Driver = tuple[str, list[str], tuple[str, ...]]


# memory: a driver whose files live in its memory (volatile: journaled)
@pytest.fixture(params=["passthrough", "vfat", "passthrough-direct", "vfat-direct",
                        "memory-direct"])
def driver(request: pytest.FixtureRequest, tmp_path: Path) -> Driver:
    name, _, mode = str(request.param).partition("-")
    flags = ("--mode", mode) if mode else ()
    if name == "memory":
        return MEMORY, [], (*flags, "--state", "volatile")
    if name == "passthrough":
        backing = tmp_path / "backing"
        backing.mkdir()
        return "passthrough", [str(backing)], flags
    if not has_vfat():
        pytest.skip("vfat driver not available")
    from nooks.fs.mkfs import mkfs_vfat

    image = tmp_path / "disk.img"
    mkfs_vfat(str(image), 128 << 20)
    return "vfat", [str(image)], flags


@pytest.fixture
def src(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("tree")
    make_tree(str(root))
    return root, manifest(str(root))


def run(cmd: list[str] | str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=False, **kw)  # type: ignore[call-overload, no-any-return]


def under_faults(m: Mount, round_: Callable[[int], None]) -> Injector:
    """Run ``round_`` again and again while faults are injected, until at least
    MIN_FAILURES faults have hit; every round must pass its own checks."""
    i = 0
    end = time.monotonic() + MAX_SECONDS
    with Injector(m, FAULTS, interval=0.25) as inj:
        while len(m.status()["recoveries"]) < MIN_FAILURES:
            assert time.monotonic() < end, f"only {inj.count} faults injected in {i} rounds"
            round_(i)
            i += 1
    round_(i)  # and once more, so that the last fault injected has been met
    assert not inj.errors, inj.errors
    return inj


def assert_recovered(m: Mount, inj: Injector) -> None:
    st = m.status()
    assert st["state"] == "live"
    kinds = {r["kind"] for r in st["recoveries"]}
    assert len(st["recoveries"]) >= MIN_FAILURES, st["recoveries"]
    assert {"crashed", "misbehaved", "hung"} <= kinds, kinds
    assert all(r["ok"] for r in st["recoveries"])
    assert st["poisoned"] == 0


def check_fsck(driver: Driver) -> None:
    if driver[0] == "vfat":
        r = run(["fsck.fat", "-n", driver[1][0]])
        assert r.returncode == 0, r.stdout + r.stderr


def test_cp_and_sha256sum(driver: Driver, src: tuple[Path, str],
                          tmp_path: Path) -> None:
    root, sums = src
    (tmp_path / "sums").write_text(sums)
    with mounted(str(tmp_path), driver[0], *driver[1], extra=("--deadline", "1", *driver[2])) as m:
        def round_(i: int) -> None:
            dest = os.path.join(m.path, f"copy{i}")
            r = run(["cp", "-a", str(root), dest])
            assert r.returncode == 0, r.stderr
            r = run(["sha256sum", "-c", "--quiet", str(tmp_path / "sums")], cwd=dest)
            assert r.returncode == 0, r.stdout + r.stderr
            run(["rm", "-rf", dest])

        inj = under_faults(m, round_)
        assert_recovered(m, inj)
    check_fsck(driver)


def test_tar_create_and_extract(driver: Driver, src: tuple[Path, str],
                                tmp_path: Path) -> None:
    root, sums = src
    with mounted(str(tmp_path), driver[0], *driver[1], extra=("--deadline", "1", *driver[2])) as m:
        r = run(["cp", "-a", str(root), os.path.join(m.path, "tree")])
        assert r.returncode == 0, r.stderr

        def round_(i: int) -> None:
            archive = os.path.join(m.path, f"t{i}.tar")
            out = os.path.join(m.path, f"x{i}")
            os.mkdir(out)
            r = run(["tar", "-cf", archive, "-C", os.path.join(m.path, "tree"), "."])
            assert r.returncode == 0, r.stderr
            r = run(["tar", "-xf", archive, "-C", out])
            assert r.returncode == 0, r.stderr
            assert manifest(out) == sums
            run(["rm", "-rf", out, archive])

        inj = under_faults(m, round_)
        assert_recovered(m, inj)
    check_fsck(driver)


SCRIPT = textwrap.dedent("""
    import os, sys, hashlib, random
    d, i = sys.argv[1], int(sys.argv[2])
    rng = random.Random(i)
    path, final = os.path.join(d, f"f{i}.tmp"), os.path.join(d, f"f{i}.dat")
    blocks = [rng.randbytes(rng.randrange(1, 200_000)) for _ in range(8)]
    fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_TRUNC, 0o644)
    pos = 0
    for b in blocks:
        os.lseek(fd, pos, os.SEEK_SET)
        os.write(fd, b)
        pos += len(b)
    os.lseek(fd, 10, os.SEEK_SET)
    os.write(fd, b"PATCHED")
    os.fsync(fd)
    os.close(fd)
    os.rename(path, final)
    want = bytearray(b"".join(blocks))
    want[10:17] = b"PATCHED"
    with open(final, "rb") as f:
        got = f.read()
    assert hashlib.sha256(got).digest() == hashlib.sha256(want).digest(), "content differs"
    print("ok", len(got))
""")


def test_python_open_seek_write_fsync_rename(driver: Driver,
                                             tmp_path: Path) -> None:
    script = tmp_path / "w.py"
    script.write_text(SCRIPT)
    with mounted(str(tmp_path), driver[0], *driver[1], extra=("--deadline", "1", *driver[2])) as m:
        def round_(i: int) -> None:
            r = run([sys.executable, str(script), m.path, str(i)])
            assert r.returncode == 0 and r.stdout.startswith("ok"), r.stdout + r.stderr

        inj = under_faults(m, round_)
        assert_recovered(m, inj)
    check_fsck(driver)


def test_sqlite_transactions(driver: Driver, tmp_path: Path) -> None:
    with mounted(str(tmp_path), driver[0], *driver[1], extra=("--deadline", "1", *driver[2])) as m:
        db = os.path.join(m.path, "test.db")
        total = 0

        def round_(i: int) -> None:
            nonlocal total
            sql = ["CREATE TABLE IF NOT EXISTS t (k INTEGER PRIMARY KEY, v TEXT);",
                   "BEGIN;"]
            sql += [f"INSERT INTO t (v) VALUES ('row {i}-{j} {'x' * (j % 50)}');"
                    for j in range(100)]
            sql += ["COMMIT;", "SELECT count(*) FROM t;"]
            r = run(["sqlite3", db], input="\n".join(sql))
            assert r.returncode == 0, r.stderr
            total += 100
            assert r.stdout.strip() == str(total)
            r = run(["sqlite3", db, "PRAGMA integrity_check;"])
            assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout + r.stderr

        inj = under_faults(m, round_)
        assert_recovered(m, inj)
        con = sqlite3.connect(db)
        assert con.execute("SELECT count(*) FROM t").fetchone()[0] == total
        con.close()
    check_fsck(driver)


def test_native_mount_dies_with_its_driver(driver: Driver, src: tuple[Path, str],
                                           tmp_path: Path) -> None:
    root, _ = src
    if driver[2]:
        pytest.skip("native mode has no mode of serving")
    with mounted(str(tmp_path), driver[0], *driver[1], native=True) as m:
        assert run(["cp", "-a", str(root), os.path.join(m.path, "before")]).returncode == 0
        m.inject("segv")
        r = run(["cp", "-a", str(root), os.path.join(m.path, "after")])
        assert r.returncode != 0
        assert "Transport endpoint is not connected" in r.stderr
        m.proc.wait(timeout=30)
        assert m.proc.returncode == -11  # the host itself died of the driver's SIGSEGV
