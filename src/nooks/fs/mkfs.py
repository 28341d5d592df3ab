"""Making filesystem images (``nooks mkfs``)."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess


def mkfs_vfat(path: str, size: int, fat: int | None = None, label: str = "NOOKS", *,
              overwrite: bool = True, session: bool = False) -> None:
    """Create a FAT image of ``size`` bytes at ``path`` with dosfstools' mkfs.fat
    (``session``: in a session of its own, out of reach of the terminal's Ctrl-C).

    Without ``overwrite`` an existing file is refused (FileExistsError); an image that
    a mount holds is always refused."""
    if size < 64 << 10:
        raise ValueError(f"an image of {size} bytes is too small for FAT")
    tool = shutil.which("mkfs.fat") or shutil.which("mkfs.vfat")
    if tool is None:
        raise RuntimeError("mkfs.fat not found: install dosfstools")
    if os.path.lexists(path):
        if not overwrite:
            raise FileExistsError(f"{path} exists (--force overwrites it)")
        if os.path.isfile(path):
            _refuse_if_mounted(path)
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


def _refuse_if_mounted(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise RuntimeError(f"{path} is mounted: unmount it first") from None
    finally:
        os.close(fd)
