"""The web class in the campaign: ``static`` (the static-file server over a fresh
document root) and ``flask`` (a Flask shop taking orders into a ledger,
``nooks.eval.ledger``), served by ``nooks serve`` with one worker: every request
meets the faulty extension until it is replaced, and while it recovers requests
wait for it.

Workload: ``nooks.eval.webload``. After it, in both modes, the orders placed are
read back; once the server has stopped, the ledger must hold each order answered
as placed exactly once and nothing twice.

Outcome rules: a request that got no answer (the server died, refused the
connection or hung) is the system's failure; so is a server that did not start or
died. A wrong body or ledger is a data error. Any other wrong answer (a 500 from
an application that raised, a 503 while it restarts) is an application-visible
error — natively too: a WSGI server answers an exception with 500 and goes on.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from typing import Any

from nooks.eval.registry import Scope
from nooks.eval.target import NotStarted, Run, Target
from nooks.eval.webload import (
    Ledger,
    check_ledger,
    ledger_workload,
    make_root,
    readback,
    static_workload,
)
from nooks.tools.webprocess import Output, wait_serving

DEADLINE = "2"  # seconds a request may run under nooks before the worker counts as hung
STOP_TIMEOUT = 10.0


class WebRun(Run):
    def __init__(self, scope: Scope, name: str, proc: subprocess.Popen[Any], native: bool,
                 *, tmp: str, base: str, output: Output, driver: str,
                 urls: dict[str, bytes], ledger: str) -> None:
        super().__init__(scope, name, proc, native)
        self.tmp = tmp
        self.base = base
        self.output = output
        self.driver = driver
        self.urls = urls
        self.ledger = ledger
        self.book = Ledger()

    def workload(self, seed: int, on_hang: Any) -> list[str]:
        if self.driver == "static":
            return static_workload(self.scope, self.base, self.urls, self.tmp, on_hang)
        return ledger_workload(self.scope, self.base, seed, self.book, self.tmp,
                               on_hang=on_hang)

    def recheck(self, on_hang: Any) -> list[str]:
        if self.driver == "static":
            return []
        return readback(self.scope, self.base, self.book, self.tmp, on_hang)

    def alive(self) -> bool:
        if self.proc.poll() is not None:
            return False
        host, _, port = self.base.removeprefix("http://").rpartition(":")
        try:
            with socket.create_connection((host, int(port)), timeout=2):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        self.terminate(STOP_TIMEOUT)

    def after(self) -> list[str]:
        return check_ledger(self.ledger, self.book) if self.driver == "flask" else []


class WebTarget(Target):
    def __init__(self, driver: str, module: str) -> None:
        self.driver = driver
        self.module = module

    def start(self, scope: Scope, tmp: str, name: str, *, native: bool,
              extra: list[str]) -> Run:
        urls: dict[str, bytes] = {}
        ledger = os.path.join(tmp, "ledger.jsonl")
        if self.driver == "static":
            root = os.path.join(tmp, "root")
            os.mkdir(root)
            urls = make_root(root)
            app = f"static:{root}"
        else:
            app = f"{self.module}:app"
        cmd = [sys.executable, "-m", "nooks", "serve", app, "--bind", "127.0.0.1:0",
               "--workers", "1", "--name", name, "--timeout", DEADLINE,
               "--env", f"NOOKS_LEDGER={ledger}", *extra, *(["--native"] if native else [])]
        scope.host(name)
        env = {**os.environ, "NOOKS_LEDGER": ledger}  # natively, the application's own
        proc = scope.popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        try:
            (host, port), output = wait_serving(proc, cmd, timeout=30)
        except RuntimeError as e:
            raise NotStarted(f"did not start: {e}") from e
        return WebRun(scope, name, proc, native, tmp=tmp, base=f"http://{host}:{port}",
                      output=output, driver=self.driver, urls=urls, ledger=ledger)

    def lost(self, error: str, native: bool) -> bool:
        return error.startswith(("lost:", "did not start"))

    def data_error(self, error: str) -> bool:
        return error.startswith("data:")


TARGETS = (WebTarget("static", "nooks.drivers.static"),
           WebTarget("flask", "nooks.eval.ledger"))
