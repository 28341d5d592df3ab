"""A driver that writes its state out when it ends, as published drivers do: in
``destroy`` (libfuse's), in ``__del__`` (when mfusepy lets it go), at interpreter
exit (atexit), and in a buffered log it never flushes itself.

Constructed as ``Finalizing(STATE_DIR)``; it is the Quirky memory filesystem
without quirks, whose file names it writes out.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Mapping
from typing import Any

from tests.drivers.quirky import Quirky


class Finalizing(Quirky):
    def __init__(self, state_dir: str) -> None:
        super().__init__()
        self.state_dir = state_dir
        # buffered, never flushed here: only a normal exit writes it
        self.log = open(os.path.join(state_dir, "log"), "w")  # noqa: SIM115
        files = self.files  # not self: atexit must not keep the driver alive
        atexit.register(lambda: _save(state_dir, "atexit", files))

    def _save(self, name: str) -> None:
        _save(self.state_dir, name, self.files)

    def create(self, path: str, mode: int, fi: object = None) -> int:
        self.log.write(f"create {path}\n")
        return super().create(path, mode, fi)

    def destroy(self, path: str) -> None:
        self._save("destroy")

    def __del__(self) -> None:
        self._save("del")


def _save(state_dir: str, name: str, files: Mapping[str, object]) -> None:
    with open(os.path.join(state_dir, name), "w") as f:
        f.write("\n".join(sorted(p for p in files if p != "/")) + "\n")


class FinalizingImage(Quirky):
    """On a disk image (``--image``): writes markers to it in ``destroy``, ``__del__``
    and an atexit handler, as a driver flushing its state to its device does."""

    def __init__(self, device: object) -> None:
        super().__init__()
        dev = open(device, "r+b") if isinstance(device, str) else device  # noqa: SIM115
        self.device = dev
        atexit.register(lambda: _mark(dev, 1024, b"ATEXIT"))

    def destroy(self, path: str) -> None:
        _mark(self.device, 0, b"DESTROY")

    def __del__(self) -> None:
        _mark(self.device, 512, b"DEL")


def _mark(device: Any, offset: int, text: bytes) -> None:
    device.seek(offset)
    device.write(text)
    device.flush()
