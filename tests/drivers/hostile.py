"""Drivers that try to make their host hold too much, or outlive their domain.

* ``Leaky``: every open leaks a descriptor, until the domain runs out (EMFILE);
* ``Forking``: starts processes that leave its process group (``sleep MARKER`` in
  a session of their own) when built, and N more on ``mkdir /spawn-N``;
* ``Flooding(device)``: on a host-owned image; writing ``/flood`` rewrites one
  block of the device without end within one request (posted writes);
* ``Garbage``: getattr of ``/garbage`` puts a deeply nested message on its channel;
  getxattr of anything answers 80 MiB.
"""

from __future__ import annotations

import errno
import os
import subprocess
from typing import Any

import mfusepy

from tests.drivers.quirky import Quirky


class Leaky(Quirky):
    def __init__(self) -> None:
        super().__init__()
        self.leaked: list[int] = []

    def open(self, path: str, flags: int) -> int:
        try:
            self.leaked.append(os.open("/dev/null", os.O_RDONLY))
        except OSError as e:
            raise mfusepy.FuseOSError(e.errno or errno.EIO) from None
        return super().open(path, flags)


class Forking(Quirky):
    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker = marker
        self.children = [self._spawn()]

    def _spawn(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(["sleep", self.marker], start_new_session=True)

    def mkdir(self, path: str, mode: int) -> int:
        if path.startswith("/spawn-"):
            try:
                for _ in range(int(path.removeprefix("/spawn-"))):
                    self.children.append(self._spawn())
            except OSError as e:
                raise mfusepy.FuseOSError(e.errno or errno.EIO) from None
        return super().mkdir(path, mode)


class Flooding(Quirky):
    def __init__(self, device: Any) -> None:
        super().__init__()
        self.device = device

    def write(self, path: str, data: bytes, offset: int, fh: int) -> Any:
        if path == "/flood":
            block = bytes(64 << 10)
            while True:  # the same block, again and again, in one request
                self.device.seek(0)
                self.device.write(block)
        return super().write(path, data, offset, fh)


class Garbage(Quirky):
    """Also: ``/negative`` has a negative size; reads return more than asked."""

    def getattr(self, path: str, fh: int | None = None) -> Any:
        if path == "/negative":
            return {"st_mode": 0o100644, "st_size": -1, "st_nlink": 1}
        if path == "/garbage":
            from nooks.domain import child

            rt = child._runtime
            assert rt is not None
            rt.sock.send(b"\x91" * 200_000 + b"\x00")  # nested 200,000 deep
        return super().getattr(path, fh)

    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        return b"x" * (80 << 20)

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        return super().read(path, size, offset, fh) + b"more than asked"


class Boastful(Quirky):
    """Says it implements what no driver may: a dunder and ``lock``."""

    def __init__(self) -> None:
        super().__init__()
        from nooks.fs import adapter

        adapter.FsAdapter.implemented = (  # type: ignore[method-assign]
            lambda self: ["getattr", "readdir", "lock", "__init__"])


class Snooping(Quirky):
    """getxattr ``user.snoop`` answers what the driver could reach: its host's memory
    and environment through /proc, its host's control socket, a signal to its host."""

    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        import json
        import signal

        if name != "user.snoop":
            return super().getxattr(path, name, position)
        host = os.getppid()
        got: dict[str, str] = {}
        for what in ("environ", "mem", "maps"):
            try:
                with open(f"/proc/{host}/{what}", "rb") as f:
                    f.read(16)
                got[what] = "read"
            except OSError as e:
                got[what] = type(e).__name__
        from nooks.control import request, run_dir

        replies, errors = [], []
        for entry in sorted(os.listdir(run_dir())):
            if entry.endswith(".sock"):  # live hosts, and sockets dead ones left
                try:
                    replies.append(json.dumps(request(os.path.join(run_dir(), entry),
                                                      {"cmd": "status"}, timeout=5.0)))
                except (TimeoutError, OSError) as e:
                    errors.append(type(e).__name__)
        got["control"] = " | ".join(replies) if replies else f"no reply: {errors}"
        try:
            os.kill(host, signal.SIGCONT)
            got["signal"] = "sent"
        except OSError as e:
            got["signal"] = type(e).__name__
        got["domains"] = "none found"
        for entry in os.listdir("/proc"):  # another domain (the warm spare, say)
            if entry.isdigit() and int(entry) != os.getpid():
                try:
                    with open(f"/proc/{entry}/cmdline", "rb") as f:
                        if b"nooks.domain" not in f.read():
                            continue
                    with open(f"/proc/{entry}/mem", "rb"):
                        got["domains"] = "opened"
                        break
                except OSError as e:
                    got["domains"] = type(e).__name__
        return json.dumps(got).encode()
