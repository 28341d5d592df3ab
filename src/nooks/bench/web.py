"""The web benchmark: requests per second with wrk, for nooks, native and gunicorn.

One run serves two extensions — a 4 KiB static page (the static-file server)
and a small Flask route — three ways each, with the same number of workers:

* nooks: ``nooks serve`` (the extension in domains, shadowed);
* native: ``nooks serve --native`` (the same host, the extension in-process);
* gunicorn: ``gunicorn -w N`` with sync workers, the same WSGI application.

The three run side by side and are measured in turns (the order rotating),
three rounds; each figure is the median round, and every round is kept in
the JSON, because on a small machine one run can be off by a third.

wrk drives each with keep-alive connections (gunicorn's sync workers close
every connection; that is how they serve). Every server runs from the same
machine, unpinned; wrk has one thread.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from typing import Any

from nooks.tools.webprocess import start_server, stop_server, wait_listening

PAGE = 4096
HOWS = ("nooks", "native", "gunicorn")


def _page() -> bytes:
    line = b"<p>nooks serves this page from a domain; it is 4 KiB long.</p>\n"
    return (b"<!doctype html>\n" + line * (PAGE // len(line) + 1))[:PAGE]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wrk(url: str, seconds: float, connections: int) -> dict[str, float]:
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency",
                          url], capture_output=True, text=True, check=True,
                         timeout=seconds + 60).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if rps is None:
        raise RuntimeError(f"wrk printed no rate:\n{out}")
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                       out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}
    return {
        "requests_s": float(rps.group(1)),
        "non_2xx": float(bad.group(1)) if bad else 0.0,
        # gunicorn's sync workers close each connection: wrk counts those reads
        "socket_errors": float(sum(int(g) for g in errors.groups())) if errors else 0.0,
        "p99_ms": float(p99.group(1)) * scale[p99.group(2)] if p99 else 0.0,
    }


def _serve(how: str, app: str, workers: int) -> tuple[subprocess.Popen[bytes], str]:
    if how == "gunicorn":
        gunicorn = shutil.which("gunicorn") or os.path.join(os.path.dirname(sys.executable),
                                                           "gunicorn")
        port = _free_port()
        target = app if not app.startswith("static:") else \
            f"nooks.drivers.static:StaticFiles({app[7:]!r})"
        proc = subprocess.Popen([gunicorn, "-w", str(workers), "-k", "sync", "-b",
                                 f"127.0.0.1:{port}", "--log-level", "warning", target],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_listening(("127.0.0.1", port), proc)
        except RuntimeError:
            stop_server(proc)
            raise
        return proc, f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "nooks", "serve", app, "--bind", "127.0.0.1:0",
           "--workers", str(workers), "--name", f"bench-web-{os.getpid()}-{how}"]
    if how == "native":
        cmd.append("--native")
    proc, (host, port), _ = start_server(cmd)
    return proc, f"http://{host}:{port}"


def _compare(app: str, path: str, workers: int, *, seconds: float, rounds: int,
             connections: int, progress: Callable[[str], None]) -> dict[str, Any]:
    """The three servers side by side, measured in turns; the median round of each."""
    servers: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
    runs: dict[str, list[dict[str, float]]] = {how: [] for how in HOWS}
    try:
        for how in HOWS:
            progress(f"starting {how}")
            servers[how] = _serve(how, app, workers)
            wrk(servers[how][1] + path, 1.0, connections)  # warm up
        for r in range(rounds):
            for how in HOWS[r % 3:] + HOWS[:r % 3]:
                progress(f"{how}, round {r + 1} of {rounds}")
                runs[how].append(wrk(servers[how][1] + path, seconds, connections))
    finally:
        for proc, _ in servers.values():
            stop_server(proc)
    return {how: sorted(rs, key=lambda x: x["requests_s"])[len(rs) // 2] | {
        "rounds_requests_s": [x["requests_s"] for x in rs]} for how, rs in runs.items()}


def run(workers: int = 2, quick: bool = False, connections: int = 16,
        progress: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    for tool in ("wrk",):
        if shutil.which(tool) is None:
            raise RuntimeError(f"the web benchmark needs {tool} (Debian package {tool})")
    try:
        import flask  # noqa: F401
        import gunicorn  # noqa: F401
    except ImportError as e:
        raise RuntimeError(f"the web benchmark needs the test extras: {e}") from None
    seconds = 2.0 if quick else 5.0
    rounds = 1 if quick else 3
    out: dict[str, Any] = {"workers": workers, "connections": connections,
                           "seconds": seconds, "rounds": rounds, "page_bytes": PAGE}
    with tempfile.TemporaryDirectory(prefix="nooks-bench-web-") as www:
        with open(os.path.join(www, "index.html"), "wb") as f:
            f.write(_page())
        apps = {"static_4k": (f"static:{www}", "/index.html"),
                "flask": ("nooks.bench.webapp:app", "/hello")}
        for key, (app, path) in apps.items():
            out[key] = _compare(app, path, workers, seconds=seconds, rounds=rounds,
                                connections=connections,
                                progress=lambda s, key=key: progress(f"{key}: {s}"))  # type: ignore[misc]
    ratios: dict[str, dict[str, float]] = {}
    for key in ("static_4k", "flask"):
        r = out[key]
        ratios[key] = {
            "nooks/native": r["nooks"]["requests_s"] / r["native"]["requests_s"],
            "nooks/gunicorn": r["nooks"]["requests_s"] / r["gunicorn"]["requests_s"],
        }
    out["ratios"] = ratios
    out["targets_met"] = {
        "nooks >= 0.8x native": all(r["nooks/native"] >= 0.8 for r in ratios.values()),
        "nooks >= 1.0x gunicorn": all(r["nooks/gunicorn"] >= 1.0 for r in ratios.values()),
        "no failed requests under nooks": all(
            out[k]["nooks"]["non_2xx"] == 0 and out[k]["nooks"]["socket_errors"] == 0
            for k in ("static_4k", "flask")),
    }
    return out
