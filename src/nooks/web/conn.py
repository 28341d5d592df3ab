"""One client connection as the web host's loop keeps it, and what answers a request.

A ``Conn`` is plain state; ``nooks.web.loop`` moves it between states and
says which thread may touch it when:

* ``READING``: armed in epoll for input; its parser holds what has come of
  the next request, ``req_deadline`` is set once that request has begun
  (else ``idle_deadline`` applies);
* ``BUSY``: a thread is answering its requests (or fetching the next piece
  of a streamed body); nothing else touches it, and no deadline runs;
* ``WRITING``: armed for output; ``out`` holds what the client has not yet
  taken, ``deadline`` is when it must have taken more;
* ``LINGERING``: refused, its sending side shut; what still comes is read
  and dropped until ``deadline``;
* ``CLOSED``: gone; its descriptor may already belong to another connection.

``lock`` is held only for short, non-blocking steps (never while a worker is
asked), so the thread that checks deadlines and the thread that got an
event for the connection never act on it at the same time.
"""

from __future__ import annotations

import collections
import socket
import threading
from collections.abc import Callable
from typing import NamedTuple

from nooks.web import http
from nooks.web.http import HttpLimits, Request
from nooks.web.streaming import BodyStream

READING, BUSY, WRITING, LINGERING, CLOSED = range(5)
# what follows a response once it is all written
NEXT, CLOSE, LINGER = range(3)


class Reply(NamedTuple):
    """What answers a request: bytes to send, then maybe a body to stream."""

    data: bytes
    stream: BodyStream | None = None


Respond = Callable[[Request, tuple[str, int]], Reply]


class Conn:
    __slots__ = ("client", "continued", "deadline", "drained", "fd", "idle_deadline", "lock",
                 "out", "parser", "pending", "req_deadline", "sock", "state", "stream",
                 "then")

    def __init__(self, sock: socket.socket, client: tuple[str, int], limits: HttpLimits,
                 now: float) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.client = client
        self.lock = threading.Lock()
        self.parser = http.RequestParser(limits)
        self.pending: collections.deque[Request] = collections.deque()
        self.out: memoryview = memoryview(b"")
        self.stream: BodyStream | None = None
        self.state = READING
        self.then = NEXT
        self.idle_deadline = now + limits.idle_timeout
        self.req_deadline: float | None = None  # for the request being read
        self.deadline = 0.0  # writing or lingering
        self.continued = False  # "100 Continue" sent for the request being read
        self.drained = 0  # bytes dropped while lingering


def census(conns: list[Conn]) -> dict[str, int]:
    """How many connections are open, and doing what (``stalled``: waiting for their
    client to read; ``streaming``: sending a streamed body)."""
    return {"connections": len(conns),
            "reading": sum(c.state == READING for c in conns),
            "answering": sum(c.state == BUSY for c in conns),
            "stalled": sum(c.state == WRITING for c in conns),
            "streaming": sum(c.stream is not None for c in conns)}


def due(conn: Conn, now: float) -> bool:
    """Whether ``conn``'s deadline for what it is doing has passed."""
    state = conn.state
    if state == READING:
        return now >= (conn.idle_deadline if conn.req_deadline is None
                       else conn.req_deadline)
    return state in (WRITING, LINGERING) and now >= conn.deadline


def oldest_reading(conns: list[Conn], now: float, limits: HttpLimits,
                   min_age: float) -> Conn | None:
    """The connection to close to make room for a new one: the one idle longest, else
    the one whose request began longest ago; only those idle (or whose request began)
    at least ``min_age`` seconds ago. None if all are answering, writing, or young."""
    victim: Conn | None = None
    best = (2, 0.0)
    for conn in conns:
        if conn.state != READING:
            continue
        if conn.req_deadline is None:
            key = (0, conn.idle_deadline - limits.idle_timeout)  # when it fell idle
        else:
            key = (1, conn.req_deadline - limits.request_timeout)  # when its request began
        if now - key[1] >= min_age and key < best:
            victim, best = conn, key
    return victim
