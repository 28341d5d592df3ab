"""mfusepy's contract under nooks: a driver with the quirks of published drivers gives
applications the same answers mounted directly with mfusepy, natively under nooks
and isolated; what it raises costs at most one recovery, and what mfusepy calls
"not supported" none."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration.fsutil import direct_mount, mounted, outcome

pytestmark = [pytest.mark.timeout(300),
              pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse")]

QUIRKS = "extra,bools,numpy,errnoless,notimpl,arity,raises,nested"


def script(root: str) -> list[tuple[str, Callable[[], Any]]]:
    def p(name: str) -> str:
        return os.path.join(root, name)

    def write(name: str, data: bytes) -> int:
        with open(p(name), "wb") as f:
            return f.write(data)

    def read(name: str) -> bytes:
        with open(p(name), "rb") as f:
            return f.read()

    def stat(name: str) -> tuple[int, int, int, int]:
        st = os.stat(p(name))
        return st.st_size, st.st_nlink, st.st_mode, st.st_mtime_ns

    return [
        ("create and write", lambda: write("a.txt", b"x" * 5000)),
        ("stat with extra keys, bools, numpy", lambda: stat("a.txt")[:3]),
        ("mtime (numpy)", lambda: stat("a.txt")[3] > 0),
        ("read", lambda: read("a.txt")[:10]),
        ("listdir with extra keys", lambda: sorted(os.listdir(root))),
        ("scandir types", lambda: sorted((e.name, e.is_file()) for e in os.scandir(root))),
        ("statvfs with extra keys", lambda: os.statvfs(root).f_blocks),
        ("chmod raising an errno-less OSError", lambda: os.chmod(p("a.txt"), 0o600)),
        ("chown raising NotImplementedError", lambda: os.chown(p("a.txt"), 1, 1)),
        ("utime on a method that cannot take it", lambda: os.utime(p("a.txt"), (1, 2))),
        ("getxattr raising KeyError", lambda: os.getxattr(p("a.txt"), "user.x")),
        ("again, within the trust window", lambda: os.getxattr(p("a.txt"), "user.y")),
        ("getattr answering a deep structure", lambda: os.stat(p("nested"))),
        ("still working", lambda: read("a.txt")[-3:]),
    ]


def run(root: str) -> list[tuple[str, Any]]:
    return [(what, outcome(step)) for what, step in script(root)]


@pytest.mark.parametrize("mode", ["host", "direct"])
def test_published_driver_quirks_get_mfusepys_answers(tmp_path: Path, mode: str) -> None:
    with direct_mount(tmp_path, "tests.drivers.quirky", "Quirky", QUIRKS) as mnt:
        direct = run(mnt)
    # the answers mfusepy gives: extra keys ignored, numbers converted, EINVAL for
    # what it does not expect
    einval = ("errno", errno.EINVAL)
    assert dict(direct)["stat with extra keys, bools, numpy"] == ("ok", (5000, 1, 0o100644))
    for what in ("chmod raising an errno-less OSError", "chown raising NotImplementedError",
                 "utime on a method that cannot take it", "getxattr raising KeyError",
                 "getattr answering a deep structure"):
        assert dict(direct)[what] == einval, what
    with mounted(str(tmp_path / "native"), "tests.drivers.quirky:Quirky", native=True,
                 extra=("--state", "volatile"), ctor=(QUIRKS,)) as m:
        native = run(m.path)
    with mounted(str(tmp_path / "nooks"), "tests.drivers.quirky:Quirky",
                 extra=("--mode", mode, "--state", "volatile"), ctor=(QUIRKS,)) as m:
        isolated = run(m.path)
        st = m.status()
    assert native == direct
    assert isolated == direct
    # what the driver raised cost one recovery each (a fresh driver raised it too, then
    # it was answered as mfusepy answers it); unsupported calls and the second getxattr
    # within the window none
    recs = st["recoveries"]
    assert len(recs) == 2, recs
    assert all(r["ok"] and r["kind"] == "misbehaved" for r in recs)
    # (direct mode names the kernel's request in flight: a stat's getattr is a lookup)
    assert sorted(r["call"] for r in recs) == (["getattr", "getxattr"] if mode == "host"
                                               else ["getxattr", "lookup"])
    assert st["poisoned"] == 0


def test_hostile_operation_names_are_refused(tmp_path: Path) -> None:
    """A domain that claims to implement what no driver may (a dunder, ``lock``) has
    misbehaved: it is refused at start-up with a clear report, nothing installed."""
    with pytest.raises(RuntimeError, match="implemented") as e, \
            mounted(str(tmp_path), "tests.drivers.hostile:Boastful",
                    extra=("--state", "volatile")):
        pass
    assert "__init__" in str(e.value) or "lock" in str(e.value)
