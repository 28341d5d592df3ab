"""The WSGI adapter: runs inside the domain, between the runtime and the application.

It does for an unmodified WSGI application what a WSGI server does (PEP 3333):
builds the environ from the request the host framed, calls the application,
collects the status, headers and body, and closes the body iterable. The
application is named ``module:attribute``, or ``module:factory()`` for an
application factory called without arguments.

The first ``INLINE`` bytes of a body cross with the head. A longer body is
left open as a stream (``nooks.web.bodies``) that the host reads with
``more`` as its client reads: a file given to ``wsgi.file_wrapper`` is read
where asked, an iterable with a declared ``Content-Length`` is read on as
asked; an iterable without one is drained first (its length must be known
before the head is sent), so only such bodies sit whole in the domain.

An exception that escapes the application is answered ``500``, as every WSGI
server answers it; the failures that end a domain are the process's own
(signals, hangs, memory, a broken reply), and the runtime reports them.
"""

from __future__ import annotations

import io
import logging
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import unquote_to_bytes

from nooks.web.bodies import (
    BytesBody,
    FileBody,
    FileWrapper,
    IterBody,
    Streams,
    declared_length,
    drain,
    first_part,
    in_order,
)
from nooks.web.interface import Head
from nooks.wrappers import load
from nooks.xpc.arena import DEFAULT_SLOT_SIZE

log = logging.getLogger(__name__)

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
INLINE = 256 << 10  # body bytes sent with the head; the rest through ``more``
CHUNK = DEFAULT_SLOT_SIZE
_SPECIAL = {"CONTENT_TYPE": "CONTENT_TYPE", "CONTENT_LENGTH": "CONTENT_LENGTH"}


def load_app(ref: str) -> WsgiApp:
    """``module:app`` or ``module:factory()``."""
    if ref.endswith("()"):
        return load(ref[:-2])()  # type: ignore[no-any-return]
    return load(ref)  # type: ignore[no-any-return]


def environ(method: str, target: str, headers: list[tuple[str, str]], body: bytes,  # noqa: PLR0917
            client: tuple[str, int], server: tuple[str, int]) -> dict[str, Any]:
    path, _, query = target.partition("?")
    env: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": "",
        # PEP 3333: the path undecoded from %XX, as latin-1 "bytes in a str"
        "PATH_INFO": unquote_to_bytes(path).decode("latin-1"),
        "QUERY_STRING": query,
        "SERVER_NAME": server[0],
        "SERVER_PORT": str(server[1]),
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": client[0],
        "REMOTE_PORT": str(client[1]),
        "REQUEST_URI": target,
        "RAW_URI": target,
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "wsgi.input_terminated": True,
    }
    for name, value in headers:
        if "_" in name:
            continue  # a header that would alias another once its dashes are underscores
        key = name.upper().replace("-", "_")
        if key in _SPECIAL:
            env[key] = value
            continue
        key = "HTTP_" + key
        env[key] = f"{env[key]},{value}" if key in env else value
    if "CONTENT_LENGTH" not in env and body:
        env["CONTENT_LENGTH"] = str(len(body))
    return env


class WsgiAdapter:
    def __init__(self, app: str, args: list[Any] | None = None,
                 retry_safe: list[str] | None = None) -> None:
        self.app = load(app)(*args) if args is not None else load_app(app)
        marked = getattr(self.app, "nooks_retry_safe", ())
        self._retry_safe = [*(retry_safe or ()), *(str(r) for r in marked)]
        self._streams = Streams()

    def retry_safe(self) -> list[str]:
        return list(self._retry_safe)

    def handle(self, method: str, target: str, headers: list[tuple[str, str]],  # noqa: PLR0917
               body: bytes, client: tuple[str, int], server: tuple[str, int]) -> Head:
        env = environ(method, target, headers, body, client, server)
        env["wsgi.file_wrapper"] = FileWrapper
        started: list[Any] = []
        written: list[bytes] = []

        def start_response(status: str, response_headers: list[tuple[str, str]],
                           exc_info: Any = None) -> Callable[[bytes], None]:
            if exc_info is not None and started:
                raise exc_info[1].with_traceback(exc_info[2])
            started[:] = [status, list(response_headers)]
            return written.append

        result: Any = None
        keep = False  # the body goes on as a stream: the stream closes ``result``
        try:
            result = self.app(env, start_response)
            file = FileBody.of(result, declared_length(started[1])) \
                if type(result) is FileWrapper and started and method != "HEAD" else None
            if file is not None:
                first = file.read(0, INLINE)
                it = None
            else:
                # what the application passed to write() comes first, in order
                it = in_order(written, result) if written or not \
                    isinstance(result, (list, tuple)) else iter(result)
                first, goes_on = first_part(it, INLINE)
                if not goes_on:
                    it = None
            if not started:
                raise RuntimeError("the application returned without calling start_response")
            status, response_headers = started
            code, _, reason = str(status).partition(" ")
            head_headers = [(str(k), str(v)) for k, v in response_headers]
            status_code = int(code)
            if file is not None and len(first) < file.length:
                keep = True
                return Head(status_code, reason, head_headers, first, file.length,
                            self._streams.add(file))
            head, keep = self._head(method, status_code, reason, head_headers, first, it,
                                    result)
            return head
        except Exception:
            print(traceback.format_exc(), file=sys.stderr, end="")
            return Head(500, "Internal Server Error",
                        [("Content-Type", "text/plain; charset=utf-8")],
                        b"internal server error\n", 22)
        finally:
            if not keep and result is not None:
                close = getattr(result, "close", None)
                if close is not None:
                    close()

    def _head(self, method: str, status: int, reason: str,  # noqa: PLR0917
              headers: list[tuple[str, str]], first: bytes, it: Iterator[bytes] | None,
              result: Any) -> tuple[Head, bool]:
        """The head of a response whose body is ``first`` and, if ``it`` is not None, what
        ``it`` goes on to yield; and whether a stream now owns ``result``."""
        if method == "HEAD" or status in (204, 304):
            rest = 0 if it is None else sum(len(c) for c in it)
            return Head(status, reason, headers, b"", len(first) + rest), False
        declared = None if it is None else declared_length(headers)
        if it is not None and declared is not None and declared >= len(first):
            # the length is known: the rest is read from the application as it is asked for
            sid = self._streams.add(IterBody(result, it, len(first), first[INLINE:],
                                             declared))
            return Head(status, reason, headers, first[:INLINE], declared, sid), True
        payload = first if it is None else first + drain(it)
        if len(payload) <= INLINE:
            # a Content-Length the application gave is its word: a body of another size
            # cannot be sent under it (the host refuses such a response)
            said = declared_length(headers)
            return Head(status, reason, headers, payload,
                        len(payload) if said is None else said), False
        sid = self._streams.add(BytesBody(payload))
        return Head(status, reason, headers, payload[:INLINE], len(payload), sid), False

    def more(self, stream: int, offset: int) -> bytes:
        """The body of a streamed response from ``offset`` (counted from the start of the
        body); b"" if the stream is gone."""
        return self._streams.read(stream, offset, CHUNK)

    def drop(self, stream: int) -> None:
        self._streams.drop(stream)
