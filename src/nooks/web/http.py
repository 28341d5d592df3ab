"""HTTP/1.1 on the host's side: framing requests and rendering responses.

``RequestParser`` turns the bytes of one connection into whole requests
(keep-alive and pipelining included) with httptools (llhttp), and enforces
the limits that keep a hostile client from reaching the extension or growing
the host: the size of a request head, the number of headers, the size of a
body. Whatever breaks them is a ``ProtocolError`` carrying the 4xx to answer
with; the connection is then closed. Responses are rendered here too, and the
extension's status and headers are checked first: they are untrusted input.
"""

from __future__ import annotations

import http
import re
from dataclasses import dataclass, field

import httptools

IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TOKEN_STR = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# framing is the host's: these never pass from the extension to the client
_PIECE = 16 << 10
HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length",
                        "upgrade", "te", "trailer", "proxy-connection"})


@dataclass(frozen=True)
class HttpLimits:
    max_head: int = 16 << 10  # request line and headers, bytes
    max_headers: int = 100
    max_body: int = 8 << 20
    request_timeout: float = 10.0  # first byte of a request → its last
    idle_timeout: float = 5.0  # between requests on a kept-alive connection
    send_timeout: float = 30.0


class ProtocolError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Request:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    keep_alive: bool
    http10: bool = False

    @property
    def idempotent(self) -> bool:
        return self.method in IDEMPOTENT


@dataclass
class _Building:
    url: bytearray = field(default_factory=bytearray)
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: list[bytes] = field(default_factory=list)
    head_bytes: int = 0
    body_bytes: int = 0
    head_done: bool = False


class RequestParser:
    """The requests in one connection's byte stream."""

    def __init__(self, limits: HttpLimits) -> None:
        self.limits = limits
        self._parser = httptools.HttpRequestParser(self)
        self._cur: _Building | None = None
        self._ready: list[Request] = []
        self._error: ProtocolError | None = None
        self._head_fed = 0
        self.expect_continue = False  # the request being read waits for "100 Continue"

    @property
    def in_request(self) -> bool:
        """A request has begun and is not complete."""
        return self._cur is not None

    def feed(self, data: bytes) -> list[Request]:
        """The requests completed by ``data``; raises ProtocolError."""
        for at in range(0, len(data), _PIECE):
            self._feed(data[at:at + _PIECE])
        out, self._ready = self._ready, []
        return out

    def _feed(self, data: bytes) -> None:
        cur = self._cur
        if cur is None or not cur.head_done:
            # the parser buffers a header field until it ends: bound what it may hold
            self._head_fed += len(data)
            if self._head_fed > self.limits.max_head + _PIECE:
                raise ProtocolError(431, "request header fields too large")
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if not self._ready:
                raise ProtocolError(400, "protocol upgrades are not supported") from None
            self._ready[-1].keep_alive = False
        except httptools.HttpParserInvalidMethodError:
            raise ProtocolError(400, "invalid request method") from None
        except httptools.HttpParserInvalidURLError:
            raise ProtocolError(400, "invalid request target") from None
        except httptools.HttpParserError as e:
            if self._error is not None:
                raise self._error from None
            raise ProtocolError(400, f"malformed request: {e}") from None
        if self._error is not None:
            raise self._error

    # -- httptools callbacks -------------------------------------------------------------

    def _fail(self, status: int, message: str) -> None:
        if self._error is None:
            self._error = ProtocolError(status, message)
        # stop the parser: llhttp aborts when a callback raises
        raise self._error

    def on_message_begin(self) -> None:
        self._cur = _Building()
        self.expect_continue = False

    def on_url(self, url: bytes) -> None:
        cur = self._cur
        assert cur is not None
        cur.url += url
        cur.head_bytes += len(url)
        if len(cur.url) > self.limits.max_head // 2:
            self._fail(414, "request target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        cur = self._cur
        assert cur is not None
        cur.head_bytes += len(name) + len(value) + 4
        if cur.head_bytes > self.limits.max_head:
            self._fail(431, "request header fields too large")
        cur.headers.append((name, value))
        if len(cur.headers) > self.limits.max_headers:
            self._fail(431, "too many request header fields")

    def on_headers_complete(self) -> None:
        cur = self._cur
        assert cur is not None
        cur.head_done = True
        self._head_fed = 0
        if self._parser.get_http_version() == "1.1" and \
                not any(n.lower() == b"host" for n, _ in cur.headers):
            self._fail(400, "HTTP/1.1 requests need a Host header")
        for name, value in cur.headers:
            if not _TOKEN.fullmatch(name):
                self._fail(400, "invalid header field name")
            lname = name.lower()
            if lname == b"content-length" and (not value.strip().isdigit()
                                               or int(value) > self.limits.max_body):
                self._fail(413 if value.strip().isdigit() else 400,
                           "request body too large" if value.strip().isdigit()
                           else "invalid Content-Length")
            if lname == b"expect":
                if value.strip().lower() != b"100-continue":
                    self._fail(417, "only 'Expect: 100-continue' is supported")
                self.expect_continue = True

    def on_body(self, body: bytes) -> None:
        cur = self._cur
        assert cur is not None
        cur.body_bytes += len(body)
        if cur.body_bytes > self.limits.max_body:
            self._fail(413, "request body too large")
        cur.body.append(body)

    def on_message_complete(self) -> None:
        cur = self._cur
        assert cur is not None
        self._cur = None
        self._head_fed = 0
        self.expect_continue = False
        p = self._parser
        try:
            target = cur.url.decode("ascii")
            headers = [(n.decode("latin-1"), v.decode("latin-1").strip())
                       for n, v in cur.headers]
        except UnicodeDecodeError:
            self._fail(400, "request target is not ASCII")
            return
        self._ready.append(Request(
            method=p.get_method().decode("ascii"), target=target, headers=headers,
            body=b"".join(cur.body), keep_alive=p.should_keep_alive(),
            http10=p.get_http_version() == "1.0"))


def check_head(status: int, reason: str, headers: list[tuple[str, str]]) -> str | None:
    """What is wrong with a response head from the extension, or None."""
    if not 100 <= status <= 599 or 100 <= status < 200:
        return f"status {status} cannot be sent as a final response"
    if _BAD_VALUE.search(reason):
        return "the reason phrase holds control characters"
    for name, value in headers:
        if not _TOKEN_STR.fullmatch(name):
            return f"invalid header name {name!r}"
        if _BAD_VALUE.search(value):
            return f"header {name} holds control characters"
    return None


def render_head(status: int, reason: str, headers: list[tuple[str, str]], length: int, *,
                keep_alive: bool, head_only: bool, http10: bool = False) -> bytes:
    """Status line and headers; framing (Content-Length, Connection) is the host's."""
    reason = reason or _reason(status)
    lines = [f"HTTP/1.1 {status} {reason}"]
    declared: str | None = None
    for name, value in headers:
        lname = name.lower()
        if lname == "content-length":
            declared = value
        if lname not in HOP_BY_HOP:
            lines.append(f"{name}: {value}")
    if status not in (204, 304):
        # a HEAD answer may state the length of the GET it stands for
        lines.append(f"Content-Length: {declared if head_only and declared else length}")
    if not keep_alive:
        lines.append("Connection: close")
    elif http10:
        lines.append("Connection: keep-alive")  # HTTP/1.0 closes unless told otherwise
    lines.append("\r\n")
    return "\r\n".join(lines).encode("latin-1")


def error_response(status: int, message: str, *, retry_after: int | None = None,
                   keep_alive: bool = False, head_only: bool = False,
                   http10: bool = False) -> bytes:
    body = (message.rstrip("\n") + "\n").encode()
    headers = [("Content-Type", "text/plain; charset=utf-8")]
    if retry_after is not None:
        headers.append(("Retry-After", str(retry_after)))
    head = render_head(status, "", headers, len(body), keep_alive=keep_alive,
                       head_only=False, http10=http10)
    return head if head_only else head + body  # a HEAD answer has no body


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"
