# mypy: disable-error-code="empty-body"
"""declare(): wire types, decoders and checks derived from interface declarations.

No ``from __future__ import annotations`` here on purpose: the interfaces below
are declared the way driver authors write them, with evaluated annotations.
"""

import errno
import typing
from typing import Annotated, Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nooks.errors import InterfaceError
from nooks.wrappers import Errno, Interface, InterfaceSpec, Ordinary, Tracked, declare
from nooks.xpc.messages import ArenaRef, encode

# -- sample interfaces ---------------------------------------------------------------------


class Base(Interface):
    def open(self, path: str) -> int: ...
    def close(self, fd: int) -> None: ...


class Derived(Base):
    def read(self, fd: int, n: int = 4096) -> bytes: ...
    def write(self, fd: int, data: bytes) -> int: ...


class Block(Interface):
    ordinary = (Ordinary(FileNotFoundError), Ordinary(OSError))

    def transfer(self, dev: Annotated[int, Tracked("device")],
                 data: Annotated[bytes, msgspec.Meta(max_length=16)],
                 flags: int = 0) -> bytes: ...
    def alloc(self, size: Annotated[int, msgspec.Meta(ge=1, le=100)]
              ) -> Annotated[int, Tracked("buffer", role="create")]: ...
    def free(self, buf: Annotated[int, Tracked("buffer", role="release")]) -> None: ...
    def status(self) -> Annotated[str, msgspec.Meta(max_length=4)]: ...
    def small(self) -> Annotated[bytes, msgspec.Meta(max_length=4)]: ...
    def code(self) -> Errno: ...
    def _private(self, x: int) -> int: ...


class Wide(Interface):
    """A signature with many kinds of values, for the round-trip property."""

    def put(self, a: int, b: str, c: bytes, d: float, e: bool, f: list[int],  # noqa: PLR0917
            g: Annotated[int, Tracked("obj")], h: dict[str, int], i: int | None,
            j: tuple[int, str], k: int = 7, m: str = "dflt", n: bytes = b"") -> None: ...


class Plain:
    """Not something msgspec can encode."""


# -- method order and indices ---------------------------------------------------------------


def test_methods_follow_definition_order_with_base_first() -> None:
    spec = declare(Derived)
    assert [m.name for m in spec.methods] == ["open", "close", "read", "write"]
    assert [m.index for m in spec.methods] == [0, 1, 2, 3]
    for m in spec.methods:
        assert spec.by_name[m.name] is m
        assert spec.method(m.name) is m
    assert spec.name == "Derived"


def test_base_alone_has_only_its_own_methods() -> None:
    assert [m.name for m in declare(Base).methods] == ["open", "close"]


def test_private_methods_are_not_declared() -> None:
    assert "_private" not in declare(Block).by_name


def test_an_override_is_declared_once_with_the_subclass_signature() -> None:
    class Narrowed(Derived):
        def open(self, path: Annotated[str, msgspec.Meta(max_length=8)]) -> int: ...

    spec = declare(Narrowed)
    names = [m.name for m in spec.methods]
    assert sorted(names) == ["close", "open", "read", "write"]
    assert [m.index for m in spec.methods] == list(range(4))
    with pytest.raises(msgspec.ValidationError):
        spec.by_name["open"].args_decoder.decode(encode(("123456789",)))


def test_declare_is_cached() -> None:
    assert declare(Derived) is declare(Derived)


def test_method_lookup_of_undeclared_name_is_interface_error() -> None:
    with pytest.raises(InterfaceError, match="nope"):
        declare(Derived).method("nope")


# -- bulk and tracked -----------------------------------------------------------------------


def test_bytes_params_and_results_are_bulk_and_accept_arena_refs() -> None:
    spec = declare(Derived)
    read, write = spec.by_name["read"], spec.by_name["write"]
    assert read.bulk_result
    assert read.bulk_args == ()
    assert write.bulk_args == (1,)
    assert not write.bulk_result
    assert write.params[1].bulk
    assert not write.params[0].bulk

    ref = ArenaRef(4096, 100)
    assert write.args_decoder.decode(encode((3, ref))).data == ref
    assert write.args_decoder.decode(encode((3, b"inline"))).data == b"inline"
    assert read.result_decoder.decode(encode(ref)) == ref
    assert read.result_decoder.decode(encode(b"xyz")) == b"xyz"
    with pytest.raises(msgspec.ValidationError):
        read.result_decoder.decode(encode("not bytes"))


def test_non_bytes_results_are_not_bulk() -> None:
    spec = declare(Derived)
    assert not spec.by_name["open"].bulk_result
    with pytest.raises(msgspec.ValidationError):
        spec.by_name["open"].result_decoder.decode(encode(ArenaRef(0, 1)))


def test_tracked_args_and_results_have_int_wire_types() -> None:
    spec = declare(Block)
    transfer, alloc, free = (spec.by_name[n] for n in ("transfer", "alloc", "free"))

    assert transfer.tracked_args == ((0, Tracked("device")),)
    assert transfer.params[0].tracked == Tracked("device")
    assert transfer.params[0].wire is not transfer.params[0].declared
    assert transfer.bulk_args == (1,)
    assert transfer.tracked_result is None

    assert alloc.tracked_args == ()
    assert alloc.tracked_result == Tracked("buffer", role="create")
    assert alloc.result_decoder.decode(encode(5)) == 5
    with pytest.raises(msgspec.ValidationError):
        alloc.result_decoder.decode(encode(-1))  # ids are never negative
    with pytest.raises(msgspec.ValidationError):
        alloc.result_decoder.decode(encode("id"))

    assert free.tracked_args == ((0, Tracked("buffer", role="release")),)
    assert free.args_decoder.decode(encode((9,))).buf == 9
    with pytest.raises(msgspec.ValidationError):
        free.args_decoder.decode(encode((-3,)))
    with pytest.raises(msgspec.ValidationError):
        free.args_decoder.decode(encode((b"x",)))


def test_tracked_wire_type_is_a_non_negative_int() -> None:
    wire = declare(Block).by_name["transfer"].params[0].wire
    assert typing.get_origin(wire) is Annotated
    assert typing.get_args(wire)[0] is int


# -- bad declarations -----------------------------------------------------------------------


def test_parameter_without_annotation_is_interface_error() -> None:
    class NoType(Interface):
        def f(self, x) -> None: ...  # type: ignore[no-untyped-def]

    with pytest.raises(InterfaceError, match=r"NoType\.f.*x"):
        declare(NoType)


def test_var_positional_parameter_is_interface_error() -> None:
    class Star(Interface):
        def f(self, *xs: int) -> None: ...

    with pytest.raises(InterfaceError, match="positional"):
        declare(Star)


def test_keyword_only_parameter_is_interface_error() -> None:
    class KwOnly(Interface):
        def f(self, *, x: int) -> None: ...

    with pytest.raises(InterfaceError, match="positional"):
        declare(KwOnly)


def test_missing_return_type_is_interface_error() -> None:
    class NoReturn(Interface):
        def f(self, x: int): ...  # type: ignore[no-untyped-def]

    with pytest.raises(InterfaceError, match="return"):
        declare(NoReturn)


def test_unencodable_parameter_type_is_interface_error() -> None:
    class BadParam(Interface):
        def f(self, x: Plain) -> None: ...

    with pytest.raises(InterfaceError, match=r"BadParam\.f\(x\)"):
        declare(BadParam)


def test_unencodable_result_type_is_interface_error() -> None:
    class BadResult(Interface):
        def f(self) -> Plain: ...

    with pytest.raises(InterfaceError, match="result"):
        declare(BadResult)


def test_unencodable_type_nested_in_a_container_is_interface_error() -> None:
    class InList(Interface):
        def f(self, xs: list[Plain]) -> None: ...

    class InDict(Interface):
        def f(self, xs: dict[str, Plain]) -> None: ...

    class InOptional(Interface):
        def f(self) -> Plain | None: ...

    for cls in (InList, InDict, InOptional):
        with pytest.raises(InterfaceError, match="cannot cross"):
            declare(cls)


class _S1(msgspec.Struct):
    x: int


class _S2(msgspec.Struct):
    y: int


def test_types_msgspec_refuses_are_interface_errors() -> None:
    class Untagged(Interface):
        def f(self, x: _S1 | _S2) -> None: ...

    class Mixed(Interface):
        def f(self) -> int | Plain: ...

    with pytest.raises(InterfaceError, match=r"Untagged\.f\(x\).*cannot cross"):
        declare(Untagged)
    with pytest.raises(InterfaceError, match=r"Mixed\.f result.*cannot cross"):
        declare(Mixed)


# -- bind -----------------------------------------------------------------------------------


def test_bind_fills_defaults_and_accepts_keywords() -> None:
    read = declare(Derived).by_name["read"]
    assert read.bind((3,), {}) == (3, 4096)
    assert read.bind((3, 10), {}) == (3, 10)
    assert read.bind((), {"fd": 3}) == (3, 4096)
    assert read.bind((3,), {"n": 1}) == (3, 1)


@pytest.mark.parametrize(("args", "kwargs"), [
    ((), {}),
    ((1, 2, 3), {}),
    ((1,), {"bogus": 2}),
    ((1,), {"fd": 1}),
])
def test_bind_with_bad_arity_is_interface_error(args: tuple[Any, ...],
                                                kwargs: dict[str, Any]) -> None:
    with pytest.raises(InterfaceError, match="read"):
        declare(Derived).by_name["read"].bind(args, kwargs)


# -- decoders -------------------------------------------------------------------------------


def test_args_decoder_accepts_valid_arguments_and_fills_defaults() -> None:
    transfer = declare(Block).by_name["transfer"]
    decoded = transfer.args_decoder.decode(encode((1, b"abc")))
    assert msgspec.structs.astuple(decoded) == (1, b"abc", 0)


@pytest.mark.parametrize(("args", "name"), [
    (("one", b"x"), "dev"),
    ((1, "not bytes"), "data"),
    ((1, b"x", "zero"), "flags"),
    ((1, b"x" * 17), "data"),  # breaks max_length
])
def test_args_decoder_rejects_wrong_types_and_names_the_parameter(
        args: tuple[Any, ...], name: str) -> None:
    transfer = declare(Block).by_name["transfer"]
    with pytest.raises(msgspec.ValidationError) as ei:
        transfer.args_decoder.decode(encode(args))
    assert "$[" in str(ei.value)
    described = transfer.describe_error(ei.value)
    assert f"`{name}`" in described
    assert "$[" not in described


def test_describe_error_keeps_nested_paths() -> None:
    class Nested(Interface):
        def f(self, a: int, b: list[int]) -> None: ...

    f = declare(Nested).by_name["f"]
    with pytest.raises(msgspec.ValidationError) as ei:
        f.args_decoder.decode(encode((1, [1, "two"])))
    assert f.describe_error(ei.value).endswith("`b[1]`")


def test_args_decoder_rejects_extra_and_missing_arguments() -> None:
    transfer = declare(Block).by_name["transfer"]
    with pytest.raises(msgspec.ValidationError, match="at most length 3"):
        transfer.args_decoder.decode(encode((1, b"x", 0, "extra")))
    with pytest.raises(msgspec.ValidationError, match="at least length 2"):
        transfer.args_decoder.decode(encode((1,)))


def test_result_decoder_enforces_meta_constraints() -> None:
    spec = declare(Block)
    status, small, code = spec.by_name["status"], spec.by_name["small"], spec.by_name["code"]
    assert status.result_decoder.decode(encode("ok")) == "ok"
    with pytest.raises(msgspec.ValidationError, match="length <= 4"):
        status.result_decoder.decode(encode("too long"))
    assert small.result_decoder.decode(encode(b"1234")) == b"1234"
    with pytest.raises(msgspec.ValidationError):
        small.result_decoder.decode(encode(b"12345"))
    assert code.result_decoder.decode(encode(errno.EIO)) == errno.EIO
    for bad in (0, 4096, -1):
        with pytest.raises(msgspec.ValidationError):
            code.result_decoder.decode(encode(bad))


def test_none_result_accepts_only_nil() -> None:
    close = declare(Derived).by_name["close"]
    assert close.result_decoder.decode(encode(None)) is None
    with pytest.raises(msgspec.ValidationError):
        close.result_decoder.decode(encode(0))


# -- ordinary errors ------------------------------------------------------------------------


def test_ordinary_index_picks_the_first_matching_declared_type() -> None:
    spec: InterfaceSpec = declare(Block)
    assert spec.ordinary_index(FileNotFoundError(errno.ENOENT, "gone")) == 0
    assert spec.ordinary_index(OSError(errno.EIO, "io")) == 1
    assert spec.ordinary_index(PermissionError(errno.EPERM, "no")) == 1  # an OSError subclass
    assert spec.ordinary_index(ValueError("x")) == -1
    assert spec.ordinary_index(KeyboardInterrupt()) == -1
    assert declare(Derived).ordinary_index(OSError(errno.EIO, "io")) == -1


def test_ordinary_decoders_check_the_value_type() -> None:
    spec = declare(Block)
    assert len(spec.ordinary_decoders) == 2
    assert spec.ordinary_decoders[1].decode(encode(errno.EIO)) == errno.EIO
    with pytest.raises(msgspec.ValidationError):
        spec.ordinary_decoders[1].decode(encode(0))
    rebuilt = spec.ordinary[0].rebuild(errno.ENOENT)
    assert type(rebuilt) is FileNotFoundError


# -- round trip -----------------------------------------------------------------------------

_I64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)

_WIDE_REQUIRED = st.tuples(
    _I64,
    st.text(),
    st.binary(),
    st.floats(allow_nan=False),
    st.booleans(),
    st.lists(_I64, max_size=5),
    st.integers(min_value=0, max_value=2**63 - 1),
    st.dictionaries(st.text(max_size=5), _I64, max_size=4),
    st.none() | _I64,
    st.tuples(_I64, st.text(max_size=5)),
)
_WIDE_OPTIONAL = st.tuples(_I64, st.text(), st.binary())


@settings(derandomize=True, database=None, max_examples=200)
@given(required=_WIDE_REQUIRED, optional=_WIDE_OPTIONAL, supplied=st.integers(0, 3))
def test_valid_arguments_round_trip_through_the_args_decoder(
        required: tuple[Any, ...], optional: tuple[Any, ...], supplied: int) -> None:
    put = declare(Wide).by_name["put"]
    values = required + optional[:supplied]
    decoded = put.args_decoder.decode(encode(values))
    defaults = tuple(p.default for p in put.params[len(values):])
    assert msgspec.structs.astuple(decoded) == values + defaults
    assert put.bind(values, {}) == values + defaults
