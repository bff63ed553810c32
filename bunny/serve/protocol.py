"""What the controller, the model workers and the web server share: the streaming wire format,
request-body checks, logging and the request timeout (the heart-beat timings are in bunny.constants).

Streaming: an HTTP body of UTF-8 JSON objects, each followed by one NUL byte,
    {"text": "<prompt + text so far>", "error_code": 0}\\0 ...
read with `iter_lines(delimiter=b"\\0")`. Error codes: 1 the worker failed, 2 no worker serves the
model, 3 the controller could not reach the worker (or lost it mid-stream).
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from logging.handlers import TimedRotatingFileHandler
from typing import Any, Iterator

from bunny.constants import LOGDIR
from bunny.util.utils import server_error_msg

WORKER_REQUEST_TIMEOUT = 5.0  # seconds to connect to / hear from a worker or the controller

ERROR_WORKER = 1
ERROR_NO_WORKER = 2
ERROR_UNREACHABLE = 3


class PayloadError(ValueError):
    """A request body the server can't use; the message names the field. Answered with HTTP 400."""


def encode_chunk(text: str, error_code: int = 0) -> bytes:
    return json.dumps({"text": text, "error_code": error_code}).encode() + b"\0"


def error_chunk(error_code: int) -> bytes:
    return encode_chunk(server_error_msg, error_code)


def iter_chunks(lines: Iterator[bytes]) -> Iterator[dict[str, Any]]:
    """Decode a NUL-delimited stream (`response.iter_lines(delimiter=b"\\0")`), skipping empty pieces."""
    for line in lines:
        if line:
            yield json.loads(line.decode())


def parse_body(raw: bytes) -> dict[str, Any]:
    """A request body as a JSON object, or a PayloadError saying what is wrong with it."""
    try:
        body = json.loads(raw or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PayloadError(f"the request body is not JSON: {err}") from None
    if not isinstance(body, dict):
        raise PayloadError(f"the request body must be a JSON object, got {type(body).__name__}")
    return body


def field(body: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
    """`body[name]`, checked against `kind`; missing without a default is a PayloadError."""
    if name not in body or body[name] is None:
        if default is ...:
            raise PayloadError(f"the request body has no {name!r}")
        return default
    value = body[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # bool is an int in Python; a number field must not accept true/false
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise PayloadError(f"{name!r} must be {names}, got {json.dumps(value)[:80]}")
    return value


def number(body: dict[str, Any], name: str, default: float, low: float, high: float) -> float:
    """`body[name]`, a finite number in [low, high] (PayloadError naming the field otherwise)."""
    value = field(body, name, (int, float), default)
    if not math.isfinite(value) or not low <= value <= high:
        raise PayloadError(f"{name!r} must be between {low:g} and {high:g}, got {value}")
    return float(value)


def stop_strings(body: dict[str, Any], most: int | None = None) -> list[str]:
    """`body["stop"]`: none, a string or a list of strings (at most `most`); empty strings dropped."""
    stop = body.get("stop")
    stop = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop) or (most and len(stop) > most):
        limit = f"at most {most} strings" if most else "strings"
        raise PayloadError(f"'stop' must be a string or a list of {limit}")
    return [s for s in stop if s]


def add_bind_arguments(parser: Any, port: int | None, port_help: str = "port to listen on") -> None:
    """--host (loopback unless told otherwise) and --port, as every server takes them."""
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 to serve other machines)")
    parser.add_argument("--port", type=int, default=port, help=port_help)


def log_directory() -> str:
    """Where servers write logs: `LOGDIR` under the working directory, as in the original
    (`BUNNY_LOGDIR` overrides it)."""
    return os.environ.get("BUNNY_LOGDIR", LOGDIR)


def build_logger(name: str, filename: str) -> logging.Logger:
    """A logger writing to the terminal and to `<log directory>/<filename>`, rotated daily (UTC)."""
    logger = logging.getLogger(name)
    if logger.handlers:
        return logger
    logger.setLevel(logging.INFO)
    formatter = logging.Formatter("%(asctime)s | %(levelname)s | %(name)s | %(message)s", "%Y-%m-%d %H:%M:%S")
    os.makedirs(log_directory(), exist_ok=True)
    for handler in (
        logging.StreamHandler(sys.stderr),
        TimedRotatingFileHandler(os.path.join(log_directory(), filename), when="D", utc=True, encoding="utf-8"),
    ):
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    return logger
