"""What a driver class gives the campaign: how to start its host for one run, its
workload, its data checks and its outcome rules.

The campaign (``nooks.eval.campaign``) is the same for every class: plan faults on
the lines a coverage dry run found, run each fault natively and under nooks, and
classify. A class contributes one ``Target`` per driver, which starts a ``Run``:

* ``Target.start`` prepares a fresh state for the run (an image, a document root,
  a ledger), starts the host as a program through the run's ``Scope`` — natively or
  under nooks, with the fault plan or with ``--record-lines`` for the dry run — and
  waits until it serves; ``NotStarted`` if it did not;
* ``Run.workload`` runs the class's real programs against it and returns what went
  wrong; ``Run.recheck`` looks again at what they left, after the checkpoint a nooks
  host takes before it stops; ``Run.stop`` stops the host; ``Run.after`` checks the
  state it left once it has gone (fsck of an image, a ledger of orders);
* ``Target.lost`` says which problems are the system's failure (for a kernel: the
  crash) rather than an application's, natively and under nooks, and
  ``Target.data_error`` which ones mean data was lost or wrong.

Every program the campaign starts goes through the run's ``Scope`` (see
``nooks.eval.registry``), so that a stop takes all of it down.
"""

from __future__ import annotations

import abc
import contextlib
import importlib.util
import signal
import subprocess
from typing import Any

import msgspec

from nooks.control import request, socket_path
from nooks.eval.registry import Scope


class NotStarted(Exception):
    """The host did not come up (its fault may have struck at start-up)."""


class Run(abc.ABC):
    """One host started for one run."""

    def __init__(self, scope: Scope, name: str, proc: subprocess.Popen[Any],
                 native: bool) -> None:
        self.scope = scope
        self.name = name
        self.proc = proc
        self.native = native

    def status(self, timeout: float = 5.0) -> dict[str, Any] | None:
        """The host's status (``nooks status``), or None if it does not answer."""
        with contextlib.suppress(OSError, msgspec.DecodeError):
            st = request(socket_path(self.name), {"cmd": "status"}, timeout=timeout)
            return st if isinstance(st, dict) else None
        return None

    def checkpoint(self) -> bool:
        """What a nooks host does before it stops, done now (for hosts that check
        their state: the filesystem's consistency checkpoint); whether it did one."""
        return False

    @abc.abstractmethod
    def workload(self, seed: int, on_hang: Any) -> list[str]:
        """Run the programs; what went wrong (empty: nothing)."""

    def recheck(self, on_hang: Any) -> list[str]:
        """Look again at what the workload left (after ``checkpoint``)."""
        return []

    @abc.abstractmethod
    def alive(self) -> bool:
        """Whether the host still serves (without touching what it serves)."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop the host and reap it (the scope kills what is left)."""

    def terminate(self, timeout: float) -> None:
        """SIGTERM the host, wait ``timeout`` seconds for it, kill it if it is still
        there, and reap it."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.scope.kill(self.proc)
                self.proc.wait()
        self.scope.reaped(self.proc)

    def after(self) -> list[str]:
        """Data checks once the host is gone: problems found (empty: none)."""
        return []


class Target(abc.ABC):
    """One driver of one class, as the campaign runs it."""

    driver: str  # its name for --driver
    module: str  # the module faults go into
    limit: float = 10.0  # seconds each program of the workload may take
    modes: tuple[str, ...] = ("host",)  # the modes its host can serve in (--mode)

    @abc.abstractmethod
    def start(self, scope: Scope, tmp: str, name: str, *, native: bool,
              extra: list[str]) -> Run:
        """Prepare a fresh state in ``tmp`` and start the host (``extra``: more
        arguments for it); NotStarted if it does not come up."""

    @abc.abstractmethod
    def lost(self, error: str, native: bool) -> bool:
        """Whether ``error`` (from the workload) means the system failed."""

    @abc.abstractmethod
    def data_error(self, error: str) -> bool:
        """Whether ``error`` means data was lost or wrong."""

    def source(self) -> str:
        spec = importlib.util.find_spec(self.module)
        if spec is None or spec.origin is None:
            raise ValueError(f"cannot find the source of {self.module}")
        with open(spec.origin) as f:
            return f.read()
