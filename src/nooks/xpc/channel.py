"""The host's end of an XPC channel: many calls in flight, nested calls, deadlines.

One SOCK_SEQPACKET socket carries every message of a domain. Calls from many
host threads share it by the *leader/follower* rule, which keeps the common
case (one call at a time) to one send and one receive on the caller's own
thread:

* a caller registers a waiter for its call id, sends, and then either becomes
  the *leader* (if no thread is reading) or sleeps as a *follower*;
* the leader reads messages and routes each: a reply to its waiter; a kernel
  call whose ``parent`` is a waiting call to that call's thread (nested calls
  run on the thread that made the outer call, as on a real stack); any other
  kernel call to ``Hooks.on_request``; a control message to ``Hooks.on_control``;
* when the leader has its own reply, or a nested call to run, it hands
  leadership to a sleeping follower.

Deadlines: the socket has a receive timeout of ``tick`` seconds so the leader
wakes to check its deadline; followers sleep with a timeout. Time spent running
a nested kernel call on the host extends the deadline of the call it serves.

Failure: the first failure wins. ``fail`` records it, wakes every waiter, and
calls ``Hooks.on_broken``; every pending and later call raises it.
"""

from __future__ import annotations

import collections
import socket
import struct
import threading
import time
from typing import Any, Protocol

import msgspec

from nooks.xpc import messages as m
from nooks.xpc.poll import recv_spinning, spin_budget

_REPLIES = (m.Reply, m.Raise, m.Reject, m.BatchReply)
CONTROL_ID = 0  # waiter id for Hello/Ready
# the waiter of a host thread that reads the channel while no call waits (a driver
# that serves its own kernel channel makes kernel calls of its own accord): no call
LISTEN_ID, LISTEN = -1, "listen"


class Hooks(Protocol):
    def on_request(self, msg: m.Call) -> BaseException | None:
        """A kernel call with no waiting parent: serve it elsewhere; an exception to
        fail with (e.g. too many are queued already)."""

    def serve(self, msg: m.Call) -> None:
        """Serve a nested kernel call on the calling thread (sends the reply)."""

    def on_control(self, msg: Any) -> BaseException | None:
        """A Failure, Hello or Ready; an exception to fail with, or None to deliver it."""

    def on_eof(self) -> BaseException:
        """The domain closed the channel (it died): the failure to report."""

    def on_garbage(self, detail: str) -> BaseException:
        """Bytes that are not a message, or a message that answers nothing."""

    def on_flood(self, detail: str) -> BaseException:
        """The domain sent more than the host will queue for it (a resource failure)."""

    def on_deadline(self, call: str) -> BaseException:
        """Call ``call`` passed its deadline."""

    def on_broken(self, exc: BaseException) -> None:
        """The channel has failed with ``exc`` (kill the domain)."""

    def on_reply(self) -> None:
        """A reply to a host call was read: everything before it on the channel is done."""

    def on_post(self, msg: m.Post) -> BaseException | None:
        """Posted kernel calls: run them now, in order; an exception to fail with."""


class Waiter:
    __slots__ = ("awake", "call", "control", "deadline", "lock", "msg", "nested", "sleeping",
                 "soft")

    def __init__(self, deadline: float, call: str, soft: bool = False,
                 control: bool = False) -> None:
        # made when the waiter first sleeps (most calls never do); a wake that
        # comes before is remembered in ``awake``
        self.lock: threading.Lock | None = None
        self.awake = False
        self.sleeping = False
        self.msg: Any = None
        self.nested: collections.deque[m.Call] = collections.deque()
        self.deadline = deadline
        self.call = call
        # a soft deadline only ends the wait (TimeoutError); a hard one fails the domain
        self.soft = soft
        # the answer to a control message (a ping, a fault to take), which the domain may
        # give in the middle of a request: it says nothing of what is done (no on_reply)
        self.control = control


# messages read without waiting once a waiter's deadline has passed, before its verdict
_LATE_READS = 64
# kernel calls a domain may queue for one waiting call before it has flooded it
MAX_NESTED = 256


class Channel:
    def __init__(self, sock: socket.socket, hooks: Hooks, tick: float = 0.05,
                 spin_us: float = 0.0) -> None:
        self.sock = sock
        self.hooks = hooks
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                        struct.pack("ll", int(tick), int((tick % 1) * 1e6)))
        self._mu = threading.Lock()
        self._send_lock = threading.Lock()
        self._waiters: dict[int, Waiter] = {}
        self._leading = False
        self.broken: BaseException | None = None
        self._buf = bytearray(m.MAX_MESSAGE)
        self._view = memoryview(self._buf)
        self._decoder = msgspec.msgpack.Decoder(m.ToHost)
        self._spin = spin_budget(spin_us)
        self._abandoned: collections.deque[int] = collections.deque(maxlen=64)
        self._parts: list[bytes] = []  # fragments of a large message, so far
        self._parts_size = 0

    # -- calls ---------------------------------------------------------------------------

    def register(self, cid: int, deadline: float, call: str, soft: bool = False,
                 control: bool = False) -> Waiter:
        """A waiter for the answer to call ``cid``; past ``deadline`` the domain counts
        as hung, or with ``soft`` only the wait ends (TimeoutError); ``control``: the
        answer to a control message, not to a call."""
        w = Waiter(deadline, call, soft, control)
        with self._mu:
            if self.broken is not None:
                raise self.broken
            self._waiters[cid] = w
        return w

    def forget(self, cid: int) -> None:
        with self._mu:
            self._waiters.pop(cid, None)

    def send(self, data: bytes) -> None:
        try:
            with self._send_lock:
                self.sock.send(data)
        except OSError:
            # the domain is gone; what it sent before going (a Failure) tells why
            self.drain()
            if self.broken is None:
                self.fail(self.hooks.on_eof())
            assert self.broken is not None
            raise self.broken from None

    def in_flight(self) -> list[str]:
        """Names of the calls waiting for a reply."""
        with self._mu:
            return [w.call for cid, w in self._waiters.items() if cid != LISTEN_ID]

    def wait(self, w: Waiter) -> Any:
        """The reply for ``w``; raises the channel's failure if it broke first, and
        TimeoutError when a soft waiter's deadline passes."""
        while True:
            if w.msg is not None:
                return w.msg
            if w.nested:
                req = w.nested.popleft()
                t0 = time.monotonic()
                self.hooks.serve(req)
                w.deadline += time.monotonic() - t0
                continue
            with self._mu:
                if self.broken is not None:
                    raise self.broken
                lead = not self._leading and w.msg is None and not w.nested
                if lead:
                    self._leading = True
                else:
                    w.sleeping = True
                    if w.lock is None:
                        w.lock = threading.Lock()
                        if not w.awake:
                            w.lock.acquire()
                    lock = w.lock
            if lead:
                try:
                    self._lead(w)
                finally:
                    self._handoff()
                self._check_soft(w)
                continue
            remaining = w.deadline - time.monotonic()
            woke = remaining > 0 and lock.acquire(timeout=remaining)
            with self._mu:
                w.sleeping = False
                if woke:
                    w.awake = False
            if not woke and w.msg is None and not w.nested and self.broken is None:
                self._check_soft(w)
                self.fail(self.hooks.on_deadline(w.call))

    def _check_soft(self, w: Waiter) -> None:
        if w.soft and w.msg is None and not w.nested and time.monotonic() > w.deadline:
            with self._mu:
                for cid, other in list(self._waiters.items()):
                    if other is w:
                        del self._waiters[cid]
                        # its answer may still come: that is no garbage (bounded memory)
                        self._abandoned.append(cid)
            if w.msg is None:
                raise TimeoutError(f"no answer to {w.call} in time")

    def _wake(self, w: Waiter) -> None:
        # under self._mu
        if not w.awake:
            w.awake = True
            if w.lock is not None:
                w.lock.release()

    def _handoff(self) -> None:
        with self._mu:
            self._leading = False
            for other in self._waiters.values():
                if other.sleeping:
                    self._wake(other)
                    break

    def _lead(self, w: Waiter) -> None:
        sock, view, decode = self.sock, self._view, self._decoder.decode
        late_reads = 0
        while w.msg is None and not w.nested and self.broken is None:
            late = time.monotonic() > w.deadline
            try:
                if late:
                    # a message that had already arrived is not late (a warm spare's
                    # Hello waits unread until the spare is taken, maybe long after its
                    # start deadline): read what is queued before the verdict, boundedly
                    if late_reads >= _LATE_READS:
                        raise BlockingIOError
                    late_reads += 1
                    n = sock.recv_into(self._buf, 0, socket.MSG_DONTWAIT)
                else:
                    n = recv_spinning(sock, self._buf, self._spin)
            except BlockingIOError:
                if late:
                    if not w.soft:
                        self.fail(self.hooks.on_deadline(w.call))
                    return
                continue  # the tick: look at the deadline again
            except OSError:
                n = 0
            if n == 0:
                self.fail(self.hooks.on_eof())
                return
            try:
                msg = decode(bytes(view[:n]))
            except m.UNDECODABLE as e:
                self.fail(self.hooks.on_garbage(f"garbage on the channel: {e}"))
                return
            if type(msg) is m.Fragment:
                msg = self._assemble(msg, decode)
                if msg is None:
                    continue
            self._route(msg, w)

    def _decode(self, data: bytes, decode: Any) -> Any:
        """The message in ``data``; None if it is a fragment of one still incomplete,
        or garbage (then the channel has failed)."""
        try:
            msg = decode(data)
        except m.UNDECODABLE as e:
            self.fail(self.hooks.on_garbage(f"garbage on the channel: {e}"))
            return None
        return self._assemble(msg, decode) if type(msg) is m.Fragment else msg

    def _assemble(self, msg: m.Fragment, decode: Any) -> Any:
        """Keep a fragment; the whole message once its last fragment is in, else None
        (or, for too much or garbage, None and the channel has failed)."""
        try:
            self._parts.append(msg.data)
            self._parts_size += len(msg.data)
            if self._parts_size > m.MAX_ASSEMBLED:
                self._parts, self._parts_size = [], 0
                self.fail(self.hooks.on_garbage(
                    f"sent a message of more than {m.MAX_ASSEMBLED} bytes"))
                return None
            if not msg.last:
                return None
            whole = b"".join(self._parts)
            self._parts, self._parts_size = [], 0
            msg = decode(whole)
            if type(msg) is m.Fragment:
                self.fail(self.hooks.on_garbage("a fragment inside a fragmented message"))
                return None
            return msg
        except m.UNDECODABLE as e:
            self.fail(self.hooks.on_garbage(f"garbage on the channel: {e}"))
            return None

    def _route(self, msg: Any, me: Waiter | None) -> None:
        if isinstance(msg, _REPLIES):
            with self._mu:
                w = self._waiters.pop(msg.id, None)
            if w is None or not w.control:
                self.hooks.on_reply()
            with self._mu:
                if w is not None:
                    w.msg = msg
                    if w is not me:
                        self._wake(w)
            if w is None:
                if msg.id in self._abandoned:
                    self._abandoned.remove(msg.id)  # a soft wait gave up on it: dropped
                    return
                self.fail(self.hooks.on_garbage(f"a reply to call {msg.id}, which is not pending"))
        elif type(msg) is m.Post:
            # run here, in channel order: before the reply that follows them
            exc = self.hooks.on_post(msg)
            if exc is not None:
                self.fail(exc)
        elif isinstance(msg, m.Call):
            flooded = False
            with self._mu:
                w = self._waiters.get(msg.parent) if msg.parent else None
                if w is not None:
                    w.nested.append(msg)
                    flooded = len(w.nested) > MAX_NESTED
                    if w is not me:
                        self._wake(w)
            if w is None:
                exc = self.hooks.on_request(msg)
                if exc is not None:
                    self.fail(exc)
            elif flooded:
                self.fail(self.hooks.on_flood(f"queued more than {MAX_NESTED} kernel calls "
                                              f"for one call ({w.call})"))
        else:
            exc = self.hooks.on_control(msg)
            if exc is not None:
                self.fail(exc)
                return
            with self._mu:
                w = self._waiters.pop(CONTROL_ID, None)
                if w is not None:
                    w.msg = msg
                    if w is not me:
                        self._wake(w)
            if w is None:
                self.fail(self.hooks.on_garbage(f"unexpected {type(msg).__name__} message"))

    def drain(self) -> None:
        """After the domain exited: route what it sent before dying, then fail.

        Does nothing if a leader is reading: it will see the end of the channel.
        """
        with self._mu:
            if self._leading or self.broken is not None:
                return
            self._leading = True
        try:
            while self.broken is None:
                try:
                    n = self.sock.recv_into(self._buf, 0, socket.MSG_DONTWAIT)
                except OSError:
                    n = 0
                if n == 0:
                    break
                msg = self._decode(bytes(self._view[:n]), self._decoder.decode)
                if msg is not None:
                    self._route(msg, None)
            if self.broken is None:
                self.fail(self.hooks.on_eof())
        finally:
            self._handoff()

    def fail(self, exc: BaseException) -> None:
        """Record the channel's failure (the first one wins) and wake every waiter."""
        with self._mu:
            if self.broken is not None:
                return
            self.broken = exc
            self._parts, self._parts_size = [], 0  # what a large message brought so far
            for w in self._waiters.values():
                self._wake(w)
        self.hooks.on_broken(exc)
