"""The web campaign's workload: ``curl`` asking a server for what it must answer.

Each step is one ``curl`` run (in the run's scope, with a time limit) making many
requests: one after another on a kept-alive connection, or several at once
(``--parallel``). Every answer is checked: its status, and its body, byte for
byte or as JSON, against what a correct server answers.

* ``static``: a document root of text and binary files, small and large (past
  256 KiB a body is streamed), a directory index, a name with a space; GET, HEAD,
  a conditional GET (304, or the whole file: a server may ignore the condition)
  and a missing file (404).
* ``flask`` (``nooks.eval.ledger``): catalogue entries and generated reports
  (GET); orders placed with an ``Idempotency-Key`` and some sent again with the
  same key (the order placed, nothing placed twice); notes, which must not run
  twice; the orders read back. Afterwards (``check_ledger``) every order answered
  as placed is in the ledger exactly once, every note at most once — once if it was
  answered 201.

What goes wrong is said in one line per request. Rules for the outcome
(``nooks.eval.web``): a line that starts ``lost:`` means the request got no answer
(the server died, refused the connection, or hung); ``data:`` means a wrong
body or ledger; any other is an answer that was not the right one.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nooks.eval.programs import capture
from nooks.eval.registry import Scope

REQUEST_TIMEOUT = 5  # seconds curl gives one request
STEP_TIMEOUT = 30.0  # seconds one curl run may take
PRICES = {"apple": 3, "pear": 5, "plum": 7, "fig": 11}  # what the shop charges
FUTURE = "Tue, 01 Jan 2036 00:00:00 GMT"


@dataclass
class Ask:
    """One request and what must answer it."""

    method: str
    path: str
    status: int
    body: bytes | None = None  # the body it must get (None: not checked)
    json: Any = None  # or the JSON it must get
    headers: list[str] = field(default_factory=list)
    data: bytes | None = None
    # another right answer: a conditional GET may be answered in full (a server may
    # ignore the condition: RFC 9110, 13.1)
    or_full: bytes | None = None


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def ask(scope: Scope, base: str, asks: list[Ask], tmp: str, on_hang: Callable[[], None],
        *, parallel: bool = False, tag: str = "s") -> tuple[list[str], list[bytes | None]]:
    """Make the requests with one ``curl``; what went wrong, and each body got (None:
    no answer)."""
    cfg = [f"# {len(asks)} requests"]
    outs = []
    for i, a in enumerate(asks):
        out = os.path.join(tmp, f"{tag}-{i}.out")
        outs.append(out)
        cfg += [f"url = {_quote(base + a.path)}", "silent", "show-error",
                f"max-time = {REQUEST_TIMEOUT}", f"output = {_quote(out)}",
                f"write-out = {_quote(f'{i} %{{exitcode}} %{{http_code}}' + chr(92) + 'n')}"]
        if a.method == "HEAD":
            cfg.append("head")
        elif a.method != "GET":
            cfg.append(f"request = {a.method}")
        cfg += [f"header = {_quote(h)}" for h in a.headers]
        if a.data is not None:
            sent = os.path.join(tmp, f"{tag}-{i}.in")
            with open(sent, "wb") as f:
                f.write(a.data)
            cfg.append(f"data-binary = {_quote('@' + sent)}")
        if i + 1 < len(asks):
            cfg.append("next")
    path = os.path.join(tmp, f"{tag}.curl")
    with open(path, "w") as f:
        f.write("\n".join(cfg) + "\n")
    # --fail-early: the first request that gets no answer ends the run (a server that
    # hung would make each of the rest wait REQUEST_TIMEOUT)
    cmd = ["curl", "--fail-early", *(["--parallel", "--parallel-max", "4"] if parallel else []),
           "-K", path]
    rc, out, err = capture(scope, cmd, on_hang, timeout=STEP_TIMEOUT)
    if rc == -1:
        return [f"lost: curl ({len(asks)} requests): hung"], [None] * len(asks)
    got: dict[int, tuple[int, int]] = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and all(p.isdigit() for p in parts):
            got[int(parts[0])] = (int(parts[1]), int(parts[2]))
    errors: list[str] = []
    bodies: list[bytes | None] = []
    for i, a in enumerate(asks):
        what = f"{a.method} {a.path}"
        exit_code, status = got.get(i, (-1, 0))
        if exit_code != 0:
            how = "hung" if exit_code == 28 else f"curl exit {exit_code}"
            errors.append(f"lost: {what}: {how}: {err.strip()[-200:]}")
            bodies.append(None)
            continue
        body = b""
        if os.path.exists(outs[i]):
            with open(outs[i], "rb") as f:
                body = f.read()
        bodies.append(body)
        if a.or_full is not None and status == 200 and body == a.or_full:
            continue
        if status != a.status:
            errors.append(f"{what}: answered {status}, expected {a.status}: {body[:120]!r}")
        elif a.body is not None and body != a.body:
            errors.append(f"data: {what}: a wrong body ({len(body)} bytes, "
                          f"expected {len(a.body)})")
        elif a.json is not None and _json(body) != a.json:
            errors.append(f"data: {what}: a wrong body: {body[:120]!r}")
    return errors, bodies


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


# -- static ------------------------------------------------------------------------------

def make_root(root: str) -> dict[str, bytes]:
    """A document root (the same every run); URL path -> the body it must get."""
    rng = random.Random(0)
    files = {
        "index.html": b"<!doctype html><title>nooks</title>\n" + b"<p>hello</p>\n" * 60,
        "a.txt": "".join(f"line {i}: {'x' * (i % 70)}\n" for i in range(400)).encode(),
        "data/4k.bin": rng.randbytes(4096),
        "data/300k.bin": rng.randbytes(300_000),
        "data/2m.bin": rng.randbytes(2 << 20),
        "sub/index.html": b"<!doctype html><title>sub</title>\n",
        "space name.txt": b"a name with a space\n",
    }
    for name, data in files.items():
        path = os.path.join(root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
    urls = {"/" + n.replace(" ", "%20"): d for n, d in files.items()}
    urls["/"] = files["index.html"]
    urls["/sub/"] = files["sub/index.html"]
    return urls


def static_workload(scope: Scope, base: str, urls: dict[str, bytes], tmp: str,
                    on_hang: Callable[[], None]) -> list[str]:
    gets = [Ask("GET", path, 200, body) for path, body in sorted(urls.items())]
    others = [Ask("HEAD", "/data/4k.bin", 200), Ask("GET", "/missing.txt", 404),
              Ask("GET", "/a.txt", 304, b"", headers=[f"If-Modified-Since: {FUTURE}"],
                  or_full=urls["/a.txt"]),
              Ask("POST", "/a.txt", 405, data=b"x")]
    errors, _ = ask(scope, base, gets + others, tmp, on_hang, tag="seq")
    if any(e.startswith("lost:") for e in errors):
        return errors
    more, _ = ask(scope, base, gets * 2, tmp, on_hang, parallel=True, tag="par")
    return errors + more


# -- flask: the ledger -------------------------------------------------------------------

@dataclass
class Ledger:
    """What the client was told: orders answered as placed (key -> order), notes
    answered 201, notes sent."""

    orders: dict[str, dict[str, Any]] = field(default_factory=dict)
    noted: set[str] = field(default_factory=set)
    notes_sent: set[str] = field(default_factory=set)


def _item(n: int) -> dict[str, Any]:
    name = sorted(PRICES)[n % len(PRICES)]
    return {"n": n, "item": name, "price": PRICES[name],
            "sku": hashlib.sha256(f"{name}-{n}".encode()).hexdigest()[:16]}


def _report(size: int) -> bytes:
    return (bytes(range(251)) * (size // 251 + 1))[:size]


def ledger_workload(scope: Scope, base: str, seed: int, book: Ledger, tmp: str, *,
                    on_hang: Callable[[], None]) -> list[str]:
    rng = random.Random(seed)
    reads = [Ask("GET", f"/items/{n}", 200, json=_item(n)) for n in range(8)]
    reads += [Ask("GET", f"/report/{size}", 200, _report(size)) for size in (1000, 300_000)]
    orders = []
    for i in range(12):
        item = sorted(PRICES)[rng.randrange(len(PRICES))]
        qty = rng.randrange(1, 9)
        key = f"order-{seed}-{i}"
        orders.append({"key": key, "item": item, "qty": qty, "total": PRICES[item] * qty})
    places = [Ask("POST", "/orders", 201, json=o,
                  headers=[f"Idempotency-Key: {o['key']}", "Content-Type: application/json"],
                  data=json.dumps({"item": o["item"], "qty": o["qty"]}).encode())
              for o in orders]
    again = [Ask("POST", "/orders", 201, json=o, headers=a.headers, data=a.data)
             for o, a in list(zip(orders, places, strict=True))[:4]]
    notes = [Ask("POST", "/notes", 201, json={"id": f"note-{seed}-{i}", "length": 6 + i},
                 headers=[f"X-Request-Id: note-{seed}-{i}"], data=b"n" * (6 + i))
             for i in range(4)]
    book.notes_sent |= {f"note-{seed}-{i}" for i in range(4)}
    steps = [(reads, False), (places + again + notes, False), (reads, True)]
    errors: list[str] = []
    for n, (asks, parallel) in enumerate(steps):
        got, bodies = ask(scope, base, asks, tmp, on_hang, parallel=parallel, tag=f"l{n}")
        errors += got
        for a, body in zip(asks, bodies, strict=True):
            if body is None or a.method != "POST":
                continue
            answer = _json(body)
            if a.path == "/orders" and isinstance(answer, dict) and answer == a.json:
                book.orders[str(answer["key"])] = answer
            elif a.path == "/notes" and isinstance(answer, dict) and answer == a.json:
                book.noted.add(str(answer["id"]))
        if any(e.startswith("lost:") for e in got):
            return errors
    return errors + readback(scope, base, book, tmp, on_hang)


def readback(scope: Scope, base: str, book: Ledger, tmp: str,
             on_hang: Callable[[], None]) -> list[str]:
    """The orders placed, read back: each as it was answered."""
    asks = [Ask("GET", f"/orders/{key}", 200, json=o) for key, o in sorted(book.orders.items())]
    if not asks:
        return []
    errors, _ = ask(scope, base, asks, tmp, on_hang, parallel=True, tag="back")
    return errors


def check_ledger(path: str, book: Ledger) -> list[str]:
    """The ledger against what the client was told: problems (empty: none)."""
    runs: dict[tuple[str, str], int] = {}
    placed: dict[str, Any] = {}
    try:
        with open(path, "rb") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        lines = []
    for line in lines:
        try:
            e = json.loads(line)
            k = (str(e["kind"]), str(e["key"]))
        except (ValueError, KeyError, TypeError):
            return [f"data: ledger: an unreadable line {line[:80]!r}"]
        runs[k] = runs.get(k, 0) + 1
        if k[0] == "order":
            placed[k[1]] = e.get("order")
    problems = [f"data: ledger: {kind} {key} ran {n} times" for (kind, key), n in
                sorted(runs.items()) if n > 1]
    for key, order in sorted(book.orders.items()):
        if key not in placed:
            problems.append(f"data: ledger: order {key} answered as placed is not in it")
        elif placed[key] != order:
            problems.append(f"data: ledger: order {key} differs from its answer")
    for rid in sorted(book.noted):
        if ("note", rid) not in runs:
            problems.append(f"data: ledger: note {rid} answered 201 is not in it")
    for (kind, key) in runs:
        if kind == "note" and key not in book.notes_sent:
            problems.append(f"data: ledger: note {key} was never sent")
    return problems
