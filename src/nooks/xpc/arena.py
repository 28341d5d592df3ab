"""Arenas: the shared memory that carries bulk data between host and domain.

Each domain has two arenas, both memfds created by the host:

* the *kernel arena*: the host writes bulk arguments into it; the domain maps it
  read-only. The memfd is sealed with ``F_SEAL_FUTURE_WRITE`` after the host maps
  it, so the domain cannot obtain a writable mapping even though it holds the fd:
  a write from the domain faults (SIGSEGV) and is detected like any crash.
* the *domain arena*: the domain writes bulk results into it; the host copies a
  result out as soon as the reply arrives and checks the copy, never the live
  memory, so a driver cannot change data after it was checked.

Both are cut into fixed-size slots. The host hands out slots per call (kernel
arena for arguments, domain arena for the result) and takes them back when the
call completes; slot ownership is tracked like any other host object.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import mmap
import os
import threading

F_SEAL_SEAL = 0x0001
F_SEAL_SHRINK = 0x0002
F_SEAL_GROW = 0x0004
F_SEAL_FUTURE_WRITE = 0x0010
F_ADD_SEALS = getattr(fcntl, "F_ADD_SEALS", 1033)

DEFAULT_SLOT_SIZE = 1 << 20
DEFAULT_SLOTS = 8


class SlotPool:
    """Which slots of an arena are free. Thread-safe; pure bookkeeping."""

    def __init__(self, count: int) -> None:
        self._free = list(range(count - 1, -1, -1))
        self._cond = threading.Condition(threading.Lock())
        self.count = count

    def acquire(self, timeout: float | None = None) -> int | None:
        """A free slot index, waiting up to ``timeout``; None if none came free."""
        with self._cond:
            if not self._free and not self._cond.wait_for(lambda: bool(self._free), timeout):
                return None
            return self._free.pop()

    def release(self, slot: int) -> None:
        with self._cond:
            if slot in self._free or not 0 <= slot < self.count:
                raise ValueError(f"slot {slot} is not in use")
            self._free.append(slot)
            self._cond.notify()

    @property
    def in_use(self) -> int:
        with self._cond:
            return self.count - len(self._free)


class HostArena:
    """An arena as the host sees it: a memfd mapped read-write, cut into slots."""

    def __init__(self, name: str, slot_size: int = DEFAULT_SLOT_SIZE, slots: int = DEFAULT_SLOTS,
                 *, domain_writable: bool) -> None:
        self.size = slot_size * slots
        self.slot_size = slot_size
        self.fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(self.fd, self.size)
            self.map = mmap.mmap(self.fd, self.size, flags=mmap.MAP_SHARED,
                                 prot=mmap.PROT_READ | mmap.PROT_WRITE)
            seals = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL
            if not domain_writable:
                seals |= F_SEAL_FUTURE_WRITE
            fcntl.fcntl(self.fd, F_ADD_SEALS, seals)
        except BaseException:
            os.close(self.fd)
            raise
        self.view = memoryview(self.map)
        self.slots = SlotPool(slots)

    def offset(self, slot: int) -> int:
        return slot * self.slot_size

    def close(self) -> None:
        if self.fd < 0:
            return
        self.view.release()
        self.map.close()
        os.close(self.fd)
        self.fd = -1

    def __repr__(self) -> str:
        return f"<HostArena {self.size >> 10} KiB slots={self.slots.in_use}/{self.slots.count}>"


_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_MAP_FAILED = ctypes.c_void_p(-1).value


def map_readonly(fd: int, size: int) -> tuple[int, memoryview]:
    """Map ``fd`` read-only in this process: its address and a read-only view.

    Mapped with libc's mmap rather than the mmap module so that the address is
    known: a driver writing there through ctypes faults, which is the point.
    """
    addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
    if addr is None or addr == _MAP_FAILED:
        err = ctypes.get_errno()
        raise OSError(err, f"mmap of the kernel arena failed: {os.strerror(err)}")
    array = (ctypes.c_char * size).from_address(addr)
    return addr, memoryview(array).cast("B").toreadonly()


def map_writable(fd: int, size: int) -> memoryview:
    """Map ``fd`` read-write in this process. With libc's mmap, not the mmap module's,
    which keeps a duplicate of ``fd`` open for as long as the mapping lives."""
    addr = _libc.mmap(None, size, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED, fd, 0)
    if addr is None or addr == _MAP_FAILED:
        err = ctypes.get_errno()
        raise OSError(err, f"mmap of the domain arena failed: {os.strerror(err)}")
    array = (ctypes.c_char * size).from_address(addr)
    return memoryview(array).cast("B")
