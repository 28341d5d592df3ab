"""Consistency checkpoints on a real vfat mount: a driver that corrupts the volume
without failing is caught by fsck.fat at a checkpoint, the image is rolled back
and a fresh driver redoes the requests since; without checkpoints the damage
stays (the test shows both)."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from nooks.control import request, socket_path
from nooks.fs.mkfs import mkfs_vfat
from tests.integration.fsutil import make_tree, manifest, mounted, wait_for

pytestmark = [pytest.mark.timeout(300),
              pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse"),
              pytest.mark.skipif(shutil.which("fsck.fat") is None, reason="needs fsck.fat")]

DRIVER = "tests.drivers.corrupting:CorruptingVfat"

# the test driver finds its marker file through this variable (domains get few)
MARKER = ("--env", "NOOKS_TEST_MARKER")


@pytest.fixture(params=["host", "direct"])
def mode(request: pytest.FixtureRequest) -> tuple[str, ...]:
    """The checks hold in both modes: the host sees every request, or the domain
    serves the mount itself and pauses for each checkpoint."""
    return ("--mode", str(request.param))

def fsck(image: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["fsck.fat", "-n", str(image)], capture_output=True, text=True,
                          check=False)


def corrupting_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, interval: str,
                   mode: tuple[str, ...] = ()) -> tuple[Path, dict[str, object], str, str]:
    """Copy a tree in, create a file the first driver corrupts the volume for, copy
    more, take a checkpoint; (image, status, manifest before, manifest on the mount)."""
    image = tmp_path / "disk.img"
    mkfs_vfat(str(image), 64 << 20)
    monkeypatch.setenv("NOOKS_TEST_MARKER", str(tmp_path / "first-driver-done"))
    src = tmp_path / "src"
    make_tree(str(src / "a"))
    shutil.copytree(src / "a" / "json", src / "after")
    (src / "corrupt-me.txt").write_text("the create of this file corrupts the FAT")
    want = manifest(str(src))
    with mounted(str(tmp_path), DRIVER, extra=(*MARKER, *mode, "--image", str(image),
                                               "--checker", "fsck.fat -n",
                                               "--check-interval", interval)) as m:
        mnt = Path(m.path)
        assert subprocess.run(["cp", "-a", str(src / "a"), str(mnt)], check=False).returncode == 0
        shutil.copy(src / "corrupt-me.txt", mnt / "corrupt-me.txt")
        shutil.copytree(src / "after", mnt / "after")
        reply = request(socket_path(m.name), {"cmd": "checkpoint"}, timeout=60)
        st = m.status()
        st["checkpoint_reply"] = reply
        got = manifest(str(mnt))
    return image, st, want, got


def test_quiet_corruption_is_rolled_back_and_redone(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    mode: tuple[str, ...]) -> None:
    image, st, want, got = corrupting_run(tmp_path, monkeypatch, "60", mode)
    cons = st["consistency"]
    assert isinstance(cons, dict)
    assert st["checkpoint_reply"] == {"checked": True, "consistent": False}
    assert cons["state"] == "on"
    assert cons["inconsistent"] == 1 and cons["rolled_back"] == 1, cons
    assert cons["kept_inconsistent"] == 0
    recoveries = st["recoveries"]
    assert isinstance(recoveries, list) and len(recoveries) == 1
    rec = recoveries[0]
    assert rec["kind"] == "misbehaved" and "inconsistent" in rec["detail"], rec
    assert rec["ok"] and rec["replayed"] > 100  # every request since the mount, redone
    assert got == want  # every file, with its content, as the application wrote it
    r = fsck(image)
    assert r.returncode == 0, r.stdout + r.stderr


def test_without_checkpoints_the_damage_stays(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch,
                                              mode: tuple[str, ...]) -> None:
    image, st, want, got = corrupting_run(tmp_path, monkeypatch, "0", mode)
    assert st["consistency"] is None
    assert st["checkpoint_reply"] == {"checked": False}
    assert st["recoveries"] == []
    assert got == want  # the corruption is quiet: the files read back fine
    r = fsck(image)
    assert r.returncode != 0, r.stdout


def test_an_image_inconsistent_at_mount_is_not_checked(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    image, _, _, _ = corrupting_run(tmp_path, monkeypatch, "0")  # leaves it damaged
    with mounted(str(tmp_path / "again"), "vfat", str(image)) as m:
        cons = m.status()["consistency"]
        (Path(m.path) / "new.txt").write_text("still writable")
        assert request(socket_path(m.name), {"cmd": "checkpoint"}) == {"checked": False}
        assert (Path(m.path) / "new.txt").read_text() == "still writable"
    assert cons["state"].startswith("off: the image was not consistent at mount"), cons
    assert "journal" not in cons  # nothing kept for a rollback that cannot come


@pytest.mark.parametrize("interval", ["60", "0"])
def test_misplaced_writes_are_read_back_before_anyone_reads_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, interval: str,
        mode: tuple[str, ...]) -> None:
    image = tmp_path / "disk.img"
    mkfs_vfat(str(image), 64 << 20)
    monkeypatch.setenv("NOOKS_TEST_MARKER", str(tmp_path / "first-driver-done"))
    data = random.Random(7).randbytes(300_000)
    # the kernel keeps attributes for an hour: only an invalidation can refresh them
    with mounted(str(tmp_path), DRIVER, extra=(*MARKER, *mode, "--image", str(image),
                                               "--checker", "fsck.fat -n",
                                               "--check-interval", interval,
                                               "-o", "attr_timeout=3600,entry_timeout=3600")) as m:
        target = Path(m.path) / "misplaced.bin"
        target.write_bytes(data)
        other = Path(m.path) / "other.txt"
        other.write_text("fine")
        assert target.stat().st_size == len(data) + 1  # what the first driver made of it
        # written and closed, opened for reading: every file written is checked first
        assert other.read_text() == "fine"
        if interval != "0":
            # the rollback told the kernel to forget what it cached of the file
            wait_for(lambda: target.stat().st_size == len(data), 10, "the size to be right")
        got = target.read_bytes()
        st = m.status()
    if interval == "0":
        assert got != data  # the damage is real, and quiet: nothing failed
        assert st["recoveries"] == []
        return
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest()
    cons = st["consistency"]
    assert cons["inconsistent"] == 1 and cons["rolled_back"] == 1, cons
    assert cons["last_finding"].startswith("/misplaced.bin: "), cons  # read back: size, bytes
    assert [r["kind"] for r in st["recoveries"]] == ["misbehaved"]
    r = fsck(image)
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_driver_that_always_corrupts_is_checked_once_then_left_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: tuple[str, ...]) -> None:
    image = tmp_path / "disk.img"
    mkfs_vfat(str(image), 64 << 20)
    monkeypatch.setenv("NOOKS_TEST_MARKER", str(tmp_path / "first-driver-done"))
    always = ("--env", "NOOKS_TEST_ALWAYS=1")
    with mounted(str(tmp_path), DRIVER, extra=(*MARKER, *always, *mode, "--image", str(image),
                                               "--checker", "fsck.fat -n",
                                               "--check-interval", "60")) as m:
        mnt = Path(m.path)
        (mnt / "corrupt-me.txt").write_text("every driver corrupts the FAT for this")
        assert request(socket_path(m.name), {"cmd": "checkpoint"}) == \
            {"checked": True, "consistent": False}
        for i in range(3):  # later changes: no more restarts of a driver that will not heal
            (mnt / f"later-{i}.txt").write_text(str(i))
            request(socket_path(m.name), {"cmd": "checkpoint"})
        st = m.status()
        assert sorted(p.name for p in mnt.iterdir()) == [
            "corrupt-me.txt", "later-0.txt", "later-1.txt", "later-2.txt"]
    cons = st["consistency"]
    assert cons["kept_inconsistent"] == 1 and cons["rolled_back"] == 0, cons
    assert cons["state"].startswith("off: a fresh driver left the image inconsistent too")
    assert len(st["recoveries"]) == 1


def test_a_rollback_keeps_open_files_renames_and_truncates(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: tuple[str, ...]) -> None:
    image = tmp_path / "disk.img"
    mkfs_vfat(str(image), 64 << 20)
    monkeypatch.setenv("NOOKS_TEST_MARKER", str(tmp_path / "first-driver-done"))
    rng = random.Random(11)
    head, tail = rng.randbytes(70_000), rng.randbytes(50_000)
    with mounted(str(tmp_path), DRIVER, extra=(*MARKER, *mode, "--image", str(image),
                                               "--checker", "fsck.fat -n",
                                               "--check-interval", "60")) as m:
        mnt = Path(m.path)
        (mnt / "old-name.txt").write_text("renamed after the checkpoint")
        (mnt / "shrinks.bin").write_bytes(rng.randbytes(40_000))
        with open(mnt / "open.bin", "wb") as f:  # open across the checkpoint and rollback
            f.write(head)
            f.flush()
            assert request(socket_path(m.name), {"cmd": "checkpoint"}) == \
                {"checked": True, "consistent": True}
            f.write(tail[:20_000])
            f.flush()
            os.rename(mnt / "old-name.txt", mnt / "new-name.txt")
            os.truncate(mnt / "shrinks.bin", 1_000)
            (mnt / "corrupt-me.txt").write_text("corrupts the FAT")
            assert request(socket_path(m.name), {"cmd": "checkpoint"}) == \
                {"checked": True, "consistent": False}
            f.write(tail[20_000:])  # the same file handle, on the fresh driver
        st = m.status()
        assert (mnt / "open.bin").read_bytes() == head + tail
        assert (mnt / "new-name.txt").read_text() == "renamed after the checkpoint"
        assert not (mnt / "old-name.txt").exists()
        assert (mnt / "shrinks.bin").stat().st_size == 1_000
    cons = st["consistency"]
    assert cons["rolled_back"] == 1 and cons["replay_errors"] == 0, cons
    r = fsck(image)
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_interval_finds_damage_with_nobody_asking(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      mode: tuple[str, ...]) -> None:
    image = tmp_path / "disk.img"
    mkfs_vfat(str(image), 64 << 20)
    monkeypatch.setenv("NOOKS_TEST_MARKER", str(tmp_path / "first-driver-done"))
    with mounted(str(tmp_path), DRIVER, extra=(*MARKER, *mode, "--image", str(image),
                                               "--checker", "fsck.fat -n",
                                               "--check-interval", "0.2")) as m:
        (Path(m.path) / "corrupt-me.txt").write_text("corrupts the FAT")
        wait_for(lambda: m.status()["consistency"]["rolled_back"] == 1, 30,
                 "the interval's checkpoint to roll the damage back")
        st = m.status()
        assert (Path(m.path) / "corrupt-me.txt").read_text() == "corrupts the FAT"
    assert st["consistency"]["inconsistent"] == 1
    assert [r["kind"] for r in st["recoveries"]] == ["misbehaved"]
    r = fsck(image)
    assert r.returncode == 0, r.stdout + r.stderr
