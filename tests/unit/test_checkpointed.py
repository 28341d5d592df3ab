"""Direct mode's checkpoints (``nooks.fs.checkpointed``), their pure parts: the
journal since the checkpoint, what the server journals of a handle opened before
it, and the pause's hand-over between the server and the checkpoints' thread."""

from __future__ import annotations

import errno
import os
import threading
from types import SimpleNamespace
from typing import Any

from nooks.fs import kernelproto as kp
from nooks.fs.checkpointed import CheckedImagePort, Pause
from nooks.fs.handles import Handles
from nooks.fs.journal import Journal
from nooks.fs.nodes import Nodes
from nooks.fs.serve import RESEND, Server
from nooks.fs.statelog import StateLog, size_for
from tests.conftest import anonymous_log

CTX = [0, 0, 1]
T = 1_700_000_000_000_000_000


def send(journal: Any, records: list[Any]) -> None:
    """The records as a domain's ``fs_journal`` sends them (untyped)."""
    journal.fs_journal(records)


def test_the_journal_since_a_checkpoint_keeps_an_unlink_and_what_was_written() -> None:
    j = Journal(since_checkpoint=True, checkpoint_bytes=1000)
    asked: list[str] = []
    j.wake = lambda: asked.append("checkpoint")
    try:
        send(j, [["create", 7, T, [CTX, "/f", 0o644, 0o101]],
                      ["write", None, T, [CTX, "/f", b"abc", 0, 7]]])
        send(j, [["unlink", None, T, [CTX, "/f"]]])
        # (from the empty volume, these would cancel out; from a checkpoint's, the
        # unlink may remove what was there before it)
        assert [e[0] for e in j.entries] == ["create", "write", "unlink"]
        assert "/f" not in j.written and asked == []
        send(j, [["write", None, T, [CTX, "/g", b"x" * 2000, 10, 0]]])
        assert j.written_files()[0][0] == "/g" and j.written_files()[0][1].least == 2010
        assert asked == ["checkpoint"]  # (past checkpoint_bytes: one is asked for)
        assert j.paths() == ["/", "/f", "/g"]
        j.checkpoint()
        assert len(j) == 0 and j.bytes == 0 and not j.written and j.open == set()
        j.stop()
        send(j, [["mkdir", None, T, [CTX, "/d", 0o755]]])
        assert len(j) == 0  # (checking stopped: nothing is kept)
    finally:
        j.close()


def _server() -> tuple[Server, list[list[Any]]]:
    sent: list[list[Any]] = []
    server = Server.__new__(Server)
    server.journal, server._pending, server.journaled = sent.extend, [], set()
    server.pause, server.written = (lambda checkpoint: True), set()
    server._reopening = False
    server.ctx = (0, 0, 1)
    server.nodes = SimpleNamespace(path=lambda node: b"/renamed.bin")  # type: ignore[assignment]
    server.handles = Handles(StateLog(memoryview(bytearray(size_for(4096)))))
    return server, sent


def test_a_handle_opened_before_the_checkpoint_is_journaled_open_by_its_path() -> None:
    server, sent = _server()
    assert server.handles is not None
    vfh = server.handles.opened(5, os.O_RDWR | os.O_TRUNC, 42)
    server._vfh = vfh
    # (the path it had when opened: the open journaled is by the node's path now)
    server._note("write", ("/as-opened.bin", b"x", 0, 42), T)
    server._note("write", ("/as-opened.bin", b"y", 1, 42), T + 1)
    server._journal_pending(1, None)
    # one open first, by the path it has now, without O_TRUNC (its data stays)
    assert [(r[0], r[1]) for r in sent] == [("open", vfh), ("write", None), ("write", None)]
    assert sent[0][3] == [(0, 0, 1), "/renamed.bin", os.O_RDWR]
    assert sent[1][3][4] == vfh  # (the kernel's handle: a replay maps it)
    assert server.written == {"/as-opened.bin"}
    server.checkpointed()  # (the host's journal starts again: so does the server's)
    assert server.written == set() and server.journaled == set()


class FakeDomain:
    """What ``Pause.hold`` asks of a domain: its incarnation's port, and the upcalls."""

    def __init__(self, port: CheckedImagePort, at_once: bool) -> None:
        self.current = SimpleNamespace(kernel_impl=port, alive=True)
        self.at_once = at_once
        self.calls: list[tuple[Any, ...]] = []

    def call(self, name: str, *args: Any) -> Any:
        self.calls.append((name, *args))
        self.current.kernel_impl.call_done()  # (as the host does for every reply)
        return self.at_once if name == "served_hold" else None


class FakeDevice:
    """An image whose commits are counted."""

    def __init__(self) -> None:
        self.commits = 0
        self.bd_size = self.bd_path = self.bd_read = self.bd_write = self.bd_sync = \
            self.bd_commit = self.close = lambda *args: None

    def call_done(self) -> None:
        self.commits += 1


def _port(pause: Pause) -> CheckedImagePort:
    return CheckedImagePort(FakeDevice(), None, pause)  # type: ignore[arg-type]


def test_a_server_between_requests_is_held_by_an_upcall_and_told_of_the_checkpoint() -> None:
    pause = Pause()
    port = _port(pause)
    domain = FakeDomain(port, at_once=True)
    pause.domain = domain  # type: ignore[assignment]
    let_go = pause.hold()
    assert let_go is not None and pause.held
    pause.taken = True  # (the checkpoint was taken)
    let_go()
    assert domain.calls == [("served_hold",), ("served_resume", True)] and not pause.held
    # (what the server wrote in the request it is half-way through is not committed
    # by the pause's replies: it is that request's, and goes with it)
    assert port.device.commits == 0


def test_a_busy_server_pauses_after_its_request_and_is_let_go() -> None:
    pause = Pause()
    port = _port(pause)
    domain = FakeDomain(port, at_once=False)
    pause.domain = domain  # type: ignore[assignment]
    result: list[bool] = []
    got: list[Any] = []
    holder = threading.Thread(target=lambda: got.append(pause.hold()))
    holder.start()
    with pause._cond:  # (the host has asked, and waits for the server)
        assert pause._cond.wait_for(lambda: pause._holding, 10)
    server = threading.Thread(target=lambda: result.append(port.fs_pause(False)))
    server.start()
    holder.join(10)
    assert got and got[0] is not None and pause.held
    assert result == []  # (it waits, quiet, while the image is checked)
    got[0]()
    server.join(10)
    assert result == [False]  # (let go; no checkpoint was taken)


def test_nobody_waiting_for_it_a_pause_returns_at_once() -> None:
    pause = Pause()
    assert _port(pause).fs_pause(False) is False


def test_a_server_that_asked_is_let_go_by_the_second_round_if_none_holds_it() -> None:
    pause = Pause()
    port = _port(pause)
    asked = threading.Event()
    pause.wake = asked.set
    result: list[bool] = []
    server = threading.Thread(target=lambda: result.append(port.fs_pause(True)))
    server.start()
    assert asked.wait(10)
    pause.let_go_waiting()  # (a round that ended as it asked: the next one is its)
    assert result == [] and port.released is None
    pause.let_go_waiting()  # (the next one could not hold it: it goes on)
    server.join(10)
    assert result == [False]


class MadeBefore:
    """A driver whose mkdir finds what the first try (in a driver that failed before
    answering) made: EEXIST; getattr says it is a directory."""

    def implemented(self) -> list[str]:
        return ["mkdir", "getattr"]

    def uses_ns(self) -> bool:
        return False

    def stores_per_request(self) -> bool:
        return False

    def mkdir(self, ctx: Any, path: str, mode: int) -> int:
        raise OSError(errno.EEXIST, "made by the first try")

    def stat(self, ctx: Any, path: str, fh: int | None) -> Any:
        from nooks.fs.attrs import Stat

        return Stat(st_mode=0o40755, st_nlink=2)

    def getattr(self, ctx: Any, path: str, fh: int | None = None) -> Any:
        return {"st_mode": 0o40755, "st_nlink": 2}


def test_a_resent_request_answered_as_done_is_journaled_as_the_first_try_made_it() -> None:
    """The first try's effect is in the image, but its driver failed before the call
    was journaled: a rollback's redo must make it too (found: a tree lost at a
    rollback, vfat #89)."""
    sent: list[list[Any]] = []
    with anonymous_log(4096) as nodes:
        server = Server(-1, MadeBefore(), Nodes(nodes))
        server.journal = sent.extend
        body = kp.MKDIR_IN.pack(0o755, 0) + b"tree\0"
        buf = bytearray(kp.IN_HEADER.pack(kp.IN_HEADER.size + len(body), kp.Op.MKDIR,
                                          7 | RESEND, 1, 0, 0, 1, 0, 0) + body)
        out = server.handle(buf, len(buf))
    assert out is not None and kp.OUT_HEADER.unpack_from(out)[1] == 0  # (done: no error)
    assert [(r[0], r[3][1:]) for r in sent] == [("mkdir", ["/tree", 0o755])]
