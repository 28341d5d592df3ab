"""A streamed response body on the host's side: fetched a piece at a time.

The head and the first part of a large body are sent at once; the rest stays
in the worker as a stream and ``BodyStream.next`` fetches its next piece (one
arena slot, 1 MiB) only when the connection has sent the previous one, so the
host holds at most one piece per connection however slowly its client reads.
Between pieces the worker is free for other requests. Rules:

* a piece comes from the worker that holds the stream (``WorkerPool.acquire``
  with that worker), waiting its turn like any request;
* if the worker fails, or the stream is gone from it (a restarted
  incarnation, or one forgotten after a long stall), the body is *resumed*
  when that is honest: the request may be run again (its method is
  idempotent or its route is marked safe) and the response carries a
  validator (``ETag`` or ``Last-Modified``); it is run again on any worker
  and, if the new response has the same status, length and validators, its
  body goes on from the offset already sent. At most ``max_tries`` times;
* otherwise the head is already on the wire and nothing true can be said any
  more: ``Truncated`` is raised and the connection is closed, so the client
  sees a body shorter than its ``Content-Length``;
* a body that turns out longer than the extension declared is the
  extension's fault: ``Truncated`` too, with that said in the log.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

from nooks.errors import Closed
from nooks.web.interface import Head
from nooks.web.pool import Worker, WorkerPool
from nooks.web.spec import ExtensionFailed, ServiceBusy

log = logging.getLogger(__name__)

_VALIDATORS = ("etag", "last-modified")


class Truncated(Exception):
    """The rest of a body whose head was sent cannot be had: close the connection."""


def validators(head: Head) -> tuple[tuple[str, str], ...]:
    """What identifies the version of a response's body (weak ETags do not)."""
    out = []
    for name, value in head.headers:
        lname = name.lower()
        if lname in _VALIDATORS and not (lname == "etag" and value.startswith("W/")):
            out.append((lname, value))
    return tuple(sorted(out))


class BodyStream:
    def __init__(self, pool: WorkerPool, worker: Worker, generation: int, head: Head, *,
                 request: tuple[Any, ...], resumable: bool, max_tries: int,
                 note: Callable[[str], None]) -> None:
        self.pool = pool
        self.worker = worker
        self.generation = generation
        self.sid = head.stream
        self.offset = len(head.body)  # the bytes of the body fetched so far
        self.length = head.length
        self.status = head.status
        self.validators = validators(head)
        self.request = request  # handle's arguments, to run the request again
        self.resumable = resumable and bool(self.validators)
        self.max_tries = max_tries
        self.note = note
        self.resumed = 0

    @property
    def done(self) -> bool:
        return self.offset >= self.length

    def next(self) -> bytes:
        """The next piece of the body; Truncated if it cannot be had."""
        lost = 0
        while True:
            if self.sid and self.worker.generation == self.generation:
                piece = self._more()
                if piece:
                    return self._took(piece)
            lost += 1
            if lost > self.max_tries:
                raise Truncated(f"the application lost this body {lost - 1} times; "
                                f"{self.offset} of {self.length} bytes were sent")
            piece = self._resume()
            if piece:
                return self._took(piece)

    def _took(self, piece: bytes) -> bytes:
        if self.offset + len(piece) > self.length:
            raise Truncated(f"the application sent more than the {self.length} bytes it "
                            "declared")
        self.offset += len(piece)
        return piece

    def _more(self) -> bytes:
        """A piece from the stream's own worker; b"" if the stream is gone."""
        try:
            w = self.pool.acquire(self.worker)
        except ServiceBusy:
            return b""  # that worker cannot be had: resume elsewhere if allowed
        try:
            piece: bytes = w.call("more", self.sid, self.offset)
        except (ServiceBusy, ExtensionFailed):
            return b""  # the worker failed while sending it
        except Closed:
            raise Truncated("the server is shutting down") from None
        finally:
            self.pool.release(w)
        return piece

    def _resume(self) -> bytes:
        """Run the request again for the rest of its body; the first bytes it gives
        past those already sent (maybe none yet: then ``more`` has them)."""
        if not self.resumable:
            raise Truncated("the application failed while sending this body, and the "
                            "request may not be run again (or its response has no ETag "
                            "or Last-Modified): the rest cannot be sent")
        try:
            w = self.pool.acquire()
        except ServiceBusy as e:
            raise Truncated(f"no worker to resume this body on: {e}") from None
        try:
            head: Head = w.call("handle", *self.request)
            generation = w.generation
        except (ServiceBusy, ExtensionFailed, Closed) as e:
            raise Truncated(f"running the request again failed: {e}") from None
        finally:
            self.pool.release(w)
        if (head.status, head.length, validators(head)) != \
                (self.status, self.length, self.validators):
            if head.stream:
                self._drop(w, generation, head.stream)
            raise Truncated("the response changed when the request ran again: the rest "
                            "of the body sent first cannot be sent")
        self.worker, self.generation, self.sid = w, generation, head.stream
        self.resumed += 1
        self.note("resumed")
        log.info("body of %s %s resumed at %d of %d bytes", self.request[0],
                 str(self.request[1])[:200], self.offset, self.length)
        return head.body[self.offset:]

    def drop(self) -> None:
        """Tell the worker the rest will not be read (best effort)."""
        if self.sid and not self.done:
            self._drop(self.worker, self.generation, self.sid)
        self.sid = 0

    def _drop(self, w: Worker, generation: int, sid: int) -> None:
        if w.generation != generation:
            return  # died with its incarnation
        with contextlib.suppress(Exception):
            self.pool.call("drop", sid, want=w)
