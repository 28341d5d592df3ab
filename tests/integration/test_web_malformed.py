"""Malformed and hostile HTTP never reaches the extension nor grows the host.

Fuzzed request lines and headers, oversized heads and bodies, and clients that
trickle their bytes are all answered by the host with a 4xx (or a 408 when
they take too long) and the connection closed; the extension's call count does
not move, its domain does not change, and the host's memory stays bounded.
"""

from __future__ import annotations

import os
import random
import socket
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from nooks.control import request, socket_path
from nooks.tools.webprocess import start_server, stop_server

pytestmark = pytest.mark.timeout(180)

GOOD = b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"


def malformed(rng: random.Random) -> list[bytes]:
    """Requests that are wrong in every way the host must catch; seeded."""
    out: list[bytes] = []
    for _ in range(30):
        junk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
        out.append(b"\x00" + junk + b"\r\n\r\n")  # binary noise
    for _ in range(20):
        method = bytearray(b"GET")
        method.insert(rng.randrange(4), rng.choice(b"\x00\x01\x7f(),;\"<>@[]{}"))
        out.append(bytes(method) + b" / HTTP/1.1\r\nHost: x\r\n\r\n")
    for _ in range(20):
        target = bytearray(b"/hello")
        target.insert(rng.randrange(1, 7), rng.choice(b"\x00\x01\x7f \t\n"))
        out.append(b"GET " + bytes(target) + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    for version in (b"HTTQ/1.1", b"HTTP/1", b"HTTP/x.y", b"HTTP/1.1 extra", b""):
        out.append(b"GET / " + version + b"\r\nHost: x\r\n\r\n")
    for header in (b"Host x", b"Bad Name: 1", b": empty-name", b"X\x01Y: 1",
                   b"Content-Length: abc", b"Content-Length: 1\r\nContent-Length: 2",
                   b"Transfer-Encoding: chunked\r\nContent-Length: 3",
                   b"Expect: something-else"):
        out.append(b"POST /orders HTTP/1.1\r\nHost: x\r\n" + header + b"\r\n\r\n")
    out.append(b"GET /hello HTTP/1.1\r\n\r\n")  # HTTP/1.1 without Host
    out.append(b"POST /orders HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"zz\r\nabc\r\n0\r\n\r\n")  # bad chunk size
    out.append(b"POST /orders HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n")
    out.append(b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    out.append(b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: y\r\n" % i
                                                          for i in range(300)) + b"\r\n")
    out.append(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * (1 << 20) + b"\r\n\r\n")
    return out


def exchange(address: tuple[str, int], data: bytes, timeout: float = 10.0) -> bytes:
    """Send ``data`` on a fresh connection; everything the server sends back."""
    with socket.create_connection(address, timeout=timeout) as s:
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server refused before we were done: read its answer
        got = b""
        try:
            while chunk := s.recv(65536):
                got += chunk
        except OSError:
            pass
        return got


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def test_malformed_http_is_refused_by_the_host() -> None:
    name = f"web-malformed-{os.getpid()}"
    proc, address, out = start_server(
        [sys.executable, "-m", "nooks", "serve", "tests.web.flaskapp:app", "--bind",
         "127.0.0.1:0", "--name", name, "--workers", "1", "--request-timeout", "2",
         "--max-body", "1M"], cwd=str(Path(__file__).resolve().parents[2]))
    try:
        path = socket_path(name)
        assert httpx.get(f"http://{address[0]}:{address[1]}/hello").status_code == 200
        before = request(path, {"cmd": "status"})
        rss_before = rss_kib(before["host_pid"])

        cases = malformed(random.Random(1))
        answers: list[bytes] = [b""] * len(cases)

        def send(i: int) -> None:
            answers[i] = exchange(address, cases[i])

        # eight at a time, as several hostile clients would
        for start in range(0, len(cases), 8):
            threads = [threading.Thread(target=send, args=(i,))
                       for i in range(start, min(start + 8, len(cases)))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        for case, answer in zip(cases, answers, strict=True):
            status = answer[:12]
            assert status[:10] == b"HTTP/1.1 4" and b"\r\n\r\n" in answer, (case[:80], answer[:200])

        # slow clients: a byte every 50 ms, never done; each gets 408 after 2 s
        slow_answers: list[bytes] = []
        served_meanwhile: list[int] = []

        def trickle() -> None:
            with socket.create_connection(address, timeout=10) as s:
                try:
                    for b in GOOD[:-2]:
                        s.sendall(bytes([b]))
                        time.sleep(0.05)  # a slow client is the subject of this test
                except OSError:
                    pass
                try:
                    slow_answers.append(s.recv(65536))
                except OSError:
                    slow_answers.append(b"")

        slow = [threading.Thread(target=trickle) for _ in range(40)]
        for t in slow:
            t.start()
        with httpx.Client(base_url=f"http://{address[0]}:{address[1]}") as c:
            for _ in range(50):
                served_meanwhile.append(c.get("/hello").status_code)
        for t in slow:
            t.join()
        assert served_meanwhile == [200] * 50
        assert len(slow_answers) == 40
        assert all(a.startswith(b"HTTP/1.1 408") for a in slow_answers), slow_answers[:3]

        after = request(path, {"cmd": "status"})
        # nothing malformed reached the extension: only the 50 good requests did
        assert after["calls"] - before["calls"] == 50
        assert after["domain_pid"] == before["domain_pid"] and after["recoveries"] == []
        assert after["rejected"] - before["rejected"] == len(cases) + 40
        grown = rss_kib(after["host_pid"]) - rss_before
        assert grown < 32 << 10, f"the host grew by {grown} KiB"
        assert httpx.get(f"http://{address[0]}:{address[1]}/hello").status_code == 200
    finally:
        assert stop_server(proc) == 0, out.tail()
