"""What the shadow expects to read back: after any sequence of writes and truncates,
every sample it keeps is what the file holds there, and the sizes it knows are right."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from nooks.fs.writes import MAX_SAMPLES, WrittenFiles

ops = st.lists(st.one_of(
    st.tuples(st.just("write"), st.integers(0, 3000), st.binary(min_size=1, max_size=1200)),
    st.tuples(st.just("truncate"), st.integers(0, 4000), st.just(b""))), max_size=40)


def apply(ref: bytearray, op: str, n: int, data: bytes) -> bytearray:
    if op == "write":
        if len(ref) < n:
            ref.extend(bytes(n - len(ref)))
        ref[n:n + len(data)] = data
        return ref
    return ref[:n] + bytearray(max(0, n - len(ref)))


@settings(max_examples=300, deadline=None)
@given(history=ops, created=st.booleans())
def test_samples_match_the_file(history: list[tuple[str, int, bytes]], created: bool) -> None:
    files = WrittenFiles()
    ref = bytearray()
    if created:
        files.created("/f")
    for op, n, data in history:
        if op == "write":
            files.write("/f", n, data)
        else:
            files.truncate("/f", n)
        ref = apply(ref, op, n, data)
    if not history and not created:
        assert "/f" not in files
        return
    w = files.files["/f"]
    assert len(w.samples) <= MAX_SAMPLES
    for offset, data in w.samples:
        assert bytes(ref[offset:offset + len(data)]) == data
    if created or any(op == "truncate" for op, _, _ in history):
        assert w.size == len(ref)
    assert w.least <= len(ref)


def test_rename_moves_files_and_replaces_the_target() -> None:
    files = WrittenFiles()
    files.write("/d/a", 0, b"a")
    files.write("/d/sub/b", 0, b"b")
    files.write("/e", 0, b"old e")
    files.renamed("/d", "/e")
    assert sorted(files.files) == ["/e/a", "/e/sub/b"]
    files.removed("/e/a")
    assert sorted(files.files) == ["/e/sub/b"]
    files.renamed("/e/sub/b", "/e/sub/bb")
    assert files.files["/e/sub/bb"].samples == [(0, b"b")]
    files.clear()
    assert not files
