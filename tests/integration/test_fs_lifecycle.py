"""A mount's life: drivers that look at their own mountpoint recover; drivers are ended
in order at unmount (destroy, finalizers, a normal exit); an image is mounted once at
a time; umount waits for its host; dead hosts are found and cleared; Ctrl-C reaches
the host only."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nooks.fs.mkfs import mkfs_vfat
from nooks.fs.mounts import is_mounted
from nooks.tools.fsprocess import start_mount, stop_mount
from tests.integration.fsutil import direct_mount, mounted, outcome, wait_for

pytestmark = [pytest.mark.timeout(300),
              pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse")]

FAULTS = ("segv", "abort", "exit", "exception", "hang", "memory")


def nooks(*args: str, cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nooks", *args], capture_output=True,
                          text=True, check=False, timeout=120, cwd=cwd)


def cgroups_of(host_pid: int) -> list[str]:
    """The domain cgroups a host made that are still there."""
    out = []
    for mnt in ("/sys/fs/cgroup/unified/nooks", "/sys/fs/cgroup/nooks",
                "/sys/fs/cgroup/pids/nooks"):
        if os.path.isdir(mnt):
            out += [d for d in os.listdir(mnt) if f"-{host_pid}-" in d]
    return out


def one_line_error(r: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and text in lines[0], r.stderr


@pytest.mark.parametrize(("mode", "threads"), [("host", False), ("host", True),
                                               ("direct", False)])
def test_a_constructor_that_stats_its_mountpoint_recovers(tmp_path: Path, mode: str,
                                                          threads: bool) -> None:
    mnt = tmp_path / "mnt"
    extra = ("--mode", mode, "--state", "volatile", "--deadline", "1", "--memory", "256M",
             *(("--threads",) if threads else ()))
    with mounted(str(tmp_path), "tests.drivers.selfish:Selfish", extra=extra,
                 ctor=(str(mnt),)) as m:
        f = Path(m.path) / "kept.txt"
        f.write_text("kept")
        for fault in FAULTS:
            reply = m.inject(fault)
            assert reply.get("recovered") is True, (fault, reply)
            assert f.read_text() == "kept", fault
        st = m.status()
    assert [r["ok"] for r in st["recoveries"]] == [True] * len(FAULTS)
    assert st["state"] == "live" and st["mode"] == "passive"


@pytest.mark.parametrize(("mode", "threads"), [("host", False), ("host", True),
                                               ("direct", False)])
def test_a_fault_met_by_a_request_recovers_a_driver_that_stats_its_mountpoint(
        tmp_path: Path, mode: str, threads: bool) -> None:
    """The recovery runs on the thread that met the fault -- in a single-threaded mount,
    the only one that serves FUSE requests: the rebuilt driver's look at its own
    mountpoint must not become a request to it."""
    mnt = tmp_path / "mnt"
    extra = ("--mode", mode, "--state", "volatile", "--deadline", "5",
             *(("--threads",) if threads else ()))
    with mounted(str(tmp_path), "tests.drivers.selfish:Selfish", extra=extra,
                 ctor=(str(mnt),)) as m:
        f = Path(m.path) / "kept.txt"
        f.write_text("kept")
        with pytest.raises(OSError, match="Input/output error"):
            os.stat(Path(m.path) / "crash")  # aborts every driver: poison, alone
        assert f.read_text() == "kept"
        st = m.status()
    # three drivers failed with the request: host mode recovers each in turn; in direct
    # mode a fresh driver that fails with the request sent again before its recovery
    # is written down is part of that recovery (two or three records)
    assert len(st["recoveries"]) in ((3,) if mode == "host" else (2, 3)), st["recoveries"]
    assert all(r["ok"] for r in st["recoveries"])
    assert all(r["kind"] == "crashed" for r in st["recoveries"])
    assert st["poisoned"] == 1


@pytest.mark.parametrize("mode", ["host", "direct"])
def test_a_driver_that_could_not_be_rebuilt_comes_back_later(tmp_path: Path, mode: str) -> None:
    """Its constructor fails for a while: the recovery fails, requests get EIO; once it
    can start again, the next request after the pause brings it back, its own look
    at its mountpoint included."""
    mnt = tmp_path / "mnt"
    flag = tmp_path / "refuse"
    with mounted(str(tmp_path), "tests.drivers.selfish:Selfish",
                 extra=("--mode", mode, "--state", "volatile", "--deadline", "5"),
                 ctor=(str(mnt), str(flag))) as m:
        f = Path(m.path) / "kept.txt"
        f.write_text("kept")
        flag.write_text("")
        reply = m.inject("segv")
        assert reply.get("recovered") is False, reply
        with pytest.raises(OSError, match="Input/output error"):
            f.read_text()
        flag.unlink()
        wait_for(lambda: outcome(f.read_text) == ("ok", "kept"), 30, "the driver to come back")
        st = m.status()
    assert [r["ok"] for r in st["recoveries"]][-1] is True
    assert st["mode"] == "passive"


@pytest.mark.parametrize("mode", ["host", "direct"])
def test_drivers_end_in_order_at_unmount(tmp_path: Path, mode: str) -> None:
    def finished(state: Path) -> dict[str, str]:
        return {name: (state / name).read_text() for name in ("destroy", "del", "atexit", "log")
                if (state / name).exists()}

    direct_state = tmp_path / "direct-state"
    direct_state.mkdir()
    with direct_mount(tmp_path, "tests.drivers.finalizing", "Finalizing",
                      str(direct_state)) as mnt:
        (Path(mnt) / "one").write_text("1")
    wait_for(lambda: len(finished(direct_state)) == 4, 30, "the direct driver to finish")
    expected = finished(direct_state)
    assert expected["destroy"] == expected["del"] == expected["atexit"] == "/one\n"
    assert expected["log"] == "create /one\n"

    state = tmp_path / "state"
    state.mkdir()
    with mounted(str(tmp_path), "tests.drivers.finalizing:Finalizing",
                 extra=("--mode", mode, "--state", "volatile"), ctor=(str(state),)) as m:
        (Path(m.path) / "one").write_text("1")
        r = nooks("umount", m.path)
        assert r.returncode == 0, r.stderr
        assert "has exited" in r.stdout
        # umount returned once the host was gone: its driver has finished by now
        assert finished(state) == expected


@pytest.mark.parametrize("mode", ["host", "direct"])
def test_what_a_driver_writes_to_its_image_as_it_ends_is_kept(tmp_path: Path,
                                                              mode: str) -> None:
    """destroy, __del__ and atexit handlers write to the host-owned image: all of it is
    in the image after umount, as after unmounting the direct mount."""
    def marks(image: Path) -> list[bytes]:
        data = image.read_bytes()
        return [data[at:at + 8].rstrip(b"\0") for at in (0, 512, 1024)]

    direct = tmp_path / "direct.img"
    direct.write_bytes(bytes(1 << 20))
    with direct_mount(tmp_path, "tests.drivers.finalizing", "FinalizingImage", str(direct)):
        pass
    wait_for(lambda: marks(direct)[2] != b"", 30, "the direct driver to exit")
    assert marks(direct) == [b"DESTROY", b"DEL", b"ATEXIT"]
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(1 << 20))
    with mounted(str(tmp_path), "tests.drivers.finalizing:FinalizingImage",
                 extra=("--image", str(image), "--mode", mode)) as m:
        r = nooks("umount", m.path)
        assert r.returncode == 0, r.stderr
    assert marks(image) == [b"DESTROY", b"DEL", b"ATEXIT"]


@pytest.mark.parametrize("mode", ["host", "direct"])
def test_a_vfat_image_only_read_is_unchanged(tmp_path: Path, mode: str) -> None:
    image = tmp_path / "disk.img"
    mkfs_vfat(str(image), 16 << 20)
    with mounted(str(tmp_path / "w"), "vfat", str(image), extra=("--mode", mode)) as m:
        (Path(m.path) / "dir").mkdir()
        (Path(m.path) / "dir" / "f.txt").write_text("written once")
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    with mounted(str(tmp_path / "r"), "vfat", str(image), extra=("--mode", mode)) as m:
        assert (Path(m.path) / "dir" / "f.txt").read_text() == "written once"
        assert sorted(os.listdir(m.path)) == ["dir"]
        r = nooks("umount", m.path)
        assert r.returncode == 0, r.stderr
    assert hashlib.sha256(image.read_bytes()).hexdigest() == digest


@pytest.mark.parametrize("mode", ["host", "direct"])
def test_a_driver_from_the_current_directory_survives_every_fault(tmp_path: Path,
                                                                  mode: str) -> None:
    """libfuse moves the host to / when it mounts: later domains must still find a
    driver imported from the directory nooks was started in."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "localdriver.py").write_text(textwrap.dedent("""
        from tests.drivers.quirky import Quirky


        class Local(Quirky):
            pass
    """))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    name = f"local-{os.getpid()}"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(),
                                                        os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "nooks", "mount", "localdriver:Local", str(mnt), "--state",
           "volatile", "--name", name, "--deadline", "0.5", "--memory", "256M", "--mode", mode]
    log = tmp_path / "host.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: is_mounted(str(mnt)) or proc.poll() is not None, 60, "the mount")
        assert proc.poll() is None, log.read_text()
        f = mnt / "f.txt"
        f.write_text("survives")
        from tests.integration.fsutil import Mount

        m = Mount(str(mnt), name, proc, str(log))
        for i in range(10):
            for fault in FAULTS:
                reply = m.inject(fault)
                assert reply.get("recovered") is True, (i, fault, reply, log.read_text())
        assert f.read_text() == "survives"
        st = m.status()
    finally:
        stop_mount(str(mnt), proc)
    # nothing of its 60 dead domains is left: no process, no cgroup
    wait_for(lambda: not cgroups_of(proc.pid), 30, "the domains' cgroups to go")
    assert len(st["recoveries"]) == 10 * len(FAULTS)
    assert all(r["ok"] for r in st["recoveries"])
    assert "NOT recovered" not in log.read_text()


@pytest.mark.parametrize(("mode", "daemon"), [("host", False), ("host", True),
                                              ("direct", True)])
def test_one_image_one_mount_and_no_mount_over_a_mount(tmp_path: Path, mode: str,
                                                       daemon: bool) -> None:
    image = tmp_path / "disk.img"
    mkfs_vfat(str(image), 16 << 20)
    other = tmp_path / "other"
    other.mkdir()
    how = ("--mode", mode, *(("--daemon",) if daemon else ()))
    with mounted(str(tmp_path), "vfat", str(image), extra=("--mode", mode)) as m:
        r = nooks("mount", "vfat", str(image), str(other), *how)
        one_line_error(r, 1, "is in use by another mount")
        r = nooks("mount", "passthrough", str(tmp_path), m.path, *how)
        one_line_error(r, 1, "is mounted already by nooks host")
        assert not is_mounted(str(other))
        r = nooks("mkfs", "vfat", str(image), "--force")
        one_line_error(r, 1, "is mounted")
    r = nooks("mkfs", "vfat", str(image))
    one_line_error(r, 1, "exists")


@pytest.mark.parametrize("mode", ["host", "direct"])
def test_umount_then_remount_never_overlaps(tmp_path: Path, mode: str) -> None:
    image = tmp_path / "disk.img"
    mkfs_vfat(str(image), 16 << 20)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    for i in range(20):
        r = nooks("mount", "vfat", str(image), str(mnt), "--daemon", "--name", f"again-{i}",
                  "--mode", mode)
        assert r.returncode == 0, (i, r.stderr)
        (mnt / f"f{i}").write_text(str(i))
        r = nooks("umount", str(mnt))
        assert r.returncode == 0, (i, r.stderr)
        assert not is_mounted(str(mnt))
    r = subprocess.run(["fsck.fat", "-n", str(image)], capture_output=True, text=True,
                       check=False)
    assert r.returncode == 0, r.stdout


@pytest.mark.parametrize("mode", ["host", "direct"])
def test_a_dead_hosts_mount_is_found_and_cleared(tmp_path: Path, mode: str) -> None:
    backing = tmp_path / "backing"
    backing.mkdir()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    name = f"doomed-{os.getpid()}"
    proc = start_mount([sys.executable, "-m", "nooks", "mount", "passthrough", str(backing),
                        str(mnt), "--name", name, "--mode", mode], str(mnt))
    try:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        r = nooks("status", name, "--json")
        assert r.returncode == 0 and '"dead"' in r.stdout and '"stale_mount": true' in r.stdout
        r = nooks("mount", "passthrough", str(backing), str(mnt))
        one_line_error(r, 1, "stale mount")
        r = nooks("umount", str(mnt))
        assert r.returncode == 0 and "stale" in r.stdout, r.stderr
        assert not is_mounted(str(mnt))
        r = nooks("status", "--json")
        assert name not in r.stdout
    finally:
        if is_mounted(str(mnt)):
            subprocess.run(["fusermount3", "-uz", str(mnt)], check=False)


def test_umount_refuses_what_nooks_did_not_mount(tmp_path: Path) -> None:
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "none", str(mnt)], check=True)
    try:
        r = nooks("umount", str(mnt))
        one_line_error(r, 1, "not a nooks mount")
        assert is_mounted(str(mnt))
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    r = nooks("umount", str(mnt))
    one_line_error(r, 1, "is not mounted")


@pytest.mark.parametrize("mode", ["host", "direct"])
def test_ctrl_c_reaches_the_host_only(tmp_path: Path, mode: str) -> None:
    backing = tmp_path / "backing"
    backing.mkdir()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    log = tmp_path / "host.log"
    with open(log, "wb") as out:
        # its own process group, as a shell job is: Ctrl-C signals the whole group
        proc = subprocess.Popen([sys.executable, "-m", "nooks", "mount", "passthrough",
                                 str(backing), str(mnt), "--mode", mode], stdout=out,
                                stderr=subprocess.STDOUT, process_group=0)
    wait_for(lambda: is_mounted(str(mnt)) or proc.poll() is not None, 60, "the mount")
    (mnt / "f").write_text("x")
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=60) == 0
    assert not is_mounted(str(mnt))
    text = log.read_text()
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text
    assert "recovered" not in text, text
