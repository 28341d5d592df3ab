"""The Flask application of the web campaign: a shop that takes orders into a ledger.

The ledger is a file (``NOOKS_LEDGER``) outside the application's memory, which dies
with it: one line per *execution* of a state-changing request, so that the campaign
can tell whether one ran twice or not at all.

* ``POST /orders`` with an ``Idempotency-Key`` header and a JSON body ``{"item",
  "qty"}``: places the order (one ledger line) and answers 201 with it and its total;
  the same key again gets the same answer (201 and the order placed) and places
  nothing (as the IETF's Idempotency-Key draft has it). Because of
  the key, the route is safe to run again after a failure (``nooks_retry_safe``).
* ``POST /notes`` with an ``X-Request-Id``: appends a note (one ledger line), 201.
  Not safe to run twice, and not marked: nooks must not re-issue it.
* ``GET /orders/<key>``: the order placed with that key (404 if none).
* ``GET /items/<n>``: a catalogue entry, computed.
* ``GET /report/<size>``: a generated body of ``size`` bytes.

Needs Flask (the ``test`` extra).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from typing import Any

from flask import Flask, Response, abort, request

PRICES = {"apple": 3, "pear": 5, "plum": 7, "fig": 11}

app = Flask(__name__)
app.nooks_retry_safe = ["POST /orders"]  # type: ignore[attr-defined]


def _ledger() -> str:
    return os.environ.get("NOOKS_LEDGER", "ledger.jsonl")


def _entries(fd: int) -> list[dict[str, Any]]:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return [json.loads(line) for line in b"".join(chunks).splitlines() if line.strip()]


def _find(entries: list[dict[str, Any]], kind: str, key: str) -> dict[str, Any] | None:
    for e in entries:
        if e["kind"] == kind and e["key"] == key:
            return e
    return None


def _append(fd: int, entry: dict[str, Any]) -> None:
    os.write(fd, json.dumps(entry, sort_keys=True).encode() + b"\n")
    os.fsync(fd)


def _locked() -> int:
    fd = os.open(_ledger(), os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


@app.post("/orders")
def place() -> tuple[dict[str, Any], int]:
    key = request.headers.get("Idempotency-Key", "")
    body = request.get_json(silent=True) or {}
    item, qty = body.get("item"), body.get("qty")
    if not key or item not in PRICES or not isinstance(qty, int) or qty < 1:
        abort(400)
    fd = _locked()
    try:
        placed = _find(_entries(fd), "order", key)
        if placed is not None:
            return placed["order"], 201
        order = {"key": key, "item": item, "qty": qty, "total": PRICES[item] * qty}
        _append(fd, {"kind": "order", "key": key, "order": order})
    finally:
        os.close(fd)
    return order, 201


@app.post("/notes")
def note() -> tuple[dict[str, Any], int]:
    rid = request.headers.get("X-Request-Id", "")
    text = request.get_data(as_text=True)
    fd = _locked()
    try:
        _append(fd, {"kind": "note", "key": rid, "text": text})
    finally:
        os.close(fd)
    return {"id": rid, "length": len(text)}, 201


@app.get("/orders/<key>")
def order(key: str) -> dict[str, Any]:
    fd = _locked()
    try:
        placed = _find(_entries(fd), "order", key)
    finally:
        os.close(fd)
    if placed is None:
        abort(404)
    return dict(placed["order"])


@app.get("/items/<int:n>")
def item(n: int) -> dict[str, Any]:
    name = sorted(PRICES)[n % len(PRICES)]
    return {"n": n, "item": name, "price": PRICES[name],
            "sku": hashlib.sha256(f"{name}-{n}".encode()).hexdigest()[:16]}


@app.get("/report/<int:size>")
def report(size: int) -> Response:
    data = (bytes(range(251)) * (size // 251 + 1))[:size]
    return Response(data, mimetype="application/octet-stream")
