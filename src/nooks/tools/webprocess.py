"""Running ``nooks serve`` (or another server) as a child process, for tools.

Used by the benchmark and the tests: start a server, learn the address it
listens on from its first line of output, stop it and reap it.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import select
import signal
import socket
import subprocess
import threading
import time
from typing import IO

_SERVING = re.compile(rb"on http://([0-9.]+|\[[0-9a-f:]+\]):(\d+)")


class Output:
    """Drains a server's output (so that it never blocks writing it); keeps the tail."""

    def __init__(self, stream: IO[bytes], first: bytes = b"") -> None:
        self._lines: collections.deque[bytes] = collections.deque([first], maxlen=200)
        self._thread = threading.Thread(target=self._drain, args=(stream,), daemon=True)
        self._thread.start()

    def _drain(self, stream: IO[bytes]) -> None:
        with contextlib.suppress(OSError, ValueError):
            for line in stream:
                self._lines.append(line)

    def tail(self) -> str:
        return b"".join(self._lines).decode(errors="replace")


def start_server(cmd: list[str], *, timeout: float = 60.0, env: dict[str, str] | None = None,
                 cwd: str | None = None
                 ) -> tuple[subprocess.Popen[bytes], tuple[str, int], Output]:
    """Start ``nooks serve ...`` and wait for its "serving ... on http://HOST:PORT" line;
    the process, the address and its drained output."""
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    address, output = wait_serving(proc, cmd, timeout=timeout)
    return proc, address, output


def wait_serving(proc: subprocess.Popen[bytes], cmd: list[str], *, timeout: float = 60.0
                 ) -> tuple[tuple[str, int], Output]:
    """Wait for the "serving ... on http://HOST:PORT" line of ``proc`` (started with its
    stdout a pipe); the address and the drained output. RuntimeError if it exits or
    does not say it within ``timeout`` (it is then stopped)."""
    assert proc.stdout is not None
    end = time.monotonic() + timeout
    seen = b""
    while True:
        left = end - time.monotonic()
        if left <= 0:
            stop_server(proc)
            raise RuntimeError(f"{' '.join(cmd[:5])} ... did not start within {timeout:g} s: "
                               f"{seen[-2000:].decode(errors='replace')}")
        ready, _, _ = select.select([proc.stdout], [], [], left)
        if not ready:
            continue
        data = os.read(proc.stdout.fileno(), 65536)
        if not data:
            proc.wait()
            raise RuntimeError(f"{' '.join(cmd[:5])} ... exited with {proc.returncode}: "
                               f"{seen[-2000:].decode(errors='replace')}")
        seen += data
        found = _SERVING.search(seen)
        if found:
            host = found.group(1).decode().strip("[]")
            return (host, int(found.group(2))), Output(proc.stdout, seen)


def wait_listening(address: tuple[str, int], proc: subprocess.Popen[bytes],
                   timeout: float = 60.0) -> None:
    """Wait until something accepts connections at ``address`` (for servers that do not
    say where they listen); RuntimeError if ``proc`` dies first."""
    end = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), socket.create_connection(address, timeout=1):
            return
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode} before listening")
        if time.monotonic() > end:
            raise RuntimeError(f"nothing listens at {address} after {timeout:g} s")
        time.sleep(0.05)


def stop_server(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> int:
    """SIGTERM, then SIGKILL if it does not go; its exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
