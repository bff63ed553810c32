"""Size limits on what a client may send the servers, and the helpers that enforce them.

| Limit | Default | Flag (model worker) | Answer |
|---|---|---|---|
| request body | `MAX_REQUEST_BYTES` (64 MiB) | `--max-request-bytes` | 413 |
| images per request | `MAX_IMAGES_PER_REQUEST` (4) | `--max-images-per-request` | 400 naming the field |
| stop strings per request | `MAX_STOP_STRINGS` (4) | | 400 naming `stop` |
| characters per stop string | `MAX_STOP_STRING_CHARS` (256) | | 400 naming `stop` |

`read_body(request, limit)` reads a Starlette/FastAPI request body and refuses it (`BodyTooLarge`)
as soon as it is known to exceed `limit`: a Content-Length over it is refused before anything is
read, and the bytes are counted as they arrive, so a chunked upload (no Content-Length) or one
that sends more than it declared can't get past it. Any server reading JSON bodies can use it (the
model worker does; the controller's /worker_generate_stream relay should too).
"""

from __future__ import annotations

from typing import Any

from bunny.serve.protocol import PayloadError, stop_strings

MAX_REQUEST_BYTES = 64 * 1024 * 1024  # a large photo sent by the web page as base64 PNG fits
MAX_IMAGES_PER_REQUEST = 4
MAX_STOP_STRINGS = 4
MAX_STOP_STRING_CHARS = 256


class BodyTooLarge(Exception):
    """A request body over the limit; answered with HTTP 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the request body is larger than the limit of {limit} bytes")
        self.limit = limit


async def read_body(request: Any, limit: int = MAX_REQUEST_BYTES) -> bytes:
    """The body of `request` (a Starlette Request), or `BodyTooLarge` once it exceeds `limit` bytes;
    a Content-Length that is not a number is a PayloadError."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            length = int(declared)
        except ValueError:
            raise PayloadError(f"the Content-Length header {declared[:40]!r} is not a number") from None
        if length > limit:
            raise BodyTooLarge(limit)
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > limit:
            raise BodyTooLarge(limit)
    return bytes(body)


def bounded_stop_strings(
    body: dict[str, Any], most: int = MAX_STOP_STRINGS, longest: int = MAX_STOP_STRING_CHARS
) -> list[str]:
    """`body["stop"]` (`protocol.stop_strings`): at most `most` strings of at most `longest` characters."""
    stop = stop_strings(body, most)
    for string in stop:
        if len(string) > longest:
            raise PayloadError(f"'stop' strings may be at most {longest} characters long; one has {len(string)}")
    return stop


def check_image_count(count: int, most: int, name: str) -> None:
    """A PayloadError naming the field `name` when a request carries more than `most` images."""
    if count > most:
        raise PayloadError(f"{name!r} holds {count} images; a request may carry at most {most}")
