"""Consistency checkpoints against a fake domain: a consistent check becomes the new
checkpoint, an inconsistent one rolls the image back and replays the journal into a
fresh driver, and damage a fresh driver repeats is kept and ends the checking."""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable, Iterator
from typing import cast

import pytest

from nooks.domain.host import Domain
from nooks.fs.blockdev import UndoLog
from nooks.fs.consistency import Checkpoints
from nooks.fs.kit import Disk, MemoryFs
from nooks.fs.spec import ROOT_CTX, FsShadow
from nooks.shadow.engine import Shadow
from nooks.testing import FakeDomain

W = os.O_WRONLY | os.O_CREAT


class Host:
    """A journaled shadow over a model driver, an image with its undo log, a checker."""

    def __init__(self, tmp: pathlib.Path, verdicts: list[int]) -> None:
        self.image = tmp / "image"
        self.image.write_bytes(b"good" * 1024)
        # the checker: exits with the next verdict in the file (0: consistent)
        self.verdicts = tmp / "verdicts"
        self.verdicts.write_text(" ".join(map(str, verdicts)))
        script = tmp / "check"
        script.write_text(f"#!/bin/sh\nset -- $(cat {self.verdicts})\n"
                          f"v=$1; shift; echo \"$@\" > {self.verdicts}\n"
                          "echo \"verdict $v\"; exit $v\n")
        script.chmod(0o755)
        self.disk = Disk()
        self.fake = FakeDomain(MemoryFs, self.disk)
        self.fs = FsShadow(journaled=True)
        self.shadow = Shadow(cast(Domain, self.fake), self.fs)
        self.undo = UndoLog(str(self.image))
        self.cp = Checkpoints(image=str(self.image), command=(str(script),),
                              shadow=self.shadow, fs=self.fs, domain=cast(Domain, self.fake),
                              undo=self.undo, name="test", interval=0)

    def write(self, path: str, data: bytes) -> None:
        fh = self.cp.call("create", ROOT_CTX, path, 0o644, W)
        self.cp.call("write", ROOT_CTX, path, data, 0, fh)
        self.cp.call("release", ROOT_CTX, path, fh)

    def scribble(self) -> None:
        """What a faulty driver's write does to the image (saved first, as the block
        device does before each committed write)."""
        self.undo.save(0, 4)
        with open(self.image, "r+b") as f:
            f.write(b"BAD!")

    def close(self) -> None:
        self.cp.close()
        self.undo.close()
        self.fs.close()


Make = Callable[[list[int]], Host]


@pytest.fixture
def make(tmp_path: pathlib.Path) -> Iterator[Make]:
    hosts: list[Host] = []

    def make(verdicts: list[int]) -> Host:
        h = Host(tmp_path, verdicts)
        hosts.append(h)
        return h

    yield make
    for h in hosts:
        h.close()


def test_a_consistent_image_becomes_the_checkpoint(make: Make) -> None:
    h = make([0])
    h.write("/a", b"hello")
    assert h.fs.journal and h.fs.written
    assert h.cp.checkpoint() is True
    assert h.fs.journal == [] and not h.fs.written and h.undo.bytes == 0
    assert h.cp.status()["checks"] == 1 and h.fake.restarts == 0


def test_an_unchanged_image_is_a_checkpoint_for_free(make: Make) -> None:
    h = make([])
    assert h.cp.checkpoint() is True
    assert h.cp.status()["checks"] == 0


def test_damage_is_rolled_back_and_the_journal_replayed_into_a_fresh_driver(make: Make) -> None:
    h = make([1, 0])  # inconsistent, then consistent
    h.write("/a", b"hello")
    h.scribble()
    assert h.cp.checkpoint() is False  # the check failed: rolled back
    assert h.image.read_bytes()[:4] == b"good"  # the image as at the last checkpoint
    assert h.fake.restarts == 1 and h.shadow.recoveries[-1].ok
    # the fresh driver was given every journaled request again
    replayed = [op for phase, op, _ in h.fake.log if phase == "passive"]
    assert replayed.count("create") == 2 and replayed.count("write") == 2
    status = h.cp.status()
    assert status["inconsistent"] == 1 and status["rolled_back"] == 1
    assert status["state"] == "on" and bytes(h.disk.files["/a"]) == b"hello"


def test_damage_a_fresh_driver_repeats_is_kept_and_checking_stops(make: Make) -> None:
    h = make([1, 1])
    h.write("/a", b"hello")
    h.scribble()
    assert h.cp.checkpoint() is False
    status = h.cp.status()
    assert status["kept_inconsistent"] == 1 and status["state"].startswith("off:")
    assert h.fs.journal == [] and not h.undo.enabled  # nothing kept for a rollback
    h.write("/b", b"more")  # requests go on, unchecked
    assert h.cp.checkpoint() is True and h.cp.status()["checks"] == 2


def test_a_file_written_since_the_checkpoint_is_checked_before_it_is_read(make: Make) -> None:
    h = make([0])
    h.write("/a", b"hello")
    fh = h.cp.call("open", ROOT_CTX, "/a", os.O_RDONLY)
    assert h.cp.status()["checks"] == 1  # the re-open took a checkpoint first
    assert h.cp.call("read", ROOT_CTX, "/a", 5, 0, fh) == b"hello"


def test_wrong_data_read_back_is_damage_too(make: Make) -> None:
    h = make([0, 0])  # the checker sees nothing wrong
    h.write("/a", b"hello")
    h.disk.files["/a"][:] = b"jello"  # the driver stored something else
    assert h.cp.checkpoint() is False
    assert "read back wrong" in h.cp.stats.last_finding
    assert bytes(h.disk.files["/a"]) == b"hello"  # the fresh driver wrote it again
