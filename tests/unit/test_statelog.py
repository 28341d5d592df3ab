"""The session log in shared memory: what was committed is read back, what a
killed writer left half-written is not, a compaction is all or nothing."""

from __future__ import annotations

import mmap
import os
import signal
import struct
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

from nooks.fs.statelog import HEADER, Full, StateLog, size_for

BUFFER = 4096


@pytest.fixture
def mem() -> Iterator[memoryview]:
    m = mmap.mmap(-1, size_for(BUFFER))
    view = memoryview(m)
    yield view
    view.release()
    m.close()


def test_committed_records_are_read_back_by_a_fresh_reader(mem: memoryview) -> None:
    log = StateLog(mem)
    for i in range(10):
        log.append(b"record %d" % i)
    log.close()
    again = StateLog(mem)  # (a successor mapping the same memory)
    assert list(again.records()) == [b"record %d" % i for i in range(10)]
    assert not again.torn
    again.close()


def test_a_record_not_committed_is_not_seen(mem: memoryview) -> None:
    log = StateLog(mem)
    log.append(b"kept")
    # the writer died after writing a record and before moving the committed end
    log._put(HEADER + log.used, b"half")
    assert list(log.records()) == [b"kept"] and not log.torn
    log.close()


def test_a_damaged_record_ends_the_log_there(mem: memoryview) -> None:
    log = StateLog(mem)
    for payload in (b"one", b"two", b"three"):
        log.append(payload)
    mem[HEADER + 16 + 8] ^= 0xFF  # a byte of the second record's payload
    assert list(log.records()) == [b"one"] and log.torn
    struct.pack_into("<I", mem, HEADER, 1 << 20)  # the first one's length, past the end
    assert list(log.records()) == [] and log.torn
    log.close()


def test_a_full_log_is_compacted_into_the_other_buffer(mem: memoryview) -> None:
    log = StateLog(mem)

    def fill() -> None:
        for i in range(BUFFER):
            log.append(b"%06d" % i)

    with pytest.raises(Full):
        fill()
    kept = list(log.records())[-3:]
    log.compact(kept)
    assert list(log.records()) == kept
    log.append(b"after")
    assert list(log.records()) == [*kept, b"after"]
    # a compaction that does not fit changes nothing
    with pytest.raises(Full):
        log.compact([b"x" * 1000] * 8)
    assert list(log.records()) == [*kept, b"after"]
    log.close()


WRITER = textwrap.dedent("""
    import mmap, sys
    from nooks.fs.statelog import Full, StateLog
    fd, size = int(sys.argv[1]), int(sys.argv[2])
    log = StateLog(memoryview(mmap.mmap(fd, size)))
    i = compactions = 0
    while True:
        try:
            log.append(b"%08d" % i + b"." * (i % 200))
        except Full:  # (keep the last few: records go on being numbered)
            log.compact(list(log.records())[-4:])
            compactions += 1
            if compactions == 1:
                print("writing", flush=True)  # (it goes on: killed while it does)
            continue
        i += 1
""")


@pytest.mark.parametrize("run", range(5))
def test_a_writer_killed_at_any_moment_leaves_a_whole_log(run: int) -> None:
    """A real process appends and compacts as fast as it can and is killed: what a
    reader finds is whole records, numbered without a gap, never a torn one."""
    size = size_for(1 << 16)
    fd = os.memfd_create("nooks-test-log")
    try:
        os.ftruncate(fd, size)
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(fd), str(size)],
                                pass_fds=(fd,), stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "writing"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        m = mmap.mmap(fd, size)
        view = memoryview(m)
        try:
            log = StateLog(view)
            got = [int(r[:8]) for r in log.records()]
            log.close()
            assert not log.torn and got
            assert got == list(range(got[0], got[0] + len(got)))
        finally:
            view.release()
            m.close()
    finally:
        os.close(fd)
