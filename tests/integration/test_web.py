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
import random
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from nooks.control import request, socket_path
from nooks.tools.fsprocess import fail_and_wait
from nooks.tools.webprocess import Output, start_server, stop_server

pytestmark = pytest.mark.timeout(240)

FAULTS = ("segv", "exception", "hang")
ROOT = str(Path(__file__).resolve().parents[2])  # where tests.web.flaskapp is found


@contextmanager
def serving(app: str, *extra: str, env: dict[str, str] | None = None,
            exit_code: int = 0) -> Iterator[tuple[str, str, Output]]:
    name = f"web-{os.getpid()}-{next(_names)}"
    cmd = [sys.executable, "-m", "nooks", "serve", app, "--bind", "127.0.0.1:0",
           "--name", name, *extra]
    # what the test sets for the application reaches its domains by name (they get a
    # minimal environment otherwise)
    for key in sorted(env or {}):
        if os.environ.get(key) != (env or {})[key]:
            cmd += ["--env", key]
    proc, (host, port), out = start_server(cmd, env=env, cwd=ROOT)
    try:
        yield f"http://{host}:{port}", name, out
    finally:
        code = stop_server(proc)
        assert code == exit_code, out.tail()


_names = itertools.count()


def status(name: str) -> dict[str, object]:
    return request(socket_path(name), {"cmd": "status"})  # type: ignore[no-any-return]


Check = Callable[[httpx.Client, int], tuple[str, int, bytes]]


def hammer(url: str, name: str, request: Check, curl_path: str, faults: int = 24,
           ) -> tuple[list[tuple[str, int, bytes]], list[str], dict[str, Any]]:
    """Four httpx clients and a curl loop send requests (``request(client, i)``) while
    the workers are made to fail ``faults`` times in turn by segv, exception and
    hang, and at least 1,000 requests have been answered; every answer, the
    faults and the host's status."""
    stop = threading.Event()
    done: list[str] = []
    answers: list[tuple[str, int, bytes]] = []
    errors: list[BaseException] = []
    curls: list[int] = []

    def injector() -> None:
        try:
            for fault in itertools.cycle(FAULTS):
                if len(done) >= faults:
                    return
                fail_and_wait(name, fault)
                done.append(fault)
        except BaseException as e:
            errors.append(e)

    def client(n: int) -> None:
        try:
            with httpx.Client(base_url=url, timeout=30) as c:
                for i in range(n):
                    answers.append(request(c, i))
        except BaseException as e:
            errors.append(e)

    def curl_loop() -> None:
        while not stop.is_set():
            r = subprocess.run(["curl", "-sf", "-o", "/dev/null", url + curl_path],
                               check=False, timeout=60)
            curls.append(r.returncode)

    inj = threading.Thread(target=injector)
    curl = threading.Thread(target=curl_loop)
    inj.start()
    curl.start()
    rounds = 0
    while (inj.is_alive() or len(answers) < 1000) and rounds < 40 and not errors:
        threads = [threading.Thread(target=client, args=(50,)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        rounds += 1
    stop.set()
    inj.join()
    curl.join()
    assert not errors, errors[:3]
    assert curls and set(curls) == {0}, collections.Counter(curls)
    st = status(name)
    assert len(done) >= 20 and set(done) == set(FAULTS)
    recoveries = st["recoveries"]
    assert isinstance(recoveries, list) and len(recoveries) >= 20
    assert {r["kind"] for r in recoveries} >= {"crashed", "hung"}
    assert len(answers) >= 1000
    return answers, done, st


def test_flask_app_survives_failures(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    env = dict(os.environ, NOOKS_TEST_LEDGER=str(ledger))

    def request(c: httpx.Client, i: int) -> tuple[str, int, bytes]:
        if i % 5 == 4:
            rid = f"{threading.get_ident()}-{i}-{os.urandom(4).hex()}"
            r = c.post("/orders", content=b"x" * i, headers={"X-Request-Id": rid})
            return f"POST {rid}", r.status_code, r.content
        r = c.get(f"/item/{i}")
        return f"GET {i}", r.status_code, r.content

    with serving("tests.web.flaskapp:app", "--workers", "2", "--timeout", "1",
                 env=env) as (url, name, _):
        answers, _, _ = hammer(url, name, request, "/hello")

    gets = [(k[4:], code, body) for k, code, body in answers if k.startswith("GET")]
    posts = [(k[5:], code, body) for k, code, body in answers if k.startswith("POST")]
    bad = [(i, code) for i, code, _ in gets if code != 200]
    assert not bad, f"failed GETs: {bad[:10]}"
    for i, _, body in gets:
        assert json.loads(body) == {"n": int(i),
                                    "sha": hashlib.sha256(i.encode()).hexdigest()}
    # no POST ran twice; each 201 ran exactly once; the others got 503 (ran once or never)
    ran = collections.Counter(ledger.read_text().split())
    assert all(n == 1 for n in ran.values()), [r for r, n in ran.items() if n > 1]
    for rid, code, body in posts:
        assert code in (201, 503), (rid, code, body)
        if code == 201:
            assert ran[rid] == 1 and json.loads(body)["id"] == rid
    assert sum(code == 201 for _, code, _ in posts) > len(posts) // 2


def test_static_server_survives_failures(tmp_path: Path) -> None:
    www = tmp_path / "www"
    www.mkdir()
    rng = random.Random(7)
    files = {f"f{i}.html": rng.randbytes(rng.randrange(100, 8192)) for i in range(20)}
    files["large.bin"] = rng.randbytes(700 << 10)  # crosses in parts (``more``)
    for rel, data in files.items():
        (www / rel).write_bytes(data)
    names = sorted(files)

    def request(c: httpx.Client, i: int) -> tuple[str, int, bytes]:
        rel = names[i % len(names)]
        r = c.get(f"/{rel}")
        return rel, r.status_code, r.content

    with serving(f"static:{www}", "--workers", "2", "--timeout", "1") as (url, name, _):
        answers, _, _ = hammer(url, name, request, "/large.bin")
    bad = [(rel, code) for rel, code, body in answers if code != 200 or body != files[rel]]
    assert not bad, f"failed or wrong GETs: {bad[:10]}"


def test_static_server_features(tmp_path: Path) -> None:
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
        recoveries: list[dict[str, str]] = status(name)["recoveries"]  # type: ignore[assignment]
        asked = [r for r in recoveries if "asking a fresh driver" in r["detail"]]
        assert len(recoveries) - len(asked) == 3  # the three faults
        # the first 404 was doubted once, a fresh extension said the same, and 404s
        # were trusted from then on
        assert len(asked) == 1 and "answered 404" in asked[0]["detail"]


def test_a_request_that_may_have_run_is_never_run_again(tmp_path: Path) -> None:
    """The application records an order and crashes before it answers: the POST is
    answered 503 and ran once. Marked safe to retry, it runs again and succeeds."""
    ledger = tmp_path / "ledger"
    env = dict(os.environ, NOOKS_TEST_LEDGER=str(ledger))
    crash = {"X-Crash-After-Record": "once"}
    with serving("tests.web.flaskapp:app", "--workers", "1", "--timeout", "1",
                 env=env) as (url, name, _):
        assert status(name)["retry_safe"] == ["PUT /never-mind/*"]  # marked by the app
        r = httpx.post(f"{url}/orders", headers={"X-Request-Id": "a", **crash}, timeout=30)
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert ledger.read_text().split() == ["a"]
        # hung before it started: not run, and not run again
        request(socket_path(name), {"cmd": "inject", "fault": "hang", "wait": False})
        r = httpx.post(f"{url}/orders", headers={"X-Request-Id": "b"}, timeout=30)
        assert r.status_code == 503
        assert ledger.read_text().split() == ["a"]
        assert httpx.get(f"{url}/hello").status_code == 200
        kinds = [x["kind"] for x in status(name)["recoveries"]]  # type: ignore[attr-defined]
        assert kinds == ["crashed", "hung"]
    ledger.unlink()
    with serving("tests.web.flaskapp:app", "--workers", "1", "--retry-safe", "POST /orders",
                 env=env) as (url, name, _):
        assert "POST /orders" in status(name)["retry_safe"]  # type: ignore[operator]
        r = httpx.post(f"{url}/orders", headers={"X-Request-Id": "c", **crash}, timeout=30)
        assert r.status_code == 201 and r.json()["id"] == "c"
        assert ledger.read_text().split() == ["c", "c"]  # it ran again, as allowed


def test_native_server_dies_with_its_application() -> None:
    with serving("tests.web.flaskapp:app", "--native", "--workers", "1",
                 exit_code=-11) as (url, name, _):
        assert httpx.get(f"{url}/hello").text == "hello, world\n"
        request(socket_path(name), {"cmd": "inject", "fault": "segv"})
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{url}/hello")
        curl = subprocess.run(["curl", "-sf", f"{url}/hello"], capture_output=True, check=False)
        assert curl.returncode == 7  # couldn't connect: the server is gone


def test_status_and_inject_by_bind_address() -> None:
    """Without --name, a web host is named by its bind address in status and inject."""
    cmd = [sys.executable, "-m", "nooks", "serve", "tests.web.flaskapp:app", "--bind",
           "127.0.0.1:0", "--workers", "2"]
    proc, (host, port), out = start_server(cmd, cwd=ROOT)
    try:
        name = f"{host}:{port}"

        def nooks(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "nooks", *args], capture_output=True,
                                  text=True, check=False, timeout=60)

        r = nooks("inject", name, "--fault", "segv", "--worker", "1")
        assert r.returncode == 0, r.stderr
        # bodies up to --max-body (8M by default) cross whole, through the arena
        big = httpx.post(f"http://{name}/orders", content=os.urandom(6 << 20), timeout=60)
        assert big.status_code == 201 and big.json()["size"] == 6 << 20
        assert httpx.post(f"http://{name}/orders", content=bytes(9 << 20),
                          timeout=60).status_code == 413
        assert httpx.get(f"http://{name}/hello").status_code == 200
        fail_and_wait(name, "segv")  # worker 0 this time (each in turn)
        st = json.loads(nooks("status", name, "--json").stdout)
        assert st["name"] == name and st["class"] == "web" and st["bind"] == name
        assert len(st["workers"]) == 2 and all(w["state"] == "live" for w in st["workers"])
        assert sorted(r["worker"] for r in st["recoveries"]) == [0, 1]
        r = nooks("inject", name, "--fault", "segv", "--worker", "5")
        assert r.returncode == 1 and "no worker 5" in r.stderr
        table = nooks("status")
        assert table.returncode == 0 and name in table.stdout
    finally:
        assert stop_server(proc) == 0, out.tail()
