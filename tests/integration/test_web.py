"""The web class against real sockets and real clients (httpx, curl).

A Flask application and the static-file server are served through nooks
while their workers are made to fail over and over (SIGSEGV, an exception in
the runtime, a hang): no GET fails, and no non-idempotent request runs twice
(the application records every execution in a ledger outside its memory).
Natively, the same fault takes the server down.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from nooks.control import request, socket_path
from nooks.fs.process import fail_and_wait
from nooks.web.process import Output, start_server, stop_server

pytestmark = pytest.mark.timeout(240)

FAULTS = ("segv", "exception", "hang")


@contextmanager
def serving(app: str, *extra: str, env: dict[str, str] | None = None,
            exit_code: int = 0) -> Iterator[tuple[str, str, Output]]:
    name = f"web-{os.getpid()}-{next(_names)}"
    cmd = [sys.executable, "-m", "nooks", "serve", app, "--bind", "127.0.0.1:0",
           "--name", name, *extra]
    proc, (host, port), out = start_server(cmd, env=env)
    try:
        yield f"http://{host}:{port}", name, out
    finally:
        code = stop_server(proc)
        assert code == exit_code, out.tail()


_names = itertools.count()


def status(name: str) -> dict[str, object]:
    return request(socket_path(name), {"cmd": "status"})  # type: ignore[no-any-return]


def test_flask_app_survives_failures(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    env = dict(os.environ, NOOKS_TEST_LEDGER=str(ledger))
    with serving("tests.web.flaskapp:app", "--workers", "2", "--timeout", "1",
                 env=env) as (url, name, _):
        stop = threading.Event()
        faults: list[str] = []

        def injector() -> None:
            for fault in itertools.cycle(FAULTS):
                if stop.is_set() or len(faults) >= 24:
                    return
                fail_and_wait(name, fault)
                faults.append(fault)

        results: dict[str, list[tuple[str, int, bytes]]] = collections.defaultdict(list)

        errors: list[BaseException] = []

        def client(k: str, n: int) -> None:
            try:
                run_client(k, n)
            except BaseException as e:
                errors.append(e)

        def run_client(k: str, n: int) -> None:
            with httpx.Client(base_url=url, timeout=30) as c:
                for i in range(n):
                    if i % 5 == 4:
                        rid = f"{k}-{i}"
                        r = c.post("/orders", content=b"x" * i, headers={"X-Request-Id": rid})
                        results["post"].append((rid, r.status_code, r.content))
                    else:
                        r = c.get(f"/item/{i}")
                        results["get"].append((str(i), r.status_code, r.content))

        inj = threading.Thread(target=injector)
        inj.start()
        # the load runs until the injector has made the workers fail 24 times, and
        # for at least 1,000 requests
        rounds = 0
        while (inj.is_alive() or rounds < 5) and rounds < 40:
            threads = [threading.Thread(target=client, args=(f"{rounds}.{k}", 50))
                       for k in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            rounds += 1
        stop.set()
        inj.join()
        # curl, a second client, after all that
        curl = subprocess.run(["curl", "-sf", f"{url}/hello"], capture_output=True, check=False)
        assert curl.returncode == 0 and curl.stdout == b"hello, world\n"
        st = status(name)

    assert not errors, errors[:3]
    gets, posts = results["get"], results["post"]
    assert len(gets) + len(posts) >= 1000
    assert len(faults) >= 20 and set(faults) == set(FAULTS)
    recoveries = st["recoveries"]
    assert isinstance(recoveries, list) and len(recoveries) >= 20
    assert {r["kind"] for r in recoveries} >= {"crashed", "hung"}
    bad = [(i, code) for i, code, _ in gets if code != 200]
    assert not bad, f"failed GETs: {bad[:10]}"
    for i, _, body in gets:
        assert json.loads(body) == {"n": int(i),
                                    "sha": hashlib.sha256(i.encode()).hexdigest()}
    ran = collections.Counter(ledger.read_text().split())
    assert all(n == 1 for n in ran.values()), [r for r, n in ran.items() if n > 1]
    for rid, code, body in posts:
        assert code in (201, 503), (rid, code, body)
        if code == 201:
            assert ran[rid] == 1 and json.loads(body)["id"] == rid
    assert sum(code == 201 for _, code, _ in posts) > len(posts) // 2


def test_static_server(tmp_path: Path) -> None:
    www = tmp_path / "www"
    (www / "sub").mkdir(parents=True)
    files = {"index.html": b"<h1>home</h1>\n", "sub/page.txt": os.urandom(4096),
             "big.bin": os.urandom(3 << 20)}
    for rel, data in files.items():
        (www / rel).write_bytes(data)
    (tmp_path / "secret").write_text("outside")
    (www / "escape").symlink_to(tmp_path / "secret")
    with serving(f"static:{www}", "--workers", "1") as (url, name, out):
        with httpx.Client(base_url=url) as c:
            assert c.get("/").content == files["index.html"]
            assert c.get("/sub/page.txt").content == files["sub/page.txt"]
            r = c.get("/big.bin")
            assert r.status_code == 200 and r.content == files["big.bin"], out.tail()
            head = c.head("/big.bin")
            assert head.status_code == 200 and head.content == b""
            assert head.headers["content-length"] == str(len(files["big.bin"]))
            again = c.get("/sub/page.txt", headers={"If-None-Match": r.headers["etag"]})
            assert again.status_code == 200
            etag = c.get("/sub/page.txt").headers["etag"]
            assert c.get("/sub/page.txt", headers={"If-None-Match": etag}).status_code == 304
            assert c.get("/escape").status_code == 404
            assert c.get("/missing").status_code == 404
            assert c.post("/index.html").status_code == 405
            for fault in ("segv", "exception", "sigkill"):
                fail_and_wait(name, fault)
                assert c.get("/big.bin").content == files["big.bin"]
        # raw path traversal, which httpx would normalise away
        curl = subprocess.run(["curl", "-s", "--path-as-is", "-o", "/dev/null", "-w",
                               "%{http_code}", f"{url}/../secret"], capture_output=True,
                              text=True, check=False)
        assert curl.stdout == "404"
        assert len(status(name)["recoveries"]) == 3  # type: ignore[arg-type]


def test_route_marked_safe_is_reissued_and_others_get_503(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    env = dict(os.environ, NOOKS_TEST_LEDGER=str(ledger))
    with serving("tests.web.flaskapp:app", "--workers", "1", "--timeout", "1",
                 "--retry-safe", "POST /orders", env=env) as (url, name, _):
        st = status(name)
        assert "POST /orders" in st["retry_safe"]  # type: ignore[operator]
        assert "PUT /never-mind/*" in st["retry_safe"]  # type: ignore[operator]
    with serving("tests.web.flaskapp:app", "--workers", "1", "--timeout", "1",
                 env=env) as (url, name, _):
        request(socket_path(name), {"cmd": "inject", "fault": "hang"})
        r = httpx.post(f"{url}/orders", headers={"X-Request-Id": "hung"}, timeout=30)
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert httpx.get(f"{url}/hello").status_code == 200


def test_native_server_dies_with_its_application() -> None:
    with serving("tests.web.flaskapp:app", "--native", "--workers", "1",
                 exit_code=-11) as (url, name, _):
        assert httpx.get(f"{url}/hello").text == "hello, world\n"
        request(socket_path(name), {"cmd": "inject", "fault": "segv"})
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{url}/hello")
        curl = subprocess.run(["curl", "-sf", f"{url}/hello"], capture_output=True, check=False)
        assert curl.returncode == 7  # couldn't connect: the server is gone
