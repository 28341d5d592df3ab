"""The campaign's results file, ``results.jsonl``: one JSON line per finished run.

Rules:

* A line is appended only for a run that finished; a run cut short (the campaign
  was interrupted, or the process died) leaves no line and is run again.
* Each line is written whole, by one ``write``; a line left unfinished (the
  process was killed as it wrote) is skipped on reading, and the next append
  starts on a line of its own.
* A run is keyed by (driver, fault index, mode): reading keeps the first line of
  each key, so a result is never counted twice.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import msgspec


class RunResult(msgspec.Struct, kw_only=True):
    driver: str
    index: int
    mode: str  # "native" or "nooks"
    kind: str
    seed: int
    site: str | None
    outcome: str
    data_ok: bool
    detail: str
    recoveries: int
    seconds: float


Key = tuple[str, int, str]


def key(r: RunResult) -> Key:
    return (r.driver, r.index, r.mode)


def load_results(path: str) -> list[RunResult]:
    """Every finished run in ``path``, in the order written, each once."""
    out: list[RunResult] = []
    seen: set[Key] = set()
    if not os.path.exists(path):
        return out
    with open(path, "rb") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                r = msgspec.json.decode(line, type=RunResult)
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue  # cut short as it was written: that run is done again
            if key(r) not in seen:
                seen.add(key(r))
                out.append(r)
    return out


def append_result(path: str, r: RunResult) -> None:
    """Add one finished run to ``path`` (callers serialise their appends)."""
    data = msgspec.json.encode(r) + b"\n"
    with open(path, "a+b", buffering=0) as f:
        f.seek(0, os.SEEK_END)
        if f.tell() > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                data = b"\n" + data  # after a line cut short: start a new one
        f.write(data)


def pairs(results: list[RunResult]) -> Iterator[tuple[RunResult, RunResult]]:
    """(native, nooks) results of the same fault."""
    by: dict[tuple[str, int], dict[str, RunResult]] = {}
    for r in results:
        by.setdefault((r.driver, r.index), {})[r.mode] = r
    for k in sorted(by):
        d = by[k]
        if "native" in d and "nooks" in d:
            yield d["native"], d["nooks"]
