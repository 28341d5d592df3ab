"""The web host's connections: epoll frames requests, threads answer whole ones.

No thread waits on a client. Threads wait in epoll (one-shot: each event
goes to one thread and disarms its connection); the thread that gets an
event reads what came, frames it into requests with ``nooks.web.http`` and,
only once a request is *complete*, answers it itself — first making sure
another thread is left waiting in epoll (leader/followers: no hand-off, so a
request costs no more thread switches than with a thread per connection). A
slow or silent client costs a descriptor and its parser's buffer, never a
thread. Rules:

* a connection belongs to one thread at a time (see ``nooks.web.conn``): the
  one that got its event, or the one answering it (``BUSY``) until it arms it
  again or closes it. Short steps take its lock; nothing blocks under it;
* requests on one connection are answered in order, one at a time (keep-alive
  and pipelining); while one is answered the connection is not read, so a
  client that sends faster than it reads is held back by TCP, not buffered;
* a response goes out as fast as the client takes it: what the socket does
  not accept waits for it to drain (armed for output). A streamed body's next
  piece is fetched only once the last one is written: a connection holds at
  most one piece;
* deadlines, checked every ``SWEEP`` seconds by the thread that called
  ``run``: ``idle_timeout`` before a request begins (closed quietly),
  ``request_timeout`` from its first byte to its last (408), ``send_timeout``
  without the client reading (closed);
* a refused request (4xx) is answered, the sending side shut, and what the
  client still sends is read and dropped for ``LINGER_SECONDS`` (at most
  ``LINGER_BYTES``), so that closing does not reset the connection before
  the client reads the answer;
* at most ``max_connections`` are open; beyond that the listener is not
  accepted from, and new clients wait in its backlog.
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
)
from nooks.web.http import HttpLimits, ProtocolError
from nooks.web.streaming import Truncated

log = logging.getLogger(__name__)

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
LINGER_SECONDS = 2.0
LINGER_BYTES = 4 << 20
SWEEP = 0.1  # seconds between deadline checks
THREAD_IDLE = 60.0  # a spare thread that waited this long for an event ends
READ_SIZE = 64 << 10
_IN = select.EPOLLIN | select.EPOLLONESHOT
_OUT = select.EPOLLOUT | select.EPOLLONESHOT

Work = Callable[[Conn], None] | None  # blocking work an event leads to


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
        self.stopping = False
        self.open = 0
        self.threads = 0
        self._polling = 0  # threads waiting in epoll, or on their way there
        self._conns: dict[int, Conn] = {}
        self._lock = threading.Lock()
        self._paused = False  # at max_connections: the listener is not armed
        self._retry_accept = 0.0  # out of descriptors: try accepting again then
        self._ep = select.epoll()
        listener.setblocking(False)
        self._lfd = listener.fileno()
        self._ep.register(self._lfd, _IN)

    # -- threads -------------------------------------------------------------------------

    def run(self) -> None:
        """Serve until ``stopping`` is set (or an exception, e.g. from a signal); this
        thread keeps the deadlines."""
        self._spawn()
        while not self.stopping:
            time.sleep(SWEEP)
            self._sweep(time.monotonic())

    def _spawn(self) -> None:
        with self._lock:
            self._polling += 1
            self.threads += 1
        try:
            threading.Thread(target=self._wait, name=f"{self.name}-http", daemon=True).start()
        except RuntimeError as e:  # no thread to be had: those there will do
            log.warning("%s: cannot start a thread: %s", self.name, e)
            with self._lock:
                self._polling -= 1
                self.threads -= 1

    def _ensure_waiter(self) -> None:
        """Before this thread blocks on a request: someone else must wait in epoll."""
        with self._lock:
            none = self._polling == 0
        if none:
            self._spawn()

    def _wait(self) -> None:
        poll = self._ep.poll
        try:
            while not self.stopping:
                events = poll(THREAD_IDLE, 1)
                with self._lock:
                    self._polling -= 1
                    if not events and self._polling > 0:
                        self.threads -= 1
                        return  # idle for long, and not the last one waiting
                for fd, _ in events:
                    self._event(fd)
                with self._lock:
                    self._polling += 1
        except (OSError, ValueError):
            pass  # epoll closed: the host is stopping

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
            work(conn)

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
                "threads": self.threads}

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
                with self._lock:
                    self.open += 1
                self._conns[conn.fd] = conn
                self._ep.register(conn.fd, _IN)
            except OSError as e:
                log.warning("%s: connection from %s dropped: %s", self.name, addr, e)
                sock.close()
        with contextlib.suppress(OSError, ValueError):
            self._ep.modify(self._lfd, _IN)

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
        """Stream on once the last piece is written."""
        try:
            if self._push(conn):
                work = self._after(conn)
                if work is not None:
                    work(conn)
        except OSError:
            self._close(conn)

    # -- writing what the socket did not take (under the connection's lock) --------------

    def _write(self, conn: Conn) -> Work:
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

    def _sweep(self, now: float) -> None:
        if self._retry_accept and now >= self._retry_accept:
            self._retry_accept = 0.0
            with contextlib.suppress(OSError, ValueError):
                self._ep.modify(self._lfd, _IN)
        for conn in list(self._conns.values()):
            if conn.state in (BUSY, CLOSED) or not self._due(conn, now):
                continue
            with conn.lock:
                if not self._due(conn, now):
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

    @staticmethod
    def _due(conn: Conn, now: float) -> bool:
        state = conn.state
        if state == READING:
            return now >= (conn.idle_deadline if conn.req_deadline is None
                           else conn.req_deadline)
        return state in (WRITING, LINGERING) and now >= conn.deadline

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
