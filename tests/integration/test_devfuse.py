"""The host holds a FUSE connection while its server dies: a request the dead server
had read reaches its successor once the host asks the kernel to resend."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from nooks.fs.devfuse import Connection

# a server of the connection's duplicate: a root holding ``f`` (123 bytes) and
# ``slow``, whose LOOKUP the first server reads, says so, and never answers
SERVER = textwrap.dedent("""
    import errno, os, signal, stat, sys
    from nooks.fs import kernelproto as kp
    fd, hang = int(sys.argv[1]), sys.argv[2] == "hang"
    buf = bytearray(1 << 20 | 4096)
    def attr(ino):
        if ino == 1:
            return kp.attr(1, stat.S_IFDIR | 0o755, nlink=2)
        return kp.attr(ino, stat.S_IFREG | 0o644, size=123 if ino == 2 else 7)
    while True:
        try:
            n = os.readv(fd, [buf])
        except OSError as e:
            if e.errno == errno.ENODEV:
                sys.exit(0)
            continue
        op, unique, node, _, _, _ = kp.header(buf, n)
        if op == kp.Op.LOOKUP:
            name = kp.names(buf, n, 1)[0]
            ino = {b"f": 2, b"slow": 3}.get(name)
            if ino is None:
                os.write(fd, kp.reply(unique, error=errno.ENOENT))
                continue
            if ino == 3 and hang:
                print("read", flush=True)
                while True:
                    signal.pause()
            os.write(fd, kp.reply(unique, kp.entry_out(ino, attr(ino))))
        elif op == kp.Op.GETATTR:
            os.write(fd, kp.reply(unique, kp.attr_out(attr(node))))
        elif op not in (kp.Op.FORGET, kp.Op.BATCH_FORGET):
            os.write(fd, kp.reply(unique, error=errno.ENOSYS))
""")


def _server(fd: int, mode: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", SERVER, str(fd), mode], pass_fds=(fd,),
                            stdout=subprocess.PIPE, text=True)


def test_a_request_in_flight_when_its_server_dies_is_served_by_the_next(
        tmp_path: Path) -> None:
    conn = Connection(str(tmp_path))
    first = second = None
    try:
        conn.init()
        if not conn.can_resend:
            pytest.skip(f"this kernel (FUSE 7.{conn.kernel_minor}) does not resend requests")
        first = _server(conn.fd, "hang")
        assert os.stat(tmp_path / "f").st_size == 123  # (served)
        got: list[os.stat_result | BaseException] = []

        def look() -> None:
            try:
                got.append(os.stat(tmp_path / "slow"))
            except BaseException as e:  # (reported below)
                got.append(e)

        t = threading.Thread(target=look)
        t.start()
        assert first.stdout is not None and first.stdout.readline().strip() == "read"
        first.send_signal(signal.SIGKILL)  # with the LOOKUP read and unanswered
        assert first.wait() == -signal.SIGKILL
        assert t.is_alive()  # the mount stays; the request waits
        second = _server(conn.fd, "serve")
        conn.resend()
        t.join(10)
        assert not t.is_alive() and len(got) == 1
        result = got[0]
        assert isinstance(result, os.stat_result), result
        assert stat.S_ISREG(result.st_mode) and result.st_size == 7
        assert os.stat(tmp_path / "f").st_size == 123  # the successor serves on
    finally:
        conn.close()
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
