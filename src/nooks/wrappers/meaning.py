"""What each call of an interface *means* to a shadow, declared once on the interface.

Beside its types, a method of an interface may say what it does to the driver's
state, the way ``Tracked`` and ``@posted`` say what crosses:

* ``@opens("file")``: the call returns a new handle of that kind (the shadow
  hands out a stable virtual one and re-opens it after a recovery);
* ``@closes("file", done_if=EBADF)``: the call releases the handle it is given;
* ``@changes(done_if=EEXIST)``: the call changes what the driver stores (a
  journal logs it);
* ``@once``: the call may not be sent again after a failure, whatever its
  arguments (its effect may have happened and cannot be recognised);
* ``Annotated[..., Handle("file")]`` on a parameter: that argument names a
  handle the shadow handed out (translated to the current driver's own).

``done_if`` lists the errors that, met by a call sent again after a failure, show
that the first attempt had done its work (an ``mkdir`` that meets EEXIST). The
declaration machinery (``nooks.wrappers.declare``) gathers all of it into
``MethodSpec.meaning``; a class's spec reads it from there rather than keeping
tables of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Handle:
    """Marks a parameter that names a handle of ``kind`` (``Annotated[Fh, Handle("file")]``)."""

    kind: str


@dataclass(frozen=True)
class Meaning:
    """What one call means to a shadow (see the module docstring)."""

    opens: str | None = None  # the kind of handle it returns
    closes: str | None = None  # the kind of handle it releases
    changes: bool = False  # it changes what the driver stores
    once: bool = False  # never sent again after a failure
    done_if: frozenset[int] = frozenset()  # errors on a re-issue that mean "it was done"
    handle_at: int | None = None  # which argument names a handle (set by declare)
    handle_kind: str | None = None

    @property
    def logged(self) -> bool:
        """Whether a journal of the driver's state keeps this call."""
        return self.changes or self.opens is not None or self.closes is not None


_ATTR = "__nooks_meaning__"


def meaning_of(func: Callable[..., Any]) -> Meaning:
    found: Meaning = getattr(func, _ATTR, Meaning())
    return found


def _with(func: F, **changes: Any) -> F:
    setattr(func, _ATTR, replace(meaning_of(func), **changes))
    return func


def opens(kind: str) -> Callable[[F], F]:
    """Declare a call that returns a new handle of ``kind``."""
    return lambda func: _with(func, opens=kind)


def closes(kind: str, *, done_if: Iterable[int] = ()) -> Callable[[F], F]:
    """Declare a call that releases the handle of ``kind`` it is given."""
    return lambda func: _with(func, closes=kind, done_if=frozenset(done_if))


def changes(*, done_if: Iterable[int] = ()) -> Callable[[F], F]:
    """Declare a call that changes what the driver stores."""
    return lambda func: _with(func, changes=True, done_if=frozenset(done_if))


def once(func: F) -> F:
    """Declare a call that may never be sent again after a failure."""
    return _with(func, once=True)
