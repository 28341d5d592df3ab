"""The static-file server: the kHTTPd of this project, as a WSGI application.

``StaticFiles(root)`` serves the files under ``root`` for GET and HEAD:
``index.html`` for a directory, ``Content-Type`` from the file name,
``Last-Modified`` and ``ETag`` with conditional GET (304). A path that leaves
``root`` (``..``, or a symbolic link pointing out) is 404, as is anything that
is not a regular file; other methods are 405. A file is sent through the
server's ``wsgi.file_wrapper`` when it offers one (nooks reads it where the
host asks, a piece at a time), else in 64 KiB reads: a file larger than that
is never read whole.
"""

from __future__ import annotations

import mimetypes
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from email.utils import formatdate, parsedate_to_datetime
from typing import Any, BinaryIO

BLOCK = 64 << 10


class _Chunks:  # a stand-in for wsgi.file_wrapper
    def __init__(self, f: BinaryIO, block: int) -> None:
        self._f = f
        self._block = block

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self._f.read(self._block):
            yield chunk

    def close(self) -> None:
        self._f.close()


class StaticFiles:
    def __init__(self, root: str) -> None:
        self.root = os.path.realpath(root)
        if not os.path.isdir(self.root):
            raise ValueError(f"{root}: not a directory")

    def _resolve(self, path_info: str) -> str | None:
        raw = path_info.encode("latin-1").decode("utf-8", "surrogateescape")
        parts = [p for p in raw.split("/") if p and p != "."]
        if ".." in parts or any("\0" in p for p in parts):
            return None
        path = os.path.realpath(os.path.join(self.root, *parts))
        if path != self.root and not path.startswith(self.root + os.sep):
            return None
        if os.path.isdir(path):
            path = os.path.join(path, "index.html")
        return path

    def __call__(self, environ: dict[str, Any],
                 start_response: Callable[..., Any]) -> Iterable[bytes]:
        method = environ["REQUEST_METHOD"]
        if method not in ("GET", "HEAD"):
            return _plain(start_response, "405 Method Not Allowed", b"method not allowed\n",
                          [("Allow", "GET, HEAD")])
        path = self._resolve(environ.get("PATH_INFO", "/"))
        try:
            if path is None:
                raise FileNotFoundError
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return _plain(start_response, "404 Not Found", b"not found\n")
        f = os.fdopen(fd, "rb")
        handed = False
        try:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                return _plain(start_response, "404 Not Found", b"not found\n")
            etag = f'"{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}"'
            headers = [("Content-Type", _content_type(path)),
                       ("Last-Modified", formatdate(st.st_mtime, usegmt=True)),
                       ("ETag", etag)]
            if _not_modified(environ, etag, st.st_mtime):
                start_response("304 Not Modified", headers)
                return []
            headers.append(("Content-Length", str(st.st_size)))
            start_response("200 OK", headers)
            if method == "HEAD":
                return []
            if st.st_size <= BLOCK:
                return [f.read()]  # one read: no wrapper needed
            wrapper = environ.get("wsgi.file_wrapper", _Chunks)
            body: Iterable[bytes] = wrapper(f, BLOCK)
            handed = True  # the body owns it now: the server closes it
            return body
        finally:
            if not handed:
                f.close()


def _content_type(path: str) -> str:
    kind, encoding = mimetypes.guess_type(path)
    if kind is None or encoding is not None:
        return "application/octet-stream"
    return f"{kind}; charset=utf-8" if kind.startswith("text/") else kind


def _not_modified(environ: dict[str, Any], etag: str, mtime: float) -> bool:
    match = environ.get("HTTP_IF_NONE_MATCH")
    if match is not None:
        return etag in (t.strip() for t in match.split(",")) or match.strip() == "*"
    since = environ.get("HTTP_IF_MODIFIED_SINCE")
    if since is None:
        return False
    try:
        return int(mtime) <= parsedate_to_datetime(since).timestamp()
    except (TypeError, ValueError):
        return False


def _plain(start_response: Callable[..., Any], status: str, body: bytes,
           extra: list[tuple[str, str]] | None = None) -> list[bytes]:
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"),
                            ("Content-Length", str(len(body))), *(extra or [])])
    return [body]
