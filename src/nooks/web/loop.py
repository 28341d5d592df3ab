"""The web host's connections: epoll frames requests, threads answer whole ones.

No thread waits on a client: threads wait in epoll (``nooks.web.threads``);
the one that gets a connection's event reads what came, frames it with
``nooks.web.http`` and, once a request is *complete*, answers it itself. A
connection belongs to one thread at a time (``nooks.web.conn``). Rules:

* requests on a connection are answered in order, one at a time (keep-alive,
  pipelining); meanwhile it is not read: TCP holds back a client that sends
  faster than it reads;
* a response goes out as fast as the client takes it; a streamed body's next
  piece is fetched only once the last one is written;
* deadlines, every ``SWEEP`` s: ``idle_timeout`` before a request (closed),
  ``request_timeout`` from its first byte to its last (408), ``send_timeout``
  without the client reading (closed);
* a refusal (4xx) is answered, the sending side shut, and what still comes is
  dropped for ``LINGER_SECONDS`` (``LINGER_BYTES`` at most) before closing;
* at most ``max_connections`` are open. At the limit a new client takes the
  place of the connection idle longest, else of the one whose request has
  been arriving longest (answered 503), if that began ``EVICT_AFTER`` s ago;
  if none did, new clients wait in the listener's backlog.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import select
import socket
import threading
import time
from collections.abc import Callable

from nooks.web import http
from nooks.web.conn import (
    BUSY,
    CLOSE,
    CLOSED,
    LINGER,
    LINGERING,
    NEXT,
    READING,
    WRITING,
    Conn,
    Respond,
    census,
    due,
    oldest_reading,
)
from nooks.web.http import HttpLimits, ProtocolError
from nooks.web.streaming import Truncated
from nooks.web.threads import EventThreads

log = logging.getLogger(__name__)

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
LINGER_SECONDS = 2.0
LINGER_BYTES = 4 << 20
SWEEP = 0.1  # seconds between deadline checks
EVICT_AFTER = 1.0  # seconds a request must have been arriving to make room for another
READ_SIZE = 64 << 10
_IN = select.EPOLLIN | select.EPOLLONESHOT
_OUT = select.EPOLLOUT | select.EPOLLONESHOT

_EMPTY = memoryview(b"")
Work = Callable[[Conn], None] | None  # blocking work an event leads to


class ConnectionLoop(EventThreads):
    def __init__(self, listener: socket.socket, limits: HttpLimits, respond: Respond, *,
                 max_connections: int, name: str,
                 note: Callable[[str, int], None]) -> None:
        super().__init__(name, SWEEP)
        self.listener = listener
        self.limits = limits
        self.respond = respond
        self.max_connections = max_connections
        self.note = note  # counts what happened: ("rejected", status), ("send_timeout", 0)
        self.open = 0
        self._conns: dict[int, Conn] = {}
        self._paused = False  # at max_connections: the listener is not armed
        self._retry_accept = 0.0  # out of descriptors: try accepting again then
        listener.setblocking(False)
        self._lfd = listener.fileno()
        self._ep.register(self._lfd, _IN)

    def _event(self, fd: int) -> None:
        if fd == self._lfd:
            self._accept()
            return
        conn = self._conns.get(fd)
        if conn is None:
            return
        work: Work = None
        with conn.lock:
            try:
                state = conn.state
                if state == READING:
                    work = self._read(conn)
                elif state == WRITING:
                    work = self._write(conn)
                elif state == LINGERING:
                    self._drain(conn)
            except OSError:
                self._close(conn)  # the client went away
            except Exception:
                log.exception("%s: connection from %s", self.name, conn.client)
                self._close(conn)
        if work is not None:
            self._ensure_waiter()
            try:
                work(conn)
            except Exception:
                log.exception("%s: answering %s", self.name, conn.client)
                self._close(conn)

    def close(self) -> None:
        self.stopping = True
        for conn in list(self._conns.values()):
            self._close(conn)
        with contextlib.suppress(OSError):
            self._ep.close()

    def counts(self) -> dict[str, int]:
        """Connections by what they are doing, bodies being streamed, threads."""
        return census(list(self._conns.values())) | {"threads": self.threads}

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
                full = self.open >= self.max_connections
            if full and not self._evict(now):
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
                with self._lock:
                    self.open += 1
                self._conns[conn.fd] = conn
                self._ep.register(conn.fd, _IN)
            except OSError as e:
                log.warning("%s: connection from %s dropped: %s", self.name, addr, e)
                sock.close()
        with contextlib.suppress(OSError, ValueError):
            self._ep.modify(self._lfd, _IN)

    def _evict(self, now: float) -> bool:
        """Make room for a new connection: close the one idle longest, else the one
        whose request has been arriving longest (answered 503), if that was at least
        ``EVICT_AFTER`` seconds ago. False if none can be closed."""
        victim = oldest_reading(list(self._conns.values()), now, self.limits, EVICT_AFTER)
        if victim is None:
            return False
        with victim.lock:
            if victim.state != READING:
                return False  # it moved on meanwhile
            self.note("evicted", 0)
            if victim.req_deadline is not None:
                with contextlib.suppress(OSError):
                    victim.sock.send(http.error_response(
                        503, "the server is at its connection limit and this request was "
                        "too slow to arrive; try again", retry_after=1))
            self._close(victim)
        return True

    # -- reading (under the connection's lock) -------------------------------------------

    def _read(self, conn: Conn) -> Work:
        try:
            data = conn.sock.recv(READ_SIZE)
        except BlockingIOError:
            self._arm(conn, _IN)
            return None
        if not data:
            self._close(conn)
            return None
        if conn.req_deadline is None:
            conn.req_deadline = time.monotonic() + self.limits.request_timeout
        parser = conn.parser
        try:
            requests = parser.feed(data)
        except ProtocolError as e:
            self._refuse(conn, e.status, e.message)
            return None
        if not parser.in_request:
            conn.req_deadline, conn.continued = None, False
        elif parser.expect_continue and not conn.continued:
            conn.continued = True
            self._send_now(conn, CONTINUE)
        if requests:
            conn.pending.extend(requests)
            conn.state = BUSY
            return self._serve
        if conn.out:
            return self._write(conn)  # "100 Continue" did not all go: send the rest first
        self._arm(conn, _IN)
        return None

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

    # -- answering (the connection is BUSY: this thread's alone) -------------------------

    def _serve(self, conn: Conn) -> None:
        """Answer the connection's pending requests in order."""
        try:
            while conn.pending and not self.stopping:
                req = conn.pending.popleft()
                reply = self.respond(req, conn.client)
                out = reply.data if not conn.out else bytes(conn.out) + reply.data
                conn.out, conn.stream = memoryview(out), reply.stream
                conn.then = NEXT if req.keep_alive else CLOSE
                if not self._push(conn):
                    return  # left to drain (armed for output), or closed
                if conn.then == CLOSE:
                    self._close(conn)
                    return
            if self.stopping:
                self._close(conn)
                return
            self._after(conn)  # nothing is pending: no work comes back
        except OSError:
            self._close(conn)
        except Exception:
            log.exception("%s: answering %s", self.name, conn.client)
            self._close(conn)

    def _push(self, conn: Conn) -> bool:
        """Write the response, fetching its streamed body piece by piece, while the
        socket takes it. False if it is left to drain (or the connection is closed)."""
        while True:
            if conn.out:
                try:
                    n = conn.sock.send(conn.out)
                except BlockingIOError:
                    n = 0
                conn.out = conn.out[n:] if n < len(conn.out) else _EMPTY
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
        """Stream on once the last piece is written."""
        try:
            ready = self._push(conn)
        except OSError:
            self._close(conn)
            return
        if ready and self._after(conn) is not None:
            self._serve(conn)

    # -- writing what the socket did not take (under the connection's lock) --------------

    def _write(self, conn: Conn) -> Work:
        try:
            n = conn.sock.send(conn.out)
        except BlockingIOError:
            n = 0
        if n:
            conn.out = conn.out[n:] if n < len(conn.out) else _EMPTY
            conn.deadline = time.monotonic() + (
                LINGER_SECONDS if conn.then == LINGER else self.limits.send_timeout)
        if conn.out:
            self._arm(conn, _OUT)
            return None
        if conn.stream is not None and not conn.stream.done:
            conn.state = BUSY
            return self._continue
        conn.stream = None
        return self._after(conn)

    def _after(self, conn: Conn) -> Work:
        """What follows a response (or a refusal) that is all written: the work to do
        next if requests are pending (the connection is then BUSY), else None."""
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
            return self._serve
        else:
            now = time.monotonic()
            if conn.req_deadline is not None:
                # the next request's clock starts now, not while we answered this one
                conn.req_deadline = now + self.limits.request_timeout
            conn.idle_deadline = now + self.limits.idle_timeout
            conn.state = READING
            self._arm(conn, _IN)
        return None

    # -- deadlines and closing -----------------------------------------------------------

    def _tick(self, now: float) -> None:
        """Deadlines (every ``SWEEP`` seconds)."""
        with self._lock:
            # full: look again for a connection old enough to make room for a new one
            retry = self._paused or (self._retry_accept and now >= self._retry_accept)
            self._paused, self._retry_accept = False, 0.0
        if retry:
            with contextlib.suppress(OSError, ValueError):
                self._ep.modify(self._lfd, _IN)
        for conn in list(self._conns.values()):
            if conn.state in (BUSY, CLOSED) or not due(conn, now):
                continue
            with conn.lock:
                if not due(conn, now):
                    continue  # its event came first
                try:
                    if conn.state == READING and conn.req_deadline is not None:
                        self._refuse(conn, 408, "the request took too long to arrive")
                        continue
                    if conn.state == WRITING and conn.then != LINGER:
                        self.note("send_timeout", 0)
                    self._close(conn)
                except OSError:
                    self._close(conn)

    def _close(self, conn: Conn) -> None:
        """Close ``conn`` (its owner: under its lock, or BUSY in this thread)."""
        if conn.state == CLOSED:
            return
        conn.state = CLOSED
        self._conns.pop(conn.fd, None)
        stream, conn.stream = conn.stream, None
        if stream is not None and not stream.done and not self.stopping:
            threading.Thread(target=stream.drop, daemon=True).start()
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
