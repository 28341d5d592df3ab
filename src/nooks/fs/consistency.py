"""Consistency checkpoints: a driver that corrupts its image quietly is caught and undone.

A fail-stop driver is handled by the shadow: the image holds every completed
request (``nooks.fs.blockdev``), a fresh driver takes over. A driver that goes
wrong *without* failing — a bad cluster link, a directory entry written over
another — leaves an inconsistent image behind and carries on. For drivers
whose image format has a checker (vfat: ``fsck.fat -n``), the host checks the
image at checkpoints, in the manner of Recon (runtime consistency checks at
commit points) and Membrane (checkpoint, log, roll back and replay):

* between checkpoints the shadow journals every state-changing request
  (``FsShadow(journaled=True)``) and the block device saves what each committed
  write overwrites (``UndoLog``);
* a checkpoint is taken every ``interval`` seconds while the image changes, before
  a file written since the last one is opened to be read, when the journal
  grows past ``max_bytes``, and before the unmount; requests wait while it runs
  (a few milliseconds: in direct mode, ``hold`` pauses the domain's server,
  ``nooks.fs.checkpointed``);
* a check is the checker's verdict, then every written file's size and sampled
  bytes read back through the driver (``nooks.fs.writes``);
* a consistent image becomes the new checkpoint (journal and undo log cleared);
* an inconsistent one condemns the driver: the image is put back as it was at
  the last checkpoint, a fresh driver is started on it, the handles open then
  are re-opened and the journal replayed into it, and the image is checked
  again. If a fresh driver leaves it inconsistent too, the fault is the
  driver's design, not a transient failure: the result is kept (and counted)
  and checking stops, rather than restart a driver for the same damage for ever.

What it cannot do: answers the applications already read between the
checkpoint and the check (e.g. data read through the handle that wrote it) are
not taken back; and damage neither the checker nor the samples see is not
found. A volume that is not consistent at mount is not checked (the checker
would blame every driver for it).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Sized
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from nooks.domain.host import Domain
from nooks.errors import CheckerError, Closed, DomainDown, DomainFailed, Restarting
from nooks.fs.blockdev import UndoLog
from nooks.fs.spec import ROOT_CTX
from nooks.fs.writes import Written, WrittenFiles
from nooks.shadow.engine import Shadow

log = logging.getLogger(__name__)


@dataclass
class CheckStats:
    checks: int = 0
    inconsistent: int = 0  # checks that found the image inconsistent
    rolled_back: int = 0  # of those, undone by a fresh driver's replay
    kept: int = 0  # of those, inconsistent again after the replay
    last_finding: str = ""
    check_ms: list[float] = field(default_factory=list)  # the last 100


def run_checker(command: tuple[str, ...], image: str, timeout: float = 60.0) -> tuple[bool, str]:
    """Run the checker on the image: (consistent, what it said); CheckerError if it
    could not say."""
    try:
        r = subprocess.run([*command, image], capture_output=True, text=True, errors="replace",
                           timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise CheckerError(f"{command[0]}: {e}") from None
    said = (r.stdout + r.stderr).strip()
    if r.returncode < 0:
        raise CheckerError(f"{command[0]} was killed by signal {-r.returncode}")
    return r.returncode == 0, said


def preflight(command: tuple[str, ...], image: str) -> str | None:
    """Why the image cannot be checked at checkpoints, or None if it can: the checker
    must be there, and must find the image consistent before the driver touches it
    (else every driver would be blamed for damage that predates it)."""
    if shutil.which(command[0]) is None:
        return f"{command[0]} is not installed"
    try:
        ok, said = run_checker(command, image)
    except CheckerError as e:
        return f"the checker failed at mount ({e})"
    if not ok:
        return "the image was not consistent at mount (" + _summary(said) + ")"
    return None


class Checkpoints:
    """Checkpoints of one mounted image; every request passes through ``call``.

    Built only for an image that ``preflight`` found checkable; the journal and
    the undo log start empty, so the image as mounted is the first checkpoint.
    """

    def __init__(self, *, image: str, command: tuple[str, ...], shadow: Shadow[Any],
                 fs: Kept, domain: Domain, undo: UndoLog, name: str, interval: float = 1.0,
                 max_bytes: int = 64 << 20,
                 invalidate: Callable[[list[str]], int] | None = None,
                 hold: Callable[[], Callable[[], None] | None] | None = None,
                 let_go: Callable[[bool], None] | None = None) -> None:
        """``hold``: where requests do not pass through ``call`` (direct mode), how a
        checkpoint gets a moment with no request half done: what it returns lets the
        requests go on (None: they could not be held, and there is no checkpoint);
        ``let_go``: after each checkpoint, lets go a request that waits for one
        (True: none will be taken any more)."""
        self.image = image
        self.command = command
        self.shadow = shadow
        self.fs = fs
        self.domain = domain
        self.undo = undo
        self.name = name
        self.interval = interval
        self.max_bytes = max_bytes
        self.invalidate = invalidate
        self.hold = hold
        self.let_go = let_go
        self.stats = CheckStats()
        self.off: str | None = None  # why checking stopped, if it did
        # held for each request and for each checkpoint: a check sees no request
        # half done, and a rollback races no request
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()  # a checkpoint is asked for before the interval
        self._why = "interval"
        self._thread: threading.Thread | None = None
        self._readback_failures = 0  # driver failures while reading back, in a row
        # every replay of a rollback (a fresh driver may fail in it) starts from the
        # checkpoint's image
        fs.rewinds_with(undo.rollback)

    def start(self) -> None:
        if self.off is None and self.interval > 0:
            self._thread = threading.Thread(target=self._loop, name="nooks-checkpoints",
                                            daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop taking checkpoints; returns once none is in progress."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=120)  # a checker run is bounded by 60 s
        with self.lock:
            self.off = self.off or "unmounted"
        if self.let_go is not None:
            self.let_go(True)

    def unmounting(self) -> None:
        """The last checkpoint, before the driver is told to stop."""
        self._quietly("unmount")
        self.invalidate = None

    def wake(self, why: str) -> None:
        """Take a checkpoint now, on the checkpoints' thread (a request asks)."""
        self._why = why
        self._wake.set()

    def call(self, op: str, *args: Any) -> Any:
        with self.lock:
            if op == "open" and args[2] & os.O_ACCMODE != os.O_WRONLY \
                    and args[1] in self.fs.written and not self.fs.is_open(args[1]):
                # a file written since the checkpoint and closed is opened to be read:
                # what it reads back as is checked before anyone reads it
                self._checkpoint("re-open")
            result = self.shadow.call(op, *args)
            if self.fs.journal_bytes + self.undo.bytes > self.max_bytes:
                self._checkpoint("journal size")
            return result

    def _loop(self) -> None:
        while True:
            self._wake.wait(self.interval)
            if self._stop.is_set():
                return
            why = self._why if self._wake.is_set() else "interval"
            self._wake.clear()
            try:
                self._quietly(why)
            except Exception:
                log.exception("%s: a checkpoint failed", self.name)
            finally:
                if self.let_go is not None:
                    self.let_go(self.off is not None)

    def checkpoint(self) -> bool:
        """Take a checkpoint now; whether the image was consistent."""
        return self._quietly("asked")

    def _quietly(self, why: str) -> bool:
        """A checkpoint, with no request half done (``hold``)."""
        with self.lock:
            if self.hold is None:
                return self._checkpoint(why)
            if self.off is not None or self.shadow.dead is not None:
                return True
            if not self.undo.bytes and not self.fs.written and not self.fs.journal:
                return True  # (nothing has changed: nothing to hold the requests for)
            let_go = self.hold()
            if let_go is None:
                return True  # (the driver failed or is being replaced: next time)
            try:
                return self._checkpoint(why)
            finally:
                let_go()

    def _stop_checking(self, why: str) -> None:
        """Checking can no longer help: stop, and stop keeping what it would need."""
        self.off = why
        self.fs.stop_journal()
        self.undo.disable()
        log.error("%s: consistency checks stop: %s", self.name, why)

    def _checkpoint(self, why: str) -> bool:
        if self.off is not None or self.shadow.dead is not None:
            return True
        if self.undo.broken is not None:
            self._stop_checking(f"the undo log failed ({self.undo.broken}): nothing could "
                                "be rolled back")
            return True
        if not self.undo.bytes and not self.fs.written:
            # the image has not changed (open, release...): a checkpoint for free
            if self.fs.journal:
                self.fs.checkpoint()
            return True
        gen = self.shadow.generation
        try:
            ok, said = self._check()
            self._readback_failures = 0
        except CheckerError as e:
            log.warning("%s: no checkpoint: %s", self.name, e)
            return True
        except (DomainFailed, DomainDown) as e:
            # the driver failed while its writes were read back: an ordinary recovery,
            # and the checkpoint next time -- unless the fresh driver fails there too
            self._readback_failures += 1
            if self._readback_failures < 2:
                self.shadow.recover_now(e.report, gen)
                return True
            self._readback_failures = 0
            ok, said = False, f"the driver failed twice while its writes were read back: {e}"
        except (Closed, Restarting):
            return True
        if ok:
            self.fs.checkpoint()
            self.undo.clear()
            return True
        return self._roll_back(why, said)

    def _roll_back(self, why: str, said: str) -> bool:
        self.stats.inconsistent += 1
        self.stats.last_finding = said
        requests = len(self.fs.journal)
        log.warning("%s: image inconsistent at a checkpoint (%s, %d requests since the last "
                    "one): %s; rolling back", self.name, why, requests, _summary(said))
        touched = self.fs.journal_paths()
        # (from the condemnation on, whoever recovers the driver -- this thread, or
        # one that saw it die -- makes the recovery a rollback)
        with self.fs.rolling_back():
            gen = self.shadow.generation  # (the driver condemned is the current one)
            try:
                report = self.domain.condemn(
                    f"the image is inconsistent after {requests} requests: "
                    f"{_summary(said)}", "checkpoint")
            except (Closed, Restarting):
                return False  # the driver is down already: its recovery comes first
            self.shadow.recover_now(report, gen)
        if self.shadow.dead is not None:
            return False
        if self.invalidate is not None and why != "unmount":
            # what the kernel cached of these files may differ from what the fresh
            # driver made of them (a directory's size, a file's times): drop it, from
            # another thread (this one may be serving one of those files' requests)
            threading.Thread(target=self.invalidate, args=(touched,), daemon=True).start()
        let_go = self.hold() if self.hold is not None else _nothing
        if let_go is None:
            return False  # (the fresh driver failed already: the next checkpoint checks)
        try:
            try:
                ok, said = self._check()
            except (CheckerError, DomainFailed, DomainDown, Closed, Restarting) as e:
                ok, said = False, f"the check after the rollback did not finish: {e}"
            return self._after_rollback(ok, said)
        finally:
            let_go()

    def _after_rollback(self, ok: bool, said: str) -> bool:
        if ok:
            self.stats.rolled_back += 1
            self.fs.checkpoint()
            self.undo.clear()
        else:
            # the fresh driver did the same: the fault is in the driver (or the
            # checker), and checking again would restart a healthy driver for ever
            self.stats.kept += 1
            self._stop_checking(f"a fresh driver left the image inconsistent too "
                                f"({_summary(said)}); kept as it is")
        return False

    def _check(self) -> tuple[bool, str]:
        """The checker's verdict on the image, then the written data read back."""
        t0 = time.monotonic()
        try:
            # the image holds every completed request; nothing is in flight (the lock)
            ok, said = run_checker(self.command, self.image)
            if ok:
                ok, said = self._read_back()
        finally:
            self.stats.checks += 1
            self.stats.check_ms = [*self.stats.check_ms[-99:],
                                   (time.monotonic() - t0) * 1e3]
        return ok, said

    def _read_back(self) -> tuple[bool, str]:
        """Whether every file written since the checkpoint has the size and (sampled)
        bytes the applications wrote, as the driver reads it now. A file the driver
        says is not there is skipped: it may be gone under another name (vfat names
        are case-insensitive), which this bookkeeping does not follow."""
        for path, w in self.fs.written_files():
            try:
                attrs = self.domain.call("getattr", ROOT_CTX, path, None)
            except OSError:
                continue
            size = attrs.get("st_size") if isinstance(attrs, dict) else None
            if not isinstance(size, int) or (w.size is not None and size != w.size) \
                    or size < w.least:
                want = w.size if w.size is not None else f"at least {w.least}"
                return False, f"{path}: {size} bytes, {want} written"
            if not w.samples:
                continue
            try:
                fh = self.domain.call("open", ROOT_CTX, path, os.O_RDONLY)
            except OSError as e:
                return False, f"{path}: written since the checkpoint, cannot open: {e.strerror}"
            try:
                for offset, data in w.samples:
                    got = self.domain.call("read", ROOT_CTX, path, len(data), offset, fh)
                    if got != data:
                        return False, f"{path}: {len(data)} bytes at {offset} read back wrong"
            except OSError as e:
                return False, f"{path}: written since the checkpoint, cannot read: {e.strerror}"
            finally:
                with contextlib.suppress(OSError):
                    self.domain.call("release", ROOT_CTX, path, fh)
        return True, ""

    def __repr__(self) -> str:
        state = f"off ({self.off})" if self.off else "on"
        return (f"<Checkpoints {self.name} {state} checks={self.stats.checks} "
                f"inconsistent={self.stats.inconsistent} rolled_back={self.stats.rolled_back} "
                f"journal={len(self.fs.journal)} undo={self.undo.bytes}B>")

    def status(self) -> dict[str, Any]:
        times = sorted(self.stats.check_ms)
        return {
            "checker": " ".join(self.command), "interval_s": self.interval,
            "state": "off: " + self.off if self.off else "on",
            "checks": self.stats.checks, "inconsistent": self.stats.inconsistent,
            "rolled_back": self.stats.rolled_back, "kept_inconsistent": self.stats.kept,
            "replay_errors": self.fs.replay_errors,
            "check_ms_p50": times[len(times) // 2] if times else None,
            "last_finding": _summary(self.stats.last_finding) if self.stats.last_finding
            else None,
            "journal": len(self.fs.journal),
        }


class Kept(Protocol):
    """What is kept between checkpoints: the journal of requests since the last,
    what they wrote, and how a rollback's recovery is made (``FsShadow``; in direct
    mode, ``nooks.fs.checkpointed.DirectJournal``)."""

    @property
    def journal(self) -> Sized: ...

    @property
    def replay_errors(self) -> int: ...

    @property
    def journal_bytes(self) -> int: ...

    @property
    def written(self) -> WrittenFiles: ...

    def written_files(self) -> list[tuple[str, Written]]: ...

    def is_open(self, path: str) -> bool: ...

    def journal_paths(self) -> list[str]: ...

    def checkpoint(self) -> None: ...

    def stop_journal(self) -> None: ...

    def rewinds_with(self, rewind: Callable[[], object]) -> None: ...

    def rolling_back(self) -> AbstractContextManager[None]: ...


def _nothing() -> None:
    pass


def _summary(text: str) -> str:
    """The checker's findings in a line (fsck.fat: without its version banner)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if lines and lines[0].startswith("fsck"):
        lines = lines[1:]
    return " / ".join(lines[:3])[:300] or "no output"

