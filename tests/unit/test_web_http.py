"""The host's HTTP framing, response rendering, the web shadow's rules, and the
WSGI adapter and static server called directly (pure logic, no sockets)."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nooks.drivers.static import StaticFiles
from nooks.web.adapter import INLINE, WsgiAdapter, environ
from nooks.web.http import (
    HttpLimits,
    ProtocolError,
    RequestParser,
    check_head,
    error_response,
    render_head,
)
from nooks.web.spec import WebShadow


def parse(data: bytes, **limits: Any) -> list[Any]:
    return RequestParser(HttpLimits(**limits)).feed(data)


def test_pipelined_requests_come_out_whole_and_in_order() -> None:
    data = (b"GET /a?x=1 HTTP/1.1\r\nHost: h\r\n\r\n"
            b"POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"
            b"PUT /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"2\r\nxy\r\n1\r\nz\r\n0\r\n\r\n"
            b"GET /d HTTP/1.0\r\n\r\n")
    reqs = parse(data)
    assert [(r.method, r.target, r.body, r.keep_alive) for r in reqs] == [
        ("GET", "/a?x=1", b"", True), ("POST", "/b", b"abc", True),
        ("PUT", "/c", b"xyz", True), ("GET", "/d", b"", False)]
    assert reqs[0].headers == [("Host", "h")]
    assert [r.http10 for r in reqs] == [False, False, False, True]
    ka = parse(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")[0]
    assert ka.keep_alive and ka.http10
    assert b"Connection: keep-alive\r\n" in render_head(200, "", [], 0, keep_alive=True,
                                                         head_only=False, http10=True)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=30))
def test_any_split_of_the_stream_gives_the_same_requests(cuts: list[int]) -> None:
    data = (b"POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"
            b"GET /a HTTP/1.1\r\nHost: h\r\nX-Long: " + b"v" * 50 + b"\r\n\r\n")
    p = RequestParser(HttpLimits())
    got = []
    at = 0
    for n in cuts:
        got += p.feed(data[at:at + n])
        at += n
    got += p.feed(data[at:])
    assert [(r.method, r.body) for r in got] == [("POST", b"hello"), ("GET", b"")]
    assert got[1].headers[1] == ("X-Long", "v" * 50)
    assert not p.in_request


@pytest.mark.parametrize(("data", "status"), [
    (b"\x00junk\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n\r\n", 400),  # no Host
    (b"GET / HTTP/1.1\r\nHost: h\r\nBad Name: 1\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 99\r\n\r\n", 413),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", 414),
    (b"GET / HTTP/1.1\r\nHost: h\r\nX: " + b"b" * 40000 + b"\r\n\r\n", 431),
    (b"GET / HTTP/1.1\r\nHost: h\r\n" + b"X: y\r\n" * 120 + b"\r\n", 431),
    (b"POST / HTTP/1.1\r\nHost: h\r\nExpect: 200-ok\r\n\r\n", 417),
])
def test_bad_requests_get_the_right_4xx(data: bytes, status: int) -> None:
    with pytest.raises(ProtocolError) as e:
        parse(data, max_body=64)
    assert e.value.status == status


def test_a_header_that_never_ends_is_refused_before_it_is_held() -> None:
    p = RequestParser(HttpLimits(max_head=1024))
    p.feed(b"GET / HTTP/1.1\r\nHost: h\r\nX: ")
    fed = 0

    def feed_forever() -> None:
        nonlocal fed
        for _ in range(100):
            p.feed(b"z" * 4096)
            fed += 4096

    with pytest.raises(ProtocolError) as e:
        feed_forever()
    assert e.value.status == 431 and fed < 1024 + 32 * 1024


def test_expect_continue_is_seen_before_the_body() -> None:
    p = RequestParser(HttpLimits())
    assert p.feed(b"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n"
                  b"Content-Length: 2\r\n\r\n") == []
    assert p.expect_continue and p.in_request
    assert p.feed(b"ok")[0].body == b"ok"


def test_responses_are_framed_by_the_host() -> None:
    out = render_head(200, "OK", [("Content-Type", "text/plain"), ("Content-Length", "999"),
                                  ("Transfer-Encoding", "chunked"), ("X-A", "b")], 5,
                      keep_alive=False, head_only=False)
    assert out == (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-A: b\r\n"
                   b"Content-Length: 5\r\nConnection: close\r\n\r\n")
    head = render_head(200, "", [("Content-Length", "12")], 0, keep_alive=True, head_only=True)
    assert b"Content-Length: 12\r\n" in head and head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Length" not in render_head(304, "", [], 0, keep_alive=True,
                                                head_only=False)
    err = error_response(503, "busy", retry_after=1)
    assert err.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"Retry-After: 1\r\n" in err and err.endswith(b"\r\n\r\nbusy\n")
    head = error_response(503, "busy", head_only=True, keep_alive=True)
    assert head.endswith(b"Content-Length: 5\r\n\r\n")  # the length, not the body


@pytest.mark.parametrize(("status", "reason", "headers"), [
    (200, "OK", [("X", "a\r\nSet-Cookie: evil")]),
    (200, "OK\r\n", []),
    (200, "OK", [("Bad Name", "x")]),
    (99, "", []),
    (101, "", []),
])
def test_a_broken_response_head_is_caught(status: int, reason: str,
                                          headers: list[tuple[str, str]]) -> None:
    assert check_head(status, reason, headers) is not None


def test_web_shadow_reissues_only_what_is_safe() -> None:
    s = WebShadow(["POST /api/*", "* /any"])
    for method in ("GET", "HEAD", "PUT", "DELETE", "OPTIONS"):
        assert s.reissuable("handle", (method, "/x"))
    assert not s.reissuable("handle", ("POST", "/orders"))
    assert not s.reissuable("handle", ("PATCH", "/api/x"))
    assert s.reissuable("handle", ("POST", "/api/x?y=1"))
    assert s.reissuable("handle", ("PATCH", "/any"))
    assert not s.reissuable("more", (0,))
    with pytest.raises(ValueError, match="METHOD /path-pattern"):
        WebShadow(["POST"])


def _app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    body = environ["wsgi.input"].read()
    start_response("201 Made", [("X-Path", environ["PATH_INFO"])])
    return [b"got:", body, b" q=", environ["QUERY_STRING"].encode(),
            b" h=", environ.get("HTTP_X_MULTI", "").encode()]


def test_environ_follows_pep_3333() -> None:
    env = environ("POST", "/a%20b/c?q=1", [("Content-Type", "text/plain"), ("X-Multi", "1"),
                                           ("X-Multi", "2"), ("X_Alias", "no")],
                  b"body", ("10.0.0.1", 4000), ("127.0.0.1", 8080))
    assert env["PATH_INFO"] == "/a b/c" and env["QUERY_STRING"] == "q=1"
    assert env["CONTENT_TYPE"] == "text/plain" and env["CONTENT_LENGTH"] == "4"
    assert env["HTTP_X_MULTI"] == "1,2" and "HTTP_X_ALIAS" not in env
    forged = environ("GET", "/", [("Content_Length", "99")], b"", ("c", 1), ("s", 2))
    assert "CONTENT_LENGTH" not in forged
    assert env["REMOTE_ADDR"] == "10.0.0.1" and env["SERVER_PORT"] == "8080"
    assert isinstance(env["wsgi.input"], io.BytesIO)


def test_adapter_runs_a_wsgi_callable_and_hands_large_bodies_over_in_parts() -> None:
    a = WsgiAdapter(f"{__name__}:_app")
    head = a.handle("POST", "/p?q=2", [("X-Multi", "m")], b"data", ("c", 1), ("s", 2))
    assert (head.status, head.reason, head.body) == (201, "Made", b"got:data q=q=2 h=m")
    assert head.headers == [("X-Path", "/p")] and head.length == len(head.body)
    big = os.urandom(INLINE + 3 * (1 << 20) + 5)
    head = a.handle("PUT", "/", [], big, ("c", 1), ("s", 2))
    body = head.body
    while len(body) < head.length:
        body += a.more(head.stream, len(body))
    assert body == b"got:" + big + b" q= h="


def test_an_exception_in_the_application_is_a_500() -> None:
    def bad(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        raise KeyError("bug")

    a = WsgiAdapter(f"{__name__}:_app")
    a.app = bad
    assert a.handle("GET", "/", [], b"", ("c", 1), ("s", 2)).status == 500


def test_static_files(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "index.html").write_bytes(b"<p>d</p>")
    (tmp_path / "a.txt").write_bytes(b"text")
    (tmp_path / "link").symlink_to("/etc/passwd")
    app = StaticFiles(str(tmp_path))

    def get(path: str, method: str = "GET", **headers: str) -> tuple[str, dict[str, str],
                                                                      bytes]:
        seen: list[Any] = []
        env = environ(method, path, list(headers.items()), b"", ("c", 1), ("s", 2))
        body = b"".join(app(env, lambda s, h: seen.extend([s, dict(h)])))
        return seen[0], seen[1], body

    status, headers, body = get("/a.txt")
    assert status == "200 OK" and body == b"text"
    assert headers["Content-Type"] == "text/plain; charset=utf-8"
    assert get("/d/")[2] == b"<p>d</p>"
    assert get("/d")[2] == b"<p>d</p>"
    assert get("/a.txt", "HEAD")[2] == b""
    assert get("/a.txt", "HEAD")[1]["Content-Length"] == "4"
    assert get("/a.txt", **{"If-None-Match": headers["ETag"]})[0] == "304 Not Modified"
    for bad in ("/../etc/passwd", "/link", "/missing", "/d/../../x", "/%2e%2e/x"):
        assert get(bad)[0] == "404 Not Found", bad
    assert get("/a.txt", "POST")[0] == "405 Method Not Allowed"
    with pytest.raises(ValueError, match="not a directory"):
        StaticFiles(str(tmp_path / "a.txt"))
