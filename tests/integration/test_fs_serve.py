"""Direct mode's FUSE layer serving the unmodified passthrough driver on a mount the
host holds: what programs see through it is the directory beneath; a fresh
server on the same connection and node table takes over where the first
stopped, with files and directories already known to the kernel."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from nooks.fs.adapter import FsAdapter
from nooks.fs.devfuse import Connection
from nooks.fs.nodes import Nodes
from nooks.fs.serve import Server
from nooks.fs.statelog import StateLog, size_for
from tests.conftest import anonymous_log


@pytest.fixture
def log() -> Iterator[StateLog]:
    with anonymous_log(1 << 20) as log:
        yield log


def passthrough(root: Path) -> FsAdapter:
    """The unmodified passthrough driver, as direct mode's domain builds it."""
    return FsAdapter("nooks.drivers.passthrough:Passthrough", [str(root)], {})


def _serving(conn: Connection, root: Path, log: StateLog) -> threading.Thread:
    server = Server(conn.fd, passthrough(root), Nodes(log))
    t = threading.Thread(target=server.serve, daemon=True)
    t.start()
    return t


def test_programs_see_the_directory_beneath(tmp_path: Path, log: StateLog) -> None:
    root, mp = tmp_path / "root", tmp_path / "mnt"
    root.mkdir()
    mp.mkdir()
    conn = Connection(str(mp))
    try:
        conn.init()
        t = _serving(conn, root, log)
        data = os.urandom(300_000)
        (mp / "d").mkdir()
        (mp / "d" / "f").write_bytes(data)
        assert (root / "d" / "f").read_bytes() == data  # (written through)
        assert hashlib.sha256((mp / "d" / "f").read_bytes()).digest() == \
            hashlib.sha256(data).digest()
        os.rename(mp / "d" / "f", mp / "d" / "g")
        os.symlink("g", mp / "d" / "s")
        os.link(mp / "d" / "g", mp / "d" / "h")
        assert os.readlink(mp / "d" / "s") == "g"
        assert sorted(os.listdir(mp / "d")) == ["g", "h", "s"]
        assert os.stat(mp / "d" / "g").st_nlink == 2
        os.chmod(mp / "d" / "g", 0o600)
        os.truncate(mp / "d" / "g", 1000)
        os.utime(mp / "d" / "g", ns=(1_000_000_007, 2_000_000_009))
        st, below = os.stat(mp / "d" / "g"), os.stat(root / "d" / "g")
        assert (st.st_mode, st.st_size, st.st_mtime_ns) == (below.st_mode, 1000,
                                                            2_000_000_009)
        with pytest.raises(FileNotFoundError):
            os.stat(mp / "nothing")
        r = subprocess.run(["cp", "-a", str(mp / "d"), str(mp / "e")], capture_output=True,
                           text=True, check=False)
        assert r.returncode == 0, r.stderr
        r = subprocess.run(["diff", "-r", str(root / "d"), str(mp / "e")],
                           capture_output=True, text=True, check=False)
        assert r.returncode == 0, r.stdout + r.stderr
        for name in ("g", "h", "s"):
            os.unlink(mp / "e" / name)
        os.rmdir(mp / "e")
        assert not (root / "e").exists()
    finally:
        conn.close()
    t.join(10)
    assert not t.is_alive()  # (it ends with the mount)


def test_a_fresh_server_takes_over_known_nodes(tmp_path: Path, log: StateLog) -> None:
    """The first server stops after the requests of one open; the kernel's node ids
    for the directory and the file are served by a second one whose table is
    rebuilt from the log. (Both run in this process, so the driver's file handle
    stays good: re-opening handles in a fresh domain is not built yet.)"""
    root, mp = tmp_path / "root", tmp_path / "mnt"
    root.mkdir()
    mp.mkdir()
    (root / "d").mkdir()
    (root / "d" / "f").write_bytes(b"hello")
    conn = Connection(str(mp))
    try:
        conn.init()
        first = Server(conn.fd, passthrough(root), Nodes(log))
        # serve exactly the requests of one look at the file, in this thread
        done = threading.Event()
        got: list[bytes] = []

        def look() -> None:
            fd = os.open(mp / "d" / "f", os.O_RDONLY)
            try:
                done.wait(10)
                got.append(os.read(fd, 5))  # (served by the second)
            finally:
                os.close(fd)

        reader = threading.Thread(target=look)
        buf = bytearray(1 << 18)
        reader.start()
        seen = []
        while b"OPEN" not in seen:  # LOOKUP d, LOOKUP f, OPEN
            n = os.readv(conn.fd, [buf])
            op = int.from_bytes(buf[4:8], "little")
            seen.append({1: b"LOOKUP", 14: b"OPEN", 3: b"GETATTR"}.get(op, b"?"))
            out = first.handle(buf, n)
            if out is not None:
                os.write(conn.fd, out)
        t = _serving(conn, root, log)  # a fresh server: a new table from the log
        done.set()
        reader.join(10)
        assert not reader.is_alive() and got == [b"hello"]
        assert (mp / "d" / "f").read_bytes() == b"hello"
        assert seen == [b"LOOKUP", b"LOOKUP", b"OPEN"]  # (the second knew d and f)
    finally:
        conn.close()
    t.join(10)


SERVER = """
import mmap, os, sys
from nooks.fs.adapter import FsAdapter
from nooks.fs.handles import Handles
from nooks.fs.nodes import Nodes
from nooks.fs.serve import Server
from nooks.fs.statelog import StateLog
fd, root, nodes_fd, handles_fd, size = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:])
print("spare", flush=True)
sys.stdin.readline()  # (a warm spare: it holds the connection, and waits to be told)
logs = [StateLog(memoryview(mmap.mmap(f, size))) for f in (nodes_fd, handles_fd)]
print("serving", flush=True)
ops = FsAdapter("nooks.drivers.passthrough:Passthrough", [root], {})
Server(int(fd), ops, Nodes(logs[0]), Handles(logs[1])).serve()
"""


def test_files_held_open_across_a_server_killed_keep_working(tmp_path: Path) -> None:
    """A program keeps a file open for reading and writing while the process that
    serves the mount is SIGKILLed and a warm spare takes over the same connection
    and the same logs: its reads and writes go on, through handles the successor
    re-opened by path. (The spare is started before: a process holding a file of
    the mount cannot start one once the server is dead — closing the file's
    descriptor in the child between fork and exec waits for a server.)"""
    root, mp = tmp_path / "root", tmp_path / "mnt"
    root.mkdir()
    mp.mkdir()
    size = size_for(1 << 16)
    logs = [os.memfd_create(f"nooks-test-{what}") for what in ("nodes", "handles")]
    procs: list[subprocess.Popen[str]] = []
    conn = Connection(str(mp))

    def spare() -> subprocess.Popen[str]:
        proc = subprocess.Popen([sys.executable, "-c", SERVER, str(conn.fd), str(root),
                                 *map(str, logs), str(size)], pass_fds=(conn.fd, *logs),
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "spare"
        return proc

    def go(proc: subprocess.Popen[str]) -> None:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "serving"

    def abort() -> None:  # (whatever went wrong: no request of this test waits forever)
        for proc in procs:
            proc.kill()
        conn.close()

    guard = threading.Timer(30, abort)
    guard.start()
    try:
        for fd in logs:
            os.ftruncate(fd, size)
        conn.init()
        first, second = spare(), spare()
        go(first)
        (mp / "d").mkdir()
        f = os.open(mp / "d" / "f", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            assert os.write(f, b"before ") == 7
            first.send_signal(signal.SIGKILL)
            first.wait()
            go(second)
            if conn.can_resend:  # (what the dead one had read, if anything)
                conn.resend()
            assert os.write(f, b"after") == 5  # a handle the dead server handed out
            assert os.pread(f, 100, 0) == b"before after"
        finally:
            os.close(f)
        assert (root / "d" / "f").read_bytes() == b"before after"
        assert os.listdir(mp / "d") == ["f"]
    finally:
        guard.cancel()
        conn.close()
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        for fd in logs:
            os.close(fd)
