"""Load one module with a fault injected: a ``sys.meta_path`` finder that mutates on import.

This module owns the import hook and the record of the site it applied.  The source file on
disk is never written: the finder reads the source through the module's normal spec, mutates
it with :func:`nooks.faults.mutate.mutate` (compiled with the real filename, so tracebacks
and ``linecache`` point at the real file) and executes the code object as the module.

Rules:

- One fault at a time: :func:`install` replaces an installed finder; :func:`uninstall`
  removes it.  The finder sits first on ``sys.meta_path``.
- Only the first import of exactly ``module`` after :func:`install` is mutated; any other
  module, and later imports of the same one, load normally.  A module already in
  ``sys.modules`` is not re-imported: install before the first import.
- The normal spec is found with ``importlib.util.find_spec`` while the finder itself is
  taken off ``sys.meta_path`` (the module's import lock is held, so the same module cannot
  be imported concurrently meanwhile).
- A module without Python source fails to import with ``ImportError``; a fault with no
  site fails it with :class:`nooks.faults.mutate.NoSite`.
- :func:`last_site` keeps the site applied until the next :func:`install`.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import threading
import types
from collections.abc import Sequence
from collections.abc import Set as AbstractSet

from nooks.faults.mutate import Fault, Site, mutate

_lock = threading.Lock()
_finder: _FaultFinder | None = None
_last: Site | None = None


class _FaultLoader(importlib.abc.Loader):
    """Executes the mutated code of one module; serves the original source to inspectors."""

    def __init__(
        self, fullname: str, origin: str, source: str, fault: Fault,
        lines: AbstractSet[int] | None,
    ) -> None:
        self._fullname = fullname
        self._origin = origin
        self._source = source
        self._fault = fault
        self._lines = lines

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        global _last
        code, site = mutate(self._source, self._origin, self._fault, self._lines)
        with _lock:
            _last = site
        exec(code, module.__dict__)

    def get_source(self, fullname: str) -> str:
        """The original source: the mutated code keeps its line numbers."""
        return self._source


class _FaultFinder(importlib.abc.MetaPathFinder):
    def __init__(self, module: str, fault: Fault, lines: AbstractSet[int] | None) -> None:
        self.module = module
        self.fault = fault
        self.lines = frozenset(lines) if lines is not None else None
        self.used = False

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: types.ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != self.module or self.used:
            return None
        real = self._normal_spec(fullname)
        if real is None:
            return None
        get_source = getattr(real.loader, "get_source", None)
        source = get_source(fullname) if callable(get_source) else None
        if not isinstance(source, str) or real.origin is None:
            raise ImportError(f"cannot inject a fault into {fullname}: no source", name=fullname)
        self.used = True
        loader = _FaultLoader(fullname, real.origin, source, self.fault, self.lines)
        spec = importlib.machinery.ModuleSpec(
            fullname, loader, origin=real.origin,
            is_package=real.submodule_search_locations is not None,
        )
        if real.submodule_search_locations is not None:
            spec.submodule_search_locations = list(real.submodule_search_locations)
        spec.has_location = real.has_location
        return spec

    def _normal_spec(self, fullname: str) -> importlib.machinery.ModuleSpec | None:
        index = next((i for i, f in enumerate(sys.meta_path) if f is self), None)
        if index is not None:
            del sys.meta_path[index]
        try:
            return importlib.util.find_spec(fullname)
        finally:
            if index is not None:
                sys.meta_path.insert(min(index, len(sys.meta_path)), self)


def _remove(finder: _FaultFinder) -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if f is not finder]


def install(module: str, fault: Fault, lines: AbstractSet[int] | None = None) -> None:
    """Mutate ``module`` with ``fault`` (on ``lines`` only, if given) when it is next imported."""
    global _finder, _last
    with _lock:
        if _finder is not None:
            _remove(_finder)
        _finder = _FaultFinder(module, fault, lines)
        _last = None
        sys.meta_path.insert(0, _finder)


def uninstall() -> None:
    """Remove the finder installed by :func:`install`, if any."""
    global _finder
    with _lock:
        if _finder is not None:
            _remove(_finder)
            _finder = None


def last_site() -> Site | None:
    """The site applied by the last mutated import since :func:`install`, or ``None``."""
    with _lock:
        return _last
