"""Running one program of a workload: in the run's scope, with a time limit.

A program that hangs gets ``on_hang`` called first (it must take down what the
program waits on: a program stuck on a FUSE request cannot be killed until the
server is gone), then its process group is killed.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable

from nooks.eval.registry import Scope

STEP_TIMEOUT = 10.0


def step(scope: Scope, cmd: list[str] | str, on_hang: Callable[[], None],
         stdin: str | None = None, timeout: float = STEP_TIMEOUT) -> tuple[int, str]:
    """Run one program; (exit status, the end of what it said). -1: it hung."""
    rc, out, err = capture(scope, cmd, on_hang, stdin=stdin, timeout=timeout)
    return rc, (err or out).strip()[-300:]


def capture(scope: Scope, cmd: list[str] | str, on_hang: Callable[[], None],
            stdin: str | None = None, timeout: float = STEP_TIMEOUT) -> tuple[int, str, str]:
    """Run one program; (exit status, its output, its errors). -1: it hung; -2: it
    could not start."""
    try:
        proc = scope.popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, shell=isinstance(cmd, str))
    except OSError as e:
        return -2, "", f"could not start: {e}"
    try:
        out, err = proc.communicate(stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        on_hang()
        scope.kill(proc)
        proc.communicate()
        scope.reaped(proc)
        return -1, "", "hung"
    scope.reaped(proc)
    return proc.returncode, out, err
