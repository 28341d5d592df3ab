"""Fault injection: one test per fault type, determinism, filters, the loader and LineRecorder."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import sys
import textwrap
import threading
import traceback
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nooks.faults import (
    FAULT_TYPES,
    Fault,
    LineRecorder,
    NoSite,
    Site,
    install,
    last_site,
    mutate,
    mutate_at,
    mutated_source,
    sites,
    uninstall,
)
from nooks.faults.mutate import ALLOC_MESSAGE, PANIC_MESSAGE

# A module with sites for every fault type (and scoping corner cases: nonlocal, match, async).
SAMPLE = textwrap.dedent(
    '''\
    import threading

    LIMIT = 10


    class Device:
        """A sample driver."""

        def __init__(self, size: int) -> None:
            self.lock = threading.Lock()
            self.buf = bytearray(size)
            self.count = 0

        def write(self, offset: int, data: bytes) -> int:
            """Write data."""
            with self.lock:
                end = offset + len(data)
                if end > len(self.buf):
                    raise ValueError("too far")
                self.buf[offset:end] = data
                self.count += 1
            return len(data)

        def read(self, offset, n):
            self.lock.acquire()
            try:
                out = bytes(self.buf[offset:offset + n])
            finally:
                self.lock.release()
            return out

        def fill(self, value):
            i = 0
            while i < len(self.buf):
                self.buf[i] = value
                i += 1
            return {k: v for k, v in enumerate(self.buf)}

        async def poll(self, q):
            async with q.mutex:
                return [x async for x in q]


    def outer(x):
        total = 0
        def inner():
            nonlocal total
            total += x
        inner()
        data = [n * 2 for n in range(x)]
        match x:
            case 1:
                return data[:-1]
            case Device.count:
                return None
        return total
    '''
)


def src(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def inject(
    source: str, kind: str, variant: str, line: int | None = None
) -> tuple[dict[str, Any], str, Site]:
    """Mutate with the first seed whose site has ``variant``; run the module."""
    for seed in range(500):
        fault = Fault(kind, seed, line=line)
        text, site = mutated_source(source, fault)
        if site.variant != variant:
            continue
        code, again = mutate(source, "<sample>", fault)
        assert again == site
        ns: dict[str, Any] = {}
        exec(code, ns)
        return ns, text, site
    raise AssertionError(f"no seed reaches a {kind} {variant} site")


# -- one test per fault type ------------------------------------------------------------------

SCALE = src(
    """
    def scale(n):
        return n * 2
    """
)
ECHO = src(
    """
    def echo(v):
        return v
    """
)


@pytest.mark.parametrize(("variant", "expected"), [("+1", 12), ("-1", 8), ("0", 0)])
def test_source_read_gets_a_wrong_value(variant: str, expected: int) -> None:
    assert {s.variant for s in sites(SCALE, "source")} == {"None", "0", "+1", "-1"}
    ns, text, site = inject(SCALE, "source", variant)
    assert ns["scale"](5) == expected
    assert site.line == 2
    assert site.function == "scale"
    assert "n * 2" not in text


def test_source_none_and_type_aware_off_by_one() -> None:
    ns, text, _ = inject(SCALE, "source", "None")
    assert "return None * 2" in text
    with pytest.raises(TypeError):
        ns["scale"](5)
    plus, _, _ = inject(ECHO, "source", "+1")
    minus, _, _ = inject(ECHO, "source", "-1")
    assert plus["echo"](True) is False
    assert plus["echo"](2.5) == 3.5
    assert plus["echo"]("abc") == "ab"
    assert minus["echo"](b"abcd") == b"ab"
    assert plus["echo"]([1, 2]) is None


def test_destination_assigned_value_is_corrupted() -> None:
    area = src(
        """
        def area(w, h):
            a = w * h
            return a
        """
    )
    ns, _, site = inject(area, "destination", "+1")
    assert ns["area"](2, 3) == 7
    assert site.line == 2
    ns, _, _ = inject(area, "destination", "None")
    assert ns["area"](2, 3) is None

    box = src(
        """
        class Box:
            def put(self, v):
                self.v = v
        """
    )
    ns, text, site = inject(box, "destination", "0")
    b = ns["Box"]()
    b.put(5)
    assert b.v == 0
    assert site.function == "Box.put"
    assert "self.v = (lambda v: 0)(v)" in text


SIGN = src(
    """
    def sign(x):
        if x >= 0:
            return 1
        else:
            return -1
    """
)
COUNT = src(
    """
    def count(n):
        i = 0
        while i < n:
            i += 1
        return i
    """
)


def test_branch_condition_forced_or_else_dropped() -> None:
    ns, text, _ = inject(SIGN, "branch", "True")
    assert ns["sign"](-5) == 1
    assert "if True:" in text
    ns, _, _ = inject(SIGN, "branch", "False")
    assert ns["sign"](5) == -1
    ns, text, _ = inject(SIGN, "branch", "no-else")
    assert ns["sign"](-5) is None
    assert "else" not in text
    ns, _, _ = inject(COUNT, "branch", "False")
    assert ns["count"](3) == 0
    _, text, _ = inject(COUNT, "branch", "True")
    assert "while True:" in text  # not run: it would never end


def test_statement_deleted() -> None:
    push = src(
        """
        def push(items, x):
            items.append(x)
            return len(items)
        """
    )
    ns, text, site = inject(push, "statement", "pass", line=2)
    items: list[int] = []
    assert ns["push"](items, 1) == 0
    assert items == []
    assert text.splitlines()[1].strip() == "pass"
    assert site.what == "items.append(x) -> pass"


def test_init_first_assignment_removed_or_none() -> None:
    total = src(
        """
        def total(values):
            acc = 0
            for v in values:
                acc += v
            return acc
        """
    )
    # only acc: v is first bound by the for loop, values is an argument
    assert [(s.line, s.variant) for s in sites(total, "init")] == [(2, "removed"), (2, "None")]
    ns, _, _ = inject(total, "init", "removed")
    with pytest.raises(UnboundLocalError):
        ns["total"]([1, 2])
    ns, text, _ = inject(total, "init", "None")
    assert "acc = None" in text
    with pytest.raises(TypeError):
        ns["total"]([1, 2])


def test_pointer_through_the_wrong_object() -> None:
    label = src(
        """
        def label(dev, other):
            return dev.name
        """
    )
    assert {s.variant for s in sites(label, "pointer")} == {"None", "name:other"}
    a, b = types.SimpleNamespace(name="a"), types.SimpleNamespace(name="b")
    ns, text, _ = inject(label, "pointer", "None")
    assert "return None.name" in text
    with pytest.raises(AttributeError):
        ns["label"](a, b)
    ns, _, _ = inject(label, "pointer", "name:other")
    assert ns["label"](a, b) == "b"


def test_alloc_site_raises_memory_error() -> None:
    make = src(
        """
        def make(n):
            buf = bytearray(n)
            table = {i: 0 for i in range(n)}
            return [buf, table]
        """
    )
    found = sites(make, "alloc")
    assert [s.line for s in found] == [2, 3, 4]
    for site in found:
        code, chosen = mutate(make, "<sample>", Fault("alloc", 0, line=site.line))
        assert chosen == site
        ns: dict[str, Any] = {}
        exec(code, ns)
        with pytest.raises(MemoryError, match=ALLOC_MESSAGE):
            ns["make"](3)
    not_allocs = src(
        """
        def f(x):
            raise ValueError(x)
        """
    )
    assert sites(not_allocs, "alloc") == []


def test_overrun_extends_a_slice_or_writes_past_the_end() -> None:
    code = src(
        """
        def head(buf, n):
            return buf[:n]

        def put(a, i, v):
            a[i] = v
        """
    )
    ns, text, _ = inject(code, "overrun", "+1")
    assert "buf[:n + 1]" in text
    assert ns["head"](b"abcdef", 2) == b"abc"
    ns, _, _ = inject(code, "overrun", "+16")
    assert ns["head"](b"x" * 40, 2) == b"x" * 18
    ns, text, _ = inject(code, "overrun", "len")
    assert "a[len(a)] = v" in text
    with pytest.raises(IndexError):
        ns["put"]([0, 0], 0, 1)
    # a negative bound is not "extended" (it would wrap to the start)
    assert sites("def f(a):\n    return a[:-1]\n", "overrun") == []


class CountingLock:
    def __init__(self) -> None:
        self.acquired = 0
        self.released = 0

    def acquire(self) -> bool:
        self.acquired += 1
        return True

    def release(self) -> None:
        self.released += 1

    def __enter__(self) -> CountingLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


DEV = src(
    """
    class Dev:
        def __init__(self, lock):
            self.lock = lock
            self.n = 0

        def bump(self):
            with self.lock:
                self.n += 1
            return self.n

        def step(self):
            self.lock.acquire()
            self.n += 1
            self.lock.release()
    """
)


def test_sync_with_lock_unguarded() -> None:
    ns, text, site = inject(DEV, "sync", "unguarded")
    assert "with" not in text
    assert site.function == "Dev.bump"
    lock = threading.Lock()
    with lock:  # held: the unguarded body must not wait for it
        assert ns["Dev"](lock).bump() == 1
    counting = CountingLock()
    ns["Dev"](counting).bump()
    assert (counting.acquired, counting.released) == (0, 0)


def test_sync_second_acquire_inside_with_deadlocks() -> None:
    ns, text, site = inject(DEV, "sync", "deadlock", line=7)
    assert "with self.lock:\n            self.lock.acquire()" in text
    counting = CountingLock()  # a real Lock would block forever on the second acquire
    ns["Dev"](counting).bump()
    assert (counting.acquired, counting.released) == (2, 1)
    assert site.function == "Dev.bump"


@pytest.mark.parametrize(
    ("line", "variant", "counts"),
    [(12, "deleted", (0, 1)), (14, "deleted", (1, 0)), (12, "deadlock", (2, 1))],
)
def test_sync_acquire_release_deleted_or_doubled(
    line: int, variant: str, counts: tuple[int, int]
) -> None:
    ns, _, site = inject(DEV, "sync", variant, line=line)
    assert site.function == "Dev.step"
    counting = CountingLock()
    ns["Dev"](counting).step()
    assert (counting.acquired, counting.released) == counts


WORK = src(
    """
    def work(x):
        y = x + 1
        return y
    """
)


def test_panic_raise_runs_and_points_at_the_real_line() -> None:
    ns, text, site = inject(WORK, "panic", "raise", line=3)
    assert f"raise RuntimeError({PANIC_MESSAGE!r})\n    return y" in text
    with pytest.raises(RuntimeError, match=PANIC_MESSAGE) as info:
        ns["work"](1)
    last = traceback.extract_tb(info.value.__traceback__)[-1]
    assert (last.filename, last.lineno) == ("<sample>", site.line)


@pytest.mark.parametrize(
    ("variant", "statement"),
    [("abort", "__import__('os').abort()"), ("segv", "__import__('ctypes').string_at(0)")],
)
def test_panic_abort_and_segfault_inserted(variant: str, statement: str) -> None:
    # not run: they would kill the test process
    text, site = next(
        (t, s)
        for t, s in (mutated_source(WORK, Fault("panic", seed)) for seed in range(100))
        if s.variant == variant
    )
    tree = ast.parse(text)
    body = tree.body[0]
    assert isinstance(body, ast.FunctionDef)
    lines = [ast.unparse(s) for s in body.body]
    assert statement in lines
    assert lines.index(statement) == site.line - 2  # inserted before the site's statement
    assert len(lines) == 3


def test_hang_inserts_an_endless_loop() -> None:
    text, site = mutated_source(WORK, Fault("hang", 0, line=2))
    func = ast.parse(text).body[0]
    assert isinstance(func, ast.FunctionDef)
    loop = func.body[0]  # before y = x + 1; not run: it never returns
    assert isinstance(loop, ast.While)
    assert isinstance(loop.test, ast.Constant)
    assert loop.test.value is True
    assert [type(s) for s in loop.body] == [ast.Pass]
    assert site.what == "while True: pass before y = x + 1"


# -- sites, determinism and filters -----------------------------------------------------------


def test_sample_has_sites_for_every_kind_and_each_compiles() -> None:
    for kind in FAULT_TYPES:
        found = sites(SAMPLE, kind)
        assert found, kind
        assert found == sorted(found, key=lambda s: (s.line, s.col))
        for site in found:
            code = mutate_at(SAMPLE, "sample.py", site)
            assert code.co_filename == "sample.py"


def test_sites_only_inside_functions_with_qualified_names() -> None:
    names = {s.function for kind in FAULT_TYPES for s in sites(SAMPLE, kind)}
    assert names == {
        "Device.__init__",
        "Device.write",
        "Device.read",
        "Device.fill",
        "Device.poll",
        "outer",
        "outer.<locals>.inner",
    }
    lines = {s.line for kind in FAULT_TYPES for s in sites(SAMPLE, kind)}
    assert not lines & {1, 3, 6, 7}  # module and class bodies are left alone


def test_nonlocal_binding_is_never_deleted() -> None:
    # deleting `total = 0` would make `nonlocal total` a SyntaxError
    deleted = {s.what for s in sites(SAMPLE, "statement") if s.function == "outer"}
    assert "total = 0 -> pass" not in deleted
    init = [s for s in sites(SAMPLE, "init") if s.function == "outer"]
    assert [s.variant for s in init if "total" in s.what] == ["None"]


def test_same_seed_same_site_and_source() -> None:
    for kind in FAULT_TYPES:
        for seed in (0, 1, 12345):
            fault = Fault(kind, seed)
            first = mutated_source(SAMPLE, fault)
            assert mutated_source(SAMPLE, fault) == first
            code, site = mutate(SAMPLE, "sample.py", fault)
            assert site == first[1]
            assert code == mutate_at(SAMPLE, "sample.py", site)


def test_different_seeds_reach_different_sites() -> None:
    for kind in FAULT_TYPES:
        count = len(sites(SAMPLE, kind))
        reached = {mutated_source(SAMPLE, Fault(kind, seed))[1] for seed in range(60)}
        assert len(reached) > min(count - 1, 1), kind


def test_line_and_function_filters() -> None:
    for seed in range(30):
        _, site = mutated_source(SAMPLE, Fault("statement", seed, function="Device.read"))
        assert site.function == "Device.read"
        _, site = mutated_source(SAMPLE, Fault("pointer", seed, line=27))
        assert site.line == 27


def test_lines_restrict_sites() -> None:
    found = sites(SAMPLE, "statement", lines={18, 19})
    assert {s.line for s in found} == {18, 19}
    for seed in range(40):
        _, site = mutated_source(SAMPLE, Fault("statement", seed), lines={18, 19})
        assert site.line in {18, 19}


def test_no_site() -> None:
    plain = "def f():\n    return 1\n"
    with pytest.raises(NoSite, match="no sync site"):
        mutate(plain, "f.py", Fault("sync", 0))
    with pytest.raises(ValueError, match="on line 9"):  # NoSite is a ValueError
        mutated_source(plain, Fault("statement", 0, line=9))
    with pytest.raises(NoSite):
        mutate(plain, "f.py", Fault("statement", 0, function="g"))
    with pytest.raises(NoSite):
        mutate(plain, "f.py", Fault("statement", 0), lines=set())
    assert sites("x = [1]\nclass C:\n    y = x[0]\n", "alloc") == []  # no functions
    with pytest.raises(ValueError, match="unknown fault type"):
        Fault("cosmic-ray", 0)
    with pytest.raises(ValueError, match="unknown fault type"):
        sites(plain, "cosmic-ray")


def test_fault_and_site_round_trip_through_json() -> None:
    fault = Fault("branch", 7, line=3, function="Device.write")
    assert msgspec.json.decode(msgspec.json.encode(fault), type=Fault) == fault
    site = sites(SAMPLE, "branch")[0]
    assert msgspec.json.decode(msgspec.json.encode(site), type=Site) == site


@settings(derandomize=True, database=None, max_examples=150, deadline=None)
@given(seed=st.integers(min_value=0, max_value=2**64), kind=st.sampled_from(FAULT_TYPES))
def test_any_seed_gives_compilable_code_at_a_listed_site(seed: int, kind: str) -> None:
    code, site = mutate(SAMPLE, "sample.py", Fault(kind, seed))
    assert isinstance(code, types.CodeType)
    assert site in sites(SAMPLE, kind)
    text, again = mutated_source(SAMPLE, Fault(kind, seed))
    assert again == site
    compile(text, "sample.py", "exec")


# -- LineRecorder -----------------------------------------------------------------------------

TRACED = src(
    """
    def f(x):
        y = x + 1
        if y > 10:
            y = 0
        return y


    def g():
        return 1
    """
)


def load_file(path: Path, name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_line_recorder_records_exactly_the_executed_lines(tmp_path: Path) -> None:
    path = tmp_path / "traced.py"
    path.write_text(TRACED)
    mod = load_file(path, "nooks_faults_traced")
    before = sys.gettrace()
    with LineRecorder(path) as rec:
        assert mod.f(1) == 2
    assert rec.lines == {2, 3, 5}
    assert sys.gettrace() is before
    mod.f(20)
    mod.g()
    assert rec.lines == {2, 3, 5}  # stopped


def test_line_recorder_follows_new_threads(tmp_path: Path) -> None:
    path = tmp_path / "traced.py"
    path.write_text(TRACED)
    mod = load_file(path, "nooks_faults_traced_threads")
    before = threading.gettrace()
    with LineRecorder(str(path)) as rec:
        t = threading.Thread(target=mod.f, args=(20,))
        t.start()
        t.join()
    assert rec.lines == {2, 3, 4, 5}
    assert threading.gettrace() is before


def test_executed_lines_steer_the_fault(tmp_path: Path) -> None:
    path = tmp_path / "traced.py"
    path.write_text(TRACED)
    mod = load_file(path, "nooks_faults_traced_steer")
    with LineRecorder(path) as rec:
        mod.f(1)
    assert any(s.line == 4 for s in sites(TRACED, "statement"))  # y = 0 never ran
    for kind in ("statement", "panic", "source"):
        for seed in range(30):
            _, site = mutated_source(TRACED, Fault(kind, seed), lines=rec.lines)
            assert site.line in rec.lines


# -- loader -----------------------------------------------------------------------------------

LOADED = src(
    """
    def make(n):
        return [0] * n


    def double(n):
        return n * 2
    """
)


@pytest.fixture
def module_dir(tmp_path: Path) -> Iterator[Path]:
    names = ("nooks_faults_loaded", "nooks_faults_other")
    sys.path.insert(0, str(tmp_path))
    importlib.invalidate_caches()
    try:
        yield tmp_path
    finally:
        uninstall()
        sys.path.remove(str(tmp_path))
        for name in names:
            sys.modules.pop(name, None)


def test_loader_mutates_the_module_as_it_is_imported(module_dir: Path) -> None:
    path = module_dir / "nooks_faults_loaded.py"
    path.write_text(LOADED)
    (module_dir / "nooks_faults_other.py").write_text(LOADED)
    install("nooks_faults_loaded", Fault("alloc", 0))
    assert last_site() is None

    mod = importlib.import_module("nooks_faults_loaded")
    site = last_site()
    assert site is not None
    assert (site.kind, site.line, site.function) == ("alloc", 2, "make")
    with pytest.raises(MemoryError) as info:
        mod.make(3)
    last = traceback.extract_tb(info.value.__traceback__)[-1]
    assert (last.filename, last.lineno) == (str(path), 2)
    assert last.line == "return [0] * n"  # the real source line
    assert mod.double(2) == 4
    assert path.read_text() == LOADED  # the file on disk is untouched

    other = importlib.import_module("nooks_faults_other")  # other modules load normally
    assert other.make(2) == [0, 0]

    del sys.modules["nooks_faults_loaded"]  # only the first import is mutated
    assert importlib.import_module("nooks_faults_loaded").make(2) == [0, 0]

    uninstall()
    del sys.modules["nooks_faults_loaded"]
    assert importlib.import_module("nooks_faults_loaded").make(2) == [0, 0]
    assert last_site() == site


def test_loader_respects_lines_and_reports_no_site(module_dir: Path) -> None:
    (module_dir / "nooks_faults_loaded.py").write_text(LOADED)
    install("nooks_faults_loaded", Fault("source", 5), lines={6})
    mod = importlib.import_module("nooks_faults_loaded")
    site = last_site()
    assert site is not None
    assert (site.line, site.function, site.variant) == (6, "double", "+1")
    assert mod.make(2) == [0, 0]  # line 2 did not "run": never mutated
    assert mod.double(2) == 6

    del sys.modules["nooks_faults_loaded"]
    install("nooks_faults_loaded", Fault("sync", 0))
    with pytest.raises(NoSite):
        importlib.import_module("nooks_faults_loaded")
    assert "nooks_faults_loaded" not in sys.modules
