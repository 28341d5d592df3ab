"""The FUSE-serving benchmark's three servers answer alike (its figures compare the
same work): a real mount each, the same tree seen through it."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from nooks.bench.fuse import READY_TIMEOUT, wait_mounted
from nooks.bench.fuseservers import DRIVEN, SERVERS, SIZE


@pytest.mark.parametrize("kind", sorted([*SERVERS, *DRIVEN]))
def test_each_server_serves_the_same_tree(kind: str, tmp_path: Path) -> None:
    mp, root = str(tmp_path / "mnt"), tmp_path / "root"
    os.mkdir(mp)
    root.mkdir()
    (root / "f").write_bytes(bytes(SIZE))
    proc = subprocess.Popen([sys.executable, "-m", "nooks.bench.fuseservers", kind, mp,
                             *([str(root)] if kind in DRIVEN else [])],
                            stdout=subprocess.PIPE, text=True)
    try:
        wait_mounted(proc, mp)
        st = os.stat(os.path.join(mp, "f"))
        assert stat.S_ISREG(st.st_mode) and st.st_size == SIZE and st.st_nlink == 1
        assert stat.S_ISDIR(os.stat(mp).st_mode)
        with pytest.raises(FileNotFoundError) as e:
            os.stat(os.path.join(mp, "g"))
        assert e.value.errno == errno.ENOENT
    finally:
        if os.path.ismount(mp):
            subprocess.run(["umount", mp], check=False)
        assert proc.wait(READY_TIMEOUT) == 0  # (it ends when the mount goes away)
