"""The host's end of the XPC channel, against a fake domain on a real socketpair."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import msgspec
import pytest

from nooks.xpc import messages as m
from nooks.xpc.channel import CONTROL_ID, MAX_NESTED, Channel, Waiter

pytestmark = pytest.mark.timeout(30)

TICK = 0.02
WAIT = 10.0  # bound on every wait for an event or a thread


# -- fakes ----------------------------------------------------------------------------------


class Eof(Exception):
    pass


class Garbage(Exception):
    pass


class Deadline(Exception):
    pass


class ControlFailure(Exception):
    pass


class Flood(Exception):
    pass


class FakeHooks:
    """Records what the channel asks of its owner; serves nested calls with an echo."""

    def __init__(self) -> None:
        self.channel: Channel | None = None
        self.lock = threading.Lock()
        self.served: list[tuple[int, int]] = []  # (thread ident, call id)
        self.requests: list[m.Call] = []
        self.controls: list[Any] = []
        self.eofs: list[Eof] = []
        self.garbage: list[tuple[str, Garbage]] = []
        self.deadlines: list[tuple[str, Deadline]] = []
        self.broken: list[BaseException] = []
        self.broken_event = threading.Event()
        self.replies_seen = 0
        self.posts: list[m.Post] = []
        self.replies_at_post: list[int] = []
        self.floods: list[Flood] = []

    def on_request(self, msg: m.Call) -> BaseException | None:
        with self.lock:
            self.requests.append(msg)
        return None

    def on_flood(self, detail: str) -> BaseException:
        exc = Flood(detail)
        with self.lock:
            self.floods.append(exc)
        return exc

    def on_post(self, msg: m.Post) -> BaseException | None:
        self.posts.append(msg)
        self.replies_at_post.append(self.replies_seen)
        return None

    def on_reply(self) -> None:
        with self.lock:
            self.replies_seen += 1

    def serve(self, msg: m.Call) -> None:
        with self.lock:
            self.served.append((threading.get_ident(), msg.id))
        assert self.channel is not None
        args = msgspec.msgpack.decode(msg.args)
        self.channel.send(m.encode_reply(msg.id, ["served", *args]))

    def on_control(self, msg: Any) -> BaseException | None:
        with self.lock:
            self.controls.append(msg)
        if isinstance(msg, m.Failure):
            return ControlFailure(msg.detail)
        return None

    def on_eof(self) -> BaseException:
        exc = Eof("domain closed the channel")
        with self.lock:
            self.eofs.append(exc)
        return exc

    def on_garbage(self, detail: str) -> BaseException:
        exc = Garbage(detail)
        with self.lock:
            self.garbage.append((detail, exc))
        return exc

    def on_deadline(self, call: str) -> BaseException:
        exc = Deadline(call)
        with self.lock:
            self.deadlines.append((call, exc))
        return exc

    def on_broken(self, exc: BaseException) -> None:
        with self.lock:
            self.broken.append(exc)
        self.broken_event.set()


Handler = Callable[["Peer", list[Any]], None]


class Peer(threading.Thread):
    """Plays the domain: reads ``group`` messages at a time and hands them to ``handler``."""

    def __init__(self, sock: socket.socket, handler: Handler, group: int = 1) -> None:
        super().__init__(daemon=True, name="fake-domain")
        self.sock = sock
        self.handler = handler
        self.group = group
        self.stop = threading.Event()
        self.decoder = msgspec.msgpack.Decoder(m.ToDomain)
        self.received: list[Any] = []
        self.error: BaseException | None = None
        sock.settimeout(0.05)  # only so that the loop sees ``stop``

    def send(self, data: bytes) -> None:
        self.sock.send(data)

    def _recv(self) -> Any:
        while not self.stop.is_set():
            try:
                data = self.sock.recv(1 << 16)
            except TimeoutError:
                continue
            except OSError:
                return None
            if not data:
                return None
            msg = self.decoder.decode(data)
            self.received.append(msg)
            return msg
        return None

    def run(self) -> None:
        try:
            while True:
                msgs = []
                for _ in range(self.group):
                    msg = self._recv()
                    if msg is None:
                        return
                    msgs.append(msg)
                self.handler(self, msgs)
        except BaseException as e:
            self.error = e


class Caller(threading.Thread):
    """Runs ``fn`` on its own thread and keeps its result or exception."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self.fn = fn
        self.result: Any = None
        self.error: BaseException | None = None
        self.ident_seen = 0

    def run(self) -> None:
        self.ident_seen = threading.get_ident()
        try:
            self.result = self.fn()
        except BaseException as e:
            self.error = e

    def finish(self) -> None:
        self.join(WAIT)
        assert not self.is_alive(), "caller thread did not finish"


class Rig:
    def __init__(self, tick: float = TICK) -> None:
        self.host, self.domain = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.hooks = FakeHooks()
        self.channel = Channel(self.host, self.hooks, tick=tick)
        self.hooks.channel = self.channel
        self.peers: list[Peer] = []

    def start_peer(self, handler: Handler, group: int = 1) -> Peer:
        peer = Peer(self.domain, handler, group)
        self.peers.append(peer)
        peer.start()
        return peer

    def register(self, cid: int, name: str = "op", deadline: float = WAIT) -> Waiter:
        return self.channel.register(cid, time.monotonic() + deadline, name)

    def call(self, cid: int, payload: Any, name: str = "op", deadline: float = WAIT) -> Any:
        w = self.register(cid, name, deadline)
        self.channel.send(m.encode_call(cid, 0, (payload,)))
        return self.channel.wait(w)

    def close(self) -> None:
        for p in self.peers:
            p.stop.set()
        self.host.close()
        for p in self.peers:
            p.join(WAIT)
        self.domain.close()
        for p in self.peers:
            assert not p.is_alive(), "fake domain did not stop"
            assert p.error is None, f"fake domain failed: {p.error!r}"


@pytest.fixture
def rig() -> Iterator[Rig]:
    r = Rig()
    yield r
    r.close()


def echo(peer: Peer, msgs: list[Any]) -> None:
    for msg in msgs:
        if isinstance(msg, m.Call):
            peer.send(m.encode_reply(msg.id, msgspec.msgpack.decode(msg.args)))


def result_of(msg: Any) -> Any:
    assert isinstance(msg, m.Reply), msg
    return msgspec.msgpack.decode(msg.result)


# -- calls ----------------------------------------------------------------------------------


def test_single_call_gets_its_reply(rig: Rig) -> None:
    rig.start_peer(echo)
    msg = rig.call(1, "ping")
    assert isinstance(msg, m.Reply)
    assert msg.id == 1
    assert result_of(msg) == ["ping"]
    assert rig.channel.in_flight() == []
    assert rig.channel.broken is None
    assert rig.hooks.broken == []


def test_sequential_calls_reuse_the_channel(rig: Rig) -> None:
    rig.start_peer(echo)
    for cid in range(1, 51):
        assert result_of(rig.call(cid, cid * 3)) == [cid * 3]
    assert rig.channel.broken is None


def test_call_sends_what_the_peer_decodes(rig: Rig) -> None:
    peer = rig.start_peer(echo)
    rig.call(7, {"k": [1, 2]}, name="named")
    call = peer.received[0]
    assert isinstance(call, m.Call)
    assert (call.id, call.method, call.parent, call.out) == (7, 0, 0, None)
    assert msgspec.msgpack.decode(call.args) == [{"k": [1, 2]}]


def test_many_threads_with_many_calls_in_flight_get_their_own_replies(rig: Rig) -> None:
    threads, rounds, in_flight = 8, 25, 4
    batches: list[list[int]] = []

    def reverse(peer: Peer, msgs: list[Any]) -> None:
        # answer a group of calls in the reverse of the order they came in
        batches.append([msg.id for msg in msgs])
        for msg in reversed(msgs):
            assert isinstance(msg, m.Call)
            peer.send(m.encode_reply(msg.id, msgspec.msgpack.decode(msg.args)))

    # the group size divides what each thread keeps in flight, so no call is ever
    # left waiting for a group to fill up
    rig.start_peer(reverse, group=in_flight)
    barrier = threading.Barrier(threads, timeout=WAIT)

    def worker(t: int) -> list[tuple[int, Any]]:
        barrier.wait()
        seen = []
        for r in range(rounds):
            waiters = []
            for k in range(in_flight):
                cid = t * 100_000 + r * 100 + k + 1
                w = rig.register(cid)
                rig.channel.send(m.encode_call(cid, 0, ([t, r, k],)))
                waiters.append((cid, w))
            for cid, w in waiters:
                msg = rig.channel.wait(w)
                seen.append((cid, msg.id))
                got = result_of(msg)[0]
                assert got == [t, r, (cid - 1) % 100], (cid, got)
        return seen

    callers = [Caller(lambda t=t: worker(t)) for t in range(threads)]  # type: ignore[misc]
    for c in callers:
        c.start()
    for c in callers:
        c.finish()
    for c in callers:
        assert c.error is None, repr(c.error)
        assert len(c.result) == rounds * in_flight
        assert all(cid == rid for cid, rid in c.result)
    assert rig.channel.broken is None
    assert rig.channel.in_flight() == []
    # the peer really did answer out of order
    assert sum(len(b) for b in batches) == threads * rounds * in_flight
    assert all(len(b) == in_flight for b in batches)


# -- nested calls ---------------------------------------------------------------------------


def test_nested_call_runs_on_the_thread_that_made_the_parent_call(rig: Rig) -> None:
    pending: dict[int, m.Call] = {}

    def domain(peer: Peer, msgs: list[Any]) -> None:
        for msg in msgs:
            if isinstance(msg, m.Call):
                pending[msg.id] = msg
                if len(pending) == 2:
                    # both host calls are waiting: make a kernel call on behalf of each
                    for parent in sorted(pending):
                        peer.send(m.encode_call(1000 + parent, 3, (f"for {parent}",), parent))
            elif isinstance(msg, m.Reply):
                parent = msg.id - 1000
                peer.send(m.encode_reply(parent, ["done", msgspec.msgpack.decode(msg.result)]))

    rig.start_peer(domain)
    a = Caller(lambda: rig.call(1, "a"))
    b = Caller(lambda: rig.call(2, "b"))
    a.start()
    b.start()
    a.finish()
    b.finish()
    assert a.error is None, repr(a.error)
    assert b.error is None, repr(b.error)
    assert result_of(a.result) == ["done", ["served", "for 1"]]
    assert result_of(b.result) == ["done", ["served", "for 2"]]
    served = dict((cid, ident) for ident, cid in rig.hooks.served)
    assert served == {1001: a.ident_seen, 1002: b.ident_seen}
    assert a.ident_seen != b.ident_seen
    assert rig.hooks.requests == []


def test_nested_call_on_the_only_waiting_thread(rig: Rig) -> None:
    def domain(peer: Peer, msgs: list[Any]) -> None:
        for msg in msgs:
            if isinstance(msg, m.Call) and msg.parent == 0:
                peer.send(m.encode_call(50, 1, ("inner",), msg.id))
            elif isinstance(msg, m.Reply):
                peer.send(m.encode_reply(1, "outer done"))

    rig.start_peer(domain)
    assert result_of(rig.call(1, "outer")) == "outer done"
    assert rig.hooks.served == [(threading.get_ident(), 50)]


def test_call_without_a_waiting_parent_goes_to_on_request(rig: Rig) -> None:
    def domain(peer: Peer, msgs: list[Any]) -> None:
        for msg in msgs:
            if isinstance(msg, m.Call):
                peer.send(m.encode_call(500, 2, ("no parent",), 0))
                peer.send(m.encode_call(501, 2, ("gone parent",), 77))
                peer.send(m.encode_reply(msg.id, "ok"))

    rig.start_peer(domain)
    assert result_of(rig.call(1, "x")) == "ok"
    # the requests were routed before the reply that followed them
    assert [(r.id, r.parent) for r in rig.hooks.requests] == [(500, 0), (501, 77)]
    assert msgspec.msgpack.decode(rig.hooks.requests[0].args) == ["no parent"]
    assert rig.hooks.served == []
    assert rig.channel.broken is None


# -- failures -------------------------------------------------------------------------------


def _wait_all_fail(rig: Rig, n: int, then: Callable[[Peer], None]) -> list[Caller]:
    """``n`` threads each make a call; once the peer has them all it runs ``then``."""
    received: list[int] = []

    def domain(peer: Peer, msgs: list[Any]) -> None:
        for msg in msgs:
            received.append(msg.id)
            if len(received) == n:
                then(peer)

    rig.start_peer(domain)
    callers = [Caller(lambda cid=cid: rig.call(cid, cid)) for cid in range(1, n + 1)]  # type: ignore[misc]
    for c in callers:
        c.start()
    for c in callers:
        c.finish()
    return callers


@pytest.mark.parametrize("garbage", [
    b"\xc1",  # never used in MessagePack
    m.encode("just a string"),
    m.encode((99, 1, 2)),  # unknown tag
    m.encode((m.TAG_REPLY, "one", b"")),  # a Reply whose id is not an int
    b"\x91" * 2000 + b"\x00",  # nested deeper than the decoder goes (RecursionError)
], ids=["invalid-byte", "not-a-message", "unknown-tag", "bad-field", "too-deep"])
def test_garbage_fails_every_pending_wait_with_on_garbage(rig: Rig, garbage: bytes) -> None:
    callers = _wait_all_fail(rig, 3, lambda peer: peer.send(garbage))
    assert len(rig.hooks.garbage) == 1
    _detail, exc = rig.hooks.garbage[0]
    for c in callers:
        assert c.error is exc
    assert rig.channel.broken is exc
    assert rig.hooks.broken == [exc]
    assert rig.hooks.eofs == []


def test_reply_to_an_unknown_call_is_garbage(rig: Rig) -> None:
    callers = _wait_all_fail(rig, 2, lambda peer: peer.send(m.encode_reply(999, None)))
    assert len(rig.hooks.garbage) == 1
    detail, exc = rig.hooks.garbage[0]
    assert "999" in detail
    assert [c.error for c in callers] == [exc, exc]
    assert rig.hooks.broken == [exc]


def test_unexpected_control_message_is_garbage(rig: Rig) -> None:
    callers = _wait_all_fail(rig, 1, lambda peer: peer.send(m.encode(m.Ready())))
    detail, exc = rig.hooks.garbage[0]
    assert "Ready" in detail
    assert callers[0].error is exc


def test_peer_closing_fails_pending_waits_with_on_eof(rig: Rig) -> None:
    callers = _wait_all_fail(rig, 3, lambda peer: peer.sock.close())
    assert len(rig.hooks.eofs) == 1
    exc = rig.hooks.eofs[0]
    for c in callers:
        assert c.error is exc
    assert rig.hooks.broken == [exc]
    assert rig.hooks.garbage == []
    # later calls fail the same way, without asking the hooks again
    with pytest.raises(Eof) as ei:
        rig.register(100)
    assert ei.value is exc
    with pytest.raises(Eof) as ei:
        rig.channel.send(m.encode_call(100, 0, ()))
    assert ei.value is exc
    assert len(rig.hooks.eofs) == 1


def test_send_to_a_closed_peer_fails_with_on_eof(rig: Rig) -> None:
    rig.domain.close()
    with pytest.raises(Eof) as ei:
        rig.channel.send(m.encode_call(1, 0, ()))
    assert rig.channel.broken is ei.value
    assert rig.hooks.broken == [ei.value]


def test_unanswered_call_fails_with_on_deadline(rig: Rig) -> None:
    got = threading.Event()
    rig.start_peer(lambda peer, msgs: got.set())  # reads, never answers
    t0 = time.monotonic()
    with pytest.raises(Deadline) as ei:
        rig.call(1, "x", name="slow", deadline=0.2)
    elapsed = time.monotonic() - t0
    assert got.is_set()
    assert elapsed >= 0.2
    assert elapsed < 5.0
    assert [c for c, _ in rig.hooks.deadlines] == ["slow"]
    assert ei.value is rig.hooks.deadlines[0][1]
    assert rig.channel.broken is ei.value
    assert rig.hooks.broken == [ei.value]


def test_short_deadline_fires_while_another_call_waits_longer(rig: Rig) -> None:
    both = threading.Event()
    received: list[int] = []

    def domain(peer: Peer, msgs: list[Any]) -> None:
        received.extend(msg.id for msg in msgs)
        if len(received) == 2:
            both.set()

    rig.start_peer(domain)
    long = Caller(lambda: rig.call(1, "x", name="long", deadline=WAIT))
    short = Caller(lambda: rig.call(2, "x", name="short", deadline=0.2))
    t0 = time.monotonic()
    long.start()
    short.start()
    short.finish()
    long.finish()
    assert time.monotonic() - t0 < WAIT
    assert both.is_set()
    assert [c for c, _ in rig.hooks.deadlines] == ["short"]
    exc = rig.hooks.deadlines[0][1]
    assert short.error is exc
    assert long.error is exc


# -- control and fail() ---------------------------------------------------------------------


def test_control_message_is_delivered_to_the_control_waiter(rig: Rig) -> None:
    w = rig.register(CONTROL_ID, "start")
    rig.domain.send(m.encode(m.Hello(pid=1234, kernel_arena=4096)))
    msg = rig.channel.wait(w)
    assert msg == m.Hello(pid=1234, kernel_arena=4096)
    assert rig.hooks.controls == [msg]
    assert rig.channel.broken is None


def test_message_that_arrived_in_time_is_not_late_when_read_after_the_deadline(
        rig: Rig) -> None:
    # a warm spare's Hello waits unread until the spare is taken, long after its start
    # deadline: it came in time, so the spare is ready, not hung
    w = rig.register(CONTROL_ID, "start", deadline=-1.0)  # already past when read
    rig.domain.send(m.encode(m.Hello(pid=1234, kernel_arena=4096)))
    msg = rig.channel.wait(w)
    assert msg == m.Hello(pid=1234, kernel_arena=4096)
    assert rig.hooks.deadlines == []
    assert rig.channel.broken is None


def test_nothing_queued_after_the_deadline_still_fails_at_once(rig: Rig) -> None:
    w = rig.register(CONTROL_ID, "start", deadline=-1.0)
    t0 = time.monotonic()
    with pytest.raises(Deadline):
        rig.channel.wait(w)
    assert time.monotonic() - t0 < TICK * 5
    assert [c for c, _ in rig.hooks.deadlines] == ["start"]


def test_control_failure_fails_the_channel_with_on_controls_exception(rig: Rig) -> None:
    w = rig.register(CONTROL_ID, "start")
    rig.domain.send(m.encode(m.Failure(kind="crashed", detail="boom")))
    with pytest.raises(ControlFailure, match="boom"):
        rig.channel.wait(w)
    assert isinstance(rig.hooks.broken[0], ControlFailure)


def test_after_fail_register_raises_the_failure(rig: Rig) -> None:
    earlier = rig.register(1)
    first, second = RuntimeError("first"), RuntimeError("second")
    rig.channel.fail(first)
    rig.channel.fail(second)  # the first failure wins
    assert rig.channel.broken is first
    assert rig.hooks.broken == [first]
    with pytest.raises(RuntimeError) as ei:
        rig.register(2)
    assert ei.value is first
    with pytest.raises(RuntimeError) as ei:
        rig.channel.wait(earlier)
    assert ei.value is first


def test_forget_drops_a_registered_call(rig: Rig) -> None:
    rig.register(1, "one")
    rig.register(2, "two")
    assert sorted(rig.channel.in_flight()) == ["one", "two"]
    rig.channel.forget(1)
    rig.channel.forget(1)
    assert rig.channel.in_flight() == ["two"]


def test_posted_calls_run_in_order_before_the_reply_after_them(rig: Rig) -> None:
    # the domain side: two posted calls, then the reply to the host's call
    w = rig.register(7, "op")
    rig.domain.send(m.encode((m.TAG_POST, [(3, (1, b"a")), (3, (2, b"b"))])))
    rig.domain.send(m.encode_reply(7, "done"))
    msg = rig.channel.wait(w)
    assert isinstance(msg, m.Reply) and msgspec.msgpack.decode(msg.result) == "done"
    assert rig.hooks.replies_seen == 1
    assert [[(i, msgspec.msgpack.decode(a)) for i, a in p.calls] for p in rig.hooks.posts] == \
        [[(3, [1, b"a"]), (3, [2, b"b"])]]
    assert rig.hooks.replies_at_post == [0]  # run before the reply was seen


def test_late_reads_are_bounded(rig: Rig) -> None:
    # a domain that keeps talking past a deadline does not keep its caller waiting
    w = rig.register(CONTROL_ID, "start", deadline=-1.0)
    for i in range(70):
        rig.domain.send(m.encode((m.TAG_POST, [(0, (i,))])))
    with pytest.raises(Deadline):
        rig.channel.wait(w)
    assert len(rig.hooks.posts) == 64
    assert [c for c, _ in rig.hooks.deadlines] == ["start"]


# -- large messages, soft waits, floods -------------------------------------------------------


def fragments(data: bytes, size: int) -> list[bytes]:
    pieces = [data[i:i + size] for i in range(0, len(data), size)]
    return [m.encode(m.Fragment(i == len(pieces) - 1, p)) for i, p in enumerate(pieces)]


def test_a_reply_in_fragments_is_delivered_whole(rig: Rig) -> None:
    def reply_in_pieces(peer: Peer, msgs: list[Any]) -> None:
        for msg in msgs:
            for piece in fragments(m.encode_reply(msg.id, "y" * 5000), 1000):
                peer.send(piece)

    rig.start_peer(reply_in_pieces)
    assert result_of(rig.call(1, "x")) == "y" * 5000
    assert rig.call(2, "x").id == 2  # the channel is whole again
    assert rig.channel.broken is None


def test_a_message_too_large_to_assemble_is_garbage(rig: Rig,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(m, "MAX_ASSEMBLED", 4000)

    def reply_in_pieces(peer: Peer, msgs: list[Any]) -> None:
        for msg in msgs:
            for piece in fragments(m.encode_reply(msg.id, "y" * 5000), 1000):
                with contextlib.suppress(OSError):  # the host may have given up on it
                    peer.send(piece)

    rig.start_peer(reply_in_pieces)
    with pytest.raises(Garbage, match="more than 4000 bytes"):
        rig.call(1, "x")


def test_a_soft_deadline_ends_the_wait_and_judges_no_one(rig: Rig) -> None:
    w = rig.channel.register(7, time.monotonic() + 0.2, "inject", soft=True)
    with pytest.raises(TimeoutError):
        rig.channel.wait(w)
    assert rig.channel.broken is None and rig.hooks.deadlines == []

    def late_then_echo(peer: Peer, msgs: list[Any]) -> None:
        peer.send(m.encode_reply(7, None))  # the answer the wait gave up on: no garbage
        echo(peer, msgs)

    rig.start_peer(late_then_echo)
    assert result_of(rig.call(8, "still here")) == ["still here"]
    assert rig.channel.broken is None and rig.hooks.garbage == []


def test_a_flood_of_kernel_calls_for_one_call_is_a_resource_failure(rig: Rig) -> None:
    """Kernel calls queued for a call whose thread has not served them yet (it sleeps
    while another thread reads the channel) are bounded."""
    w = rig.register(1)
    for i in range(MAX_NESTED + 1):
        call = msgspec.msgpack.decode(m.encode_call(1000 + i, 0, ("k",), parent=1),
                                      type=m.Call)
        rig.channel._route(call, None)  # as the reading thread routes them
    assert len(rig.hooks.floods) == 1
    assert "more than 256 kernel calls" in str(rig.hooks.floods[0])
    with pytest.raises(Flood):
        rig.channel.wait(w)
