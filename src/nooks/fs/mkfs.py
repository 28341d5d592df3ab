"""Making filesystem images (``nooks mkfs``)."""

from __future__ import annotations

import os
import shutil
import subprocess


def mkfs_vfat(path: str, size: int, fat: int | None = None, label: str = "NOOKS", *,
              session: bool = False) -> None:
    """Create a FAT image of ``size`` bytes at ``path`` with dosfstools' mkfs.fat
    (``session``: in a session of its own, out of reach of the terminal's Ctrl-C)."""
    if size < 64 << 10:
        raise ValueError(f"an image of {size} bytes is too small for FAT")
    tool = shutil.which("mkfs.fat") or shutil.which("mkfs.vfat")
    if tool is None:
        raise RuntimeError("mkfs.fat not found: install dosfstools")
    with open(path, "wb") as f:
        f.truncate(size)
    cmd = [tool, "-n", label[:11]]
    if fat is not None:
        cmd += ["-F", str(fat)]
    r = subprocess.run([*cmd, path], capture_output=True, text=True, check=False,
                       start_new_session=session)
    if r.returncode != 0:
        os.unlink(path)
        raise RuntimeError(f"mkfs.fat failed: {r.stderr.strip() or r.stdout.strip()}")
