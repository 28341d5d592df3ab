"""Hostile clients against a real ``nooks serve``: they cannot grow the host, nor
starve other clients; a worker that fails in the middle of a body is handled.

* clients that ask for a 300 MB file and never read leave the host (and its
  domains) small, while a normal client is served, the same file included;
* 600 connections that trickle a request head a byte a second leave a normal
  client at least half the rate it had without them;
* a worker that fails while a body is streamed: a GET goes on from where it
  was (same ETag, same length), a POST cannot be run again and its
  connection is closed with the body short;
* every bad number given to ``nooks serve`` is refused with one line, exit 2.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import os
import random
import resource
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx
import pytest

from nooks.cli import build_parser, main
from nooks.control import request, socket_path
from nooks.tools.fsprocess import fail_and_wait
from nooks.tools.webprocess import Output, start_server, stop_server

pytestmark = pytest.mark.timeout(120)

ROOT = str(Path(__file__).resolve().parents[2])
BIG = 300 * 10**6
_names = itertools.count()


@contextmanager
def serving(app: str, *extra: str) -> Iterator[tuple[tuple[str, int], str, Output]]:
    name = f"hostile-{os.getpid()}-{next(_names)}"
    cmd = [sys.executable, "-m", "nooks", "serve", app, "--bind", "127.0.0.1:0",
           "--name", name, *extra]
    proc, address, out = start_server(cmd, cwd=ROOT)
    try:
        yield address, name, out
    finally:
        assert stop_server(proc) == 0, out.tail()


def status(name: str) -> dict[str, Any]:
    return request(socket_path(name), {"cmd": "status"})  # type: ignore[no-any-return]


def wait_until(name: str, what: str, ok: Any, timeout: float = 30.0) -> dict[str, Any]:
    """Poll the host's status until ``ok(status)``; the status then."""
    end = time.monotonic() + timeout
    while True:
        st = status(name)
        if ok(st):
            return st
        if time.monotonic() > end:
            raise TimeoutError(f"{name}: {what} did not happen within {timeout:g} s: {st}")
        time.sleep(0.02)


def kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} for {pid}")


def head_and_some(s: socket.socket, at_least: int) -> tuple[dict[str, str], bytes]:
    """Read a response head and at least ``at_least`` bytes of its body."""
    got = b""
    while b"\r\n\r\n" not in got:
        chunk = s.recv(65536)
        assert chunk, got[:200]
        got += chunk
    head, _, body = got.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    headers[":status"] = lines[0].split()[1]
    while len(body) < at_least:
        chunk = s.recv(65536)
        assert chunk
        body += chunk
    return headers, body


def read_to_end(s: socket.socket, body: bytes, length: int) -> bytes:
    parts = [body]
    have = len(body)
    while have < length:
        chunk = s.recv(1 << 20)
        if not chunk:
            break
        parts.append(chunk)
        have += len(chunk)
    return b"".join(parts)


def test_clients_that_never_read_leave_the_host_small(tmp_path: Path) -> None:
    www = tmp_path / "www"
    www.mkdir()
    with open(www / "big.bin", "wb") as f:
        os.truncate(f.fileno(), BIG)  # sparse: costs no disk
    mid = random.Random(3).randbytes(3 << 20)
    (www / "mid.bin").write_bytes(mid)
    (www / "index.html").write_bytes(b"<p>hello</p>\n")
    with serving(f"static:{www}", "--workers", "2") as (address, name, _):
        hogs = [socket.create_connection(address) for _ in range(8)]
        try:
            for s in hogs:
                s.sendall(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
            # every one of them has filled its socket and waits for its client to read
            st = wait_until(name, "8 stalled responses", lambda st: st["stalled"] >= 8)
            assert st["streaming"] == 8
            with httpx.Client(base_url=f"http://{address[0]}:{address[1]}") as c:
                for _ in range(20):
                    assert c.get("/index.html").content == b"<p>hello</p>\n"
                    r = c.get("/mid.bin")
                    assert r.status_code == 200 and r.content == mid
            # a normal client reads the whole big file meanwhile
            curl = subprocess.run(["curl", "-sf", "-o", "/dev/null", "-w", "%{size_download}",
                                   f"http://{address[0]}:{address[1]}/big.bin"],
                                  capture_output=True, text=True, check=False, timeout=90)
            assert curl.returncode == 0 and curl.stdout == str(BIG), curl
            st = status(name)
            assert st["stalled"] >= 8
            pids = [st["host_pid"], *(w["domain_pid"] for w in st["workers"])]
            for pid in pids:  # resident memory now, and its peak over the whole run
                rss, peak = kib(pid, "VmRSS"), kib(pid, "VmHWM")
                assert rss < 200_000 and peak < 200_000, (pid, rss, peak)  # KiB: < 200 MB
        finally:
            for s in hogs:
                s.close()
        wait_until(name, "the hogs' connections closed", lambda st: st["streaming"] == 0)
        assert status(name)["truncated"] == 0


def _trickle(socks: list[socket.socket], stop: threading.Event) -> None:
    """Send each connection the next byte of a request head about once a second."""
    head = b"GET /hello HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"s" * 200 + b"\r\n\r\n"
    for i in range(len(head) - 4):  # never the end of the head: ~4 minutes at this pace
        for s in socks:
            with suppress(OSError):
                s.send(head[i:i + 1])
        if stop.wait(1.0):  # the pace of a slow client, the subject of this test
            return


def _rate(address: tuple[str, int], seconds: float) -> float:
    """Requests per second of a client that opens a connection for each request."""
    done = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        with socket.create_connection(address, timeout=10) as s:
            s.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            got = b""
            while chunk := s.recv(65536):
                got += chunk
        assert got.startswith(b"HTTP/1.1 200") and got.endswith(b"hello, world\n"), got
        done += 1
    return done / seconds


def test_trickling_clients_do_not_starve_others() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2048:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))
    with serving("tests.web.flaskapp:app", "--workers", "2", "--max-connections", "1000",
                 "--request-timeout", "300", "--idle-timeout", "300") as (address, name, _):
        _rate(address, 0.5)  # warm up
        alone = _rate(address, 3.0)
        slow = [socket.create_connection(address) for _ in range(600)]
        stop = threading.Event()
        trickler = threading.Thread(target=_trickle, args=(slow, stop))
        trickler.start()
        try:
            wait_until(name, "600 connections", lambda st: st["reading"] >= 600)
            loaded = _rate(address, 3.0)
            st = status(name)
            assert st["reading"] >= 600 and st["rejected"] == 0
        finally:
            stop.set()
            trickler.join()
            for s in slow:
                s.close()
        assert loaded >= alone / 2, f"{loaded:.0f}/s with 600 slow clients, {alone:.0f}/s alone"
        print(f"{alone:.0f} requests/s alone, {loaded:.0f}/s beside 600 trickling clients")


def test_at_the_connection_limit_slow_clients_make_room() -> None:
    """More trickling clients than --max-connections: they do not keep the others out
    until their --request-timeout; a new client takes the place of the slowest."""
    with serving("tests.web.flaskapp:app", "--workers", "2", "--max-connections", "20",
                 "--request-timeout", "300", "--idle-timeout", "300") as (address, name, _):
        _rate(address, 0.5)
        alone = _rate(address, 2.0)
        slow = [socket.create_connection(address) for _ in range(100)]
        stop = threading.Event()
        trickler = threading.Thread(target=_trickle, args=(slow, stop))
        trickler.start()
        try:
            # those that waited in the backlog got in, each in the place of an older one
            wait_until(name, "slow clients evicted", lambda st: st["evicted"] >= 80)
            _rate(address, 1.0)  # the first waits until a slow one is a second old
            loaded = _rate(address, 2.0)
            st = status(name)
            assert st["connections"] <= 20
        finally:
            stop.set()
            trickler.join()
            for s in slow:
                s.close()
        assert loaded >= alone / 2, f"{loaded:.0f}/s with 100 slow clients, {alone:.0f}/s alone"


def test_a_get_whose_worker_fails_mid_body_goes_on(tmp_path: Path) -> None:
    www = tmp_path / "www"
    www.mkdir()
    data = random.Random(5).randbytes(32 << 20)
    (www / "f.bin").write_bytes(data)
    want = hashlib.sha256(data).hexdigest()
    with serving(f"static:{www}", "--workers", "1", "--timeout", "1") as (address, name, _):
        for fault in ("segv", "hang"):
            with socket.create_connection(address, timeout=30) as s:
                s.sendall(b"GET /f.bin HTTP/1.1\r\nHost: x\r\n\r\n")
                headers, body = head_and_some(s, 1 << 20)
                assert headers[":status"] == "200" and "etag" in headers
                wait_until(name, "a stalled response", lambda st: st["stalled"] == 1)
                if fault == "segv":  # fails while idle: the stream dies with it
                    fail_and_wait(name, fault)
                else:  # hangs: the next piece asked for times out
                    request(socket_path(name), {"cmd": "inject", "fault": fault})
                got = read_to_end(s, body, len(data))
            assert len(got) == len(data) and hashlib.sha256(got).hexdigest() == want, fault
        st = status(name)
        assert st["resumed"] == 2 and st["truncated"] == 0
        assert [r["kind"] for r in st["recoveries"]] == ["crashed", "hung"]


def test_a_post_whose_worker_fails_mid_body_is_cut_short() -> None:
    size = 32 << 20
    with serving("tests.web.flaskapp:app", "--workers", "1") as (address, name, _):
        with socket.create_connection(address, timeout=30) as s:
            s.sendall(f"POST /report/{size} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
                      .encode())
            headers, body = head_and_some(s, 1 << 20)
            assert headers[":status"] == "200" and headers["content-length"] == str(size)
            wait_until(name, "a stalled response", lambda st: st["stalled"] == 1)
            fail_and_wait(name, "segv")
            got = read_to_end(s, body, size)
            assert len(got) < size  # closed: the rest cannot be had honestly
            assert got == (bytes(range(251)) * (size // 251 + 1))[:len(got)]
            assert s.recv(1) == b""
        st = wait_until(name, "the truncation counted", lambda st: st["truncated"] == 1)
        assert st["resumed"] == 0
        assert httpx.get(f"http://{address[0]}:{address[1]}/hello").text == "hello, world\n"


BAD = {
    "--workers": ["0", "-5", "65", "2.5", "x", ""],
    "--timeout": ["-1", "0", "nan", "inf", "-inf", "1e9", "x"],
    "--queue-timeout": ["-1", "0", "nan", "inf"],
    "--max-connections": ["0", "-5", "1e3", "100001", "many"],
    "--request-timeout": ["-1", "0", "nan", "inf"],
    "--idle-timeout": ["-1", "0", "nan", "inf"],
    "--send-timeout": ["-1", "0", "nan", "inf"],
    "--max-body": ["0", "-1", "nan", "inf", "65M", "1G", "lots"],
    "--bind": ["127.0.0.1:70000", "127.0.0.1:-1", "127.0.0.1:x"],
}


def test_serve_refuses_bad_numbers_in_one_line(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    for option, values in BAD.items():
        for value in values:
            with pytest.raises(SystemExit) as exit_:
                main(["serve", f"static:{tmp_path}", f"{option}={value}"])
            err = capsys.readouterr().err
            assert exit_.value.code == 2, (option, value)
            assert err.count("\n") == 1 and option in err, (option, value, err)
            assert err.startswith("nooks serve: error: argument "), err
    # the command itself, as a user runs it: one bad value of each option
    for option, values in BAD.items():
        r = subprocess.run([sys.executable, "-m", "nooks", "serve", f"static:{tmp_path}",
                            option, values[0]], capture_output=True, text=True,
                           check=False, timeout=60)
        assert r.returncode == 2 and r.stderr.count("\n") == 1, (option, r.stderr)
        assert option in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert "from 1 to 100,000, not '0'" in subprocess.run(
        [sys.executable, "-m", "nooks", "serve", f"static:{tmp_path}", "--max-connections",
         "0"], capture_output=True, text=True, check=False, timeout=60).stderr
    # every option says its default
    serve = next(a for a in build_parser()._actions
                 if isinstance(a, argparse._SubParsersAction)).choices["serve"]
    for action in serve._actions:
        if action.option_strings and action.help not in (None, argparse.SUPPRESS) \
                and action.dest != "help":
            assert "default" in str(action.help), action.option_strings
