"""The web host's connections: one epoll loop frames requests, threads answer them.

No thread waits on a client. The loop (the thread that calls ``run``) accepts
connections, reads what they send, frames it into requests with
``nooks.web.http`` and enforces every per-connection deadline; only a
*complete* request is handed to a thread (started as needed, reused), which
asks a worker and writes the answer. A slow or silent client costs a file
descriptor and its parser's buffer, never a thread. Rules:

* a connection belongs to one thread at a time. The loop owns it while it is
  armed in epoll (one-shot: each event disarms it); a request thread owns it
  from the moment it is handed a request until it arms it again (for reading,
  or for writing when the client is slow to read) or closes it;
* requests on one connection are answered in order, one at a time (keep-alive
  and pipelining); while one is being answered the connection is not read, so
  a client that sends faster than it reads is held back by TCP, not buffered;
* a response goes out as fast as the client takes it: a thread writes what
  the socket accepts, and what is left is written by the loop as the socket
  drains. A streamed body's next piece is fetched only once the previous one
  is written, so each connection holds at most one piece;
* deadlines, checked every ``SWEEP`` seconds: ``idle_timeout`` before a
  request begins (closed quietly), ``request_timeout`` from its first byte to
  its last (408), ``send_timeout`` without the client reading (closed);
* a refused request (4xx) is answered, the sending side shut, and what the
  client still sends is read and dropped for ``LINGER_SECONDS`` (at most
  ``LINGER_BYTES``), so that closing does not reset the connection before
  the client reads the answer;
* at most ``max_connections`` are open; beyond that the listener is not
  accepted from, and new clients wait in its backlog.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import logging
import queue
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from nooks.web import http
from nooks.web.http import HttpLimits, ProtocolError, Request
from nooks.web.streaming import BodyStream, Truncated

log = logging.getLogger(__name__)

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
LINGER_SECONDS = 2.0
LINGER_BYTES = 4 << 20
SWEEP = 0.1  # seconds between deadline checks
READ_SIZE = 64 << 10
_IN = select.EPOLLIN | select.EPOLLONESHOT
_OUT = select.EPOLLOUT | select.EPOLLONESHOT

# connection states, and what follows a written response
READING, BUSY, WRITING, LINGERING, CLOSED = range(5)
NEXT, CLOSE, LINGER = range(3)


class Reply(NamedTuple):
    """What answers a request: bytes to send, then maybe a body to stream."""

    data: bytes
    stream: BodyStream | None = None


Respond = Callable[[Request, tuple[str, int]], Reply]


class Conn:
    __slots__ = ("client", "continued", "deadline", "drained", "fd", "idle_deadline", "out",
                 "parser", "pending", "req_deadline", "sock", "state", "stream", "then")

    def __init__(self, sock: socket.socket, client: tuple[str, int], limits: HttpLimits,
                 now: float) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.client = client
        self.parser = http.RequestParser(limits)
        self.pending: collections.deque[Request] = collections.deque()
        self.out: memoryview = memoryview(b"")
        self.stream: BodyStream | None = None
        self.state = READING
        self.then = NEXT
        self.idle_deadline = now + limits.idle_timeout
        self.req_deadline: float | None = None  # for the request being read
        self.deadline = 0.0  # writing or lingering
        self.continued = False
        self.drained = 0


class Threads:
    """Threads for complete requests: one per task at once, started as needed, kept."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._tasks: queue.SimpleQueue[tuple[Callable[..., None], tuple[Any, ...]]] = \
            queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self.started = 0

    def submit(self, fn: Callable[..., None], *args: Any) -> None:
        with self._lock:
            start = self._idle == 0
            if start:
                self.started += 1
            else:
                self._idle -= 1  # that thread is this task's
        self._tasks.put((fn, args))
        if start:
            threading.Thread(target=self._run, name=f"{self.name}-request",
                             daemon=True).start()

    def _run(self) -> None:
        while True:
            fn, args = self._tasks.get()
            try:
                fn(*args)
            except Exception:
                log.exception("%s: a request thread failed", self.name)
            with self._lock:
                self._idle += 1


class ConnectionLoop:
    def __init__(self, listener: socket.socket, limits: HttpLimits, respond: Respond, *,
                 max_connections: int, name: str,
                 note: Callable[[str, int], None]) -> None:
        self.listener = listener
        self.limits = limits
        self.respond = respond
        self.max_connections = max_connections
        self.name = name
        self.note = note  # counts what happened: ("rejected", status), ("send_timeout", 0)
        self.threads = Threads(name)
        self.stopping = False
        self.open = 0
        self._conns: dict[int, Conn] = {}
        self._lock = threading.Lock()
        self._paused = False  # at max_connections: the listener is not armed
        self._retry_accept = 0.0  # out of descriptors: try accepting again then
        self._ep = select.epoll()
        listener.setblocking(False)
        self._lfd = listener.fileno()
        self._ep.register(self._lfd, _IN)

    # -- the loop ------------------------------------------------------------------------

    def run(self) -> None:
        """Serve until ``stopping`` is set (or an exception, e.g. from a signal)."""
        next_sweep = time.monotonic() + SWEEP
        poll = self._ep.poll
        conns = self._conns
        while not self.stopping:
            events = poll(max(0.0, next_sweep - time.monotonic()), 256)
            for fd, _ in events:
                if fd == self._lfd:
                    self._accept()
                    continue
                conn = conns.get(fd)
                if conn is None:
                    continue
                try:
                    if conn.state == READING:
                        self._read(conn)
                    elif conn.state == WRITING:
                        self._write(conn)
                    elif conn.state == LINGERING:
                        self._drain(conn)
                except OSError:
                    self._close(conn)  # the client went away
                except Exception:
                    log.exception("%s: connection from %s", self.name, conn.client)
                    self._close(conn)
            now = time.monotonic()
            if now >= next_sweep:
                self._sweep(now)
                next_sweep = now + SWEEP

    def close(self) -> None:
        self.stopping = True
        for conn in list(self._conns.values()):
            self._close(conn)
        with contextlib.suppress(OSError):
            self._ep.close()

    def counts(self) -> dict[str, int]:
        """Connections by what they are doing, and bodies being streamed."""
        conns = list(self._conns.values())
        return {"connections": len(conns),
                "reading": sum(c.state == READING for c in conns),
                "answering": sum(c.state == BUSY for c in conns),
                "stalled": sum(c.state == WRITING for c in conns),
                "streaming": sum(c.stream is not None for c in conns),
                "request_threads": self.threads.started}

    def _arm(self, conn: Conn, events: int) -> None:
        try:
            self._ep.modify(conn.fd, events)
        except (OSError, ValueError):
            self._close(conn)

    # -- accepting -----------------------------------------------------------------------

    def _accept(self) -> None:
        now = time.monotonic()
        for _ in range(64):
            with self._lock:
                if self.open >= self.max_connections:
                    self._paused = True
                    return  # armed again when a connection closes
            try:
                sock, addr = self.listener.accept()
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.warning("%s: cannot accept: %s", self.name, e)
                    self._retry_accept = now + 0.1  # let connections finish first
                    return
                continue  # that client gave up before it was accepted
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conn = Conn(sock, addr[:2], self.limits, now)
                self._conns[conn.fd] = conn
                with self._lock:
                    self.open += 1
                self._ep.register(conn.fd, _IN)
            except OSError as e:
                log.warning("%s: connection from %s dropped: %s", self.name, addr, e)
                sock.close()
        self._ep.modify(self._lfd, _IN)

    # -- reading (the loop) --------------------------------------------------------------

    def _read(self, conn: Conn) -> None:
        try:
            data = conn.sock.recv(READ_SIZE)
        except BlockingIOError:
            self._arm(conn, _IN)
            return
        if not data:
            self._close(conn)
            return
        if conn.req_deadline is None:
            conn.req_deadline = time.monotonic() + self.limits.request_timeout
        parser = conn.parser
        try:
            requests = parser.feed(data)
        except ProtocolError as e:
            self._refuse(conn, e.status, e.message)
            return
        if not parser.in_request:
            conn.req_deadline, conn.continued = None, False
        elif parser.expect_continue and not conn.continued:
            conn.continued = True
            self._send_now(conn, CONTINUE)
        if requests:
            conn.pending.extend(requests)
            conn.state = BUSY
            self.threads.submit(self._serve, conn)
        elif conn.out:
            self._write(conn)  # "100 Continue" did not all go: send the rest first
        else:
            self._arm(conn, _IN)

    def _send_now(self, conn: Conn, data: bytes) -> None:
        try:
            n = conn.sock.send(data)
        except BlockingIOError:
            n = 0
        if n < len(data):
            conn.out = memoryview(bytes(conn.out) + data[n:])
            conn.then, conn.deadline = NEXT, time.monotonic() + self.limits.send_timeout
            conn.state = WRITING

    def _refuse(self, conn: Conn, status: int, message: str) -> None:
        """Answer a request that will not be served; then linger and close."""
        self.note("rejected", status)
        conn.pending.clear()
        conn.out = memoryview(http.error_response(status, message))
        conn.then, conn.deadline = LINGER, time.monotonic() + LINGER_SECONDS
        conn.state = WRITING
        self._write(conn)

    def _drain(self, conn: Conn) -> None:
        for _ in range(4):
            try:
                chunk = conn.sock.recv(READ_SIZE)
            except BlockingIOError:
                self._arm(conn, _IN)
                return
            conn.drained += len(chunk)
            if not chunk or conn.drained >= LINGER_BYTES:
                self._close(conn)
                return
        self._arm(conn, _IN)

    # -- writing (request threads, and the loop when the client is slow) ----------------

    def _serve(self, conn: Conn) -> None:
        """Answer the connection's pending requests in order (a request thread)."""
        try:
            while conn.pending and not self.stopping:
                req = conn.pending.popleft()
                reply = self.respond(req, conn.client)
                out = reply.data if not conn.out else bytes(conn.out) + reply.data
                conn.out, conn.stream = memoryview(out), reply.stream
                conn.then = NEXT if req.keep_alive else CLOSE
                if not self._push(conn):
                    return  # the loop writes the rest, or the connection is closed
                if conn.then == CLOSE:
                    self._close(conn)
                    return
            if self.stopping:
                self._close(conn)
                return
            self._after(conn, in_thread=True)
        except OSError:
            self._close(conn)
        except Exception:
            log.exception("%s: answering %s", self.name, conn.client)
            self._close(conn)

    def _push(self, conn: Conn) -> bool:
        """Write the response, fetching its streamed body piece by piece, while the
        socket takes it (a request thread). False if it is left to the loop (or closed)."""
        while True:
            if conn.out:
                try:
                    n = conn.sock.send(conn.out)
                except BlockingIOError:
                    n = 0
                conn.out = conn.out[n:]
                if conn.out:
                    conn.deadline = time.monotonic() + self.limits.send_timeout
                    conn.state = WRITING
                    self._arm(conn, _OUT)
                    return False
            stream = conn.stream
            if stream is None or stream.done:
                conn.stream = None
                return True
            try:
                conn.out = memoryview(stream.next())
            except Truncated as e:
                self.note("truncated", 0)
                log.warning("%s: response to %s cut short: %s", self.name, conn.client, e)
                conn.stream = None
                self._close(conn)
                return False

    def _continue(self, conn: Conn) -> None:
        """Stream on once the loop has written the last piece (a request thread)."""
        try:
            if self._push(conn):
                self._after(conn, in_thread=True)
        except OSError:
            self._close(conn)

    def _write(self, conn: Conn) -> None:
        """Write on when the socket drains (the loop)."""
        try:
            n = conn.sock.send(conn.out)
        except BlockingIOError:
            n = 0
        if n:
            conn.out = conn.out[n:]
            conn.deadline = time.monotonic() + (
                LINGER_SECONDS if conn.then == LINGER else self.limits.send_timeout)
        if conn.out:
            self._arm(conn, _OUT)
            return
        if conn.stream is not None and not conn.stream.done:
            conn.state = BUSY
            self.threads.submit(self._continue, conn)
            return
        conn.stream = None
        self._after(conn, in_thread=False)

    def _after(self, conn: Conn, *, in_thread: bool) -> None:
        """What follows a response (or a refusal) that is all written."""
        if conn.then == CLOSE:
            self._close(conn)
        elif conn.then == LINGER:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_WR)
            conn.deadline = time.monotonic() + LINGER_SECONDS
            conn.state = LINGERING
            self._arm(conn, _IN)
        elif conn.pending:
            conn.state = BUSY
            if in_thread:
                self._serve(conn)
            else:
                self.threads.submit(self._serve, conn)
        else:
            now = time.monotonic()
            if conn.req_deadline is not None:
                # the next request's clock starts now, not while we answered this one
                conn.req_deadline = now + self.limits.request_timeout
            conn.idle_deadline = now + self.limits.idle_timeout
            conn.state = READING
            self._arm(conn, _IN)

    # -- deadlines and closing -----------------------------------------------------------

    def _sweep(self, now: float) -> None:
        if self._retry_accept and now >= self._retry_accept:
            self._retry_accept = 0.0
            self._ep.modify(self._lfd, _IN)
        for conn in list(self._conns.values()):
            state = conn.state
            try:
                if state == READING:
                    if conn.req_deadline is not None:
                        if now >= conn.req_deadline:
                            self._refuse(conn, 408, "the request took too long to arrive")
                    elif now >= conn.idle_deadline:
                        self._close(conn)
                elif state in (WRITING, LINGERING) and now >= conn.deadline:
                    if state == WRITING and conn.then != LINGER:
                        self.note("send_timeout", 0)
                    self._close(conn)
            except OSError:
                self._close(conn)

    def _close(self, conn: Conn) -> None:
        if conn.state == CLOSED:
            return
        conn.state = CLOSED
        self._conns.pop(conn.fd, None)
        stream, conn.stream = conn.stream, None
        if stream is not None and not stream.done and not self.stopping:
            self.threads.submit(stream.drop)
        with contextlib.suppress(OSError):
            conn.sock.close()
        with self._lock:
            self.open -= 1
            resume = self._paused and self.open < self.max_connections
            if resume:
                self._paused = False
        if resume:
            with contextlib.suppress(OSError, ValueError):
                self._ep.modify(self._lfd, _IN)
