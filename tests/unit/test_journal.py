"""A volatile driver's journal in direct mode (``nooks.fs.journal``): what a domain
sends is checked against the interface, bounded, compacted at unlink, and redone
in a fresh driver with its own handles behind the kernel's."""

from __future__ import annotations

import errno
import time
import typing
from typing import Any

import pytest

from nooks.fs.adapter import FsAdapter
from nooks.fs.interface import Journaled
from nooks.fs.journal import JOURNALED, Journal
from nooks.fs.serve import Server

CTX = [0, 0, 1]
T = 1_700_000_000_000_000_000  # when each call was first made (ns)


def send(journal: Any, records: list[Any]) -> None:
    """The records as a domain's ``fs_journal`` sends them (untyped)."""
    journal.fs_journal(records)


class FreshDriver:
    """Records the calls a redo makes; hands out its own handles."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.next_fh = 100

    def __call__(self, how: str, at: int, op: str, args: list[Any]) -> Any:
        assert how == "replay" and at == T  # (each with the time it was first made)
        self.calls.append((op, *args))
        if op in ("create", "open"):
            self.next_fh += 1
            return self.next_fh
        return len(args[2]) if op == "write" else 0


def test_a_redo_gives_the_fresh_driver_the_calls_and_the_data_with_its_own_handles() -> None:
    j = Journal()
    try:
        send(j, [["mkdir", None, T, [CTX, "/d", 0o755]],
                      ["create", 7, T, [CTX, "/d/f", 0o644, 0o101]]])
        send(j, [["write", None, T, [CTX, "/d/f", b"hello", 0, 7]]])
        send(j, [["write", None, T, [CTX, "/d/f", b"world", 5, 7]]])
        fresh = FreshDriver()
        handles = j.redo(fresh)
        assert [c[0] for c in fresh.calls] == ["mkdir", "create", "write", "write"]
        assert fresh.calls[2] == ("write", (0, 0, 1), "/d/f", b"hello", 0, 101)
        assert fresh.calls[3][3] == b"world"
        assert handles == {7: 101}  # still open: the fresh server's handle 7 is 101
        assert j.status()["journal_bytes"] >= 10  # (and the paths)
    finally:
        j.close()


def test_a_released_handle_is_not_handed_over_and_a_call_on_a_failed_open_is_skipped() -> None:
    j = Journal()
    try:
        send(j, [["create", 3, T, [CTX, "/a", 0o644, 0o101]]])
        send(j, [["release", None, T, [CTX, "/a", 3]]])
        send(j, [["open", 4, T, [CTX, "/b", 0o1]], ["truncate", None, T, [CTX, "/b", 0, 4]]])

        def failing_open(how: str, at: int, op: str, args: list[Any]) -> Any:
            if op == "open":
                raise OSError(errno.ENOENT, "gone")
            return FreshDriver()(how, at, op, args)

        assert j.redo(failing_open) == {}
        assert j.replay_errors == 1
    finally:
        j.close()


def test_a_write_through_no_open_of_the_journal_is_redone_with_handle_0() -> None:
    j = Journal()  # (a driver without open: every handle it gives is 0)
    try:
        send(j, [["mknod", None, T, [CTX, "/f", 0o100644, 0]],
                 ["write", None, T, [CTX, "/f", b"data", 0, 0]]])
        fresh = FreshDriver()
        j.redo(fresh)
        assert fresh.calls[1] == ("write", (0, 0, 1), "/f", b"data", 0, 0)
    finally:
        j.close()


def test_an_unlinked_closed_file_leaves_the_journal() -> None:
    j = Journal()
    try:
        send(j, [["create", 1, T, [CTX, "/tmp1", 0o644, 0o101]],
                      ["write", None, T, [CTX, "/tmp1", b"x" * 10, 0, 1]],
                      ["release", None, T, [CTX, "/tmp1", 1]]])
        send(j, [["mkdir", None, T, [CTX, "/keep", 0o755]]])
        send(j, [["unlink", None, T, [CTX, "/tmp1"]]])
        assert [e[0] for e in j.entries] == ["mkdir"]
    finally:
        j.close()


def test_an_unlinked_file_still_open_stays() -> None:
    j = Journal()
    try:
        send(j, [["create", 1, T, [CTX, "/open", 0o644, 0o101]],
                      ["unlink", None, T, [CTX, "/open"]]])
        assert [e[0] for e in j.entries] == ["create", "unlink"]
    finally:
        j.close()


def test_more_writes_than_it_keeps_are_refused_whole_with_enospc() -> None:
    j = Journal(max_bytes=200)
    try:
        send(j, [["create", 1, T, [CTX, "/f", 0o644, 0o101]],
                      ["write", None, T, [CTX, "/f", b"12345", 0, 1]]])
        before = j.bytes
        with pytest.raises(OSError, match="at most") as e:
            send(j, [["write", None, T, [CTX, "/f", b"6789", 5, 1]],
                          ["mkdir", None, T, [CTX, "/d", 0o755]]])
        assert e.value.errno == errno.ENOSPC
        assert [x[0] for x in j.entries] == ["create", "write"]  # nothing of the refused
        assert j.bytes == before
    finally:
        j.close()


def test_more_calls_than_it_keeps_are_refused_with_enospc() -> None:
    j = Journal(max_entries=2)
    try:
        send(j, [["mkdir", None, T, [CTX, "/a", 0o755]]])
        with pytest.raises(OSError, match="2 calls") as e:
            send(j, [["mkdir", None, T, [CTX, "/b", 0o755]],
                     ["mkdir", None, T, [CTX, "/c", 0o755]]])
        assert e.value.errno == errno.ENOSPC and len(j.entries) == 1
    finally:
        j.close()


@pytest.mark.parametrize("record", [
    ["write", None, T, [CTX, "/f", "not bytes", 0, 1]],
    ["mkdir", None, T, [CTX, "/d"]],  # a mode missing
    ["create", None, T, [CTX, "/f", 0o644, 0o101]],  # an opener without its handle
    ["mkdir", 3, T, [CTX, "/d", 0o755]],  # a handle where nothing opens
    ["write", None, T, [CTX, "/f", b"x", 0, -1]],  # a handle below 0
])
def test_a_record_the_interface_does_not_allow_is_refused_and_nothing_kept(
        record: list[Any]) -> None:
    j = Journal()
    try:
        with pytest.raises(ValueError, match="journaled"):
            send(j, [["mkdir", None, T, [CTX, "/first", 0o755]], record])
        assert j.entries == [] and j.bytes == 0
    finally:
        j.close()


def test_the_calls_journaled_are_those_the_interface_says_change_state() -> None:
    assert set(typing.get_args(Journaled)) == JOURNALED


class Stamping:
    """A driver that reads the wall clock in mkdir."""

    seen: typing.ClassVar[list[int]] = []

    def mkdir(self, path: str, mode: int) -> int:
        self.seen.extend((time.time_ns(), int(time.time() * 1e9)))
        return 0


def test_a_replayed_call_sees_the_wall_clock_of_the_first() -> None:
    adapter = FsAdapter("tests.unit.test_journal:Stamping", [], {})
    first = 1_234_567_890_000_000_000
    assert adapter.replay(first, "mkdir", [CTX, "/d", 0o755]) == 0
    assert Stamping.seen[0] == first  # (the readings of the first call: first, first + 1)
    assert abs(Stamping.seen[1] - (first + 1)) < 1000  # (a float)
    assert time.time_ns() > first + 10**17  # (and the clock is back)
    with pytest.raises(ValueError, match="not a call"):
        adapter.replay(first, "read", [CTX, "/d", 1, 0, 0])


def test_a_replaced_domains_port_is_refused() -> None:
    j = Journal()
    try:
        port = j.port()
        send(port, [["mkdir", None, T, [CTX, "/d", 0o755]]])
        port.close()  # (its incarnation ended)
        with pytest.raises(OSError, match="replaced"):
            send(port, [["mkdir", None, T, [CTX, "/late", 0o755]]])
        assert [e[1][1] for e in j.entries] == ["/d"]
        send(j.port(), [["mkdir", None, T, [CTX, "/e", 0o755]]])  # (the next one's)
        assert len(j.entries) == 2
    finally:
        j.close()


def _kept_after(records: list[Any]) -> list[str]:
    j = Journal()
    try:
        for r in records:
            send(j, [r])
        return [f"{e[0]} {e[1][1]}" for e in j.entries]
    finally:
        j.close()


def C(op: str, path: str, *rest: Any, handle: int | None = None) -> list[Any]:
    return [op, handle, T, [CTX, path, *rest]]


@pytest.mark.parametrize(("name", "records"), [
    ("a hard link made, then the original unlinked", [
        C("create", "/tmp/x", 0o644, 0o101, handle=1), C("release", "/tmp/x", 1),
        C("link", "/new/x", "/tmp/x"), C("unlink", "/tmp/x")]),
    ("a file renamed, then the new name unlinked", [
        C("mknod", "/x", 0o100644, 0), C("rename", "/x", "/p"), C("unlink", "/p")]),
    ("an open file hidden, then its hidden name unlinked", [
        C("mknod", "/f", 0o100644, 0), C("rename", "/f", "/.fuse_hidden1"),
        C("unlink", "/.fuse_hidden1")]),
    ("a directory renamed, a new one of its name, a file in it unlinked", [
        C("mkdir", "/d", 0o755), C("mknod", "/d/f", 0o100644, 0), C("rename", "/d", "/e"),
        C("mkdir", "/d", 0o755), C("mknod", "/d/f", 0o100644, 0), C("unlink", "/d/f")]),
    ("a path that was a directory whose file moved out", [
        C("mkdir", "/p", 0o755), C("mknod", "/p/x", 0o100644, 0), C("rename", "/p/x", "/y"),
        C("rmdir", "/p"), C("mknod", "/p", 0o100644, 0), C("unlink", "/p")]),
])
def test_a_file_unlinked_whose_records_others_depend_on_keeps_them(
        name: str, records: list[Any]) -> None:
    assert len(_kept_after(records)) == len(records), name


def test_a_release_from_the_server_takes_the_handle_out_of_the_open_set() -> None:
    """What the server sends (``Server._note``), not hand-made records."""
    sent: list[list[Any]] = []
    server = Server.__new__(Server)
    server.journal, server._pending, server.journaled = sent.extend, [], set()
    server.pause, server._reopening = None, False
    server.ctx = (0, 0, 1)
    server._vfh = 0
    server._note("create", ("/f", 0o644, 0o101), T)
    server._journal_opened(7)
    server._vfh = 7
    server._note("write", ("/f", b"x", 0, 99), T + 1)
    server._note("release", ("/f", 99), T + 2)
    server._journal_pending(1, None)
    assert [(r[0], r[1]) for r in sent] == [("create", 7), ("write", None), ("release", None)]
    assert sent[1][3][4] == 7 and sent[2][3][2] == 7  # (the kernel's handle, not 99)
    assert [r[2] for r in sent] == [T, T + 1, T + 2]
    j = Journal()
    try:
        send(j, sent)
        assert j.open == set()
        send(j, [C("unlink", "/f")])
        assert j.entries == [] and j.bytes == 0
    finally:
        j.close()


def test_unlinks_are_taken_when_the_journal_is_full_and_free_it() -> None:
    j = Journal(max_entries=2)
    try:
        send(j, [C("mknod", "/a", 0o100644, 0), C("mknod", "/b", 0o100644, 0)])
        with pytest.raises(OSError, match="2 calls"):
            send(j, [C("mknod", "/c", 0o100644, 0)])
        send(j, [C("unlink", "/a")])  # (taken: it frees)
        assert [e[1][1] for e in j.entries] == ["/b"]
        send(j, [C("mknod", "/c", 0o100644, 0)])
    finally:
        j.close()


def test_what_unlinks_free_is_given_back_and_the_spill_repacked() -> None:
    j = Journal(max_bytes=1 << 20)
    try:
        for i in range(40):  # 40 x 200 KiB written and removed: 8 MB through 1 MiB
            send(j, [C("create", f"/f{i}", 0o644, 0o101, handle=i + 1),
                     C("write", f"/f{i}", bytes([i]) * 200_000, 0, i + 1),
                     C("release", f"/f{i}", i + 1)])
            send(j, [C("unlink", f"/f{i}")])
        send(j, [C("create", "/keep", 0o644, 0o101, handle=99),
                 C("write", "/keep", b"kept", 0, 99)])
        assert j.bytes < 1000 and [e[0] for e in j.entries] == ["create", "write"]
        fresh = FreshDriver()
        j.redo(fresh)
        assert fresh.calls[1][3] == b"kept"
    finally:
        j.close()


def test_paths_names_and_values_count_against_the_bound() -> None:
    j = Journal(max_bytes=100_000)
    try:
        send(j, [C("setxattr", "/f", "user.x", b"v" * 60_000, 0, 0)])
        with pytest.raises(OSError, match="at most"):
            send(j, [C("setxattr", "/f", "user.x", b"v" * 60_000, 0, 0)])
        assert len(j.entries) == 1
    finally:
        j.close()
