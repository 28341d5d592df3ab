"""Fault mutations: where each fault type can go in a driver's source, and the mutated code.

This module owns the mapping of the Rio/Nooks SWIFI fault types onto Python source, the
enumeration of fault *sites* and the AST rewrite that injects one fault.  It is pure: no I/O,
no imports of the driver, no global state.

Rules:

- Sites are only inside function bodies (``def``/``async def``, methods and nested functions
  included).  Module and class bodies run once at import and are left alone; the default
  values and decorators of a nested function belong to the enclosing function, annotations
  and ``match`` patterns to nobody.
- A site is one place *and* one variant of the fault (e.g. "read of ``n`` gets ``n+1``");
  :func:`sites` lists them in a deterministic order (by line, then column, then walk order)
  and every listed site compiles once applied.
- The choice is reproducible: :func:`mutate` picks with ``random.Random(fault.seed)`` among
  the sites left after the ``lines``/``fault.line``/``fault.function`` filters.
- Mutated code is compiled with the original filename and keeps the original line numbers;
  inserted nodes carry the position of the node they replace or precede, so tracebacks point
  at the real file.
- Inserted code needs nothing at the site: modules are reached with ``__import__("os")``.

Fault types (``FAULT_TYPES``) and their Python mapping:

``source``
    a read of a local variable or argument gets a wrong value: ``None``, ``0``, or off by one
    (``+1``/``-1`` for numbers, ``not v`` for bools, the str/bytes truncated: ``v[:-1]`` for
    ``+1``, ``v[:len(v) // 2]`` for ``-1``, ``None`` for anything else).
``destination``
    the value assigned to a local or an attribute (``x = e``, ``self.a = e``, ``x: T = e``)
    is corrupted the same way; ``e`` is still evaluated.
``branch``
    an ``if``/``while`` condition forced to ``True`` or ``False``, or its ``else`` dropped.
``statement``
    one statement replaced by ``pass`` (not docstrings, ``pass``, ``global``, ``nonlocal``).
``init``
    the first assignment ``x = e`` of a local in a function removed, or ``e`` made ``None``.
``pointer``
    an attribute access ``x.attr`` made through ``None`` or through another local name.
``alloc``
    an allocation site raises ``MemoryError``: a list/set/dict display, a comprehension or
    generator expression, or a constructor call (``list``, ``dict``, ``set``, ``frozenset``,
    ``tuple``, ``bytes``, ``bytearray``, ``object`` or any capitalised callable).
``overrun``
    a slice's upper bound extended (``a[i:j]`` -> ``a[i:j+k]``, k 1 or 16), or a subscript
    write moved one past the end (``a[i] = v`` -> ``a[len(a)] = v``).
``sync``
    ``with lock:`` unguarded (the body runs without the lock), a ``.acquire()``/``.release()``
    call statement deleted, or a deadlock: a second acquire of the same lock inserted.
    A lock is a name/attribute whose last part contains lock/mutex/semaphore or ends in
    sem/cond/condition/cv.
``panic``
    a statement inserted before a statement: ``raise RuntimeError``, ``os.abort()`` or a
    segfault through ``ctypes.string_at(0)``.
``hang``
    ``while True: pass`` inserted before a statement.
"""

from __future__ import annotations

import ast
import copy
import random
import re
import types
import warnings
from collections.abc import Callable, Iterator
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from functools import partial

FAULT_TYPES: tuple[str, ...] = (
    "source",
    "destination",
    "branch",
    "statement",
    "init",
    "pointer",
    "alloc",
    "overrun",
    "sync",
    "panic",
    "hang",
)

PANIC_MESSAGE = "nooks fault injection: panic"
ALLOC_MESSAGE = "nooks fault injection: allocation failed"


class NoSite(ValueError):
    """No site of the requested fault type is left after the filters."""


@dataclass(frozen=True)
class Fault:
    """One fault to inject: its type, the seed that picks the site, optional restrictions.

    ``line`` keeps only sites on that line, ``function`` only sites in the function with that
    qualified name (``Class.method``, ``outer.<locals>.inner``, as ``__qualname__``).
    """

    kind: str
    seed: int
    line: int | None = None
    function: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in FAULT_TYPES:
            raise ValueError(f"unknown fault type {self.kind!r}; expected one of {FAULT_TYPES}")


@dataclass(frozen=True)
class Site:
    """One place where a fault of ``kind`` can go, with the variant that would be applied.

    ``line``/``col`` are the position of the node mutated (or of the statement a new
    statement is inserted before); ``function`` is the qualified name of the enclosing
    function; ``variant`` names the variant (e.g. ``"+1"``, ``"False"``, ``"segv"``) and
    ``what`` describes the mutation in a few words.
    """

    kind: str
    line: int
    col: int
    function: str | None
    variant: str
    what: str


_Apply = Callable[[], None]
_FuncDef = ast.FunctionDef | ast.AsyncFunctionDef
_Block = list[ast.stmt]

# -- templates --------------------------------------------------------------------------------

_V = "v"  # the lambda parameter: its own scope, so it shadows nothing outside
_CORRUPT = {
    "None": f"(lambda {_V}: None)(_)",
    "0": f"(lambda {_V}: 0)(_)",
    "+1": (
        f"(lambda {_V}: not {_V} if isinstance({_V}, bool) else {_V} + 1 "
        f"if isinstance({_V}, (int, float, complex)) else {_V}[:-1] "
        f"if isinstance({_V}, (str, bytes, bytearray)) else None)(_)"
    ),
    "-1": (
        f"(lambda {_V}: not {_V} if isinstance({_V}, bool) else {_V} - 1 "
        f"if isinstance({_V}, (int, float, complex)) else {_V}[:len({_V}) // 2] "
        f"if isinstance({_V}, (str, bytes, bytearray)) else None)(_)"
    ),
}
_VALUES = ("None", "0", "+1", "-1")
_PANICS = {
    "raise": f"raise RuntimeError({PANIC_MESSAGE!r})",
    "abort": "__import__('os').abort()",
    "segv": "__import__('ctypes').string_at(0)",
}
_HANG = "while True:\n    pass"
_ALLOC = f"(_ for _ in ()).throw(MemoryError({ALLOC_MESSAGE!r}))"
_ALLOCATORS = frozenset(
    {"list", "dict", "set", "frozenset", "tuple", "bytes", "bytearray", "object"}
)
_LOCKISH = re.compile(r"lock|mutex|semaphore|(^|_)(sem|cond|condition|cv)$")
_OVERRUNS = (1, 16)


def _locate(new: ast.AST, at: ast.AST) -> None:
    """Give every node of ``new`` (freshly built) the start position of ``at``."""
    line = getattr(at, "lineno", 1)
    col = getattr(at, "col_offset", 0)
    for node in ast.walk(new):
        if "lineno" in node._attributes:
            node.lineno = line  # type: ignore[attr-defined]
            node.col_offset = col  # type: ignore[attr-defined]
            node.end_lineno = line  # type: ignore[attr-defined]
            node.end_col_offset = col  # type: ignore[attr-defined]


def _expr(template: str, at: ast.AST) -> ast.expr:
    node = ast.parse(template, mode="eval").body
    _locate(node, at)
    return node


def _stmt(template: str, at: ast.AST) -> ast.stmt:
    node = ast.parse(template).body[0]
    _locate(node, at)
    return node


def _const(value: bool | int | None, at: ast.AST) -> ast.expr:
    node = ast.Constant(value)
    _locate(node, at)
    return node


def _corrupt(value: ast.expr, variant: str) -> ast.expr:
    call = _expr(_CORRUPT[variant], value)
    assert isinstance(call, ast.Call)
    call.args[0] = value
    return call


def _short(node: ast.AST, limit: int = 40) -> str:
    text = ast.unparse(node).split("\n", 1)[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- scopes -----------------------------------------------------------------------------------


@dataclass
class _Fn:
    qualname: str
    node: _FuncDef
    args: frozenset[str]
    locals: frozenset[str]  # arguments and names bound in the function's own scope
    inner_nonlocal: frozenset[str]  # names some nested function declares nonlocal


def _own_node(node: ast.AST) -> Iterator[ast.AST]:
    """``node`` and its descendants that run in the same function scope, pre-order."""
    yield node
    children: list[ast.AST]
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
        a = node.args
        children = [*node.decorator_list, *a.defaults, *(d for d in a.kw_defaults if d)]
    elif isinstance(node, ast.Lambda):
        a = node.args
        children = [*a.defaults, *(d for d in a.kw_defaults if d), node.body]
    elif isinstance(node, ast.ClassDef):
        children = [*node.decorator_list, *node.bases, *node.keywords]
    elif isinstance(node, ast.match_case):
        children = [*([node.guard] if node.guard else []), *node.body]
    elif isinstance(node, ast.AnnAssign):
        children = [node.target, *([node.value] if node.value else [])]
    elif isinstance(node, ast.arg | ast.pattern):
        children = []
    else:
        children = list(ast.iter_child_nodes(node))
    for child in children:
        yield from _own_node(child)


def _own(fn: _FuncDef) -> Iterator[ast.AST]:
    for stmt in fn.body:
        yield from _own_node(stmt)


def _binds(node: ast.AST) -> set[str]:
    """Names a subtree may bind (a superset: nested scopes included)."""
    out: set[str] = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store | ast.Del):
            out.add(n.id)
        elif isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            out.add(n.name)
        elif isinstance(n, ast.Import | ast.ImportFrom):
            out.update((a.asname or a.name).split(".")[0] for a in n.names if a.name != "*")
        elif isinstance(n, ast.ExceptHandler | ast.MatchAs | ast.MatchStar) and n.name:
            out.add(n.name)
        elif isinstance(n, ast.MatchMapping) and n.rest:
            out.add(n.rest)
    return out


def _make_fn(qualname: str, node: _FuncDef) -> _Fn:
    a = node.args
    args = {x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs)}
    args |= {x.arg for x in (a.vararg, a.kwarg) if x is not None}
    own = list(_own(node))
    in_comprehension = {
        id(n) for c in own if isinstance(c, ast.comprehension) for n in ast.walk(c.target)
    }
    bound = set(args)
    declared: set[str] = set()
    for n in own:
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store | ast.Del):
            if id(n) not in in_comprehension:
                bound.add(n.id)
        elif isinstance(n, ast.Global | ast.Nonlocal):
            declared.update(n.names)
        elif isinstance(n, ast.match_case):
            bound |= _binds(n.pattern)
        elif isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            bound.add(n.name)
        elif isinstance(n, ast.Import | ast.ImportFrom):
            bound |= _binds(n)
        elif isinstance(n, ast.ExceptHandler) and n.name:
            bound.add(n.name)
    inner = {
        name
        for n in ast.walk(node)
        if isinstance(n, ast.Nonlocal)
        for name in n.names
    }
    return _Fn(qualname, node, frozenset(args), frozenset(bound - declared), frozenset(inner))


def _functions(tree: ast.Module) -> list[_Fn]:
    out: list[_Fn] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                qualname = prefix + child.name
                out.append(_make_fn(qualname, child))
                visit(child, qualname + ".<locals>.")
            elif isinstance(child, ast.ClassDef):
                visit(child, prefix + child.name + ".")
            else:
                visit(child, prefix)

    visit(tree, "")
    return out


def _sub_blocks(stmt: ast.stmt) -> list[_Block]:
    if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return []
    out: list[_Block] = []
    body = getattr(stmt, "body", None)
    if isinstance(body, list):
        out.append(body)
    if isinstance(stmt, ast.Try | ast.TryStar):
        out += [h.body for h in stmt.handlers]
    if isinstance(stmt, ast.Match):
        out += [c.body for c in stmt.cases]
    for field in ("orelse", "finalbody"):
        block = getattr(stmt, field, None)
        if isinstance(block, list) and block:
            out.append(block)
    return out


def _statements(fn: _Fn) -> Iterator[tuple[_Block, int, ast.stmt]]:
    """Every statement of the function's own scope with its block and index, pre-order."""

    def walk(block: _Block) -> Iterator[tuple[_Block, int, ast.stmt]]:
        for i, stmt in enumerate(block):
            yield block, i, stmt
            for sub in _sub_blocks(stmt):
                yield from walk(sub)

    yield from walk(fn.node.body)


def _is_docstring(fn: _Fn, block: _Block, i: int, stmt: ast.stmt) -> bool:
    return (
        block is fn.node.body
        and i == 0
        and isinstance(stmt, ast.Expr)
        and isinstance(stmt.value, ast.Constant)
        and isinstance(stmt.value.value, str)
    )


# -- appliers ---------------------------------------------------------------------------------


def _swap(parent: ast.AST, old: ast.AST, make: Callable[[], ast.AST]) -> _Apply:
    """Replace child ``old`` of ``parent`` with ``make()``."""

    def apply() -> None:
        new = make()
        for field, value in ast.iter_fields(parent):
            if value is old:
                setattr(parent, field, new)
                return
            if isinstance(value, list):
                for i, item in enumerate(value):
                    if item is old:
                        value[i] = new
                        return
        raise AssertionError("node not found under its parent")  # pragma: no cover

    return apply


def _set(node: ast.AST, field: str, make: Callable[[], object]) -> _Apply:
    def apply() -> None:
        setattr(node, field, make())

    return apply


def _replace(block: _Block, i: int, make: Callable[[], list[ast.stmt]]) -> _Apply:
    def apply() -> None:
        block[i : i + 1] = make()

    return apply


def _insert(block: _Block, i: int, make: Callable[[], ast.stmt]) -> _Apply:
    def apply() -> None:
        block.insert(i, make())

    return apply


def _pass(at: ast.stmt) -> Callable[[], list[ast.stmt]]:
    def make() -> list[ast.stmt]:
        node = ast.Pass()
        _locate(node, at)
        return [node]

    return make


# -- scanners ---------------------------------------------------------------------------------


class _Scan:
    """Sites of one kind in one parsed module, each with the closure that applies it."""

    def __init__(self, tree: ast.Module, kind: str) -> None:
        if kind not in FAULT_TYPES:
            raise ValueError(f"unknown fault type {kind!r}; expected one of {FAULT_TYPES}")
        self.kind = kind
        self.parents: dict[int, ast.AST] = {
            id(child): node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)
        }
        self.found: list[tuple[Site, _Apply]] = []
        scan: Callable[[_Fn], None] = getattr(self, "_" + kind)
        for fn in _functions(tree):
            self.fn = fn
            scan(fn)
        order = {id(pair): n for n, pair in enumerate(self.found)}
        self.found.sort(key=lambda p: (p[0].line, p[0].col, order[id(p)]))

    def add(self, at: ast.AST, variant: str, what: str, apply: _Apply) -> None:
        line = getattr(at, "lineno", 0)
        col = getattr(at, "col_offset", 0)
        site = Site(self.kind, line, col, self.fn.qualname, variant, what)
        self.found.append((site, apply))

    def parent(self, node: ast.AST) -> ast.AST:
        return self.parents[id(node)]

    # source: a read of a local gets a wrong value
    def _source(self, fn: _Fn) -> None:
        for node in _own(fn.node):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
                if node.id not in fn.locals:
                    continue
                for v in _VALUES:
                    make: Callable[[], ast.AST]
                    if v in ("None", "0"):
                        const = None if v == "None" else 0
                        make = partial(_const, const, node)
                        shown = v
                    else:
                        make = partial(_corrupt, node, v)
                        shown = node.id + v
                    what = f"read of {node.id} -> {shown}"
                    self.add(node, v, what, _swap(self.parent(node), node, make))

    # destination: the value stored into a local or an attribute is corrupted
    def _destination(self, fn: _Fn) -> None:
        def target_ok(t: ast.expr) -> bool:
            return isinstance(t, ast.Attribute) or (
                isinstance(t, ast.Name) and t.id in fn.locals
            )

        for _, _, stmt in _statements(fn):
            if isinstance(stmt, ast.Assign) and all(target_ok(t) for t in stmt.targets):
                targets = " = ".join(_short(t) for t in stmt.targets)
            elif isinstance(stmt, ast.AnnAssign) and stmt.value and target_ok(stmt.target):
                targets = _short(stmt.target)
            else:
                continue
            value = stmt.value
            assert value is not None
            for v in _VALUES:
                shown = v if v in ("None", "0") else "value" + v
                what = f"{targets} = {_short(value, 24)} -> {shown}"
                self.add(stmt, v, what, _set(stmt, "value", partial(_corrupt, value, v)))

    # branch: a condition forced, or an else dropped
    def _branch(self, fn: _Fn) -> None:
        for _, _, stmt in _statements(fn):
            if not isinstance(stmt, ast.If | ast.While):
                continue
            word = "if" if isinstance(stmt, ast.If) else "while"
            for forced in (True, False):
                what = f"{word} {_short(stmt.test, 30)} -> {word} {forced}"
                make = partial(_const, forced, stmt.test)
                self.add(stmt, str(forced), what, _set(stmt, "test", make))
            if stmt.orelse:
                what = f"else of {word} {_short(stmt.test, 30)} dropped"
                self.add(stmt, "no-else", what, _set(stmt, "orelse", list))

    # statement: one statement replaced by pass
    def _statement(self, fn: _Fn) -> None:
        for block, i, stmt in _statements(fn):
            if isinstance(stmt, ast.Pass | ast.Global | ast.Nonlocal):
                continue
            if _is_docstring(fn, block, i, stmt) or _binds(stmt) & fn.inner_nonlocal:
                continue
            what = f"{_short(stmt)} -> pass"
            self.add(stmt, "pass", what, _replace(block, i, _pass(stmt)))

    # init: the first assignment of a local removed or made None
    def _init(self, fn: _Fn) -> None:
        assigns: dict[int, tuple[_Block, int, ast.Assign | ast.AnnAssign]] = {}
        for block, i, stmt in _statements(fn):
            if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
                target = stmt.targets[0]
            elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
                target = stmt.target
            else:
                continue
            if isinstance(target, ast.Name):
                assigns[id(target)] = (block, i, stmt)
        first: dict[str, ast.Name] = {}
        own = list(_own(fn.node))
        in_comprehension = {
            id(n) for c in own if isinstance(c, ast.comprehension) for n in ast.walk(c.target)
        }
        for n in own:
            if (
                isinstance(n, ast.Name)
                and isinstance(n.ctx, ast.Store)
                and id(n) not in in_comprehension
                and n.id in fn.locals
                and n.id not in fn.args
            ):
                best = first.get(n.id)
                if best is None or (n.lineno, n.col_offset) < (best.lineno, best.col_offset):
                    first[n.id] = n
        for name, target in first.items():
            if id(target) not in assigns:
                continue  # first bound by a for/with/walrus/tuple target, not an assignment
            block, i, stmt = assigns[id(target)]
            if name not in fn.inner_nonlocal:
                what = f"first assignment {_short(stmt)} removed"
                self.add(stmt, "removed", what, _replace(block, i, _pass(stmt)))
            value = stmt.value
            assert value is not None
            what = f"first assignment of {name} -> {name} = None"
            make = partial(_const, None, value)
            self.add(stmt, "None", what, _set(stmt, "value", make))

    # pointer: x.attr through the wrong object
    def _pointer(self, fn: _Fn) -> None:
        for node in _own(fn.node):
            if not isinstance(node, ast.Attribute):
                continue
            base = node.value.id if isinstance(node.value, ast.Name) else None
            what = f"{_short(node)} via None"
            self.add(node, "None", what, _set(node, "value", partial(_const, None, node.value)))
            for other in sorted(fn.locals - {base} if base else fn.locals):
                what = f"{_short(node)} via {other}"
                make = partial(_name, other, node.value)
                self.add(node, "name:" + other, what, _set(node, "value", make))

    # alloc: an allocation raises MemoryError
    def _alloc(self, fn: _Fn) -> None:
        for node in _own(fn.node):
            if isinstance(node, ast.List) and not isinstance(node.ctx, ast.Load):
                continue
            if isinstance(node, ast.Call):
                name = _last_name(node.func)
                if name is None or not (name in _ALLOCATORS or name[:1].isupper()):
                    continue
                if isinstance(self.parent(node), ast.Raise):
                    continue  # the exception being raised
            elif not isinstance(
                node,
                ast.List | ast.Set | ast.Dict | ast.ListComp | ast.SetComp | ast.DictComp
                | ast.GeneratorExp,
            ):
                continue
            what = f"{_short(node)} raises MemoryError"
            make = partial(_expr, _ALLOC, node)
            self.add(node, "MemoryError", what, _swap(self.parent(node), node, make))

    # overrun: slice bound extended, write index one past the end
    def _overrun(self, fn: _Fn) -> None:
        for node in _own(fn.node):
            if not isinstance(node, ast.Subscript):
                continue
            sl = node.slice
            if isinstance(sl, ast.Slice):
                if sl.upper is None or _negative(sl.upper):
                    continue
                for k in _OVERRUNS:
                    what = f"{_short(node)} -> upper bound +{k}"
                    make = partial(_plus, sl.upper, k)
                    self.add(node, f"+{k}", what, _set(sl, "upper", make))
            elif (
                isinstance(node.ctx, ast.Store)
                and not isinstance(sl, ast.Tuple)
                and _plain_ref(node.value)
            ):
                what = f"write {_short(node)} -> index len({_short(node.value, 20)})"
                self.add(node, "len", what, _set(node, "slice", partial(_len_of, node)))

    # sync: a lock dropped, an acquire/release deleted, a second acquire
    def _sync(self, fn: _Fn) -> None:
        for block, i, stmt in _statements(fn):
            if isinstance(stmt, ast.With | ast.AsyncWith):
                for item in stmt.items:
                    if item.optional_vars is not None or not _lockish(item.context_expr):
                        continue
                    lock = item.context_expr
                    what = f"with {_short(lock)} dropped, body unguarded"
                    self.add(stmt, "unguarded", what, _unguard(block, i, stmt, item))
                    what = f"{_short(lock)}.acquire() inserted inside with (deadlock)"
                    make = partial(_acquire, lock, stmt)
                    self.add(stmt, "deadlock", what, _insert(stmt.body, 0, make))
            elif isinstance(stmt, ast.Expr):
                call = stmt.value.value if isinstance(stmt.value, ast.Await) else stmt.value
                if not (
                    isinstance(call, ast.Call)
                    and isinstance(call.func, ast.Attribute)
                    and call.func.attr in ("acquire", "release")
                ):
                    continue
                what = f"{_short(stmt)} deleted"
                self.add(stmt, "deleted", what, _replace(block, i, _pass(stmt)))
                if call.func.attr == "acquire":
                    what = f"{_short(stmt)} done twice (deadlock)"
                    again = partial(copy.deepcopy, stmt)
                    self.add(stmt, "deadlock", what, _insert(block, i + 1, again))

    # panic: raise, abort or segfault inserted before a statement
    def _panic(self, fn: _Fn) -> None:
        for block, i, stmt in _statements(fn):
            if _is_docstring(fn, block, i, stmt):
                continue
            for variant, template in _PANICS.items():
                what = f"{template.split('(')[0] if variant == 'raise' else template}"
                what = f"{what} before {_short(stmt, 30)}"
                make = partial(_stmt, template, stmt)
                self.add(stmt, variant, what, _insert(block, i, make))

    # hang: an endless loop inserted before a statement
    def _hang(self, fn: _Fn) -> None:
        for block, i, stmt in _statements(fn):
            if _is_docstring(fn, block, i, stmt):
                continue
            what = f"while True: pass before {_short(stmt, 30)}"
            make = partial(_stmt, _HANG, stmt)
            self.add(stmt, "loop", what, _insert(block, i, make))


def _name(name: str, at: ast.AST) -> ast.expr:
    node = ast.Name(name, ast.Load())
    _locate(node, at)
    return node


def _last_name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _lockish(node: ast.expr) -> bool:
    name = _last_name(node)
    return name is not None and _LOCKISH.search(name.lower()) is not None


def _plain_ref(node: ast.expr) -> bool:
    """A name or a dotted attribute chain: cheap and side-effect free to evaluate twice."""
    while isinstance(node, ast.Attribute):
        node = node.value
    return isinstance(node, ast.Name)


def _negative(node: ast.expr) -> bool:
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return isinstance(node.operand, ast.Constant)
    return isinstance(node, ast.Constant) and isinstance(node.value, int | float) and (
        node.value < 0
    )


def _plus(upper: ast.expr, k: int) -> ast.expr:
    node = ast.BinOp(upper, ast.Add(), ast.Constant(k))
    _locate(node.right, upper)
    node.lineno, node.col_offset = upper.lineno, upper.col_offset
    node.end_lineno, node.end_col_offset = upper.end_lineno, upper.end_col_offset
    return node


def _len_of(sub: ast.Subscript) -> ast.expr:
    value = copy.deepcopy(sub.value)
    _set_load(value)
    call = ast.Call(ast.Name("len", ast.Load()), [value], [])
    _locate(call.func, sub.slice)
    call.lineno, call.col_offset = sub.slice.lineno, sub.slice.col_offset
    call.end_lineno, call.end_col_offset = sub.slice.end_lineno, sub.slice.end_col_offset
    return call


def _set_load(node: ast.AST) -> None:
    for n in ast.walk(node):
        if isinstance(n, ast.Name | ast.Attribute | ast.Subscript):
            n.ctx = ast.Load()


def _acquire(lock: ast.expr, at: ast.With | ast.AsyncWith) -> ast.stmt:
    target = copy.deepcopy(lock)
    call: ast.expr = ast.Call(ast.Attribute(target, "acquire", ast.Load()), [], [])
    if isinstance(at, ast.AsyncWith):
        call = ast.Await(call)
    node = ast.Expr(call)
    _locate(node, at)
    return node


def _unguard(
    block: _Block, i: int, stmt: ast.With | ast.AsyncWith, item: ast.withitem
) -> _Apply:
    def apply() -> None:
        if len(stmt.items) == 1:
            block[i : i + 1] = stmt.body
        else:
            stmt.items.remove(item)

    return apply


# -- public API -------------------------------------------------------------------------------


def _scan(source: str, kind: str) -> tuple[ast.Module, list[tuple[Site, _Apply]]]:
    tree = ast.parse(source)
    return tree, _Scan(tree, kind).found


def _keep(
    site: Site, lines: AbstractSet[int] | None, line: int | None, function: str | None
) -> bool:
    return (
        (lines is None or site.line in lines)
        and (line is None or site.line == line)
        and (function is None or site.function == function)
    )


def sites(source: str, kind: str, lines: AbstractSet[int] | None = None) -> list[Site]:
    """Every site for a ``kind`` fault in ``source``, only on ``lines`` if given, in order."""
    _, found = _scan(source, kind)
    return [site for site, _ in found if _keep(site, lines, None, None)]


def _compile(tree: ast.Module, filename: str) -> types.CodeType:
    ast.fix_missing_locations(tree)
    with warnings.catch_warnings():
        # e.g. "'NoneType' object is not callable" after a read became None: that is the fault
        warnings.simplefilter("ignore", SyntaxWarning)
        return compile(tree, filename, "exec", dont_inherit=True)


def _choose(
    source: str, fault: Fault, lines: AbstractSet[int] | None
) -> tuple[ast.Module, Site]:
    tree, found = _scan(source, fault.kind)
    left = [pair for pair in found if _keep(pair[0], lines, fault.line, fault.function)]
    if not left:
        where = []
        if fault.function is not None:
            where.append(f"in {fault.function}")
        if fault.line is not None:
            where.append(f"on line {fault.line}")
        if lines is not None:
            where.append(f"on the {len(lines)} executed lines")
        raise NoSite(" ".join([f"no {fault.kind} site", *where]))
    site, apply = left[random.Random(fault.seed).randrange(len(left))]
    apply()
    return tree, site


def mutate(
    source: str, filename: str, fault: Fault, lines: AbstractSet[int] | None = None
) -> tuple[types.CodeType, Site]:
    """Inject ``fault`` into ``source``: the module code object (compiled as ``filename``)
    and the site chosen.  Raises :class:`NoSite` when no site is left after the filters."""
    tree, site = _choose(source, fault, lines)
    return _compile(tree, filename), site


def mutated_source(
    source: str, fault: Fault, lines: AbstractSet[int] | None = None
) -> tuple[str, Site]:
    """Like :func:`mutate` but returns ``ast.unparse`` of the mutated module, for reports."""
    tree, site = _choose(source, fault, lines)
    return ast.unparse(ast.fix_missing_locations(tree)), site


def mutate_at(source: str, filename: str, site: Site) -> types.CodeType:
    """Apply exactly ``site`` (one of ``sites(source, site.kind)``), for exhaustive campaigns."""
    tree, found = _scan(source, site.kind)
    for candidate, apply in found:
        if candidate == site:
            apply()
            return _compile(tree, filename)
    raise NoSite(f"{site} is not a site of this source")
