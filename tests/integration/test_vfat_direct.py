"""The vfat driver mounted directly (in this process, through FUSE): real tools on a
real tree, long names across remounts, fsck.fat after unmount and on copies of the image
taken between operations, and the errno values a kernel vfat gives."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import random
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nooks.drivers.vfat import Vfat, mkfs
from tests.conftest import Snapshot

os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")
import mfusepy  # after FUSE_LIBRARY_NAME is set

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse"),
]

IMAGE_SIZE = 64 << 20
STDLIB = Path(os.path.dirname(os.__file__))
# Packages of the standard library to copy, in order, until there are enough files.
STDLIB_PACKAGES = ["json", "email", "asyncio", "http", "xml", "logging", "concurrent",
                   "importlib", "unittest", "urllib", "wsgiref", "sqlite3", "tomllib",
                   "zoneinfo", "multiprocessing", "ctypes", "lib2to3", "html", "collections",
                   "re", "idlelib", "tkinter", "pydoc_data", "venv"]
MIN_FILES = 300


# --- helpers ------------------------------------------------------------------


@contextlib.contextmanager
def mounted(image: Path, mountpoint: Path) -> Iterator[Path]:
    """Serve ``image`` at ``mountpoint`` from a thread; unmount with fusermount3 on exit."""
    mountpoint.mkdir(exist_ok=True)
    ops = Vfat(str(image))
    failure: list[BaseException] = []
    cwd = os.getcwd()  # libfuse's session set-up moves this process to /

    def serve() -> None:
        try:
            mfusepy.FUSE(ops, str(mountpoint), foreground=True, nothreads=True)
        except BaseException as e:
            failure.append(e)

    thread = threading.Thread(target=serve, name="vfat-fuse", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not os.path.ismount(mountpoint):
            assert thread.is_alive(), f"FUSE exited before the mount appeared: {failure}"
            assert time.monotonic() < deadline, "the mount did not appear"
            time.sleep(0.01)  # polling for a condition, bounded by the deadline
        yield mountpoint
    finally:
        if os.path.ismount(mountpoint):
            subprocess.run(["fusermount3", "-u", str(mountpoint)], check=True)
        thread.join(60)
        ops.close()
        os.chdir(cwd)
    assert not thread.is_alive(), "FUSE did not return after the unmount"
    assert not failure, failure


def fsck_clean(image: Path) -> str:
    """``fsck.fat -n``: exit 0 and nothing but the banner and the summary line."""
    r = subprocess.run(["fsck.fat", "-n", str(image)], capture_output=True, text=True,
                       check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 2 and " files, " in lines[1] and "clusters" in lines[1], r.stdout
    assert not r.stderr.strip(), r.stderr
    return lines[1]


def sha256_manifest(root: Path) -> str:
    lines = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        lines.append(f"{digest}  ./{path.relative_to(root).as_posix()}\n")
    return "".join(lines)


def check_manifest(manifest: Path, root: Path) -> None:
    r = subprocess.run(["sha256sum", "-c", "--quiet", "--strict", str(manifest)], cwd=root,
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


def run(*cmd: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True)


def assert_errno(code: int, fn: Callable[..., object], *args: object) -> None:
    """``fn(*args)`` fails with an OSError carrying ``code``."""
    with pytest.raises(OSError, match=rf"^\[Errno {code}\] ") as caught:
        fn(*args)
    assert caught.value.errno == code


@pytest.fixture(scope="module")
def source_tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A few MB of the standard library plus seeded binary files, and its sha256 manifest."""
    base = tmp_path_factory.mktemp("source")
    root = base / "tree"
    root.mkdir()
    count = 0
    for name in STDLIB_PACKAGES:
        if count >= MIN_FILES + 20:
            break
        src = STDLIB / name
        if not src.is_dir():
            continue
        shutil.copytree(src, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        count = sum(1 for p in root.rglob("*") if p.is_file())
    rnd = random.Random(20240611)
    blobs = root / "Binary Blobs"
    blobs.mkdir()
    for i, size in enumerate([0, 1, 2047, 2048, 2049, 65536, 3 << 20]):
        (blobs / f"blob {i} of size {size}.bin").write_bytes(rnd.randbytes(size))
    files = [p for p in root.rglob("*") if p.is_file()]
    assert len(files) >= MIN_FILES, f"only {len(files)} files in the source tree"
    manifest = base / "tree.sha256"
    manifest.write_text(sha256_manifest(root))
    return root, manifest


@pytest.fixture
def image(tmp_path: Path, no_leaks: Snapshot) -> Path:
    img = tmp_path / "vfat.img"
    mkfs(str(img), IMAGE_SIZE)
    return img


# --- tests --------------------------------------------------------------------------


def test_copy_tree_tar_and_remount(image: Path, tmp_path: Path,
                                   source_tree: tuple[Path, Path]) -> None:
    src, manifest = source_tree
    mnt = tmp_path / "mnt"
    with mounted(image, mnt):
        started = time.monotonic()
        run("cp", "-a", str(src), str(mnt / "tree"))
        elapsed = time.monotonic() - started
        size = sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
        print(f"\ncp -a of {size / 1e6:.1f} MB in {elapsed:.2f} s")
        check_manifest(manifest, mnt / "tree")

        run("tar", "-cf", str(mnt / "tree.tar"), "-C", str(mnt), "tree")
        (mnt / "untarred").mkdir()
        run("tar", "-xf", str(mnt / "tree.tar"), "-C", str(mnt / "untarred"))
        check_manifest(manifest, mnt / "untarred" / "tree")
        assert sorted(os.listdir(mnt)) == ["tree", "tree.tar", "untarred"]
    fsck_clean(image)

    with mounted(image, mnt):  # what was written is what is read back, from the image
        check_manifest(manifest, mnt / "tree")
        check_manifest(manifest, mnt / "untarred" / "tree")
        shutil.rmtree(mnt / "untarred")
        os.unlink(mnt / "tree.tar")
        assert os.listdir(mnt) == ["tree"]
    fsck_clean(image)


def test_python_io_seek_fsync_rename(image: Path, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    rnd = random.Random(7)
    blob = rnd.randbytes(1 << 20)
    expected = bytearray(blob)
    expected[100_000:105_000] = b"A" * 5000
    expected += bytes((3 << 20) - len(expected)) + b"tail"
    with mounted(image, mnt):
        work = mnt / "work.bin"
        with open(work, "wb") as f:
            f.write(blob)
        with open(work, "r+b") as f:
            f.seek(100_000)
            f.write(b"A" * 5000)
            f.seek(3 << 20)  # past the end: the gap reads back as zeros
            f.write(b"tail")
            f.flush()
            os.fsync(f.fileno())
        os.rename(work, mnt / "renamed.bin")
        assert not work.exists()
        assert (mnt / "renamed.bin").read_bytes() == expected

        (mnt / "other.bin").write_bytes(b"to be replaced")
        os.rename(mnt / "renamed.bin", mnt / "other.bin")  # over an existing file
        assert (mnt / "other.bin").read_bytes() == expected
        os.mkdir(mnt / "sub")
        os.rename(mnt / "other.bin", mnt / "sub" / "moved.bin")
        os.rename(mnt / "sub", mnt / "Sub Directory")
        with open(mnt / "Sub Directory" / "moved.bin", "r+b") as f:
            f.truncate(5000)
            os.fsync(f.fileno())
        os.truncate(mnt / "Sub Directory" / "moved.bin", 7000)
        assert os.listdir(mnt) == ["Sub Directory"]
    fsck_clean(image)
    with mounted(image, mnt):
        data = (mnt / "Sub Directory" / "moved.bin").read_bytes()
        assert data == bytes(expected[:5000]) + bytes(2000)
    fsck_clean(image)


def test_sqlite(image: Path, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    rnd = random.Random(3)
    script = ["CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, payload BLOB);"]
    for tx in range(4):
        script.append("BEGIN;")
        for i in range(50):
            n = tx * 50 + i
            script.append(f"INSERT INTO t VALUES({n}, 'row {n}', "
                          f"x'{rnd.randbytes(rnd.randrange(10, 3000)).hex()}');")
        script.append("COMMIT;")
    script.append("PRAGMA integrity_check;")
    script.append("SELECT count(*), sum(length(payload)) FROM t;")
    with mounted(image, mnt):
        db = mnt / "data base.sqlite"
        r = subprocess.run(["sqlite3", str(db)], input="\n".join(script), capture_output=True,
                           text=True, check=True)
        out = r.stdout.split()
        assert out[0] == "ok", r.stdout + r.stderr
        assert out[1].startswith("200|")
    fsck_clean(image)
    with mounted(image, mnt):
        r = subprocess.run(["sqlite3", str(mnt / "data base.sqlite")],
                           input="PRAGMA integrity_check;\nSELECT count(*), sum(length(payload)) "
                                 "FROM t;", capture_output=True, text=True, check=True)
        assert r.stdout.split() == out
    fsck_clean(image)


LONG_NAMES = {
    "A quite long file name with spaces.txt": b"spaces",
    "MixedCase.Txt": b"mixed",
    "UPPER.TXT": b"upper",
    "lower.txt": b"lower",
    "archive.tar.gz": b"two dots",
    ".hidden": b"leading dot",
    "Ünïcödé – naïve.md": b"unicode",
    "x" * 255: b"longest",
}


def test_long_names_survive_remount(image: Path, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    with mounted(image, mnt):
        os.mkdir(mnt / "Directory With A Long Name")
        for name, data in LONG_NAMES.items():
            (mnt / name).write_bytes(data)
            (mnt / "Directory With A Long Name" / name).write_bytes(data[::-1])
        assert (mnt / "mixedcase.txt").read_bytes() == b"mixed"  # names ignore case
    fsck_clean(image)
    with mounted(image, mnt):
        assert sorted(os.listdir(mnt)) == sorted([*LONG_NAMES, "Directory With A Long Name"])
        assert sorted(os.listdir(mnt / "Directory With A Long Name")) == sorted(LONG_NAMES)
        for name, data in LONG_NAMES.items():
            assert (mnt / name).read_bytes() == data
            assert (mnt / "Directory With A Long Name" / name).read_bytes() == data[::-1]
    fsck_clean(image)


def test_image_is_consistent_between_operations(image: Path, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    rnd = random.Random(11)
    contents = {f"file {i}.dat": rnd.randbytes(rnd.randrange(0, 200_000)) for i in range(6)}
    snapshots: list[Path] = []

    def snapshot() -> Path:
        # Every operation so far has returned, so the driver has flushed it to the image.
        copy = tmp_path / f"snapshot{len(snapshots)}.img"
        shutil.copyfile(image, copy)
        snapshots.append(copy)
        return copy

    with mounted(image, mnt):
        os.mkdir(mnt / "dir")
        for name, data in contents.items():
            with open(mnt / "dir" / name, "wb") as f:
                f.write(data[: len(data) // 2])
                f.write(data[len(data) // 2 :])
        snapshot()
        os.rename(mnt / "dir" / "file 0.dat", mnt / "renamed 0.dat")
        os.rename(mnt / "dir" / "file 1.dat", mnt / "dir" / "file 2.dat")
        snapshot()
        os.unlink(mnt / "dir" / "file 3.dat")
        with open(mnt / "dir" / "file 4.dat", "r+b") as g:
            g.truncate(1000)
            g.seek(0, os.SEEK_END)
            g.write(b"appended")
        snapshot()
        last = snapshot()
        for copy in snapshots:
            fsck_clean(copy)

    # The last copy is a whole file system: open it without FUSE and read it.
    copy = Vfat(str(last))
    try:
        assert copy.readdir("/", 0) == [".", "..", "dir", "renamed 0.dat"]
        assert sorted(copy.readdir("/dir", 0)) == sorted(
            [".", "..", "file 2.dat", "file 4.dat", "file 5.dat"])
        expect = {"/renamed 0.dat": contents["file 0.dat"],
                  "/dir/file 2.dat": contents["file 1.dat"],
                  "/dir/file 4.dat": contents["file 4.dat"][:1000] + b"appended",
                  "/dir/file 5.dat": contents["file 5.dat"]}
        for path, data in expect.items():
            fh = copy.open(path, os.O_RDONLY)
            assert copy.read(path, len(data) + 10, 0, fh) == data
            copy.release(path, fh)
    finally:
        copy.close()
    fsck_clean(last)
    fsck_clean(image)


def test_error_codes(image: Path, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    with mounted(image, mnt):
        os.mkdir(mnt / "dir")
        (mnt / "dir" / "file").write_bytes(b"x")
        assert_errno(errno.EEXIST, os.mkdir, mnt / "dir")
        assert_errno(errno.EEXIST, os.mkdir, mnt / "DIR")  # names ignore case
        assert_errno(errno.ENOTEMPTY, os.rmdir, mnt / "dir")
        assert_errno(errno.ENOENT, open, mnt / "missing")
        assert_errno(errno.ENOTDIR, os.stat, mnt / "dir" / "file" / "below")
        assert_errno(errno.EISDIR, os.unlink, mnt / "dir")
        assert_errno(errno.ENOTDIR, os.rmdir, mnt / "dir" / "file")
        assert_errno(errno.ENAMETOOLONG, open, mnt / ("n" * 256), "w")
        assert_errno(errno.EINVAL, open, mnt / "bad:name", "w")
        assert_errno(errno.EINVAL, os.rename, mnt / "dir", mnt / "dir" / "inside")
        os.mkdir(mnt / "other")
        (mnt / "other" / "x").write_bytes(b"y")
        assert_errno(errno.ENOTEMPTY, os.rename, mnt / "dir", mnt / "other")
        assert_errno(errno.ENOENT, os.rename, mnt / "dir", mnt / "dir" / "..." / "x")
    fsck_clean(image)


@pytest.mark.parametrize("fat", [12, 16, 32])
def test_fat_types(fat: int, tmp_path: Path, no_leaks: Snapshot) -> None:
    img = tmp_path / f"fat{fat}.img"
    mkfs(str(img), IMAGE_SIZE, fat=fat)  # FAT32 needs 65525 clusters: 64 MiB of 512 B
    mnt = tmp_path / "mnt"
    rnd = random.Random(fat)
    files = {f"d{i % 3}/Sub Dir {i % 2}/file number {i}.bin":
             rnd.randbytes(rnd.randrange(0, 70_000)) for i in range(40)}
    with mounted(img, mnt):
        for rel, data in files.items():
            (mnt / rel).parent.mkdir(parents=True, exist_ok=True)
            (mnt / rel).write_bytes(data)
        for i in range(0, 40, 4):
            os.unlink(mnt / f"d{i % 3}/Sub Dir {i % 2}/file number {i}.bin")
            del files[f"d{i % 3}/Sub Dir {i % 2}/file number {i}.bin"]
        os.rename(mnt / "d0", mnt / "d1" / "moved d0")
        files = {(f"d1/moved {k}" if k.startswith("d0/") else k): v for k, v in files.items()}
        stat = os.statvfs(mnt)
        assert stat.f_namemax == 255 and 0 < stat.f_bfree < stat.f_blocks
    fsck_clean(img)
    with mounted(img, mnt):
        found = {p.relative_to(mnt).as_posix(): p.read_bytes()
                 for p in mnt.rglob("*") if p.is_file()}
        assert found == files
    fsck_clean(img)
