"""Streamed response bodies inside the domain (``nooks.web.bodies`` and the adapter)."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nooks.web import bodies
from nooks.web.adapter import CHUNK, INLINE, WsgiAdapter
from nooks.web.bodies import BytesBody, FileBody, FileWrapper, IterBody, Streams


def _read_all(a: WsgiAdapter, method: str = "GET", target: str = "/") -> bytes:
    head = a.handle(method, target, [], b"", ("c", 1), ("s", 2))
    body = head.body
    while len(body) < head.length:
        piece = a.more(head.stream, len(body))
        assert piece, f"stream ended at {len(body)} of {head.length}"
        body += piece
    return body


def test_a_file_is_read_where_asked_and_closed_at_its_end(tmp_path: Path) -> None:
    data = random.Random(1).randbytes(INLINE + 2 * CHUNK + 7)
    (tmp_path / "f.bin").write_bytes(data)
    a = WsgiAdapter("nooks.drivers.static:StaticFiles", [str(tmp_path)])
    head = a.handle("GET", "/f.bin", [], b"", ("c", 1), ("s", 2))
    assert head.stream and head.length == len(data) and head.body == data[:INLINE]
    # any offset, in any order: a resumed body asks from where it stopped
    assert a.more(head.stream, len(data) - 10) == data[-10:]
    assert a.more(head.stream, INLINE) == b""  # it ended: closed and forgotten
    assert _read_all(a, target="/f.bin") == data
    assert len(a._streams) == 0
    small = a.handle("GET", "/f.bin", [], b"", ("c", 1), ("s", 2))
    a.drop(small.stream)
    assert a.more(small.stream, INLINE) == b"" and len(a._streams) == 0


def _numbers(n: int, declare: bool, chunk: int = 100_000) -> Any:
    data = bytes(i % 256 for i in range(n))

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        headers = [("Content-Length", str(n))] if declare else []
        start_response("200 OK", headers)
        for at in range(0, n, chunk):
            yield data[at:at + chunk]

    return app, data


@pytest.mark.parametrize("declare", [True, False])
def test_an_iterable_is_read_on_as_asked(declare: bool) -> None:
    app, data = _numbers(3 << 20, declare)
    a = WsgiAdapter("nooks.drivers.static:StaticFiles", ["/"])
    a.app = app
    assert _read_all(a) == data
    head = a.handle("GET", "/", [], b"", ("c", 1), ("s", 2))
    # skipping ahead reads the application on; going back is gone
    assert a.more(head.stream, 2 << 20)[:5] == data[2 << 20:(2 << 20) + 5]
    assert a.more(head.stream, INLINE) == b""


def test_head_and_short_bodies_keep_no_stream() -> None:
    app, data = _numbers(2 << 20, declare=True)
    a = WsgiAdapter("nooks.drivers.static:StaticFiles", ["/"])
    a.app = app
    head = a.handle("HEAD", "/", [], b"", ("c", 1), ("s", 2))
    assert (head.body, head.stream, head.length) == (b"", 0, len(data))
    app, data = _numbers(1000, declare=False)
    a.app = app
    head = a.handle("GET", "/", [], b"", ("c", 1), ("s", 2))
    assert (head.body, head.stream) == (data, 0) and len(a._streams) == 0


def test_streams_are_bounded_and_forgotten_when_idle() -> None:
    closed: list[int] = []

    class Tracked(BytesBody):
        def __init__(self, n: int) -> None:
            super().__init__(b"x" * 10)
            self.n = n

        def close(self) -> None:
            closed.append(self.n)

    now = [0.0]
    streams = Streams(clock=lambda: now[0])
    sids = [streams.add(Tracked(i)) for i in range(bodies.MAX_STREAMS + 2)]
    assert len(streams) == bodies.MAX_STREAMS and closed == [0, 1]
    assert streams.read(sids[0], 0, 5) == b""  # the oldest made room
    now[0] += bodies.STREAM_IDLE + 1
    assert streams.read(sids[-1], 0, 5) == b""
    assert len(streams) == 0 and len(closed) == bodies.MAX_STREAMS + 2


def test_body_kinds_directly(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"0123456789")
    f = open(path, "rb")  # noqa: SIM115 (the body owns it)
    f.seek(2)
    body = FileBody.of(FileWrapper(f), declared=5)
    assert body is not None and body.length == 5
    assert body.read(1, 100) == b"3456" and body.read(5, 1) == b""
    body.close()
    assert f.closed
    assert FileBody.of([b"not a file"], None) is None
    it = iter([b"def", b"ghi"])
    ib = IterBody([], it, 3, b"bc", 9)  # "a" went with the head, "bc" is buffered
    assert ib.read(1, 4) == b"bcde" and ib.read(5, 10) == b"fghi"
    assert ib.read(0, 1) == b""
    assert os.path.exists(path)
