"""The documentation's examples work as typed: every shell line parses, the README's
quick start runs, and the guide's Python examples run from files named as they say."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from nooks.fs.mounts import is_mounted

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", ROOT / "docs" / "GUIDE.md"]
QUICK_START_MOUNT = "/mnt/nooks"

pytestmark = pytest.mark.timeout(300)


def blocks(path: Path, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", path.read_text(), flags=re.S)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_shell_example_parses(doc: Path) -> None:
    found = blocks(doc, "sh")
    assert found
    for block in found:
        r = subprocess.run(["bash", "-n"], input=block, capture_output=True, text=True,
                           check=False)
        assert r.returncode == 0, f"{doc.name}:\n{block}\n{r.stderr}"


@pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse")
def test_the_readme_quick_start_runs_as_typed(tmp_path: Path) -> None:
    quick = next(b for b in blocks(ROOT / "README.md", "sh") if "nooks mkfs" in b)
    assert f"mkdir -p {QUICK_START_MOUNT}" in quick
    if is_mounted(QUICK_START_MOUNT):
        pytest.skip(f"{QUICK_START_MOUNT} is in use")
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")  # the commands name .venv/bin/nooks
    env = dict(os.environ, NOOKS_RUN_DIR=str(tmp_path / "run"))
    try:
        r = subprocess.run(["bash", "-e", "-x"], input=quick, cwd=tmp_path, env=env,
                           capture_output=True, text=True, check=False, timeout=240)
        assert r.returncode == 0, r.stdout + r.stderr
        assert r.stdout.count("hello") == 1  # cat after the crash
        assert "recovered in" in r.stdout
        assert not is_mounted(QUICK_START_MOUNT)
    finally:
        if is_mounted(QUICK_START_MOUNT):
            subprocess.run(["fusermount3", "-uz", QUICK_START_MOUNT], check=False)


def test_the_guides_python_examples_run(tmp_path: Path) -> None:
    files = {}
    for block in blocks(ROOT / "docs" / "GUIDE.md", "python"):
        first = block.splitlines()[0]
        if first.startswith("# ") and first.endswith(".py"):
            files[first[2:]] = block
    assert {"kv.py", "use_kv.py"} <= set(files)
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    r = subprocess.run([sys.executable, "use_kv.py"], cwd=tmp_path, capture_output=True,
                       text=True, check=False, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "no such key, errno 2"


def test_the_readmes_python_example_runs(tmp_path: Path) -> None:
    example = next(b for b in blocks(ROOT / "README.md", "python") if "Domain(" in b)
    r = subprocess.run([sys.executable, "-c", example], cwd=tmp_path, capture_output=True,
                       text=True, check=False, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "crashed during crash_segv: killed by SIGSEGV" in r.stdout
