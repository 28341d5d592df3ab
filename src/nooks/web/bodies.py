"""Response bodies inside the domain: what the adapter keeps between ``more`` calls.

A response whose body is larger than what crosses with its head becomes a
*stream*: the rest of the body, read only when the host asks for it (the host
asks only as fast as its client reads). Rules:

* a file handed to ``wsgi.file_wrapper`` (``FileWrapper``) that is a regular
  file is read with ``pread`` at the offset asked for: nothing is buffered,
  and any offset can be asked for, so a body can be resumed by a fresh
  incarnation of the extension;
* any other iterable is read on, in order, as far as the offset asked for
  (bytes before it are skipped); an offset behind what was read is gone;
* a body longer than its declared ``Content-Length`` is cut at it, and one
  that ends early ends the stream (the host then closes the connection);
* ``Streams`` holds at most ``MAX_STREAMS`` per incarnation and forgets one
  untouched for ``STREAM_IDLE`` seconds: a client that stops reading costs the
  extension a few bytes and a file descriptor, for a bounded time;
* the application's ``close`` is called exactly once, when a stream ends, is
  dropped or is forgotten.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import os
import stat
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from typing import BinaryIO

MAX_STREAMS = 256  # each may hold a descriptor: well under the domain's 1024
STREAM_IDLE = 300.0  # seconds


class FileWrapper:
    """``wsgi.file_wrapper``: a file to send as a body (PEP 3333)."""

    def __init__(self, filelike: BinaryIO, block_size: int = 1 << 16) -> None:
        self.filelike = filelike
        self.block_size = block_size

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self.filelike.read(self.block_size):
            yield chunk

    def close(self) -> None:
        close = getattr(self.filelike, "close", None)
        if close is not None:
            close()


def _close(result: object) -> None:
    close = getattr(result, "close", None)
    if close is not None:
        try:
            close()
        except Exception:
            print(traceback.format_exc(), file=sys.stderr, end="")


class Body:
    """The rest of one response's body, from ``start`` to ``length``."""

    def __init__(self, length: int) -> None:
        self.length = length
        self.used = 0.0  # when it was last read (set by Streams)

    def read(self, offset: int, n: int) -> bytes:
        """Up to ``n`` bytes from ``offset``; b"" if they cannot be had."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class FileBody(Body):
    """A regular file, read where asked."""

    def __init__(self, wrapper: FileWrapper, fd: int, start: int, length: int) -> None:
        super().__init__(length)
        self._wrapper = wrapper
        self._fd = fd
        self._start = start

    @staticmethod
    def of(result: object, declared: int | None) -> FileBody | None:
        """A FileBody for ``result`` if it is a wrapped regular file, else None."""
        if type(result) is not FileWrapper:
            return None
        try:
            fd = result.filelike.fileno()
            st = os.fstat(fd)
            start = os.lseek(fd, 0, os.SEEK_CUR)
        except (AttributeError, OSError, ValueError):
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        length = max(0, st.st_size - start)
        if declared is not None:
            length = min(length, declared)
        return FileBody(result, fd, start, length)

    def read(self, offset: int, n: int) -> bytes:
        n = min(n, self.length - offset)
        if n <= 0:
            return b""
        try:
            return os.pread(self._fd, n, self._start + offset)
        except OSError:
            return b""

    def close(self) -> None:
        _close(self._wrapper)


class IterBody(Body):
    """An iterable, read on in order. ``_buf`` holds what was read from it and not yet
    asked for: the bytes from ``_pos - len(_buf)`` to ``_pos``."""

    def __init__(self, result: Iterable[bytes], it: Iterator[bytes], pos: int, buf: bytes,
                 length: int) -> None:
        super().__init__(length)
        self._result = result
        self._it = it
        self._pos = pos
        self._buf = buf
        self._closed = False

    def read(self, offset: int, n: int) -> bytes:
        n = min(n, self.length - offset)
        buf_start = self._pos - len(self._buf)
        if n <= 0 or offset < buf_start:
            return b""
        pending = self._buf[offset - buf_start:]  # empty if offset is past what was read
        parts = [pending] if pending else []
        have = len(pending)
        try:
            while have < n:
                chunk = bytes(next(self._it))
                at = self._pos
                self._pos += len(chunk)
                if self._pos <= offset:
                    continue  # wholly before what was asked for: skipped
                if at < offset:
                    chunk = chunk[offset - at:]
                parts.append(chunk)
                have += len(chunk)
        except StopIteration:
            pass
        except Exception:  # the application failed while producing its body
            print(traceback.format_exc(), file=sys.stderr, end="")
            self._buf = b""
            return b""
        data = b"".join(parts)
        out, self._buf = data[:n], data[n:]
        return out

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            _close(self._result)


class BytesBody(Body):
    """A body already whole in memory (an iterable drained to learn its length)."""

    def __init__(self, data: bytes) -> None:
        super().__init__(len(data))
        self._data = data

    def read(self, offset: int, n: int) -> bytes:
        return self._data[offset:offset + n]

    def close(self) -> None:
        self._data = b""


class Streams:
    """The open streams of one incarnation, by id (ids never repeat within it)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._open: collections.OrderedDict[int, Body] = collections.OrderedDict()
        self._ids = itertools.count(1)
        self._clock = clock

    def __len__(self) -> int:
        return len(self._open)

    def add(self, body: Body) -> int:
        self._expire()
        while len(self._open) >= MAX_STREAMS:
            _, oldest = self._open.popitem(last=False)
            oldest.close()
        sid = next(self._ids)
        body.used = self._clock()
        self._open[sid] = body
        return sid

    def read(self, sid: int, offset: int, n: int) -> bytes:
        self._expire()
        body = self._open.get(sid)
        if body is None:
            return b""
        self._open.move_to_end(sid)
        body.used = self._clock()
        data = body.read(offset, n)
        if not data or offset + len(data) >= body.length:
            self.drop(sid)
        return data

    def drop(self, sid: int) -> None:
        body = self._open.pop(sid, None)
        if body is not None:
            body.close()

    def _expire(self) -> None:
        limit = self._clock() - STREAM_IDLE
        while self._open:
            sid, body = next(iter(self._open.items()))
            if body.used > limit:
                return
            self.drop(sid)

    def close(self) -> None:
        for sid in list(self._open):
            self.drop(sid)


def declared_length(headers: list[tuple[str, str]]) -> int | None:
    """The application's Content-Length, if it gave one that is a number."""
    for name, value in headers:
        if name.lower() == "content-length":
            with contextlib.suppress(ValueError):
                n = int(value.strip())
                if n >= 0:
                    return n
            return None
    return None


def in_order(written: list[bytes], result: Iterable[bytes]) -> Iterator[bytes]:
    """The body as the application made it: what it passed to ``write`` (PEP 3333's
    legacy callable) before each chunk its iterable yields, in the order it came."""
    it = iter(result)
    while True:
        while written:
            yield written.pop(0)
        try:
            chunk = next(it)
        except StopIteration:
            break
        while written:
            yield written.pop(0)
        yield chunk
    while written:
        yield written.pop(0)


def first_part(it: Iterator[bytes], limit: int) -> tuple[bytes, bool]:
    """The body's first chunks until they make at least ``limit`` bytes, and whether the
    body may go on (False: it ended)."""
    parts: list[bytes] = []
    have = 0
    for chunk in it:
        if chunk:
            parts.append(bytes(chunk))
            have += len(chunk)
        if have >= limit:
            return b"".join(parts), True
    return b"".join(parts), False


def drain(it: Iterator[bytes]) -> bytes:
    """The rest of an iterable body, whole."""
    return b"".join(bytes(c) for c in it)
