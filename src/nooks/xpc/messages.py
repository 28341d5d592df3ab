"""XPC wire messages.

Every message is a msgspec struct encoded as a MessagePack array whose first
element is an integer tag; one socket datagram carries one message. Payloads
that depend on the method (arguments, results) stay ``Raw`` in the envelope and
are decoded by the method's own typed decoder, so a driver's reply is checked
against its declaration in the same pass that decodes it.

Rules:

* Nothing here is ever pickled or evaluated: a peer can only send data.
* Messages that carry payloads are *encoded* from plain tuples on the hot path
  (``encode_call`` and friends); the structs describe the wire for decoding.
* Tags are part of the wire format: never renumber them.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import msgspec
from msgspec import Raw

MAX_MESSAGE = 4 << 20  # largest datagram on the channel
MAX_ASSEMBLED = 64 << 20  # largest message sent in fragments (a domain's reply)
FRAGMENT_DATA = MAX_MESSAGE - 64  # bytes of message per fragment
SOCKET_BUFFER = 8 << 20


class ArenaRef(msgspec.Struct, array_like=True, tag=100, frozen=True):
    """A byte range in an arena: stands in for a ``bytes`` value too big to inline."""

    offset: int
    length: int


class Call(msgspec.Struct, array_like=True, tag=1):
    """Invoke method ``method`` (an index into the callee's interface).

    ``parent`` is the id of the call on whose behalf this one is made (a
    driver's kernel call made while serving a host call), 0 if none.
    ``out`` is the arena slot reserved for a bulk result.
    """

    id: int
    method: int
    args: Raw
    parent: int = 0
    out: ArenaRef | None = None
    # exceptions (type names) the driver may raise in this call that are answered as its
    # class's framework answers them (``Interface.unexpected``), not a failure
    lenient: list[str] = []


class Reply(msgspec.Struct, array_like=True, tag=2):
    id: int
    result: Raw


class Raise(msgspec.Struct, array_like=True, tag=3):
    """The callee returned an error on purpose (an *ordinary* exception)."""

    id: int
    error: int  # index into the interface's ordinary errors
    value: Raw


class Reject(msgspec.Struct, array_like=True, tag=4):
    """The callee refused a call whose arguments broke the declaration."""

    id: int
    message: str


class Batch(msgspec.Struct, array_like=True, tag=5):
    """Deferred calls delivered in one crossing; answered by one BatchReply."""

    id: int
    calls: list[tuple[int, Raw]]


class BatchReply(msgspec.Struct, array_like=True, tag=6):
    id: int
    results: list[Reply | Raise | Reject]


class Post(msgspec.Struct, array_like=True, tag=7):
    """Posted kernel calls (not waited for), to run in order before what follows."""

    calls: list[tuple[int, Raw]]


class Hello(msgspec.Struct, array_like=True, tag=10):
    """A new domain is up: interpreter started, driver module imported."""

    pid: int
    kernel_arena: int  # address of the read-only kernel arena in the domain
    note: str = ""  # e.g. the fault injected into the driver's code


class Construct(msgspec.Struct, array_like=True, tag=11):
    """Construct the driver; answered by Ready or Failure."""

    args: Raw
    kwargs: Raw


class Ready(msgspec.Struct, array_like=True, tag=12):
    pass


class Failure(msgspec.Struct, array_like=True, tag=13):
    """The domain reports its own failure, then exits."""

    kind: str
    detail: str
    traceback: str = ""
    exception: str = ""  # the type of the exception the driver raised, if it raised


class Inject(msgspec.Struct, array_like=True, tag=14):
    """Make the domain fail now, in the named way (for demos and tests); with an
    ``id``, the domain answers ``Reply(id)`` first, so the host knows it was read. A
    domain that reads it after ``expires`` (CLOCK_MONOTONIC, shared by all processes)
    ignores it: the host has said it was not taken."""

    fault: str
    id: int = 0
    expires: float = 0.0


class Shutdown(msgspec.Struct, array_like=True, tag=15):
    """Let the driver go and exit normally (finalizers, atexit, buffered files)."""


class Ping(msgspec.Struct, array_like=True, tag=16):
    """Answered ``Reply(id)`` by the domain runtime itself, whatever the driver does
    (unless the thread that reads the channel is stuck)."""

    id: int


class Fragment(msgspec.Struct, array_like=True, tag=17):
    """A piece of a message too large for one datagram; the last piece has ``last``
    set, and the pieces joined are the message."""

    last: bool
    data: bytes


ToDomain = Call | Reply | Raise | Reject | Batch | Construct | Inject | Shutdown | Ping
ToHost = (Call | Reply | Raise | Reject | BatchReply | Post | Hello | Ready | Failure
          | Fragment)

# what a peer may send that fails to decode (msgspec's limit on nesting surfaces as
# RecursionError)
UNDECODABLE = (msgspec.DecodeError, RecursionError)

TAG_CALL = 1
TAG_REPLY = 2
TAG_RAISE = 3
TAG_REJECT = 4
TAG_BATCH = 5
TAG_BATCH_REPLY = 6
TAG_POST = 7
TAG_FRAGMENT = 17

_encoder = msgspec.msgpack.Encoder()
encode = _encoder.encode


def encode_call(
    cid: int, method: int, args: tuple[Any, ...], parent: int = 0, out: ArenaRef | None = None,
    *, lenient: Collection[str] = (),
) -> bytes:
    if lenient:
        return encode((TAG_CALL, cid, method, args, parent, out, sorted(lenient)))
    return encode((TAG_CALL, cid, method, args, parent, out))


def encode_reply(cid: int, result: Any) -> bytes:
    return encode((TAG_REPLY, cid, result))


def encode_raise(cid: int, error: int, value: Any) -> bytes:
    return encode((TAG_RAISE, cid, error, value))
