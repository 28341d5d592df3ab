# mypy: disable-error-code="empty-body"
"""The web class's interface: one HTTP request in, one response out.

The host parses HTTP and owns every connection; the extension (a WSGI
application in its domain) sees a request already framed: method, target,
headers and the whole body. It answers with a ``Head`` — status, headers, and
the body, or its first part when the body is large. The rest of a large body
is a *stream* the extension keeps open (``Head.stream``, never 0): the host
fetches it with ``more(stream, offset)``, one arena slot at a time and only
as fast as its client reads, so bulk bodies cross through the arenas, never
sit whole in a message and never whole in the host. ``more`` answers
``b""`` for a stream the extension no longer has (ended, dropped, or lost
with a previous incarnation); ``drop`` closes one the host gives up on.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from nooks.wrappers import Handle, Interface, closes, once

Text = Annotated[str, msgspec.Meta(max_length=8192)]
Header = tuple[Annotated[str, msgspec.Meta(max_length=1024)], Text]
Headers = Annotated[list[Header], msgspec.Meta(max_length=256)]
Body = Annotated[bytes, msgspec.Meta(max_length=64 << 20)]
Address = tuple[str, int]


class Head(msgspec.Struct, array_like=True, frozen=True):
    """A response as the extension gives it: ``length`` is the whole body's, ``body``
    its first part (all of it unless the host must call ``more``)."""

    status: Annotated[int, msgspec.Meta(ge=100, le=999)]
    reason: Annotated[str, msgspec.Meta(max_length=256)]
    headers: Headers
    body: Annotated[bytes, msgspec.Meta(max_length=1 << 20)]
    length: Annotated[int, msgspec.Meta(ge=0)]
    stream: Annotated[int, msgspec.Meta(ge=0)] = 0  # where the rest of the body is


# a stream the extension holds (it dies with the incarnation: never re-opened)
StreamId = Annotated[int, msgspec.Meta(ge=1), Handle("stream")]


class WebInterface(Interface):
    def retry_safe(self) -> list[Text]:
        """Routes the application marks safe to re-issue after a failure
        (``"METHOD /path-pattern"``), beyond the idempotent methods."""

    def handle(self, method: Annotated[str, msgspec.Meta(max_length=32)],  # noqa: PLR0917
               target: Text, headers: Headers, body: Body, client: Address,
               server: Address) -> Head: ...

    @once
    def more(self, stream: StreamId, offset: Annotated[int, msgspec.Meta(ge=0)]) -> Body:
        """The body of a streamed response from ``offset`` on (up to one arena slot);
        ``b""`` if that stream is gone."""

    @once
    @closes("stream")
    def drop(self, stream: StreamId) -> None:
        """Close a streamed response the host will not read to its end."""
