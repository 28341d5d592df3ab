"""Drivers under supervision, and the base of every class's host.

``Supervised`` is one driver as a host runs it: a domain behind its shadow, or
(native mode) the driver in the host's own process with nothing in between —
the baseline every ratio and every reliability table compares with. It owns
what every class needs and none may copy:

* start-up with retries: a driver that fails while loading is started again
  from its code on disk, as the shadow would restart it later (``start_tries``
  times; each failure is kept in ``start_failures``);
* recovery of a driver that dies while idle (the engine's own thread: see
  ``Shadow``); the recoveries, as JSON, in ``status``;
* native mode *with* fault plans: the faulty module is loaded in this process,
  and an injected fault is armed for the next request, so that native rows of
  a campaign fail as the isolated ones would;
* ``inject`` (a fault now, and what became of it), ``settle`` (wait for the warm
  spare), ``status``, ``close``.

``SupervisedHost`` is the base of a class's host: one or more ``Supervised``
drivers (the web class runs a pool of them), the control socket, and the
commands every host answers (``status``, ``settle``, ``inject``); a class adds
its own commands to ``commands`` and its own figures to ``status``.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from nooks.control import ControlServer
from nooks.domain.config import FAULTS, FaultPlan
from nooks.domain.host import Domain
from nooks.domain.native import NativeDomain
from nooks.domain.spec import DriverSpec
from nooks.errors import DomainFailed, FailureReport
from nooks.faults import Fault, loader
from nooks.shadow.engine import MAX_HELD, Recovery, Shadow
from nooks.shadow.spec import ClassSpec

log = logging.getLogger(__name__)

S = TypeVar("S", bound=ClassSpec)


class Supervised(Generic[S]):
    """One driver: in a domain behind a shadow built from ``spec``, or natively."""

    def __init__(self, driver: DriverSpec, spec: S, *, native: bool = False,
                 fault: FaultPlan | None = None, start_tries: int = 3, max_tries: int = 3,
                 block_timeout: float = 60.0, max_held: int = MAX_HELD,
                 what: str = "driver", host: str = "",
                 on_recovery: Callable[[Supervised[S], Recovery], None] | None = None) -> None:
        self.spec: S = spec
        self.native = native
        self.what = what  # "driver", "worker 3": how log lines name it
        self.host = host or driver.label
        self.on_recovery = on_recovery
        self.start_failures: list[FailureReport] = []
        self.fault_site: str | None = None
        self._pending_fault: str | None = None
        self.domain: Domain | None = None
        self.shadow: Shadow[S] | None = None
        self.nat: NativeDomain | None = None
        if native:
            self._start_native(driver, fault)
            self.call: Callable[..., Any] = self._native_call
            return
        self.domain = Domain(driver, start=False)
        try:
            self._start(start_tries)
        except BaseException:
            self.domain.close()
            raise
        self.fault_site = self.domain.fault_site
        self.shadow = Shadow(self.domain, spec, max_tries=max_tries,
                             block_timeout=block_timeout, max_held=max_held,
                             on_recovery=self._recovered)
        self.call = self.shadow.call

    def _start_native(self, driver: DriverSpec, fault: FaultPlan | None) -> None:
        if fault is not None:
            loader.install(fault.module, Fault(fault.kind, fault.seed),
                           set(fault.lines) if fault.lines is not None else None)
        try:
            self.nat = NativeDomain(driver)
        finally:
            if fault is not None:
                site = loader.last_site()
                self.fault_site = (f"{site.kind} at line {site.line} in {site.function}: "
                                   f"{site.what}") if site else "the faulty module was not loaded"

    def _start(self, tries: int) -> None:
        """Start the driver; one that fails while loading is started again (from its
        code on disk), as the shadow would restart it later, up to ``tries`` times."""
        assert self.domain is not None
        for attempt in range(tries):
            try:
                self.domain.start()
                return
            except DomainFailed as e:
                self.start_failures.append(e.report)
                log.warning("%s: %s failed while starting (%s)", self.host, self.what,
                            e.report)
                if attempt == tries - 1:
                    raise

    # -- requests ------------------------------------------------------------------------

    def _native_call(self, op: str, *args: Any) -> Any:
        fault, self._pending_fault = self._pending_fault, None
        if fault is not None:
            from nooks.domain.child import inject

            inject(fault)  # natively, the fault is this process's, as it would be
        assert self.nat is not None
        return self.nat.call(op, *args)

    def ask(self, op: str, *args: Any) -> Any:
        """Ask the driver itself, past the shadow (start-up questions: a driver that
        answers them wrongly has not started)."""
        if self.domain is not None:
            return self.domain.call(op, *args)
        return self._native_call(op, *args)

    @property
    def usable(self) -> bool:
        """Whether requests can be served (natively, always; else unless the driver
        could not be brought back)."""
        return self.shadow is None or self.shadow.dead is None

    @property
    def generation(self) -> int:
        """Which incarnation of the driver answers now (what it handed out died with
        the ones before)."""
        return self.shadow.generation if self.shadow is not None else 0

    def _recovered(self, rec: Recovery) -> None:
        if rec.ok:
            log.warning("%s: %s %s (%s) during %s; recovered in %.1f ms, %d replayed",
                        self.host, self.what, rec.kind, rec.detail, rec.call, rec.duration_ms,
                        rec.replayed)
        else:
            log.error("%s: %s %s (%s) during %s; NOT recovered: its requests fail until a "
                      "later attempt brings it back", self.host, self.what, rec.kind,
                      rec.detail, rec.call)
        if self.on_recovery is not None:
            self.on_recovery(self, rec)

    # -- control -------------------------------------------------------------------------

    def inject(self, fault: str, wait: bool = True) -> dict[str, Any]:
        """Make the driver fail now; what happened (its failure and recovery), or
        NotTaken if nothing did. Natively, the fault is armed for the next request.
        Without ``wait``, the fault is sent and meets whatever request comes next."""
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; known: {', '.join(FAULTS)}")
        if self.shadow is None:
            self._pending_fault = fault
            return {"injected": fault, "armed": True}
        return {"injected": fault, **self.shadow.inject(fault, wait=wait)}

    def settle(self) -> None:
        """Wait until the warm spare is up, so that the next recovery is a warm one."""
        if self.domain is not None:
            self.domain.wait_spare()

    def status(self) -> dict[str, Any]:
        starts = [{"kind": r.kind.value, "detail": r.detail} for r in self.start_failures]
        if self.nat is not None:
            return {"state": "live", "mode": "native", "domain_pid": None,
                    "calls": self.nat.calls, "recoveries": [], "poisoned": 0,
                    "start_failures": starts}
        assert self.domain is not None and self.shadow is not None
        inc = self.domain.current
        return {"state": self.domain.state, "domain_pid": self.domain.pid,
                "calls": self.domain.calls, "start_failures": starts,
                "in_flight": inc.channel.in_flight() if inc is not None else [],
                **self.shadow.status()}

    def close(self) -> None:
        try:
            if self.shadow is not None:
                self.shadow.stop()  # then a recovery under way fails at once
            if self.domain is not None:
                self.domain.close()
        finally:
            if self.shadow is not None:
                self.shadow.close()  # and its spec
            else:
                self.spec.close()
            if self.nat is not None:
                self.nat.close()

    def __repr__(self) -> str:
        inner = self.shadow if self.shadow is not None else self.nat
        return f"<Supervised {self.host} {self.what} {inner!r}>"


class SupervisedHost:
    """The base of a class's host: its supervised drivers and its control socket."""

    kind = "driver"  # the class's name in status ("fs", "web", ...)
    # whether its drivers are a numbered pool (status lists them under ``workers``,
    # an inject says which it hit), or one driver (its figures at the top level)
    numbered = False

    def __init__(self, name: str) -> None:
        self.name = name
        self.started = time.time()
        self.supervised: list[Supervised[Any]] = []
        self._next_inject = itertools.count()
        self._control: ControlServer | None = None
        # a class's own control commands, by name: each takes the request, returns JSON
        self.commands: dict[str, Callable[[dict[str, Any]], Any]] = {}

    # -- what a class gives ------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """What the host record says of this host besides its name (driver, address)."""
        return {}

    def status(self) -> dict[str, Any]:
        """Everything ``nooks status`` shows of this host."""
        return self.base_status()

    # -- what every host does ------------------------------------------------------------

    def base_status(self) -> dict[str, Any]:
        """The supervision part of ``status``: one driver's figures at the top level, or
        the workers' each under ``workers`` and summed at the top."""
        out: dict[str, Any] = {"name": self.name, "class": self.kind,
                               "native": all(s.native for s in self.supervised),
                               "host_pid": os.getpid(), "started": self.started,
                               "fault_site": next((s.fault_site for s in self.supervised
                                                   if s.fault_site), None)}
        each = [s.status() for s in self.supervised]
        if not self.numbered and len(each) == 1:
            return {**out, **each[0]}
        for i, w in enumerate(each):
            w["worker"] = i
            for r in w["recoveries"]:
                r["worker"] = i
        states = {w["state"] for w in each}
        modes = {w["mode"] for w in each}
        return {**out, "state": states.pop() if len(states) == 1 else "mixed",
                "mode": modes.pop() if len(modes) == 1 else "active",
                "domain_pid": each[0]["domain_pid"] if each else None,
                "calls": sum(w["calls"] for w in each),
                "poisoned": sum(w["poisoned"] for w in each),
                "recoveries": sorted((r for w in each for r in w["recoveries"]),
                                     key=lambda r: r["at"]),
                "start_failures": [f for w in each for f in w["start_failures"]],
                "workers": each}

    def inject(self, fault: str, worker: int | None = None,
               wait: bool = True) -> dict[str, Any]:
        """Make a driver fail now (with several, each in turn unless ``worker`` is
        given); what happened, or NotTaken."""
        n = len(self.supervised)
        if worker is None:
            worker = next(self._next_inject) % n
        if not 0 <= worker < n:
            raise ValueError(f"no worker {worker}: there are {n}")
        out = self.supervised[worker].inject(fault, wait=wait)
        return {**out, "worker": worker} if self.numbered else out

    def settle(self) -> None:
        for s in self.supervised:
            s.settle()

    def control(self, req: dict[str, Any]) -> Any:
        """Answer one control request (``nooks status``, ``nooks inject``, ...)."""
        cmd = req["cmd"]
        if cmd == "status":
            return self.status()
        if cmd == "settle":
            self.settle()
            return {"settled": True}
        if cmd == "inject":
            fault, worker = req.get("fault"), req.get("worker")
            if not isinstance(fault, str) or not (worker is None or type(worker) is int):
                raise ValueError("inject needs a string 'fault' (and an integer 'worker')")
            return self.inject(fault, worker, wait=req.get("wait", True) is not False)
        own = self.commands.get(cmd)
        if own is None:
            raise ValueError(f"unknown command {cmd!r}")
        return own(req)

    def open_control(self) -> None:
        """Listen for control requests (and leave the host record) until ``close``."""
        self._control = ControlServer(self.name, self.control,
                                      info={"class": self.kind, **self.info()})

    def close_supervised(self) -> None:
        if self._control is not None:
            with contextlib.suppress(Exception):
                self._control.close()
            self._control = None
        for s in self.supervised:
            try:
                s.close()
            except Exception:
                log.exception("%s: closing %s", self.name, s.what)

    def __repr__(self) -> str:
        states = ",".join(s.status()["mode"] for s in self.supervised)
        return f"<{type(self).__name__} {self.name} {states or 'starting'}>"
