"""Arenas: slot bookkeeping and the memfd seals that keep the kernel arena read-only."""

from __future__ import annotations

import errno
import mmap
import os
import threading
from collections.abc import Iterator

import pytest

from nooks.xpc.arena import HostArena, SlotPool, map_readonly, map_writable

SLOT = mmap.PAGESIZE
SLOTS = 4


# -- SlotPool -------------------------------------------------------------------------------


def test_acquire_returns_distinct_slots_until_exhausted() -> None:
    pool = SlotPool(5)
    got = [pool.acquire(timeout=0) for _ in range(5)]
    assert sorted(s for s in got if s is not None) == [0, 1, 2, 3, 4]
    assert pool.in_use == 5
    assert pool.acquire(timeout=0.01) is None
    assert pool.in_use == 5


def test_release_makes_a_slot_available_again() -> None:
    pool = SlotPool(2)
    a, b = pool.acquire(), pool.acquire()
    assert a is not None
    assert b is not None
    assert pool.acquire(timeout=0.01) is None
    pool.release(b)
    assert pool.in_use == 1
    assert pool.acquire(timeout=0.01) == b
    assert pool.acquire(timeout=0.01) is None


def test_double_release_raises() -> None:
    pool = SlotPool(3)
    s = pool.acquire()
    assert s is not None
    pool.release(s)
    with pytest.raises(ValueError, match=str(s)):
        pool.release(s)
    assert pool.in_use == 0


def test_releasing_a_slot_never_acquired_raises() -> None:
    pool = SlotPool(3)
    with pytest.raises(ValueError, match="1"):
        pool.release(1)


@pytest.mark.parametrize("slot", [-1, 3, 100])
def test_out_of_range_release_raises(slot: int) -> None:
    pool = SlotPool(3)
    for _ in range(3):
        pool.acquire()
    with pytest.raises(ValueError, match=str(slot)):
        pool.release(slot)
    assert pool.in_use == 3


class _SignallingCondition(threading.Condition):
    """A condition that says when a thread has started waiting on it."""

    def __init__(self) -> None:
        super().__init__(threading.Lock())
        self.waiting = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        self.waiting.set()
        return super().wait(timeout)


@pytest.mark.timeout(30)
def test_blocked_acquire_is_woken_by_release() -> None:
    pool = SlotPool(1)
    cond = _SignallingCondition()
    pool._cond = cond
    held = pool.acquire(timeout=0)
    assert held == 0

    result: list[int | None] = []
    done = threading.Event()

    def waiter() -> None:
        result.append(pool.acquire(timeout=20))
        done.set()

    t = threading.Thread(target=waiter, daemon=True)
    t.start()
    # the waiter holds the condition's lock until it is really waiting, so the
    # release below cannot run before it
    assert cond.waiting.wait(10)
    assert not done.is_set()
    pool.release(held)
    assert done.wait(10)
    t.join(10)
    assert result == [0]
    assert pool.in_use == 1


# -- HostArena ------------------------------------------------------------------------------


@pytest.fixture
def sealed() -> Iterator[HostArena]:
    arena = HostArena("nooks-test-kernel", SLOT, SLOTS, domain_writable=False)
    yield arena
    arena.close()


@pytest.fixture
def writable() -> Iterator[HostArena]:
    arena = HostArena("nooks-test-domain", SLOT, SLOTS, domain_writable=True)
    yield arena
    arena.close()


def _reopen(arena: HostArena) -> int:
    """The arena's memfd opened afresh, as the domain gets it: read-write."""
    return os.open(f"/proc/self/fd/{arena.fd}", os.O_RDWR | os.O_CLOEXEC)


def test_arena_geometry(sealed: HostArena) -> None:
    assert sealed.size == SLOT * SLOTS
    assert sealed.slot_size == SLOT
    assert sealed.slots.count == SLOTS
    assert [sealed.offset(i) for i in range(SLOTS)] == [i * SLOT for i in range(SLOTS)]
    assert os.fstat(sealed.fd).st_size == sealed.size


def test_sealed_arena_cannot_be_mapped_writable(sealed: HostArena) -> None:
    fd = _reopen(sealed)
    try:
        with pytest.raises(PermissionError):
            mmap.mmap(fd, sealed.size, flags=mmap.MAP_SHARED,
                      prot=mmap.PROT_READ | mmap.PROT_WRITE)
        with pytest.raises(PermissionError):
            map_writable(fd, sealed.size)
        with pytest.raises(PermissionError):
            os.pwrite(fd, b"x", 0)
    finally:
        os.close(fd)


def test_sealed_arena_cannot_be_resized(sealed: HostArena) -> None:
    fd = _reopen(sealed)
    try:
        for size in (sealed.size * 2, sealed.size // 2):
            with pytest.raises(PermissionError):
                os.ftruncate(fd, size)
    finally:
        os.close(fd)


def test_sealed_arena_maps_read_only_and_sees_host_writes(sealed: HostArena) -> None:
    fd = _reopen(sealed)
    try:
        ro = mmap.mmap(fd, sealed.size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
    finally:
        os.close(fd)
    try:
        off = sealed.offset(2)
        sealed.map[off:off + 5] = b"hello"
        assert ro[off:off + 5] == b"hello"
        sealed.view[0:3] = b"abc"
        assert ro[0:3] == b"abc"
        with pytest.raises(TypeError):
            ro[0:1] = b"z"
    finally:
        ro.close()


def test_map_readonly_sees_host_writes(sealed: HostArena) -> None:
    fd = _reopen(sealed)
    try:
        addr, view = map_readonly(fd, sealed.size)
    finally:
        os.close(fd)
    assert addr
    assert view.readonly
    assert len(view) == sealed.size
    off = sealed.offset(1)
    sealed.map[off:off + 4] = b"data"
    assert bytes(view[off:off + 4]) == b"data"


def test_domain_writable_arena_maps_writable_and_host_sees_writes(writable: HostArena) -> None:
    fd = _reopen(writable)
    try:
        rw = map_writable(fd, writable.size)
    finally:
        os.close(fd)
    try:
        off = writable.offset(3)
        rw[off:off + 6] = b"result"
        assert writable.map[off:off + 6] == b"result"
        assert bytes(writable.view[off:off + 6]) == b"result"
    finally:
        rw.release()


def test_domain_writable_arena_still_cannot_be_resized(writable: HostArena) -> None:
    fd = _reopen(writable)
    try:
        with pytest.raises(PermissionError):
            os.ftruncate(fd, writable.size * 2)
    finally:
        os.close(fd)


def test_close_is_idempotent_and_closes_the_fd() -> None:
    arena = HostArena("nooks-test-close", SLOT, SLOTS, domain_writable=False)
    fd = arena.fd
    assert fd >= 0
    os.fstat(fd)
    arena.close()
    assert arena.fd == -1
    with pytest.raises(OSError, match="Bad file descriptor") as ei:
        os.fstat(fd)
    assert ei.value.errno == errno.EBADF
    assert arena.map.closed
    arena.close()
    assert arena.fd == -1
