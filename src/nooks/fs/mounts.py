"""The kernel's mount table, read without touching any mount.

Looking at a mount can hang (a stuck FUSE server) or fail (a dead one answers
ENOTCONN), so nothing here stats a mountpoint: only its parent is resolved,
and ``/proc/self/mounts`` says what is mounted where. A nooks mount is a FUSE
mount whose source is ``nooks-<driver>`` (the host's ``fsname``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

FSNAME_PREFIX = "nooks-"


@dataclass(frozen=True)
class MountEntry:
    source: str
    target: str
    fstype: str

    @property
    def nooks(self) -> bool:
        return self.fstype.startswith("fuse") and self.source.startswith(FSNAME_PREFIX)


def resolve(mnt: str) -> str:
    """``mnt`` as an absolute path with its parent's symlinks resolved (not its own:
    resolving the mountpoint itself would stat the mount)."""
    parent, name = os.path.split(os.path.abspath(mnt))
    return os.path.join(os.path.realpath(parent), name)


def _unescape(field: bytes) -> str:
    # /proc/mounts escapes space, tab, newline and backslash as octal
    out = bytearray()
    i = 0
    while i < len(field):
        if field[i] == 0x5C and field[i + 1:i + 4].isdigit() and len(field[i + 1:i + 4]) == 3:
            out.append(int(field[i + 1:i + 4], 8))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return os.fsdecode(bytes(out))


def entry(mnt: str) -> MountEntry | None:
    """The topmost mount at ``mnt``, if anything is mounted there."""
    target = resolve(mnt)
    found = None
    with open("/proc/self/mounts", "rb") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 2 and _unescape(fields[1]) == target:
                found = MountEntry(_unescape(fields[0]), target, fields[2].decode())
    return found


def is_mounted(mnt: str) -> bool:
    """Whether the kernel has a mount at ``mnt`` (even one whose root cannot be stat'ed)."""
    return entry(mnt) is not None
