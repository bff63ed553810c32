"""A model worker: one Bunny model behind HTTP, registered with a controller, streaming its answers.

Run as (after the controller; the README's `--controller`/`--worker` abbreviations work):
    python -m bunny.serve.model_worker --controller-address http://localhost:21001 --port 40000 \\
        --worker-address http://localhost:40000 --model-path PATH --model-type phi-2 [--device cpu]

Endpoints:
- POST /worker_get_status, POST /worker_generate_stream: the original's, with its NUL-delimited JSON
  stream (`bunny.serve.protocol`); every chunk holds the prompt followed by the reply so far.
- POST /v1/chat/completions, GET /v1/models: the OpenAI chat API (`bunny.serve.openai_api`).

Requests in flight are decoded as one batch that requests join and leave between two steps
(continuous batching, `bunny.inference.engine`); with greedy decoding each gets the answer it would
get alone.

Differences from the original, on purpose:
- it binds 127.0.0.1 unless --host says otherwise;
- the streamed text is the model's text (the original put a space before every streamed piece
  that did not start with one), and each sequence stops on its own stop string;
- a request the worker can't use (invalid base64, not an image, an image too large to decode
  safely, more `<image>` markers than images, a parameter out of range) is answered with HTTP 400
  and one chunk `{"text": <the cause>, "error_code": 1}` instead of a generic error mid-stream;
- a client that goes away mid-stream stops its generation at the next token;
- `--heart-beat-interval` (seconds) makes heart beats testable;
- registration and heart beats carry the controller's secret: from --secret-file, else
  BUNNY_CONTROLLER_SECRET, else the controller's own file when its address is on this machine
  (`bunny.serve.secret`); a refusal at start is an error naming them.

Limits on what a client may send (`bunny.serve.limits`): a body over --max-request-bytes (64 MiB)
is answered with 413, counted as it arrives (a chunked upload can't get past it); more than
--max-images-per-request images (4), more than 4 stop strings or one longer than 256 characters
with 400 naming the field.

Image URLs (OpenAI `image_url` parts with an http(s) URL) are NOT fetched unless the worker is
started with --allow-image-urls, whatever address it binds: a worker that fetches what clients
name is a proxy into the network it sits in. With the flag, `bunny.util.image_fetch` fetches only
from public addresses (each redirect checked again, the connection pinned to the checked address)
unless --allow-private-image-urls; all of a request's downloads must end within
--image-fetch-timeout seconds in all, each within --max-image-bytes, at most
--max-concurrent-image-fetches requests download at once (more get 429), and every failure to
download reads "could not fetch image <url>", the cause going to the log only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import threading
import time
import uuid
from typing import Any, AsyncIterator, Sequence

import requests
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from bunny.constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX, WORKER_HEART_BEAT_INTERVAL
from bunny.conversation import get_conv_template
from bunny.inference.engine import BatchGenerator, Chunk, Done, Event, Failed, GenerationRequest
from bunny.inference.options import check_model_arguments, load_model
from bunny.inference.prompts import resolve_conv_mode
from bunny.serve import openai_api
from bunny.serve.limits import (
    MAX_IMAGES_PER_REQUEST,
    MAX_REQUEST_BYTES,
    MAX_STOP_STRINGS,
    BodyTooLarge,
    bounded_stop_strings,
    check_image_count,
    read_body,
)
from bunny.serve.protocol import (
    ERROR_WORKER,
    WORKER_REQUEST_TIMEOUT,
    PayloadError,
    add_bind_arguments,
    build_logger,
    encode_chunk,
    error_chunk,
    field,
    number,
    parse_body,
)
from bunny.serve.secret import SECRET_ENV, SecretError, authorization, find_secret
from bunny.util.image_fetch import FetchError, FetchTooLarge, fetch_image
from bunny.util.images import (
    MAX_IMAGE_BYTES,
    ImageLoadError,
    load_image_from_base64,
    load_image_from_bytes,
)
from bunny.util.tokens import get_model_name_from_path, tokenizer_image_token

MAX_NEW_TOKENS = 1024  # the most a request may ask for, as in the original
MAX_CHARS_PER_POSITION = 256  # far more than the longest token of any Bunny LLM: a longer prompt cannot fit
MAX_IMAGE_PIXELS = 40_000_000  # larger pictures are refused before they are decoded
TOO_LONG_TEXT = "Exceeds max token length. Please start a new conversation, thanks."
DATA_URL = re.compile(r"data:(?P<mime>[\w/+.-]*)(?P<params>(;[\w=.-]+)*?);base64,(?P<data>.*)", re.DOTALL)


class ModelWorker:
    """A loaded model, its batching generator, and its registration with a controller."""

    def __init__(
        self,
        tokenizer: Any,
        model: Any,
        image_processor: Any,
        context_len: int,
        model_name: str,
        model_type: str,
        controller_address: str | None = None,
        worker_address: str | None = None,
        secret_file: str | None = None,
        limit_model_concurrency: int = 5,
        heart_beat_interval: float = WORKER_HEART_BEAT_INTERVAL,
        batch_window: float = 0.01,
        max_image_pixels: int = MAX_IMAGE_PIXELS,
        max_image_bytes: int = MAX_IMAGE_BYTES,
        image_fetch_timeout: float = 10.0,
        generate_in_background: bool = True,
        allow_image_urls: bool = False,
        allow_private_image_urls: bool = False,
        max_concurrent_image_fetches: int = 4,
        max_request_bytes: int = MAX_REQUEST_BYTES,
        max_images_per_request: int = MAX_IMAGES_PER_REQUEST,
    ) -> None:
        self.worker_id = uuid.uuid4().hex[:6]
        self.logger = build_logger("model_worker", f"model_worker_{self.worker_id}.log")
        self.tokenizer, self.model, self.image_processor = tokenizer, model, image_processor
        self.context_len = context_len
        self.model_name, self.model_type = model_name, model_type
        self.conv_mode = resolve_conv_mode(model_type)
        self.stop_str = get_conv_template(self.conv_mode).stop_str
        self.controller_address = controller_address.rstrip("/") if controller_address else None
        self.worker_address = worker_address
        self.secret_file = secret_file  # None: BUNNY_CONTROLLER_SECRET or the controller's file on this machine
        self.limit_model_concurrency = limit_model_concurrency
        self.heart_beat_interval = heart_beat_interval
        self.max_image_pixels, self.max_image_bytes = max_image_pixels, max_image_bytes
        self.image_fetch_timeout = image_fetch_timeout
        self.allow_image_urls, self.allow_private_image_urls = allow_image_urls, allow_private_image_urls
        self.fetch_slots = threading.BoundedSemaphore(max_concurrent_image_fetches)
        self.max_concurrent_image_fetches = max_concurrent_image_fetches
        self.max_request_bytes, self.max_images_per_request = max_request_bytes, max_images_per_request
        self.image_tokens = getattr(model, "image_token_count", 0)  # positions per image after the projector
        self.engine = BatchGenerator(
            model, tokenizer, image_processor, max_batch_size=limit_model_concurrency, batch_window=batch_window,
            background=generate_in_background, log=self.logger,
        )
        self.semaphore: asyncio.Semaphore | None = None  # made in the server's event loop
        self.busy = 0  # requests holding a slot
        self.waiting = 0  # requests waiting for one
        self.started = int(time.time())

    # -- the controller ----------------------------------------------------------------------------
    def register_to_controller(self) -> None:
        """Register with the controller; a refusal or no answer is a RuntimeError naming it (and,
        when the secret is missing or wrong, where it was looked for and how to give it)."""
        payload = {"worker_name": self.worker_address, "check_heart_beat": True, "worker_status": self.get_status()}
        secret, source = find_secret(self.controller_address, self.secret_file)  # read each time: it may change
        try:
            response = requests.post(
                self.controller_address + "/register_worker", json=payload, headers=authorization(secret),
                timeout=WORKER_REQUEST_TIMEOUT,
            )
        except requests.RequestException as err:
            raise RuntimeError(f"cannot reach the controller at {self.controller_address}: {err}") from None
        if response.status_code in (401, 403):
            sent = f"the secret from {source}" if secret else f"no secret ({source})"
            raise RuntimeError(
                f"the controller at {self.controller_address} refused this worker (HTTP {response.status_code}): "
                f"it sent {sent}. Give it the controller's secret with --secret-file FILE or {SECRET_ENV}."
            )
        if response.status_code != 200:
            raise RuntimeError(f"the controller at {self.controller_address} refused this worker: {response.text}")
        self.logger.info(f"Registered with {self.controller_address} as {self.worker_address}")

    def send_heart_beat(self) -> None:
        """Tell the controller we are alive (and how busy); re-register if it forgot us. Retries until heard."""
        while True:
            try:
                secret, _ = find_secret(self.controller_address, self.secret_file)
                response = requests.post(
                    self.controller_address + "/receive_heart_beat",
                    json={"worker_name": self.worker_address, "queue_length": self.get_queue_length()},
                    headers=authorization(secret), timeout=WORKER_REQUEST_TIMEOUT,
                )
                if response.status_code != 200:
                    raise ValueError(f"HTTP {response.status_code}: {response.text[:500]}")
                exist = response.json()["exist"]
                break
            except (requests.RequestException, SecretError, ValueError, KeyError, TypeError) as err:
                self.logger.warning(f"heart beat to {self.controller_address} failed: {err}")
            time.sleep(5)
        if not exist:
            try:
                self.register_to_controller()
            except RuntimeError as err:
                self.logger.warning(str(err))

    def start_heart_beats(self) -> threading.Thread:
        def loop() -> None:
            while True:
                time.sleep(self.heart_beat_interval)
                self.send_heart_beat()

        thread = threading.Thread(target=loop, name="heart-beat", daemon=True)
        thread.start()
        return thread

    def beat_now(self) -> None:
        """An extra heart beat (queue length changed), in the background so no request waits for it."""
        if self.controller_address:
            threading.Thread(target=self.send_heart_beat, daemon=True).start()

    def get_queue_length(self) -> int:
        """As the original: slots taken plus requests waiting for one."""
        return self.busy + self.waiting

    def get_status(self) -> dict[str, Any]:
        # conv_mode (not in the original) tells the web server which template the model uses
        return {
            "model_names": [self.model_name], "speed": 1, "queue_length": self.get_queue_length(),
            "conv_mode": self.conv_mode,
        }

    # -- requests ----------------------------------------------------------------------------------
    def open_url(self, url: str, where: str, deadline: float) -> Any:
        """An image from a data URL, or from an http(s) URL downloaded by `deadline` (time.monotonic())
        when URLs are allowed (see the module docstring)."""
        if url.startswith("data:"):
            match = DATA_URL.fullmatch(url)
            if match is None:
                raise PayloadError(f"{where}: a data URL must be of the form data:image/...;base64,<data>")
            return load_image_from_base64(match["data"], where, self.max_image_pixels).convert("RGB")
        if not url.startswith(("http://", "https://")):
            raise PayloadError(f"{where}: the image URL must be a data: or http(s) URL, got {url[:40]!r}")
        if not self.allow_image_urls:
            raise PayloadError(
                f"{where}: this worker does not fetch image URLs (it was started without --allow-image-urls); "
                "send the image as a data:image/...;base64 URL"
            )
        try:
            content = fetch_image(url, deadline - time.monotonic(), self.max_image_bytes, self.allow_private_image_urls)
        except FetchTooLarge as err:
            raise ImageLoadError(str(err)) from None
        except FetchError as err:
            self.logger.info(f"{where}: {err}: {err.detail}")  # the cause stays here: no port scans through us
            raise ImageLoadError(str(err)) from None
        return load_image_from_bytes(content, f"image {url}", self.max_image_pixels).convert("RGB")

    def open_urls(self, urls: list[tuple[str, str]]) -> list[Any]:
        """The images of (where, url) pairs; the downloads among them share one deadline and one fetch slot."""
        fetching = any(url.startswith(("http://", "https://")) for _, url in urls) and self.allow_image_urls
        if fetching and not self.fetch_slots.acquire(blocking=False):
            raise openai_api.APIError(
                429, f"this worker is downloading images for {self.max_concurrent_image_fetches} requests already; "
                "try again shortly or send the image as a data: URL", code="rate_limit_exceeded",
            )
        try:
            deadline = time.monotonic() + self.image_fetch_timeout
            images = []
            for where, url in urls:
                try:
                    images.append(self.open_url(url, where, deadline))
                except (ImageLoadError, PayloadError) as err:
                    raise openai_api.APIError(400, str(err), param=where) from None
            return images
        finally:
            if fetching:
                self.fetch_slots.release()

    def make_request(
        self, prompt: str, images: list[Any], wanted: int | None, **settings: Any
    ) -> tuple[GenerationRequest, int]:
        """The generation request and the prompt's length in model positions (text ids plus each
        image's projected features). Its max_new_tokens is `wanted` (default and cap: MAX_NEW_TOKENS) within
        what the context leaves, so less than 1 when the prompt fills the context."""
        if len(prompt) > MAX_CHARS_PER_POSITION * self.context_len:  # refused before the tokenizer spends time on it
            raise PayloadError(
                f"the prompt has {len(prompt)} characters, more than the model's context of {self.context_len} "
                "positions can hold"
            )
        markers = prompt.count(DEFAULT_IMAGE_TOKEN)
        if markers != len(images):
            raise PayloadError(f"the prompt has {markers} {DEFAULT_IMAGE_TOKEN} markers but {len(images)} images were sent")
        if images and self.image_processor is None:
            raise PayloadError(f"model {self.model_name} has no vision tower; send no images")
        input_ids = tokenizer_image_token(prompt, self.tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")
        prompt_tokens = len(input_ids) - len(images) + len(images) * self.image_tokens
        room = min(wanted or MAX_NEW_TOKENS, MAX_NEW_TOKENS, self.context_len - prompt_tokens)
        return GenerationRequest(input_ids=input_ids, images=images, max_new_tokens=room, **settings), prompt_tokens

    def prepare_native(self, params: dict[str, Any]) -> tuple[str, GenerationRequest | None]:
        """Check a /worker_generate_stream body and decode its images. Returns the prompt and the
        request, or no request when the prompt leaves no room to answer."""
        prompt = field(params, "prompt", str)
        encoded = field(params, "images", list, [])
        check_image_count(len(encoded), self.max_images_per_request, "images")
        stop = bounded_stop_strings(params, MAX_STOP_STRINGS)
        images = []
        for i, data in enumerate(encoded):
            if not isinstance(data, str):
                raise PayloadError(f"images[{i}] must be a base64 string")
            try:
                images.append(load_image_from_base64(data, f"images[{i}]", self.max_image_pixels).convert("RGB"))
            except ImageLoadError as err:
                raise PayloadError(str(err)) from None
        wanted = field(params, "max_new_tokens", int, 256)
        if wanted < 1:
            raise PayloadError(f"'max_new_tokens' must be at least 1, got {wanted}")
        request, _ = self.make_request(
            prompt, images, wanted,
            temperature=number(params, "temperature", 1.0, 0.0, 2.0),
            top_p=number(params, "top_p", 1.0, 0.0, 1.0),
            repetition_penalty=number(params, "repetition_penalty", 1.0, 0.01, 10.0),
            stop=stop,
        )
        return prompt, (request if request.max_new_tokens >= 1 else None)

    def prepare_chat(self, body: dict[str, Any]) -> tuple[openai_api.ChatRequest, GenerationRequest, int]:
        """Check an OpenAI chat body, fetch its images. Returns it, the generation request and the prompt length."""
        try:
            chat = openai_api.parse_chat_request(body, self.conv_mode)
        except PayloadError as err:
            raise openai_api.APIError(400, str(err)) from None
        if chat.model != self.model_name:
            raise openai_api.APIError(
                404, f"The model {chat.model!r} does not exist; this worker serves {self.model_name!r}",
                param="model", code="model_not_found",
            )
        try:
            check_image_count(len(chat.image_urls), self.max_images_per_request, "messages")
        except PayloadError as err:
            raise openai_api.APIError(400, str(err), param="messages") from None
        images = self.open_urls(chat.image_urls)
        try:
            request, prompt_tokens = self.make_request(
                chat.prompt, images, chat.max_tokens, temperature=chat.temperature, top_p=chat.top_p,
                stop=chat.stop + [self.stop_str],
            )
        except PayloadError as err:
            raise openai_api.APIError(400, str(err)) from None
        if request.max_new_tokens < 1:
            raise openai_api.APIError(
                400, f"The prompt takes {prompt_tokens} positions; the model's context is {self.context_len}",
                param="messages", code="context_length_exceeded",
            )
        return chat, request, prompt_tokens

    def submit(self, request: GenerationRequest) -> AsyncIterator[Event]:
        """Submit `request` now and return its events; leaving them early (a client gone) cancels it."""
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue[Event] = asyncio.Queue()

        def sink(event: Event) -> None:  # called in the generation thread
            if isinstance(event, Done) and event.finish_reason == "cancelled":
                self.logger.info(f"generation stopped after {event.completion_tokens} tokens: the client went away")
            loop.call_soon_threadsafe(inbox.put_nowait, event)

        request.sink = sink
        self.engine.submit(request)
        return self._events(request, inbox)

    @staticmethod
    async def _events(request: GenerationRequest, inbox: asyncio.Queue) -> AsyncIterator[Event]:
        finished = False
        try:
            while True:
                event = await inbox.get()
                finished = not isinstance(event, Chunk)
                yield event
                if finished:
                    return
        finally:
            if not finished:
                request.cancel()

    async def slot(self) -> None:
        """Wait for one of the --limit-model-concurrency slots."""
        if self.semaphore is None:
            self.semaphore = asyncio.Semaphore(self.limit_model_concurrency)
        self.waiting += 1
        try:
            await self.semaphore.acquire()
        finally:
            self.waiting -= 1
        self.busy += 1
        self.beat_now()

    def release(self) -> None:
        self.busy -= 1
        self.semaphore.release()
        self.beat_now()


def create_app(worker: ModelWorker) -> FastAPI:
    """The FastAPI app serving `worker`: the original's endpoints and the OpenAI API."""
    app = FastAPI(title="Bunny model worker")
    _add_error_handlers(app, worker)
    _add_native_routes(app, worker)
    _add_openai_routes(app, worker)
    return app


def _add_error_handlers(app: FastAPI, worker: ModelWorker) -> None:
    @app.exception_handler(PayloadError)
    async def bad_payload(request: Request, err: PayloadError) -> Response:
        worker.logger.info(f"{request.url.path}: refused: {err}")
        return Response(encode_chunk(str(err), ERROR_WORKER), status_code=400)

    @app.exception_handler(openai_api.APIError)
    async def api_error(request: Request, err: openai_api.APIError) -> JSONResponse:
        worker.logger.info(f"{request.url.path}: refused: {err.message}")
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(BodyTooLarge)
    async def body_too_large(request: Request, err: BodyTooLarge) -> Response:
        worker.logger.info(f"{request.url.path}: refused: {err}")
        return Response(encode_chunk(str(err), ERROR_WORKER), status_code=413)


def _add_native_routes(app: FastAPI, worker: ModelWorker) -> None:
    @app.post("/worker_get_status")
    async def worker_get_status() -> Any:
        return worker.get_status()

    @app.post("/worker_generate_stream")
    async def worker_generate_stream(request: Request) -> Any:
        params = parse_body(await read_body(request, worker.max_request_bytes))
        with worker.engine.expecting():  # requests that arrive together are batched together
            prompt, generation = await run_in_threadpool(worker.prepare_native, params)
            if generation is None:
                return Response(encode_chunk(prompt + TOO_LONG_TEXT))
            await worker.slot()
            events = worker.submit(generation)
        return StreamingResponse(_native_stream(worker, prompt, events))


async def _native_stream(worker: ModelWorker, prompt: str, events: AsyncIterator[Event]) -> AsyncIterator[bytes]:
    """The original's NUL-delimited chunks, each the prompt followed by the reply so far."""
    try:
        async for event in events:
            if isinstance(event, Failed):
                worker.logger.error(f"generation failed: {event.message}")
                yield error_chunk(ERROR_WORKER)
            elif not (isinstance(event, Done) and event.finish_reason == "cancelled"):
                yield encode_chunk(prompt + event.text)
    finally:
        worker.release()


def _add_openai_routes(app: FastAPI, worker: ModelWorker) -> None:
    @app.get("/v1/models")
    async def models() -> Any:
        return openai_api.models_list(worker.model_name, worker.started)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        try:
            body = parse_body(await read_body(request, worker.max_request_bytes))
        except PayloadError as err:
            raise openai_api.APIError(400, str(err)) from None
        except BodyTooLarge as err:
            raise openai_api.APIError(413, str(err), code="request_too_large") from None
        with worker.engine.expecting():
            chat, generation, prompt_tokens = await run_in_threadpool(worker.prepare_chat, body)
            await worker.slot()
            events = worker.submit(generation)
        if chat.stream:
            return StreamingResponse(_openai_stream(worker, chat, events, prompt_tokens), media_type="text/event-stream")
        try:
            async for event in events:
                if isinstance(event, Failed):
                    raise openai_api.APIError(500, f"generation failed: {event.message}")
                if isinstance(event, Done):
                    return openai_api.completion(chat, event.text, event.finish_reason, prompt_tokens, event.completion_tokens)
        finally:
            worker.release()


async def _openai_stream(
    worker: ModelWorker, chat: openai_api.ChatRequest, events: AsyncIterator[Event], prompt_tokens: int
) -> AsyncIterator[bytes]:
    """Server-sent events: the role, the reply's new text as it comes, the finish reason, the usage
    when asked for, then `[DONE]`."""
    sent = ""
    try:
        yield openai_api.chunk(chat, {"role": "assistant", "content": ""})
        async for event in events:
            if isinstance(event, Failed):
                error = openai_api.APIError(500, f"generation failed: {event.message}")
                yield b"data: " + json.dumps(error.body()).encode() + b"\n\n"
                break
            if event.text != sent:
                yield openai_api.chunk(chat, {"content": event.text[len(sent):]})
                sent = event.text
            if isinstance(event, Done):
                yield openai_api.chunk(chat, {}, event.finish_reason)
                if chat.include_usage:
                    yield openai_api.chunk(chat, None, usage=openai_api.usage(prompt_tokens, event.completion_tokens))
        yield openai_api.DONE
    finally:
        worker.release()


def build_parser() -> argparse.ArgumentParser:
    from bunny.model.backbones import MODEL_TYPES

    parser = argparse.ArgumentParser(prog="python -m bunny.serve.model_worker", description=__doc__.split("\n")[0])
    add_bind_arguments(parser, 21002)
    parser.add_argument(
        "--worker-address", "--worker", default="http://localhost:21002", help="URL the controller reaches this worker at"
    )
    parser.add_argument("--controller-address", "--controller", default="http://localhost:21001", help="URL of the controller")
    parser.add_argument(
        "--secret-file", default=None,
        help="file holding the controller's secret (default: $BUNNY_CONTROLLER_SECRET, else the controller's own "
        "file when it runs on this machine: controller-<port>.secret in $BUNNY_SECRET_DIR or ~/.cache/bunny)",
    )
    parser.add_argument("--model-path", required=True, help="checkpoint directory or hub id")
    parser.add_argument("--model-base", default=None, help="base LLM, for LoRA or projector-only checkpoints")
    parser.add_argument("--model-name", default=None, help="name to serve the model under (default: from the path)")
    parser.add_argument("--model-type", required=True, choices=MODEL_TYPES, help="the LLM back-end of the checkpoint")
    parser.add_argument("--device", default="cuda", help="torch device, e.g. cuda, cuda:1, cpu")
    parser.add_argument("--multi-modal", action="store_true", help="deprecated: every Bunny model is multimodal")
    parser.add_argument(
        "--limit-model-concurrency", type=int, default=5,
        help="requests generated at once (the most rows decoded together); more wait in a queue",
    )
    parser.add_argument("--stream-interval", type=int, default=1, help="unused; kept for the original's scripts")
    parser.add_argument("--no-register", action="store_true", help="do not register with a controller")
    parser.add_argument("--load-8bit", action="store_true", help="load the LLM in 8 bit (bitsandbytes)")
    parser.add_argument("--load-4bit", action="store_true", help="load the LLM in 4 bit NF4 (bitsandbytes)")
    parser.add_argument(
        "--heart-beat-interval", type=float, default=WORKER_HEART_BEAT_INTERVAL, help="seconds between heart beats"
    )
    parser.add_argument(
        "--batch-window", type=float, default=0.01,
        help="seconds a request arriving at an idle worker waits for others to be prefilled with",
    )
    _add_limit_arguments(parser)
    return parser


def _add_limit_arguments(parser: argparse.ArgumentParser) -> None:
    """What a client may send and have fetched (see the module docstring)."""
    parser.add_argument(
        "--max-image-pixels", type=int, default=MAX_IMAGE_PIXELS, help="larger images are refused before decoding"
    )
    parser.add_argument("--max-image-bytes", type=int, default=MAX_IMAGE_BYTES, help="largest image URL download")
    parser.add_argument(
        "--image-fetch-timeout", type=float, default=10.0,
        help="seconds all the image URL downloads of one request may take in total (redirects included)",
    )
    parser.add_argument(
        "--allow-image-urls", action="store_true",
        help="fetch http(s) image URLs of OpenAI requests (off: only data: URLs), from public addresses only",
    )
    parser.add_argument(
        "--allow-private-image-urls", action="store_true",
        help="with --allow-image-urls, also fetch from loopback, private, link-local and other non-public addresses",
    )
    parser.add_argument(
        "--max-concurrent-image-fetches", type=int, default=4,
        help="requests that may download image URLs at once; more are answered 429",
    )
    parser.add_argument(
        "--max-request-bytes", type=int, default=MAX_REQUEST_BYTES,
        help="largest request body in bytes (larger: HTTP 413)",
    )
    parser.add_argument(
        "--max-images-per-request", type=int, default=MAX_IMAGES_PER_REQUEST, help="most images one request may carry"
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.model_path = args.model_path.rstrip("/") or args.model_path
    check_model_arguments(parser, args)
    if args.allow_private_image_urls and not args.allow_image_urls:
        parser.error("--allow-private-image-urls needs --allow-image-urls")
    for flag in ("limit_model_concurrency", "max_concurrent_image_fetches", "max_request_bytes", "max_images_per_request"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1")
    args.model_name = args.model_name or get_model_name_from_path(args.model_path)
    return args


def build_worker(args: argparse.Namespace) -> ModelWorker:
    """Load the model the flags name and wrap it in a worker that generates on the caller's thread."""
    tokenizer, model, image_processor, context_len = load_model(args, require_vision_tower=False)
    return ModelWorker(
        tokenizer, model, image_processor, context_len, args.model_name, args.model_type,
        controller_address=None if args.no_register else args.controller_address,
        worker_address=args.worker_address,
        secret_file=args.secret_file,
        limit_model_concurrency=args.limit_model_concurrency,
        heart_beat_interval=args.heart_beat_interval,
        batch_window=args.batch_window,
        max_image_pixels=args.max_image_pixels,
        max_image_bytes=args.max_image_bytes,
        image_fetch_timeout=args.image_fetch_timeout,
        generate_in_background=False,  # see `serve`
        allow_image_urls=args.allow_image_urls,
        allow_private_image_urls=args.allow_private_image_urls,
        max_concurrent_image_fetches=args.max_concurrent_image_fetches,
        max_request_bytes=args.max_request_bytes,
        max_images_per_request=args.max_images_per_request,
    )


def serve(worker: ModelWorker, host: str, port: int, register: bool) -> None:
    """Serve HTTP from a thread and generate on this one, where PyTorch's CPU threads are fastest
    (see `BatchGenerator.run_forever`); register with the controller once the server listens."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(create_app(worker), host=host, port=port, log_level="info"))
    http = threading.Thread(target=server.run, name="http", daemon=True)
    http.start()
    while not server.started:
        if not http.is_alive():
            raise SystemExit(f"model_worker: could not serve on {host}:{port} (see the log above)")
        time.sleep(0.05)
    if register:
        try:
            worker.register_to_controller()
        except RuntimeError as err:
            server.should_exit = True
            raise SystemExit(f"model_worker: {err}")
        worker.start_heart_beats()
    try:
        worker.engine.run_forever(stop=lambda: not http.is_alive())
    except KeyboardInterrupt:
        pass
    finally:
        server.should_exit = True
        http.join(5)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    worker = build_worker(args)
    worker.logger.info(f"args: {args}")
    if args.multi_modal:
        worker.logger.warning("--multi-modal is deprecated: every Bunny model is multimodal")
    serve(worker, args.host, args.port, register=not args.no_register)


if __name__ == "__main__":
    main()
