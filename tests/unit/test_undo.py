"""The undo log: whatever the committed writes since a checkpoint, a rollback puts
the image back byte for byte as it was at the checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nooks.fs.blockdev import ImageDevice, UndoLog

SIZE = 1024

writes = st.lists(st.tuples(st.integers(0, SIZE - 1), st.binary(min_size=1, max_size=300)),
                  max_size=30)
# a request's writes (committed together), and whether a checkpoint follows it
requests = st.lists(st.tuples(writes, st.booleans()), min_size=1, max_size=12)


@settings(max_examples=200, deadline=None)
@given(fill=st.integers(0, 255), history=requests)
def test_rollback_restores_the_last_checkpoint(tmp_path_factory: pytest.TempPathFactory,
                                               fill: int,
                                               history: list[tuple[list[tuple[int, bytes]],
                                                                   bool]]) -> None:
    path = str(tmp_path_factory.mktemp("undo") / "img")
    initial = bytes((fill + i) % 256 for i in range(SIZE))
    Path(path).write_bytes(initial)
    undo = UndoLog(path)
    dev = ImageDevice(path, undo)
    at_checkpoint = initial
    try:
        for batch, checkpoint in history:
            for offset, data in batch:
                dev.bd_write(offset, data[:SIZE - offset])
            dev.call_done()
            if checkpoint:
                undo.clear()
                at_checkpoint = Path(path).read_bytes()
        restored = undo.rollback()
        assert Path(path).read_bytes() == at_checkpoint
        assert undo.bytes == 0
        assert restored <= sum(len(d) for b, _ in history for _, d in b)
    finally:
        dev.close()
        undo.close()


def test_uncommitted_writes_are_not_saved_and_not_written(tmp_path: Path) -> None:
    path = str(tmp_path / "img")
    Path(path).write_bytes(bytes(SIZE))
    undo = UndoLog(path)
    dev = ImageDevice(path, undo)
    dev.bd_write(10, b"committed")
    dev.call_done()
    dev.bd_write(100, b"never committed: the driver died")
    assert dev.bd_read(100, 5) == b"never"
    dev.close()  # the domain is gone
    assert undo.bytes == len(b"committed")
    undo.rollback()
    assert Path(path).read_bytes() == bytes(SIZE)
    undo.close()


def test_a_range_written_twice_is_saved_once(tmp_path: Path) -> None:
    path = str(tmp_path / "img")
    Path(path).write_bytes(b"a" * SIZE)
    undo = UndoLog(path)
    dev = ImageDevice(path, undo)
    for i in range(5):
        dev.bd_write(0, bytes([i]) * 512)
        dev.call_done()
    assert undo.bytes == 512
    undo.rollback()
    assert Path(path).read_bytes() == b"a" * SIZE
    dev.close()
    undo.close()
