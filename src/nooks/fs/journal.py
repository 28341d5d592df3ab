# mypy: disable-error-code="empty-body"
"""The journal of a volatile driver in direct mode, kept in the host.

A volatile driver's files live in its memory: a fresh driver starts empty, and
only the requests that made its state can bring it back. In the host-mediated
mode the shadow sees every request and keeps them (``nooks.fs.spec.FsShadow``);
in direct mode the domain serves the kernel itself, so its server
(``nooks.fs.serve``) sends each request's state-changing driver calls here
with one kernel call, ``fs_journal``, before it answers the kernel: what an
application was told is done is in the host before the application hears of it.

Each record is one driver call as ``FsInterface`` declares it (the context
first), with the kernel's virtual handle where the call takes a handle, and,
for a call that opens one, the virtual handle it was given, and the wall-clock
time it was made (the driver's clock). The host checks
each against its declaration; write data is kept in a ``Spill`` (out of the
Python heap). An unlink drops the records that only concerned the file, as the
shadow's journal does (``compacted``), and what they kept is given back (the
spill is repacked once it holds twice what is kept). More than ``max_bytes``
kept (written data, paths, names, values), or ``max_entries`` calls, are
refused with ENOSPC: the request fails, and it is not journaled (an unlink,
rmdir or release is always taken: it frees). Each domain's incarnation calls
through a port of its own, closed when it ends: what a dead domain still sends
does not land after the journal was redone in the next.

After a failure the host redoes the journal in the fresh driver (``redo``, call
by call through the domain, each held to the deadline, each made with the
domain's wall clock at the time of the first: ``FsAdapter.replay``) before the
fresh server takes its first request, and tells it the driver's handles behind
the virtual ones still open. A driver that stamps its files with the time
therefore gives them the same times again: an application that compares them
(tar's "file changed as we read it") sees nothing of the recovery.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec

from nooks.fs.interface import U64, FsInterface, Journaled, os_error
from nooks.fs.spill import Spill
from nooks.fs.writes import Written, WrittenFiles
from nooks.shadow.spec import Meanings
from nooks.wrappers import Interface, Ordinary, declare
from nooks.xpc.messages import ArenaRef

log = logging.getLogger(__name__)

MEANINGS = Meanings.read(FsInterface)
FH_AT = MEANINGS.handle_at
OPENERS, CLOSERS = MEANINGS.openers, MEANINGS.closers
# what a volatile driver's journal keeps (a directory handle changes nothing)
JOURNALED = frozenset(MEANINGS.logged - {"opendir", "releasedir"})
SHRINKING = frozenset({"unlink", "rmdir", "release"})  # taken past the count (they free)
# one driver call: its name, the virtual handle it opened (openers), when it was made
# (ns since the epoch), its arguments
Record = tuple[Journaled, U64 | None, U64, Annotated[list[Any], msgspec.Meta(max_length=8)]]
MAX_RECORDS = 64  # driver calls one request makes that change state (setattr: 4)
MAX_BYTES = 1 << 30  # write data a journal keeps (then ENOSPC)
MAX_ENTRIES = 1 << 20  # driver calls a journal keeps (then ENOSPC)
REPACK_SLACK = 64 << 20  # spilled bytes beyond twice those kept before a repack
_DECLARED = declare(FsInterface)


class JournalInterface(Interface):
    ordinary = (Ordinary(OSError, "errno", make=os_error),)

    def fs_journal(self, records: Annotated[list[Record],
                                            msgspec.Meta(max_length=MAX_RECORDS)]) -> None: ...


@dataclass(frozen=True)
class Spilled:
    """Journaled write data, kept in the journal's ``Spill``."""

    pos: int
    length: int


# (call, arguments, what it opened[, when]): the host mode shadow's and this journal's
Entry = tuple[Any, ...]


MOVERS = frozenset({"rename", "link"})  # calls that name a second path (old, source)


def _paths(e: Entry) -> tuple[str, ...]:
    """The paths a journaled call names: its first, and a rename's or a link's second."""
    args = e[1]
    first = args[1] if len(args) > 1 and isinstance(args[1], str) else None
    if first is None:
        return ()
    if e[0] in MOVERS and len(args) > 2 and isinstance(args[2], str):
        return first, args[2]
    return (first,)


def named_paths(entries: list[Entry]) -> list[str]:
    """Every path the journaled calls name, their parent directories, and the root."""
    paths = {"/"}
    for e in entries:
        args = e[1]
        names = [args[1], args[2]] if e[0] in ("rename", "link", "symlink") else [args[1]]
        for name in names:
            at = name
            while isinstance(at, str) and at.startswith("/") and at not in paths:
                paths.add(at)
                at = os.path.dirname(at)
    return sorted(paths)


def compacted(entries: list[Entry], path: str, open_handles: set[int]) -> list[Entry] | None:
    """``entries`` without those that only concerned ``path``, just unlinked; None if
    they must all stay: a rename, link or symlink named it, a directory above it or
    anything below it (what was there may live on under another name), or a
    handle opened on it is still open."""
    under = path + "/"
    touched = []
    for e in entries:
        for p in _paths(e):
            if p == path:
                if e[0] in MOVERS or e[0] == "symlink":
                    return None
                touched.append(e)
            elif p.startswith(under) or (e[0] in MOVERS
                                         and path.startswith(p.rstrip("/") + "/")):
                return None
    opened = {e[2] for e in touched if e[0] in OPENERS}
    if opened & open_handles:
        return None
    return [e for e in entries if not (len(e[1]) > 1 and e[1][1] == path)
            and not (e[0] in CLOSERS and e[1][2] in opened)]


class Journal:
    """Every state-changing driver call since the mount (``JournalInterface``'s
    host side; one per mount, across the domains that serve it).

    Or, with ``since_checkpoint`` (a driver on an image the host checks,
    ``nooks.fs.checkpointed``), every one since the last ``checkpoint()``, with
    what they wrote (``written``, to read back); nothing is compacted (an unlink
    undoes what was there at the checkpoint), and once it keeps more than
    ``checkpoint_bytes``, ``wake`` asks for a checkpoint."""

    def __init__(self, max_bytes: int = MAX_BYTES, max_entries: int = MAX_ENTRIES, *,
                 since_checkpoint: bool = False, checkpoint_bytes: int = 64 << 20) -> None:
        self.max_bytes, self.max_entries = max_bytes, max_entries
        self.since_checkpoint = since_checkpoint
        self.checkpoint_bytes = checkpoint_bytes
        self.wake: Callable[[], None] | None = None
        self.stopped = False  # (checking stopped: nothing is kept any more)
        self.written = WrittenFiles()
        self.entries: list[Entry] = []
        self.bytes = 0  # what the entries keep: written data, paths, names, values
        self.open: set[int] = set()  # virtual handles whose open is journaled, not closed
        self.replay_errors = 0
        self._lock = threading.Lock()
        self._spill = Spill("nooks-journal")

    # -- from the domain ---------------------------------------------------------------

    def fs_journal(self, records: list[Record], port: JournalPort | None = None) -> None:
        checked = [_checked(op, handle, at, args) for op, handle, at, args in records]
        with self._lock:
            if port is not None and port.closed:
                raise OSError(errno.EIO, "the domain that sent these has been replaced")
            if self.stopped:
                return
            more = sum(_size(e[1]) for e in checked)
            growing = sum(1 for e in checked if e[0] not in SHRINKING)
            if self.bytes + more > self.max_bytes and growing:
                raise OSError(errno.ENOSPC, f"the journal keeps at most "
                              f"{self.max_bytes >> 20} MiB")
            if len(self.entries) + growing > self.max_entries:
                raise OSError(errno.ENOSPC, f"the journal keeps at most "
                              f"{self.max_entries} calls")
            for op, args, handle, at in checked:
                self._add(op, args, handle, at)
            full = self.since_checkpoint and self.bytes > self.checkpoint_bytes
        if full and self.wake is not None:
            self.wake()

    def _add(self, op: str, args: tuple[Any, ...], handle: int | None, at: int) -> None:
        self.bytes += _size(args)
        if self.since_checkpoint:
            # (the domain's server names a write's file by its path, always)
            self.written.note(op, args, args[1] if len(args) > 1 else None)
        if op == "write":
            args = (*args[:2], Spilled(self._spill.put(args[2]), len(args[2])), *args[3:])
        self.entries.append((op, args, handle, at))
        if op in OPENERS:
            if handle:
                self.open.add(handle)
        elif op in CLOSERS:
            self.open.discard(args[2])
        elif op == "unlink" and not self.since_checkpoint:
            rest = compacted(self.entries, args[1], self.open)
            if rest is not None:
                self.entries = rest
                self.bytes = sum(_size(e[1]) for e in rest)
                if self._spill.end > 2 * self.bytes + REPACK_SLACK:
                    self._repack()

    def _repack(self) -> None:
        """The written data still journaled, into a fresh spill (what unlinks freed is
        given back)."""
        fresh = Spill("nooks-journal")
        try:
            for i, (op, args, handle, at) in enumerate(self.entries):
                if op == "write":
                    kept = args[2]
                    data = self._spill.get(kept.pos, kept.length)
                    self.entries[i] = (op, (*args[:2], Spilled(fresh.put(data), kept.length),
                                            *args[3:]), handle, at)
        except BaseException:
            fresh.close()
            raise
        self._spill.close()
        self._spill = fresh

    # -- recovery ----------------------------------------------------------------------

    def redo(self, call: Callable[..., Any]) -> dict[int, int]:
        """Make each journaled call again with ``call`` (a fresh driver's domain's,
        through ``replay``); the driver's handles behind the virtual handles still
        open."""
        real: dict[int, int] = {}
        with self._lock:
            if self.stopped:
                return real
            for op, args, handle, at in self.entries:
                made = list(args)
                if len(made) > 2 and isinstance(made[2], Spilled):
                    made[2] = self._spill.get(made[2].pos, made[2].length)
                fh = FH_AT.get(op)
                if fh is not None and fh < len(made) and made[fh]:  # (0: no open's)
                    if made[fh] not in real:
                        continue  # (its open failed on replay)
                    made[fh] = real[made[fh]]
                try:
                    value = call("replay", at, op, made)
                    if op in OPENERS:
                        value = msgspec.convert(value, U64)
                except (OSError, msgspec.ValidationError) as e:
                    # (it succeeded the first time: only successes come)
                    self.replay_errors += 1
                    log.warning("replaying %s %s: %s", op, made[1], e)
                    continue
                if op in OPENERS:
                    real[int(handle or 0)] = value
                elif op in CLOSERS:
                    real.pop(args[2], None)
            return {h: real[h] for h in self.open if h in real}

    def checkpoint(self) -> None:
        """The image is known good as it is now: what was kept is forgotten."""
        with self._lock:
            self._forget()

    def stop(self) -> None:
        """Keep nothing any more (the host stopped checking)."""
        with self._lock:
            self.stopped = True
            self._forget()

    def _forget(self) -> None:
        self.entries.clear()
        self.bytes = 0
        self.open.clear()
        self.written.clear()
        self._spill.reset()

    def handed(self) -> tuple[list[int], list[str]]:
        """What a fresh server is told: the virtual handles whose open is journaled, and
        the files written since the checkpoint."""
        with self._lock:
            return sorted(self.open), sorted(self.written.files)

    def paths(self) -> list[str]:
        with self._lock:
            return named_paths(self.entries)

    def written_files(self) -> list[tuple[str, Written]]:
        with self._lock:
            return list(self.written.files.items())

    def __len__(self) -> int:
        return len(self.entries)

    def port(self) -> JournalPort:
        """What one domain's incarnation calls: closed when the incarnation ends, after
        which what it still sends is refused (a dead domain's last call must not land
        after the journal was redone in the next)."""
        return JournalPort(self)

    def status(self) -> dict[str, Any]:
        return {"journal": len(self.entries), "journal_bytes": self.bytes,
                "replay_errors": self.replay_errors}

    def close(self) -> None:
        self._spill.close()


class JournalPort:
    """``JournalInterface`` for one incarnation (its end calls ``close``)."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.closed = False

    def fs_journal(self, records: list[Record]) -> None:
        self.journal.fs_journal(records, self)

    def close(self) -> None:
        with self.journal._lock:  # (a call under way lands first; none after)
            self.closed = True


def _size(args: tuple[Any, ...]) -> int:
    """What a journaled call keeps: its paths, names, values and written data."""
    return sum(len(a) if isinstance(a, (str, bytes)) else a.length if isinstance(a, Spilled)
               else 0 for a in args) + 64


def _checked(op: str, handle: int | None, at: int,
             args: list[Any]) -> tuple[str, tuple[Any, ...], int | None, int]:
    """A record as its declaration allows it, or ValueError (the domain misbehaved)."""
    if (handle is None) != (op not in OPENERS):
        raise ValueError(f"a journaled {op} {'without' if handle is None else 'with'} "
                         "the handle it opened")
    spec = _DECLARED.method(op)
    try:
        value = msgspec.convert(args, spec.args_type)
    except msgspec.ValidationError as e:
        raise ValueError(f"a journaled {op}: {spec.describe_error(e)}") from None
    out = msgspec.structs.astuple(value)
    if any(isinstance(x, ArenaRef) for x in out):
        raise ValueError(f"a journaled {op} names an arena (host-only)")
    return op, out, handle, at
