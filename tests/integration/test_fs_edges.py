"""Edges a real user meets: a fusepy that cannot load, paths longer than PATH_MAX,
tar of dangling symlinks as root, bad argument values, and a fault injected into a
driver that cannot take it."""

from __future__ import annotations

import errno
import os
import pwd
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import pytest

from nooks.fs.mkfs import mkfs_vfat
from nooks.limitflags import unreachable
from tests.integration.fsutil import mounted, wait_for

pytestmark = [pytest.mark.timeout(300),
              pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse")]


def nooks(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nooks", *args], capture_output=True,
                          text=True, check=False, timeout=60)


def test_a_fusepy_without_libfuse_2_does_not_matter(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """fusepy's ``import fuse`` raises OSError where libfuse 2 is missing; nooks's own
    drivers never import it, so it must not break them."""
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "fuse.py").write_text('raise OSError("Unable to find libfuse")\n')
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(shim), os.getcwd()]))
    backing = tmp_path / "backing"
    backing.mkdir()
    (backing / "f").write_text("seen")
    with mounted(str(tmp_path), "passthrough", str(backing)) as m:
        assert (Path(m.path) / "f").read_text() == "seen"
        assert m.status()["start_failures"] == []


def deep_create(root: str) -> tuple[str, object]:
    """Make directories deeper than PATH_MAX below ``root`` (through descriptors, as
    a program working in a deep directory does) and a file at the bottom."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        name = "d" * 200
        for _ in range(25):  # 25 * 201 > 4096 characters from the mount's root
            os.mkdir(name, dir_fd=fd)
            nfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        out = os.open("deep.txt", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd)
        os.write(out, b"deep")
        os.close(out)
        return ("ok", os.stat("deep.txt", dir_fd=fd).st_size)
    except OSError as e:
        return ("errno", e.errno)
    finally:
        os.close(fd)


@pytest.mark.parametrize("mode", ["host", "direct"])
@pytest.mark.parametrize("driver", ["vfat", "passthrough"])
def test_paths_longer_than_path_max_as_natively(tmp_path: Path, driver: str,
                                                mode: str) -> None:
    """nooks adds no limit of its own: vfat creates the deep file, passthrough meets
    the host's own ENAMETOOLONG, natively and isolated alike."""
    outcomes = []
    for native in (True, False):
        where = tmp_path / ("native" if native else "nooks")
        where.mkdir()
        if driver == "vfat":
            mkfs_vfat(str(where / "disk.img"), 32 << 20)
            arg = str(where / "disk.img")
        else:
            (where / "backing").mkdir()
            arg = str(where / "backing")
        with mounted(str(where), driver, arg, native=native,
                     extra=() if native else ("--mode", mode)) as m:
            outcomes.append(deep_create(m.path))
            if not native:
                assert m.status()["recoveries"] == []
    assert outcomes[0] == outcomes[1]
    assert outcomes[0] == (("ok", 4) if driver == "vfat" else ("errno", errno.ENAMETOOLONG))


@pytest.mark.parametrize("mode", ["host", "direct"])
def test_tar_extracts_dangling_symlinks_as_root(tmp_path: Path, mode: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "file").write_text("x")
    os.symlink("nowhere", src / "dangling")
    os.lchown(src / "dangling", 1, 1)
    archive = tmp_path / "t.tar"
    with tarfile.open(archive, "w") as t:
        t.add(src, arcname="tree")
    backing = tmp_path / "backing"
    backing.mkdir()
    with mounted(str(tmp_path), "passthrough", str(backing), extra=("--mode", mode)) as m:
        r = subprocess.run(["tar", "-xpf", str(archive), "-C", m.path], capture_output=True,
                           text=True, check=False)
        assert r.returncode == 0, r.stderr
        link = Path(m.path) / "tree" / "dangling"
        assert os.readlink(link) == "nowhere"
        assert os.lstat(link).st_uid == 1


@pytest.mark.parametrize(("flag", "value"), [
    ("--deadline", "nan"), ("--deadline", "-1"), ("--deadline", "0"), ("--deadline", "1e-9"),
    ("--deadline", "inf"), ("--check-interval", "-1"), ("--check-interval", "nan"),
    ("--max-fds", "0"), ("--max-tasks", "-5"), ("--memory", "12"), ("--memory", "nanM"),
])
def test_bad_values_are_one_line_errors(tmp_path: Path, flag: str, value: str) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = nooks("mount", "passthrough", str(tmp_path), str(mnt), flag, value)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and flag in lines[0], r.stderr


def test_a_fault_the_driver_cannot_take_is_reported_and_never_taken(tmp_path: Path) -> None:
    """The driver is busy in a slow call (its only thread): a fault sent to it is not
    read in time. ``nooks inject`` says so and fails, and the driver, when it reads
    the fault late, does not take it: nothing happens."""
    with mounted(str(tmp_path), "tests.drivers.quirky:Quirky",
                 extra=("--state", "volatile", "--deadline", "30"), ctor=("slow",)) as m:
        slow = Path(m.path) / "slow"
        slow.write_text("x")
        got: list[str] = []
        reader = threading.Thread(target=lambda: got.append(slow.read_text()))
        reader.start()
        wait_for(lambda: "read" in m.status()["in_flight"], 10, "the read to reach the driver")
        r = nooks("inject", m.name, "--fault", "segv")
        assert r.returncode == 1
        assert "did not read the fault" in r.stderr, r.stderr
        reader.join(timeout=60)
        assert got == ["x"]
        assert (Path(m.path) / "other").write_text("y") == 1
        st = m.status()
    assert st["recoveries"] == [] and st["state"] == "live"


def test_a_strict_profile_still_serves(tmp_path: Path) -> None:
    backing = tmp_path / "backing"
    backing.mkdir()
    with mounted(str(tmp_path / "strict"), "passthrough", str(backing),
                 extra=("--seccomp", "strict")) as m:
        r = subprocess.run(["cp", "-a", os.path.dirname(tarfile.__file__) + "/json", m.path],
                           capture_output=True, text=True, check=False)
        assert r.returncode == 0, r.stderr
        assert sorted(os.listdir(Path(m.path) / "json")) == \
            sorted(os.listdir(backing / "json"))
        subprocess.run(["rm", "-r", str(Path(m.path) / "json")], check=True)
        assert m.status()["recoveries"] == []


def test_a_driver_runs_as_another_user(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    mkfs_vfat(str(image), 16 << 20)
    nobody = pwd.getpwnam("nobody")
    blocked = unreachable(sys.executable, nobody.pw_uid, nobody.pw_gid)
    if blocked is not None:  # e.g. an interpreter under /root: refused with the reason
        r = nooks("mount", "vfat", str(image), str(tmp_path), "--user", "nobody")
        assert r.returncode == 1 and "out of its reach" in r.stderr, r.stderr
        pytest.skip(f"nobody cannot run this interpreter: {blocked}")
    with mounted(str(tmp_path / "nobody"), "vfat", str(image),
                 extra=("--user", "nobody")) as m:
        (Path(m.path) / "f.txt").write_text("as nobody")
        assert (Path(m.path) / "f.txt").read_text() == "as nobody"
        st = m.status()
        with open(f"/proc/{st['domain_pid']}/status") as f:
            uid = next(line.split()[1] for line in f if line.startswith("Uid:"))
        assert int(uid) == pwd.getpwnam("nobody").pw_uid
        assert st["recoveries"] == []
