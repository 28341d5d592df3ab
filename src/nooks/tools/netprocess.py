"""Programs on either machine of a network host, for tools: ``iperf3 -s`` started
and waited for until it listens (used by the benchmark, the campaign and the
tests)."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable
from typing import Any

START_TIMEOUT = 10.0


def iperf_server(ns: str, address: str, popen: Callable[..., subprocess.Popen[Any]]
                 = subprocess.Popen, timeout: float = START_TIMEOUT) -> subprocess.Popen[str]:
    """``iperf3 -s`` for one test in network namespace ``ns``, once it says it listens;
    RuntimeError if it does not within ``timeout`` seconds (it is killed)."""
    server: subprocess.Popen[str] = popen(
        ["ip", "netns", "exec", ns, "iperf3", "-s", "-1", "--forceflush", "-B", address],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert server.stdout is not None
    guard = threading.Timer(timeout, server.kill)  # a server that neither speaks nor ends
    guard.start()
    said = []
    try:
        for line in server.stdout:
            said.append(line)
            if "listening" in line:
                return server
            if len(said) > 20:
                break
    finally:
        guard.cancel()
    server.kill()
    server.wait()
    raise RuntimeError(f"iperf3 -s did not listen in {ns}: {''.join(said).strip()[-300:]}")
