"""Interface declarations and the checks derived from them.

An interface is declared once, as a class whose methods carry type annotations
(msgspec constraints through ``Annotated[..., msgspec.Meta(...)]``) and no body:

    class Echo(Interface):
        def null(self) -> None: ...
        def echo(self, data: Annotated[bytes, Meta(max_length=1 << 20)]) -> bytes: ...

``declare(Echo)`` turns it into an ``InterfaceSpec``: per method, a typed decoder
for the arguments (used by the callee) and one for the result (used by the
caller). Checking a driver's reply is decoding it with that decoder; nothing is
hand-written per call. Rules:

* ``bytes`` arguments and results are *bulk*: large values travel through the
  arenas, and the wire type is ``bytes | ArenaRef``.
* ``Annotated[T, Tracked(kind)]`` marks a kernel-call argument that names a host
  object (an opaque id checked for ownership and kind before the call runs);
  ``Tracked(kind, role="create")`` on a result registers the returned object;
  ``role="release"`` on an argument removes it from the tracker.
* ``ordinary`` lists the exceptions that are returns, not failures (an errno the
  driver means to return); any other exception from a driver is a failure.
* ``@posted`` marks a kernel call the driver does not wait for (it returns
  None): the domain sends posted calls in one message before the next thing it
  sends, and the host runs them in order as it reads them; one that fails
  fails the driver.
* what a call means to a shadow (opens or closes a handle, changes stored
  state, may not be sent twice, which errors show a re-issue's own earlier
  effect; ``Annotated[T, Handle(kind)]`` on an argument that names a handle) is
  declared with ``nooks.wrappers.meaning`` and lands in ``MethodSpec.meaning``.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal

import msgspec
import msgspec.inspect

from nooks.errors import InterfaceError
from nooks.wrappers.meaning import Handle, Meaning, meaning_of
from nooks.xpc.messages import ArenaRef

Errno = Annotated[int, msgspec.Meta(ge=1, le=4095)]


def posted(func: Callable[..., None]) -> Callable[..., None]:
    """Declare a kernel call the driver does not wait for (see the module docstring)."""
    func.__nooks_posted__ = True  # type: ignore[attr-defined]
    return func


class Interface:
    """Base of interface declarations. Subclasses only declare methods.

    ``unexpected``, if a class sets it (as a staticmethod), is how the class's own
    framework answers an exception a driver did not mean to raise (mfusepy:
    EINVAL): the ordinary error to answer with when a call is made *lenient*
    (after a fresh driver was given the request again); otherwise such an
    exception always fails the driver.
    """

    ordinary: ClassVar[tuple[Ordinary, ...]] = ()
    unexpected: ClassVar[Callable[..., BaseException] | None] = None


@dataclass(frozen=True)
class Ordinary:
    """An exception type that a callee raises to return an error on purpose.

    Only ``attr`` crosses the boundary, checked against ``value_type``; the
    caller rebuilds the exception with ``make(value)`` (default ``exc_type(value)``).
    """

    exc_type: type[BaseException]
    attr: str = "errno"
    value_type: Any = Errno
    make: Callable[[Any], BaseException] | None = None

    def rebuild(self, value: Any) -> BaseException:
        return self.make(value) if self.make else self.exc_type(value)


@dataclass(frozen=True)
class Tracked:
    """Marks an argument or result that is a host object behind an opaque id."""

    kind: str
    role: Literal["use", "create", "release"] = "use"


@dataclass(frozen=True)
class Param:
    name: str
    declared: Any
    wire: Any
    default: Any
    bulk: bool
    tracked: Tracked | None


@dataclass
class MethodSpec:
    """One declared method: its wire types and the decoders derived from them."""

    name: str
    index: int
    params: tuple[Param, ...]
    result: Any
    result_wire: Any
    signature: inspect.Signature
    args_type: type[msgspec.Struct]
    args_decoder: msgspec.msgpack.Decoder[Any] = field(repr=False)
    result_decoder: msgspec.msgpack.Decoder[Any] = field(repr=False)
    bulk_args: tuple[int, ...]
    bulk_result: bool
    tracked_args: tuple[tuple[int, Tracked], ...]
    tracked_result: Tracked | None
    posted: bool = False
    meaning: Meaning = field(default_factory=Meaning)

    def bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
        """Positional arguments for a call, or InterfaceError if they do not fit."""
        if not kwargs and len(args) == len(self.params):
            return args
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as e:
            raise InterfaceError(f"{self.name}: {e}") from None
        bound.apply_defaults()
        return tuple(bound.args)

    def describe_error(self, error: Exception) -> str:
        """A validation message with positions replaced by parameter names."""
        text = str(error)
        for i, p in enumerate(self.params):
            text = text.replace(f"`$[{i}]", f"`{p.name}")
        return text


@dataclass
class InterfaceSpec:
    name: str
    methods: tuple[MethodSpec, ...]
    by_name: dict[str, MethodSpec]
    ordinary: tuple[Ordinary, ...]
    ordinary_decoders: tuple[msgspec.msgpack.Decoder[Any], ...] = field(repr=False)
    unexpected: Callable[[Exception], BaseException] | None = None

    def method(self, name: str) -> MethodSpec:
        try:
            return self.by_name[name]
        except KeyError:
            raise InterfaceError(f"{self.name} declares no method {name!r}") from None

    def ordinary_index(self, exc: BaseException) -> int:
        """Index of the ordinary error ``exc`` is, or -1 if it is a failure."""
        for i, o in enumerate(self.ordinary):
            if isinstance(exc, o.exc_type):
                return i
        return -1


def _split(tp: Any) -> tuple[Any, tuple[Any, ...]]:
    if typing.get_origin(tp) is Annotated:
        return tp.__origin__, tuple(tp.__metadata__)
    return tp, ()


def _metadata(tp: Any) -> tuple[Any, ...]:
    """The Annotated metadata of ``tp``, or of the member of an ``X | None`` that has it."""
    base, meta = _split(tp)
    if meta:
        return meta
    if typing.get_origin(base) in (typing.Union, types.UnionType):
        return tuple(m for arg in typing.get_args(base) for m in _split(arg)[1])
    return ()


def _tracked(meta: tuple[Any, ...]) -> Tracked | None:
    found = [m for m in meta if isinstance(m, Tracked)]
    return found[0] if found else None


def _meaning(func: Callable[..., Any], hints: dict[str, Any], names: list[str],
             where: str) -> Meaning:
    """The call's declared meaning, with the argument that names a handle found."""
    meaning = meaning_of(func)
    marked = [(i, m) for i, name in enumerate(names)
              for m in _metadata(hints[name]) if isinstance(m, Handle)]
    if len(marked) > 1:
        raise InterfaceError(f"{where}: more than one argument names a handle")
    if marked:
        i, m = marked[0]
        meaning = dataclasses.replace(meaning, handle_at=i, handle_kind=m.kind)
    if meaning.opens is not None and meaning.closes is not None:
        raise InterfaceError(f"{where}: a call cannot both open and close a handle")
    if meaning.closes is not None and meaning.handle_at is None:
        raise InterfaceError(f"{where}: closes a handle, but no argument names one "
                             "(Annotated[..., Handle(kind)])")
    return meaning


def _wire(tp: Any, where: str) -> tuple[Any, bool, Tracked | None]:
    """The wire type of a declared type, whether it is bulk, and its tracking."""
    base, meta = _split(tp)
    tracked = _tracked(meta)
    if tracked is not None:
        return Annotated[int, msgspec.Meta(ge=0)], False, tracked
    if base is bytes:
        return tp | ArenaRef, True, None
    try:
        info = msgspec.inspect.type_info(tp)
    except TypeError as e:
        raise InterfaceError(f"{where}: type {tp!r} cannot cross the boundary: {e}") from None
    custom = _custom_types(info)
    if custom:
        raise InterfaceError(f"{where}: type {custom[0]!r} cannot cross the boundary "
                             "(not a msgspec-supported type)")
    return tp, False, None


def _custom_types(info: msgspec.inspect.Type) -> list[Any]:
    """Classes in a type that msgspec would only handle through hooks."""
    if isinstance(info, msgspec.inspect.CustomType):
        return [info.cls]
    out: list[Any] = []
    for name in ("item_type", "key_type", "value_type"):
        sub = getattr(info, name, None)
        if isinstance(sub, msgspec.inspect.Type):
            out += _custom_types(sub)
    for name in ("types", "item_types"):
        for sub in getattr(info, name, ()) or ():
            out += _custom_types(sub)
    for f in getattr(info, "fields", ()) or ():
        out += _custom_types(f.type)
    return out


def _methods(cls: type) -> list[tuple[str, Callable[..., Any]]]:
    seen: dict[str, Callable[..., Any]] = {}
    for klass in reversed(cls.__mro__):
        if klass is object or klass is Interface:
            continue
        for name, value in vars(klass).items():
            if inspect.isfunction(value) and not name.startswith("_"):
                seen.pop(name, None)
                seen[name] = value
    return list(seen.items())


_declared: dict[type[Interface], InterfaceSpec] = {}


def declare(cls: type[Interface]) -> InterfaceSpec:
    """Derive the wire types and checks of every method of ``cls`` (cached)."""
    spec = _declared.get(cls)
    if spec is None:
        spec = _declared[cls] = _declare(cls)
    return spec


def _declare(cls: type[Interface]) -> InterfaceSpec:
    methods: list[MethodSpec] = []
    for index, (name, func) in enumerate(_methods(cls)):
        where = f"{cls.__name__}.{name}"
        hints = typing.get_type_hints(func, include_extras=True)
        sig = inspect.signature(func)
        params: list[Param] = []
        for pname, p in list(sig.parameters.items())[1:]:
            if p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
                raise InterfaceError(f"{where}: parameter {pname} must be positional")
            if pname not in hints:
                raise InterfaceError(f"{where}: parameter {pname} has no type")
            wire, bulk, tracked = _wire(hints[pname], f"{where}({pname})")
            default = msgspec.NODEFAULT if p.default is p.empty else p.default
            params.append(Param(pname, hints[pname], wire, default, bulk, tracked))
        if "return" not in hints:
            raise InterfaceError(f"{where}: no return type")
        result = hints["return"]
        result_wire, bulk_result, tracked_result = _wire(result, f"{where} result")
        is_posted = bool(getattr(func, "__nooks_posted__", False))
        if is_posted and (result is not type(None) or any(p.tracked for p in params)):
            raise InterfaceError(f"{where}: a posted call returns None and takes no "
                                 "tracked objects")
        fields = [(p.name, p.wire) if p.default is msgspec.NODEFAULT
                  else (p.name, p.wire, p.default) for p in params]
        args_type = msgspec.defstruct(f"{cls.__name__}_{name}_args", fields, array_like=True,
                                      forbid_unknown_fields=True)
        methods.append(MethodSpec(
            name=name, index=index, params=tuple(params), result=result,
            result_wire=result_wire,
            signature=sig.replace(parameters=list(sig.parameters.values())[1:]),
            args_type=args_type,
            args_decoder=msgspec.msgpack.Decoder(args_type),
            result_decoder=msgspec.msgpack.Decoder(result_wire),
            bulk_args=tuple(i for i, p in enumerate(params) if p.bulk),
            bulk_result=bulk_result,
            tracked_args=tuple((i, p.tracked) for i, p in enumerate(params) if p.tracked),
            tracked_result=tracked_result,
            posted=is_posted,
            meaning=_meaning(func, hints, [p.name for p in params], where),
        ))
    ordinary = tuple(cls.ordinary)
    return InterfaceSpec(
        name=cls.__name__,
        methods=tuple(methods),
        by_name={m.name: m for m in methods},
        ordinary=ordinary,
        ordinary_decoders=tuple(msgspec.msgpack.Decoder(o.value_type) for o in ordinary),
        unexpected=cls.unexpected,
    )


def load(ref: str) -> Any:
    """Import ``module:attribute`` (attribute may be dotted)."""
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise InterfaceError(f"{ref!r} is not of the form module:attribute")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj
