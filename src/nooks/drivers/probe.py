# mypy: disable-error-code="empty-body"
"""The probe driver: a small driver that can be told to misbehave in every way.

Used by the XPC benchmark (its null and echo calls) and by the crash matrix:
each ``crash_*`` method fails the way its name says, as a buggy driver would.
Its kernel interface hands out *counters*, host objects behind tracked ids.
"""

from __future__ import annotations

import ctypes
import os
import socket
from typing import Annotated

import msgspec

from nooks.domain.child import kernel, kernel_arena_address
from nooks.wrappers import Interface, Ordinary, Tracked

Payload = Annotated[bytes, msgspec.Meta(max_length=8 << 20)]


class ProbeError(Exception):
    """An error the probe returns on purpose (an ordinary error)."""

    def __init__(self, errno: int) -> None:
        super().__init__(errno)
        self.errno = errno


class ProbeInterface(Interface):
    ordinary = (Ordinary(ProbeError),)

    def null(self) -> None: ...
    def add(self, a: int, b: int) -> int: ...
    def echo(self, data: Payload) -> Payload: ...
    def sink(self, data: Payload) -> int: ...
    def fail_with(self, errno: int) -> None: ...
    def counter(self, start: int) -> int: ...
    def wrong_type(self) -> int: ...
    def crash_segv(self) -> None: ...
    def crash_abort(self) -> None: ...
    def crash_exit(self) -> None: ...
    def crash_exception(self) -> None: ...
    def crash_hang(self) -> None: ...
    def crash_memory(self) -> None: ...
    def crash_kernel_arena(self) -> None: ...
    def crash_bad_kernel_call(self) -> None: ...
    def crash_foreign_object(self) -> None: ...
    def crash_garbage(self) -> None: ...
    def crash_syscall(self) -> None: ...


class Counter:
    def __init__(self, value: int) -> None:
        self.value = value
        self.released = False


class ProbeKernelInterface(Interface):
    def counter_new(self, start: int) -> Annotated[Counter, Tracked("counter", "create")]: ...
    def counter_add(self, c: Annotated[Counter, Tracked("counter")], n: int) -> int: ...
    def counter_free(self, c: Annotated[Counter, Tracked("counter", "release")]) -> None: ...


class ProbeKernel:
    """The host side of the probe's kernel calls."""

    live: list[Counter] = []

    def __init__(self, context: object) -> None:
        self.context = context

    def counter_new(self, start: int) -> Counter:
        c = Counter(start)
        ProbeKernel.live.append(c)
        return c

    def counter_add(self, c: Counter, n: int) -> int:
        c.value += n
        return c.value

    def counter_free(self, c: Counter) -> None:
        self.release_counter(c)

    def release_counter(self, c: Counter) -> None:
        c.released = True
        if c in ProbeKernel.live:
            ProbeKernel.live.remove(c)


class Probe:
    def null(self) -> None:
        return None

    def add(self, a: int, b: int) -> int:
        return a + b

    def echo(self, data: bytes) -> bytes:
        return data

    def sink(self, data: bytes) -> int:
        return len(data)

    def fail_with(self, errno: int) -> None:
        raise ProbeError(errno)

    def counter(self, start: int) -> int:
        """Make a counter on the host, add to it twice through kernel calls."""
        k = kernel()
        c = k.counter_new(start)
        k.counter_add(c, 1)
        return int(k.counter_add(c, 1))

    def wrong_type(self) -> int:
        return "not an int"  # type: ignore[return-value]

    def crash_segv(self) -> None:
        ctypes.string_at(0)

    def crash_abort(self) -> None:
        os.abort()

    def crash_exit(self) -> None:
        os._exit(0)

    def crash_exception(self) -> None:
        raise KeyError("the driver lost its key")

    def crash_hang(self) -> None:
        while True:
            pass

    def crash_memory(self) -> None:
        hog = []
        while True:
            hog.append(bytearray(32 << 20))

    def crash_kernel_arena(self) -> None:
        ctypes.memset(kernel_arena_address(), 0x41, 16)

    def crash_bad_kernel_call(self) -> None:
        kernel().counter_add(kernel().counter_new(1), "one")

    def crash_foreign_object(self) -> None:
        kernel().counter_add(987654, 1)

    def crash_garbage(self) -> None:
        # write straight onto the channel, as a scribbling driver might (it is not in
        # the way of the driver's own descriptors: it looks for it)
        for fd in sorted(int(n) for n in os.listdir("/proc/self/fd") if int(n) > 2):
            try:
                s = socket.socket(fileno=os.dup(fd))
            except OSError:
                continue
            try:
                if s.family == socket.AF_UNIX and s.type == socket.SOCK_SEQPACKET:
                    s.send(b"\xc1\xc1 garbage \xff")
            finally:
                s.close()
        while True:
            pass

    def crash_syscall(self) -> None:
        os.open("/etc/hostname", os.O_RDONLY)
