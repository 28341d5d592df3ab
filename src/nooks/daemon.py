"""``--daemon`` for the commands that run a host: detach once it serves.

The command forks; the child leaves the terminal (its own session, standard
input from /dev/null, its messages to ``--log`` or nowhere) and runs the host,
which calls ``ready(True, line)`` once it serves, or ``ready(False, why)`` if it
cannot. The parent waits for that word: it prints the line (with the host's
pid) and exits 0, or prints why and exits 1 — also when the host dies before
saying anything (its exit status, and where its log is).
"""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
from collections.abc import Callable

Ready = Callable[[bool, str], None]
Report = Callable[[str], None]


def daemonize(run: Callable[[Ready], int], *, log: str | None, command: str,
              announce: Callable[[int], str], error: Report, say: Report) -> int:
    """Run ``run(ready)`` in a detached child; in this process, wait for its word.
    ``announce(pid)`` is what is said on success when the host gave no line."""
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid:
        os.close(ready_w)
        with os.fdopen(ready_r, "rb") as r:
            answer = r.read()
        if answer[:1] != b"1":
            _, status = os.waitpid(pid, 0)
            why = answer[1:].decode(errors="replace").strip()
            if not why:
                why = (f"the host exited (status {os.waitstatus_to_exitcode(status)}) "
                       "before it was ready" + (f"; see {log}" if log else ""))
            error(f"{command}: {why}")
            return 1
        line = answer[1:].decode(errors="replace").strip()
        say(f"{line} (host pid {pid})" if line else announce(pid))
        return 0
    os.close(ready_r)
    os.setsid()
    # detach from the terminal before anything starts (domains inherit these)
    devnull = os.open(os.devnull, os.O_RDWR)
    out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640) if log else devnull
    os.dup2(devnull, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)

    def ready(ok: bool, why: str) -> None:
        nonlocal ready_w
        if ready_w < 0:
            return
        with contextlib.suppress(OSError):
            os.write(ready_w, (b"1" if ok else b"0") + why.encode()[:4000])
        os.close(ready_w)
        ready_w = -1

    code = 1
    try:
        code = run(ready)
    except BaseException:
        traceback.print_exc()
    finally:
        ready(False, "the host failed to start")
        sys.stdout.flush()
        os._exit(code)
