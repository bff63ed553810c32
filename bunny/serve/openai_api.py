"""The OpenAI chat-completions API on a Bunny worker: requests into prompts, results into responses.

`POST /v1/chat/completions` takes `messages` whose `content` is a string or a list of parts,
`{"type": "text", "text": ...}` and `{"type": "image_url", "image_url": {"url": ...}}` (a `data:`
URL with base64 data, or an http(s) URL the worker fetches if started with --allow-image-urls).
The conversation is rendered with the model's own template (a system message replaces the
template's system prompt); in a user message the parts are joined with newlines, an image part
becoming `<image>`, so `[image, text]` gives `"<image>\\n<text>"`, the form Bunny was trained on.

Supported: `model`, `messages`, `max_tokens` (or `max_completion_tokens`), `temperature` (0-2),
`top_p` (0-1), `stop` (a string or up to 4, each of at most 256 characters), `stream` (server-sent
events ending in `data: [DONE]`), `stream_options.include_usage`, `n` = 1. Errors use OpenAI's
error object.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field as dataclass_field
from typing import Any

from bunny.constants import DEFAULT_IMAGE_TOKEN
from bunny.conversation import get_conv_template
from bunny.serve.limits import MAX_STOP_STRINGS, bounded_stop_strings
from bunny.serve.protocol import PayloadError, field, number


class APIError(Exception):
    """An error answered with OpenAI's error object and an HTTP status."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict[str, Any]:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


@dataclass
class ChatRequest:
    model: str
    prompt: str
    image_urls: list[tuple[str, str]]  # (where in the request, url)
    max_tokens: int | None
    temperature: float
    top_p: float
    stop: list[str]
    stream: bool
    include_usage: bool = False
    id: str = dataclass_field(default_factory=lambda: "chatcmpl-" + uuid.uuid4().hex[:24])
    created: int = dataclass_field(default_factory=lambda: int(time.time()))


def _parts(content: Any, where: str) -> list[tuple[str, Any]]:
    """A message's content as ("text", str) and ("image_url", url) pieces."""
    if isinstance(content, str):
        return [("text", content)]
    if not isinstance(content, list):
        raise PayloadError(f"{where} must be a string or a list of parts")
    pieces = []
    for j, part in enumerate(content):
        place = f"{where}[{j}]"
        if not isinstance(part, dict):
            raise PayloadError(f"{place} must be an object with a 'type'")
        kind = part.get("type")
        if kind == "text":
            pieces.append(("text", field(part, "text", str)))
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if not isinstance(url, str) or not url:
                raise PayloadError(f"{place}.image_url must hold a 'url'")
            pieces.append(("image_url", url))
        else:
            raise PayloadError(f"{place}.type {kind!r} is not supported (use 'text' or 'image_url')")
    return pieces


def parse_chat_request(body: dict[str, Any], conv_mode: str) -> ChatRequest:
    """Check an OpenAI chat-completions body and render its messages with template `conv_mode`."""
    messages = field(body, "messages", list)
    if not messages:
        raise PayloadError("'messages' is empty")
    if field(body, "n", int, 1) != 1:
        raise PayloadError("'n' must be 1: one choice per request")
    conv = get_conv_template(conv_mode)
    turns: list[tuple[str, str]] = []
    image_urls: list[tuple[str, str]] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise PayloadError(f"{where} must be an object with 'role' and 'content'")
        role = field(message, "role", str)
        content = message.get("content")
        if role in ("system", "developer"):
            conv.system = "\n".join(text for kind, text in _parts(content, f"{where}.content") if kind == "text")
            continue
        if role not in ("user", "assistant"):
            raise PayloadError(f"{where}.role {role!r} is not supported (use system, user or assistant)")
        pieces = _parts(content if content is not None else "", f"{where}.content")
        texts = []
        for j, (kind, value) in enumerate(pieces):
            if kind == "image_url":
                if role != "user":
                    raise PayloadError(f"{where}: only user messages may hold images")
                image_urls.append((f"{where}.content[{j}]", value))
                texts.append(DEFAULT_IMAGE_TOKEN)
            else:
                texts.append(value)
        text = "\n".join(texts)
        if turns and turns[-1][0] == role:  # consecutive messages of one role form one turn
            turns[-1] = (role, turns[-1][1] + "\n" + text)
        else:
            turns.append((role, text))
    if not turns or turns[-1][0] != "user":
        raise PayloadError("the last message must be a user message")
    if turns[0][0] != "user":
        turns.insert(0, ("user", ""))
    for role, text in turns:
        conv.append_message(conv.roles[0] if role == "user" else conv.roles[1], text)
    conv.append_message(conv.roles[1], None)

    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    name = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
        raise PayloadError(f"{name!r} must be a positive integer, got {json.dumps(max_tokens)}")
    options = field(body, "stream_options", dict, {})
    return ChatRequest(
        model=field(body, "model", str),
        prompt=conv.get_prompt(),
        image_urls=image_urls,
        max_tokens=max_tokens,
        temperature=number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=number(body, "top_p", 1.0, 0.0, 1.0),
        stop=bounded_stop_strings(body, MAX_STOP_STRINGS),
        stream=field(body, "stream", bool, False),
        include_usage=field(options, "include_usage", bool, False),
    )


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion(request: ChatRequest, text: str, finish_reason: str, prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "id": request.id,
        "object": "chat.completion",
        "created": request.created,
        "model": request.model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason}
        ],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def chunk(request: ChatRequest, delta: dict[str, Any], finish_reason: str | None = None, **extra: Any) -> bytes:
    """One server-sent event of a streamed completion."""
    body = {
        "id": request.id,
        "object": "chat.completion.chunk",
        "created": request.created,
        "model": request.model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}] if delta is not None else [],
        **extra,
    }
    return b"data: " + json.dumps(body).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"


def models_list(model_name: str, created: int) -> dict[str, Any]:
    return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created, "owned_by": "bunny"}]}
