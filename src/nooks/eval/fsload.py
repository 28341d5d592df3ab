"""The filesystem campaign's workload: real programs on a mount, each with a time limit.

``cp -a`` of a source tree and ``sha256sum -c``, ``tar`` out and back with
checksums, a Python writer (write, seek, fsync, rename, read back) and
``sqlite3`` transactions with ``PRAGMA integrity_check``; ``recheck`` checks the
copies again later.

Rules:

* This process never touches the mount: every access is a program, started by
  the run's ``Scope`` in a session of its own, so that it and whatever it runs
  (a shell's pipeline) are killed as a unit. No ``cwd=`` on the mount either: a
  chdir into a stuck mount would hang before the time limit starts to count.
* A program that hangs gets ``on_hang`` called first — it must take the mount
  down, since a program waiting on a stuck FUSE request cannot be killed until
  the server is gone — and then its group killed.
* Once the campaign is stopped no program starts: the scope raises
  ``Interrupted``, which goes up through here untouched.
* Helpers run outside a scope (the checksums of the source tree) also get a
  session of their own: a Ctrl-C at the terminal is the campaign's to handle, and
  must not kill a helper under a run that would then count its failure.
"""

from __future__ import annotations

import functools
import os
import shlex
import subprocess
import sys
from collections.abc import Callable

from nooks.eval.programs import step
from nooks.eval.registry import Scope

WRITER = """
import os, sys, hashlib, random
d, seed = sys.argv[1], int(sys.argv[2])
rng = random.Random(seed)
path, final = os.path.join(d, "w.tmp"), os.path.join(d, "w.dat")
blocks = [rng.randbytes(rng.randrange(1, 100_000)) for _ in range(4)]
fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_TRUNC, 0o644)
for b in blocks:
    os.write(fd, b)
os.lseek(fd, 5, os.SEEK_SET)
os.write(fd, b"PATCH")
os.fsync(fd)
os.close(fd)
os.rename(path, final)
want = bytearray(b"".join(blocks))
want[5:10] = b"PATCH"
with open(final, "rb") as f:
    ok = hashlib.sha256(f.read()).digest() == hashlib.sha256(want).digest()
sys.exit(0 if ok else 3)
"""


def tree_source() -> str:
    return os.path.join(os.path.dirname(os.__file__), "json")


@functools.cache
def tree_sums() -> str:
    """``sha256sum`` lines of the source tree (it does not change while we run)."""
    return subprocess.run("find . -type f -print0 | sort -z | xargs -0 sha256sum", shell=True,
                          cwd=tree_source(), capture_output=True, text=True, check=True,
                          start_new_session=True).stdout


def workload(scope: Scope, mnt: str, seed: int,
             on_hang: Callable[[], None] = lambda: None) -> list[str]:
    """Run the programs; what went wrong (empty: nothing)."""
    def run(cmd: list[str] | str, stdin: str | None = None) -> tuple[int, str]:
        return step(scope, cmd, on_hang, stdin=stdin)

    errors: list[str] = []
    src = tree_source()
    sums = tree_sums()
    dest = os.path.join(mnt, "tree")  # only ever touched by child processes
    steps: list[tuple[str, Callable[[], tuple[int, str]]]] = [
        ("cp -a", lambda: run(["cp", "-a", src, dest])),
        ("sha256sum -c", lambda: run(f"cd {shlex.quote(dest)} && sha256sum -c --quiet -",
                                      stdin=sums)),
        ("tar -c", lambda: run(["tar", "-cf", os.path.join(mnt, "t.tar"), "-C", dest, "."])),
        ("tar -x", lambda: run(f"cd {shlex.quote(mnt)} && mkdir -p x && tar -xf t.tar -C x")),
        ("tar round trip", lambda: run(f"cd {shlex.quote(mnt)}/x && sha256sum -c --quiet -",
                                        stdin=sums)),
        ("python writer", lambda: run([sys.executable, "-c", WRITER, mnt, str(seed)])),
        ("sqlite3", lambda: run(["sqlite3", os.path.join(mnt, "db.sqlite")],
                                 stdin="CREATE TABLE IF NOT EXISTS t (k INTEGER PRIMARY KEY, "
                                 "v TEXT);\nBEGIN;\n" + "".join(
                                     f"INSERT INTO t (v) VALUES ('{i}');\n" for i in range(50))
                                 + "COMMIT;\nPRAGMA integrity_check;\n")),
    ]
    for name, fn in steps:
        rc, out = fn()
        if rc != 0:
            errors.append(f"{name}: {'hung' if rc == -1 else f'exit {rc}'}: {out}")
            if rc == -1 or "Transport endpoint" in out:
                break  # the filesystem is gone or stuck: the rest would only wait too
        elif name == "sqlite3" and not out.endswith("ok"):
            errors.append(f"sqlite3 integrity: {out}")
    return errors


def recheck(scope: Scope, mnt: str, on_hang: Callable[[], None] = lambda: None) -> list[str]:
    """After the workload (and, under nooks, the final checkpoint): the copies it made
    still hold what was written; what went wrong (empty: nothing)."""
    errors = []
    for where in ("tree", "x"):
        rc, out = step(scope, f"cd {shlex.quote(os.path.join(mnt, where))} && "
                       "sha256sum -c --quiet -", on_hang, stdin=tree_sums())
        if rc != 0:
            errors.append(f"recheck of {where}: {'hung' if rc == -1 else f'exit {rc}'}: {out}")
    return errors
