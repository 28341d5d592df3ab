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
* a checkpoint is taken every ``interval`` seconds while requests come, when the
  journal grows past ``max_bytes``, and before the unmount; requests wait while
  the checker runs (a few milliseconds);
* a consistent image becomes the new checkpoint (journal and undo log cleared);
* an inconsistent one condemns the driver: the image is put back as it was at
  the last checkpoint, a fresh driver is started on it, the handles open then
  are re-opened and the journal replayed into it, and the image is checked
  again. If a fresh driver leaves it inconsistent too, the fault is the
  driver's design, not a transient failure: the result is kept (and counted)
  rather than retried for ever.

What it cannot do: answers the applications already read between the
checkpoint and the check (e.g. data read back through a broken chain) are not
taken back; and damage the checker cannot see (wrong bytes inside a file) is
not found. A volume that is not consistent at mount is not checked (the
checker would blame every driver for it).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nooks.domain.host import Domain
from nooks.errors import Closed, DomainDown, DomainFailed
from nooks.fs.blockdev import UndoLog
from nooks.shadow.engine import Shadow
from nooks.shadow.fs import ROOT_CTX, FsShadow

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
    """Run the checker on the image: (consistent, what it said)."""
    try:
        r = subprocess.run([*command, image], capture_output=True, text=True, timeout=timeout,
                           check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, f"{command[0]}: {e}"
    said = (r.stdout + r.stderr).strip()
    return r.returncode == 0, said


class Checkpoints:
    """Checkpoints of one mounted image; every request passes through ``call``."""

    def __init__(self, *, image: str, command: tuple[str, ...], shadow: Shadow, fs: FsShadow,
                 domain: Domain, undo: UndoLog, name: str, interval: float = 1.0,
                 max_bytes: int = 64 << 20,
                 invalidate: Callable[[list[str]], int] | None = None) -> None:
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
        self.stats = CheckStats()
        self.off: str | None = None  # why checking is off, if it is
        # held for each request and for each checkpoint: a check sees no request
        # half done, and a rollback races no request
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if shutil.which(command[0]) is None:
            self.off = f"{command[0]} is not installed"
            log.warning("%s: not checking consistency: %s", name, self.off)
            return
        ok, said = self._check()
        if not ok:
            self.off = "the image was not consistent at mount (" + _summary(said) + ")"
            log.warning("%s: not checking consistency: %s", name, self.off)
            return
        fs.checkpoint()
        undo.clear()

    def start(self) -> None:
        if self.off is None and self.interval > 0:
            self._thread = threading.Thread(target=self._loop, name="nooks-checkpoints",
                                            daemon=True)
            self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def call(self, op: str, *args: Any) -> Any:
        with self.lock:
            if op == "destroy":
                self._checkpoint("unmount")
            elif op == "open" and args[2] & os.O_ACCMODE != os.O_WRONLY \
                    and args[1] in self.fs.written and not self.fs.is_open(args[1]):
                # a file written since the checkpoint and closed is opened to be read:
                # what it reads back as is checked before anyone reads it
                self._checkpoint("re-open")
            result = self.shadow.call(op, *args)
            if self.fs.journal_bytes + self.undo.bytes > self.max_bytes:
                self._checkpoint("journal size")
            return result

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            with self.lock:
                self._checkpoint("interval")

    def checkpoint(self) -> bool:
        """Take a checkpoint now; whether the image was consistent."""
        with self.lock:
            return self._checkpoint("asked")

    def _checkpoint(self, why: str) -> bool:
        if self.off is not None or self.shadow.dead is not None:
            return True
        if not self.fs.journal and not self.undo.bytes:
            return True  # nothing changed since the last checkpoint
        gen = self.shadow.generation
        try:
            ok, said = self._check()
        except (DomainFailed, DomainDown) as e:
            # the driver failed while its writes were read back: an ordinary recovery;
            # the checkpoint is taken next time
            self.shadow.recover_now(e.report, gen)
            return True
        except Closed:
            return True
        if ok:
            self.fs.checkpoint()
            self.undo.clear()
            return True
        self.stats.inconsistent += 1
        self.stats.last_finding = said
        requests = len(self.fs.journal)
        log.warning("%s: image inconsistent at a checkpoint (%s, %d requests since the last "
                    "one): %s; rolling back", self.name, why, requests, _summary(said))
        try:
            report = self.domain.condemn(
                f"the image is inconsistent after {requests} requests: {_summary(said)}",
                "checkpoint")
        except Closed:
            return False
        touched = self.fs.journal_paths()
        self.undo.rollback()
        self.fs.rolled_back = True
        self.shadow.recover_now(report, gen)
        self.fs.rolled_back = False
        if self.invalidate is not None:
            # what the kernel cached of these files may differ from what the fresh
            # driver made of them (a directory's size, a file's times): drop it, from
            # another thread (this one may be serving one of those files' requests)
            threading.Thread(target=self.invalidate, args=(touched,), daemon=True).start()
        if self.shadow.dead is not None:
            return False
        try:
            ok, said = self._check()
        except (DomainFailed, DomainDown, Closed) as e:
            ok, said = False, f"the fresh driver failed while checked: {e}"
        if ok:
            self.stats.rolled_back += 1
        else:
            self.stats.kept += 1
            log.error("%s: a fresh driver left the image inconsistent too (%s); keeping it",
                      self.name, _summary(said))
        self.fs.checkpoint()
        self.undo.clear()
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
        bytes the applications wrote, as the driver reads it now."""
        for path, w in self.fs.written_files():
            try:
                attrs = self.domain.call("getattr", ROOT_CTX, path, None)
            except OSError as e:
                return False, f"{path}: written since the checkpoint, now {e.strerror}"
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

    def status(self) -> dict[str, Any]:
        times = sorted(self.stats.check_ms)
        return {
            "checker": " ".join(self.command), "interval_s": self.interval,
            "state": "off: " + self.off if self.off else "on",
            "checks": self.stats.checks, "inconsistent": self.stats.inconsistent,
            "rolled_back": self.stats.rolled_back, "kept_inconsistent": self.stats.kept,
            "check_ms_p50": times[len(times) // 2] if times else None,
            "last_finding": _summary(self.stats.last_finding) if self.stats.last_finding
            else None,
            "journal": len(self.fs.journal),
        }


def _summary(text: str) -> str:
    """The checker's findings in a line (fsck.fat: without its version banner)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if lines and lines[0].startswith("fsck"):
        lines = lines[1:]
    return " / ".join(lines[:3])[:300] or "no output"

