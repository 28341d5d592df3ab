"""A small Flask application for the web tests and benchmark.

Every POST to ``/orders`` is recorded in a ledger file (``NOOKS_TEST_LEDGER``),
one line per execution, so a test can tell whether a request ran twice. The
ledger lives outside the application's memory because its memory dies with it.
With ``X-Crash-After-Record: once`` the application records the order, then
crashes before answering (the first time it sees that request id).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
from pathlib import Path

from flask import Flask, Response, request

app = Flask(__name__)
app.nooks_retry_safe = ["PUT /never-mind/*"]  # type: ignore[attr-defined]


@app.get("/hello")
def hello() -> str:
    return "hello, world\n"


@app.get("/item/<int:n>")
def item(n: int) -> dict[str, object]:
    return {"n": n, "sha": hashlib.sha256(str(n).encode()).hexdigest()}


@app.get("/blob/<int:size>")
def blob(size: int) -> Response:
    data = bytes(i % 251 for i in range(size))
    return Response(data, mimetype="application/octet-stream")


@app.post("/orders")
def orders() -> tuple[dict[str, object], int]:
    rid = request.headers.get("X-Request-Id", "")
    ledger = os.environ.get("NOOKS_TEST_LEDGER")
    if ledger:
        seen = os.path.exists(ledger) and rid in Path(ledger).read_text().split()
        with open(ledger, "a") as f:
            f.write(f"{rid}\n")
        if request.headers.get("X-Crash-After-Record") == "once" and not seen:
            ctypes.string_at(0)  # the order is recorded, and the reply never comes
    return {"id": rid, "size": len(request.get_data())}, 201


@app.get("/boom")
def boom() -> str:
    raise RuntimeError("a bug in a route")


@app.post("/report/<int:size>")
def report(size: int) -> Response:
    """A large answer to a request that must not run twice (bytes ``i % 251``)."""
    data = (bytes(range(251)) * (size // 251 + 1))[:size]
    return Response(data, mimetype="application/octet-stream")
