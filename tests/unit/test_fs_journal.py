"""The journaled filesystem shadow (consistency checkpoints): what a rollback's replay
asks of a fresh driver, with a recording stand-in for the driver."""

from __future__ import annotations

import errno
import os
from typing import Any, cast

import pytest

from nooks.domain.detect import host_verdict
from nooks.domain.host import Domain as RealDomain
from nooks.errors import DomainFailed, FailureKind
from nooks.fs.spec import ROOT_CTX, FsShadow
from nooks.shadow.engine import Shadow
from nooks.shadow.spec import ClassSpec


class FakeDriver:
    """Answers every call, handing out real handles from 100; can fail at call N."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.fail_at = fail_at
        self._next = 100

    def call(self, op: str, *args: Any) -> Any:
        self.calls.append((op, *args))
        if self.fail_at is not None and len(self.calls) == self.fail_at:
            raise DomainFailed.of(host_verdict(FailureKind.CRASHED, "killed by SIGSEGV"))
        if op in ("open", "create", "opendir"):
            self._next += 1
            return self._next
        return len(args[2]) if op == "write" else 0


def journaled() -> tuple[FsShadow, list[str]]:
    fs = FsShadow(journaled=True)
    rewinds: list[str] = []
    fs.rewinds_with(lambda: rewinds.append("rewind"))
    return fs, rewinds


def test_a_rollback_reopens_the_checkpoints_handles_and_redoes_everything_since() -> None:
    fs, rewinds = journaled()
    kept = fs.record("open", (ROOT_CTX, "/kept", os.O_RDWR | os.O_TRUNC), 7)  # before
    fs.checkpoint()
    new = fs.record("create", (ROOT_CTX, "/new", 0o644, os.O_WRONLY | os.O_CREAT), 8)
    fs.record("write", (ROOT_CTX, "/new", b"data", 0, new), 4)
    fs.record("write", (ROOT_CTX, None, b"more", 0, kept), 4)
    fs.record("release", (ROOT_CTX, "/new", new), 0)
    fs.record("rename", (ROOT_CTX, "/new", "/renamed"), 0)
    driver = FakeDriver()
    with fs.rolling_back():
        fs.prepare_restart()  # as the engine does before it builds the new driver
        assert rewinds == ["rewind"]
        fs.replay(driver)  # type: ignore[arg-type]
    assert rewinds == ["rewind"]  # the replay itself does not touch the image
    assert driver.calls == [
        ("open", ROOT_CTX, "/kept", os.O_RDWR),  # as at the checkpoint, no O_TRUNC
        ("create", ROOT_CTX, "/new", 0o644, os.O_WRONLY | os.O_CREAT),
        ("write", ROOT_CTX, "/new", b"data", 0, 102),  # the data, back from the spill
        ("write", ROOT_CTX, None, b"more", 0, 101),
        ("release", ROOT_CTX, "/new", 102),
        ("rename", ROOT_CTX, "/new", "/renamed"),
    ]
    assert fs.handles[kept].real == 101 and not fs.handles[kept].lost
    assert fs.replay_errors == 0
    fs.close()


def test_a_replay_cut_short_starts_again_from_the_checkpoint() -> None:
    fs, rewinds = journaled()
    fs.checkpoint()
    for name in ("/a", "/b", "/c"):
        fh = fs.record("create", (ROOT_CTX, name, 0o644, os.O_WRONLY), 1)
        fs.record("write", (ROOT_CTX, name, name.encode(), 0, fh), 2)
        fs.record("release", (ROOT_CTX, name, fh), 0)
    with fs.rolling_back():
        fs.prepare_restart()
        with pytest.raises(DomainFailed):
            fs.replay(FakeDriver(fail_at=5))  # type: ignore[arg-type]
        fs.prepare_restart()  # the engine's next attempt: back to the checkpoint first
        driver = FakeDriver()
        fs.replay(driver)  # type: ignore[arg-type]
    assert rewinds == ["rewind", "rewind"]
    assert [c[2] for c in driver.calls if c[0] == "write"] == ["/a", "/b", "/c"]
    fs.close()


def test_a_reissued_request_found_done_is_journaled() -> None:
    fs, _ = journaled()
    fs.checkpoint()
    done, value = fs.reissued("mkdir", (ROOT_CTX, "/d", 0o755),
                              OSError(errno.EEXIST, "File exists"))
    assert (done, value) == (True, 0)
    assert [op for op, _, _ in fs.journal] == ["mkdir"]
    fs.close()


def test_stop_journal_forgets_and_keeps_nothing_more() -> None:
    fs, _ = journaled()
    fs.checkpoint()
    fh = fs.record("create", (ROOT_CTX, "/x", 0o644, os.O_WRONLY), 1)
    fs.record("write", (ROOT_CTX, "/x", b"abc", 0, fh), 3)
    fs.stop_journal()
    fs.record("write", (ROOT_CTX, "/x", b"def", 3, fh), 3)
    assert fs.journal == [] and fs.journal_bytes == 0 and not fs.written
    assert fs.handles[fh].path == "/x"  # handles are still remapped after a crash
    fs.close()


def test_the_engine_prepares_each_restart_before_building_the_driver() -> None:
    order: list[str] = []

    class Domain:
        name = "fake"

        def restart(self) -> Any:
            order.append("restart")
            if order.count("restart") == 1:
                raise DomainFailed.of(host_verdict(FailureKind.CRASHED, "died building"))

            class R:
                constructed_ms = 1.0
            return R()

        def call(self, op: str, *args: Any) -> Any:
            order.append(op)
            return 0

    class Spec(ClassSpec):
        def prepare_restart(self) -> None:
            order.append("prepare")

        def reinit(self, domain: Any) -> None:
            order.append("reinit")

        def replay(self, domain: Any) -> int:
            order.append("replay")
            return 0

    shadow = Shadow(cast(RealDomain, Domain()), Spec())
    shadow._restart()
    assert order == ["prepare", "restart", "prepare", "restart", "reinit", "replay"]
