"""What the applications wrote since the last checkpoint, to read back and compare.

Per file (by its current path): its size where the requests since the
checkpoint determine it (created, opened with O_TRUNC or truncated since), the
least size the writes imply, and a few samples of the written bytes — the
first and last bytes of each write, the most recent ``MAX_SAMPLES`` of them,
minus whatever a later write or truncate replaced. A driver that wrote at the
wrong offset, wrote nothing, linked the wrong clusters or recorded the wrong
size reads back differently (``nooks.fs.consistency`` does the reading).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

SAMPLE = 256  # bytes at each end of a write
MAX_SAMPLES = 8  # per file


@dataclass
class Written:
    size: int | None = None  # known exactly, or None
    least: int = 0  # the size is at least this
    samples: list[tuple[int, bytes]] = field(default_factory=list)

    def write(self, offset: int, data: bytes) -> None:
        if not data:
            return
        end = offset + len(data)
        self._drop(offset, end)
        if len(data) <= 2 * SAMPLE:
            self.samples.append((offset, bytes(data)))
        else:
            self.samples.append((offset, bytes(data[:SAMPLE])))
            self.samples.append((end - SAMPLE, bytes(data[-SAMPLE:])))
        del self.samples[:-MAX_SAMPLES]
        self.least = max(self.least, end)
        if self.size is not None:
            self.size = max(self.size, end)

    def truncate(self, length: int) -> None:
        self.size = length
        self.least = length
        self.samples = [(o, d[:length - o]) for o, d in self.samples if o < length]

    def _drop(self, lo: int, hi: int) -> None:
        self.samples = [(o, d) for o, d in self.samples if o + len(d) <= lo or o >= hi]


class WrittenFiles:
    """The files written since the last checkpoint. Not thread-safe: the caller locks."""

    def __init__(self) -> None:
        self.files: dict[str, Written] = {}

    def __bool__(self) -> bool:
        return bool(self.files)

    def __contains__(self, path: object) -> bool:
        return path in self.files

    def created(self, path: str) -> None:
        self.files[path] = Written(size=0)

    def write(self, path: str, offset: int, data: bytes) -> None:
        self.files.setdefault(path, Written()).write(offset, data)

    def truncate(self, path: str, length: int) -> None:
        self.files.setdefault(path, Written()).truncate(length)

    def removed(self, path: str) -> None:
        self.files.pop(path, None)

    def renamed(self, old: str, new: str) -> None:
        self.files.pop(new, None)  # replaced
        for path in [p for p in self.files if p == old or p.startswith(old + "/")]:
            self.files[new + path[len(old):]] = self.files.pop(path)

    def clear(self) -> None:
        self.files.clear()

    def note(self, op: str, args: tuple[Any, ...], path: str | None) -> None:
        """What journaled driver call ``op`` (its arguments as ``FsInterface`` declares
        them, the context first) wrote; ``path``: the file a write or truncate went
        to (its handle's, where it names one)."""
        if op == "create":
            self.created(args[1])
        elif op == "open" and args[2] & os.O_TRUNC and args[2] & os.O_ACCMODE != os.O_RDONLY:
            self.truncate(args[1], 0)
        elif op in ("write", "truncate"):
            if path is None:
                return
            if op == "write":
                self.write(path, args[3], args[2])
            else:
                self.truncate(path, args[2])
        elif op == "unlink":
            self.removed(args[1])
        elif op == "rename":
            self.renamed(args[1], args[2])
        elif op == "link":
            # two names for one file: writes through one change what the other reads
            self.removed(args[1])
            self.removed(args[2])
