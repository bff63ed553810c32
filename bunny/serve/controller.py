"""The controller of the web demo: a registry of model workers and a dispatcher in front of them.

Run as (first of the three processes; then the web server, then one worker per model):
    python -m bunny.serve.controller [--host 127.0.0.1] [--port 21001] [--dispatch-method shortest_queue] \
        [--secret-file FILE] [--worker-read-timeout 1000]

Endpoints (all POST, JSON bodies), as in the original: /register_worker, /refresh_all_workers,
/list_models, /get_worker_address, /receive_heart_beat, /worker_generate_stream (relays a worker's
NUL-delimited stream), /worker_get_status. Workers that check heart beats and miss them for
`--heart-beat-expiration` seconds are removed.

Differences from the original, on purpose:
- it binds 127.0.0.1 unless --host says otherwise;
- with no worker for the model, the stream is exactly one error chunk (the original sent two);
- a worker that dies mid-stream ends the relay with one error chunk (code 3), and the controller
  goes on serving;
- a body that is not a JSON object, or lacks a field, is answered with HTTP 400 naming the field, and
  one larger than `bunny.serve.limits.MAX_REQUEST_BYTES` (64 MiB, counted as it arrives) with 413;
  registering a worker whose status can't be fetched is HTTP 502 naming the worker, not a silent no-op;
- /register_worker and /receive_heart_beat need the controller's shared secret
  (`Authorization: Bearer <secret>`; 401 without it, 403 with another), even from loopback. The
  controller keeps it in `~/.cache/bunny/controller-<port>.secret` (mode 0600; `BUNNY_SECRET_DIR`
  moves the directory, `--secret-file` names another file, `BUNNY_CONTROLLER_SECRET` gives the
  value), where workers and register_worker started by the same user on this machine find it from
  the port of their `--controller-address`; see `bunny.serve.secret` for the exact rules. The other
  endpoints stay open;
- what workers report is checked (HTTP 400 naming the field): the address must be an http(s) URL
  with a host, the model names a short list of short strings, the speed finite and in (0, 10000],
  the queue length an integer in [0, 100000];
- the controller never blocks on a worker: every request to one is asynchronous, status requests
  time out after 5 s, and concurrent refreshes share one round of status requests;
- a stream is given up when the worker can't be reached within 5 s, but a worker may stay silent
  for `--worker-read-timeout` seconds (1000, as the web server waits) while the request waits for
  a free slot.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Sequence
from urllib.parse import urlsplit

import httpx
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from bunny.constants import CONTROLLER_HEART_BEAT_EXPIRATION
from bunny.serve.protocol import (
    ERROR_NO_WORKER,
    ERROR_UNREACHABLE,
    WORKER_REQUEST_TIMEOUT,
    PayloadError,
    add_bind_arguments,
    build_logger,
    error_chunk,
    field,
    parse_body,
)
from bunny.serve.limits import MAX_REQUEST_BYTES, BodyTooLarge, read_body
from bunny.serve.secret import SecretError, check_authorization, keep_secret

DISPATCH_METHODS = ("lottery", "shortest_queue")
WORKER_READ_TIMEOUT = 1000.0  # seconds a worker may stay silent mid-request, as long as the web server waits
MAX_ADDRESS_LENGTH = 512
MAX_MODEL_NAMES = 64
MAX_MODEL_NAME_LENGTH = 200
MAX_SPEED = 10_000.0
MAX_QUEUE_LENGTH = 100_000
MAX_STATUS_BYTES = 1 << 20


def check_worker_address(address: str) -> str:
    """`address` if it is an http(s) URL with a host (PayloadError naming 'worker_name' otherwise):
    the controller sends requests there."""
    problem = None
    if len(address) > MAX_ADDRESS_LENGTH:
        problem = f"at most {MAX_ADDRESS_LENGTH} characters long"
    elif not address.isprintable() or " " in address:
        problem = "without spaces or control characters"
    else:
        parts = urlsplit(address)
        try:
            parts.port
        except ValueError:
            problem = "with a valid port"
        if problem is None and (parts.scheme not in ("http", "https") or not parts.hostname):
            problem = "an http:// or https:// URL with a host"
    if problem:
        raise PayloadError(f"'worker_name' must be the worker's URL, {problem}; got {json.dumps(address[:80])}")
    return address


def check_queue_length(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_QUEUE_LENGTH:
        raise PayloadError(f"'queue_length' must be an integer from 0 to {MAX_QUEUE_LENGTH}, got {json.dumps(value)[:80]}")
    return value


def check_status(status: Any) -> dict[str, Any]:
    """A worker's status reduced to what the controller uses, checked (PayloadError naming the field)."""
    if not isinstance(status, dict):
        raise PayloadError(f"a worker status must be a JSON object, got {json.dumps(status)[:80]}")
    names = status.get("model_names")
    if not (
        isinstance(names, list) and len(names) <= MAX_MODEL_NAMES
        and all(isinstance(n, str) and 0 < len(n) <= MAX_MODEL_NAME_LENGTH for n in names)
    ):
        raise PayloadError(
            f"'model_names' must be a list of at most {MAX_MODEL_NAMES} names of 1 to {MAX_MODEL_NAME_LENGTH} "
            f"characters, got {json.dumps(names)[:80]}"
        )
    speed = status.get("speed", 1)
    if not isinstance(speed, (int, float)) or isinstance(speed, bool) or not (math.isfinite(speed) and 0 < speed <= MAX_SPEED):
        raise PayloadError(f"'speed' must be a number above 0 and at most {MAX_SPEED:g}, got {json.dumps(speed)[:80]}")
    return {"model_names": list(names), "speed": float(speed), "queue_length": check_queue_length(status.get("queue_length", 0))}


@dataclass
class WorkerInfo:
    model_names: list[str]
    speed: float
    queue_length: int
    check_heart_beat: bool
    last_heart_beat: float


class Controller:
    """The registry (worker URL -> WorkerInfo) and the dispatch rule; thread-safe. Requests to
    workers go through an asynchronous client, held while `http_client()` is entered."""

    def __init__(
        self,
        dispatch_method: str = "shortest_queue",
        heart_beat_expiration: float = CONTROLLER_HEART_BEAT_EXPIRATION,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        worker_read_timeout: float = WORKER_READ_TIMEOUT,
    ) -> None:
        if dispatch_method not in DISPATCH_METHODS:
            raise ValueError(f"Invalid dispatch method {dispatch_method!r}: choose one of {', '.join(DISPATCH_METHODS)}")
        self.dispatch_method = dispatch_method
        self.heart_beat_expiration = heart_beat_expiration
        self.clock = clock
        self.rng = rng or random.Random()
        # connecting to a worker must be quick; its first chunk may wait for a free slot
        self.stream_timeout = httpx.Timeout(WORKER_REQUEST_TIMEOUT, read=worker_read_timeout)
        self.workers: dict[str, WorkerInfo] = {}
        self.lock = threading.Lock()
        self.logger = build_logger("controller", "controller.log")
        self.http: httpx.AsyncClient | None = None
        self.polling: asyncio.Future | None = None

    @asynccontextmanager
    async def http_client(self) -> AsyncIterator[None]:
        """Hold the client that requests to workers go through (for the app's lifetime)."""
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=20)
        async with httpx.AsyncClient(timeout=WORKER_REQUEST_TIMEOUT, limits=limits) as client:
            self.http = client
            try:
                yield
            finally:
                self.http = None

    # -- registry ----------------------------------------------------------------------------------
    def register_worker(self, worker_name: str, check_heart_beat: bool, worker_status: dict[str, Any]) -> None:
        """(Re-)register `worker_name` with its status (PayloadError naming the field when it is unusable)."""
        status = check_status(worker_status)
        info = WorkerInfo(
            model_names=status["model_names"],
            speed=status["speed"],
            queue_length=status["queue_length"],
            check_heart_beat=check_heart_beat,
            last_heart_beat=self.clock(),
        )
        with self.lock:
            self.workers[worker_name] = info
        self.logger.info(f"Registered worker {worker_name}: models {info.model_names}, heart beat checked: {check_heart_beat}")

    async def fetch_worker_status(self, worker_name: str) -> dict[str, Any]:
        """The checked status of `worker_name`, asked within WORKER_REQUEST_TIMEOUT seconds (RuntimeError if that fails)."""

        async def fetch() -> bytes:
            async with self.http.stream("POST", worker_name + "/worker_get_status") as response:
                response.raise_for_status()
                body = bytearray()
                async for piece in response.aiter_bytes():
                    body += piece
                    if len(body) > MAX_STATUS_BYTES:
                        raise ValueError(f"its status is larger than {MAX_STATUS_BYTES} bytes")
                return bytes(body)

        failed = f"could not get the status of worker {worker_name}"
        try:
            return check_status(json.loads(await asyncio.wait_for(fetch(), WORKER_REQUEST_TIMEOUT)))
        except asyncio.TimeoutError:
            raise RuntimeError(f"{failed}: no answer within {WORKER_REQUEST_TIMEOUT:g} s") from None
        except (httpx.HTTPError, ValueError) as err:  # PayloadError and JSON errors are ValueErrors
            raise RuntimeError(f"{failed}: {err or type(err).__name__}") from None

    def remove_worker(self, worker_name: str) -> None:
        with self.lock:
            self.workers.pop(worker_name, None)

    async def poll_workers(self) -> dict[str, dict[str, Any]]:
        """The live status of every registered worker, asked all at once; those that don't answer
        are removed. Callers that come while a poll runs share it, so clients can't multiply it."""
        if self.polling is None or self.polling.done():
            self.polling = asyncio.ensure_future(self._poll_workers())
        return await asyncio.shield(self.polling)

    async def _poll_workers(self) -> dict[str, dict[str, Any]]:
        with self.lock:
            names = list(self.workers)
        results = await asyncio.gather(*(self.fetch_worker_status(name) for name in names), return_exceptions=True)
        statuses = {}
        for name, result in zip(names, results):
            if isinstance(result, RuntimeError):
                self.logger.warning(f"Dropped worker {name}: {result}")
                self.remove_worker(name)
            elif isinstance(result, BaseException):
                raise result
            else:
                statuses[name] = result
        return statuses

    async def refresh_all_workers(self) -> None:
        """Register again every worker that answers with its current status; drop the others.
        The registry keeps serving meanwhile."""
        statuses = await self.poll_workers()
        with self.lock:
            checked = {name: info.check_heart_beat for name, info in self.workers.items()}
        for name, status in statuses.items():
            if name in checked:  # not removed while we asked
                self.register_worker(name, checked[name], status)

    def list_models(self) -> list[str]:
        with self.lock:
            return sorted({name for info in self.workers.values() for name in info.model_names})

    def receive_heart_beat(self, worker_name: str, queue_length: int) -> bool:
        queue_length = check_queue_length(queue_length)
        with self.lock:
            info = self.workers.get(worker_name)
            if info is None:
                return False
            info.queue_length = queue_length
            info.last_heart_beat = self.clock()
            return True

    def remove_stale_workers(self) -> list[str]:
        """Remove the heart-beat-checked workers silent for longer than the expiration; returns their names."""
        deadline = self.clock() - self.heart_beat_expiration
        with self.lock:
            stale = [n for n, i in self.workers.items() if i.check_heart_beat and i.last_heart_beat < deadline]
            for name in stale:
                del self.workers[name]
        for name in stale:
            self.logger.info(f"Removed worker {name}: no heart beat for {self.heart_beat_expiration:g} s")
        return stale

    def watch_heart_beats(self) -> threading.Thread:
        """Start the background thread that removes stale workers (checks several times per expiration)."""

        def loop() -> None:
            while True:
                time.sleep(max(0.05, self.heart_beat_expiration / 4))
                self.remove_stale_workers()

        thread = threading.Thread(target=loop, name="heart-beat-watch", daemon=True)
        thread.start()
        return thread

    # -- dispatch ----------------------------------------------------------------------------------
    def get_worker_address(self, model_name: str) -> str:
        """The worker to send a request for `model_name` to, or "" when none serves it."""
        with self.lock:
            candidates = [(n, i) for n, i in self.workers.items() if model_name in i.model_names]
            if self.dispatch_method == "lottery":
                speeds = [i.speed for _, i in candidates]
                if sum(speeds) < 1e-4:
                    return ""
                return self.rng.choices([n for n, _ in candidates], weights=speeds)[0]
            if not candidates:
                return ""
            # least queued per unit of speed, first on ties; count the request we are sending it
            name, info = min(candidates, key=lambda c: c[1].queue_length / c[1].speed)
            info.queue_length += 1
            return name

    async def worker_api_generate_stream(self, params: dict[str, Any]) -> AsyncIterator[bytes]:
        """Relay the stream of the worker chosen for `params["model"]`, ending in one error chunk
        when there is none or it fails."""
        address = self.get_worker_address(params["model"])
        if not address:
            self.logger.info(f"No worker for model {params['model']!r}")
            yield error_chunk(ERROR_NO_WORKER)
            return
        try:
            async with self.http.stream(
                "POST", address + "/worker_generate_stream", json=params, timeout=self.stream_timeout
            ) as response:
                if response.status_code != 400:  # a 400 is the worker refusing the request: its chunk says why
                    response.raise_for_status()
                pending = b""
                async for piece in response.aiter_bytes():
                    *chunks, pending = (pending + piece).split(b"\0")
                    for chunk in chunks:
                        if chunk:
                            yield chunk + b"\0"
                if pending:
                    yield pending + b"\0"
        except httpx.HTTPError as err:
            self.logger.warning(f"Worker {address} failed: {err!r}")
            yield error_chunk(ERROR_UNREACHABLE)

    async def worker_api_get_status(self) -> dict[str, Any]:
        """The live status of all workers together, so that this controller can serve as a worker."""
        statuses = (await self.poll_workers()).values()
        return {
            "model_names": sorted({name for status in statuses for name in status["model_names"]}),
            "speed": sum(status["speed"] for status in statuses),
            "queue_length": sum(status["queue_length"] for status in statuses),
        }


class Unauthorized(Exception):
    """A request to a workers-only endpoint without the controller's secret (401) or with another (403)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


def create_app(controller: Controller, secret: str) -> FastAPI:
    """The FastAPI app serving `controller`'s endpoints; registering and heart beats need `secret`."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with controller.http_client():
            yield

    app = FastAPI(title="Bunny controller", lifespan=lifespan)
    _add_error_handlers(app, controller)

    async def workers_only(request: Request) -> None:
        refusal = check_authorization(request.headers.get("Authorization"), secret)
        if refusal is not None:
            raise Unauthorized(*refusal)

    _add_worker_routes(app, controller, Depends(workers_only))
    _add_client_routes(app, controller)
    return app


async def _body(request: Request) -> dict[str, Any]:
    return parse_body(await read_body(request, MAX_REQUEST_BYTES))


def _add_error_handlers(app: FastAPI, controller: Controller) -> None:
    @app.exception_handler(PayloadError)
    async def bad_payload(request: Request, err: PayloadError) -> JSONResponse:
        return JSONResponse({"error": f"{request.url.path}: {err}"}, status_code=400)

    @app.exception_handler(Unauthorized)
    async def unauthorized(request: Request, err: Unauthorized) -> JSONResponse:
        client = request.client.host if request.client else "?"
        controller.logger.warning(f"{request.url.path} from {client}: refused ({err.status}): no or another secret")
        headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
        return JSONResponse({"error": f"{request.url.path}: {err.reason}"}, status_code=err.status, headers=headers)

    @app.exception_handler(BodyTooLarge)
    async def body_too_large(request: Request, err: BodyTooLarge) -> JSONResponse:
        return JSONResponse({"error": f"{request.url.path}: {err}"}, status_code=413)


def _add_worker_routes(app: FastAPI, controller: Controller, workers_only: Any) -> None:
    """What only workers (holding the secret) may do."""

    @app.post("/register_worker", dependencies=[workers_only])
    async def register_worker(request: Request) -> Any:
        data = await _body(request)
        name = check_worker_address(field(data, "worker_name", str))
        check_heart_beat = field(data, "check_heart_beat", bool, False)
        status = field(data, "worker_status", dict, None)
        if status is None:
            try:
                status = await controller.fetch_worker_status(name)
            except RuntimeError as err:
                return JSONResponse({"error": str(err)}, status_code=502)
        controller.register_worker(name, check_heart_beat, status)
        return None

    @app.post("/receive_heart_beat", dependencies=[workers_only])
    async def receive_heart_beat(request: Request) -> Any:
        data = await _body(request)
        exist = controller.receive_heart_beat(field(data, "worker_name", str), field(data, "queue_length", int, 0))
        return {"exist": exist}


def _add_client_routes(app: FastAPI, controller: Controller) -> None:
    """What the web page and other clients use."""

    @app.post("/refresh_all_workers")
    async def refresh_all_workers() -> Any:
        await controller.refresh_all_workers()
        return None

    @app.post("/list_models")
    async def list_models() -> Any:
        return {"models": controller.list_models()}

    @app.post("/get_worker_address")
    async def get_worker_address(request: Request) -> Any:
        return {"address": controller.get_worker_address(field(await _body(request), "model", str))}

    @app.post("/worker_generate_stream")
    async def worker_generate_stream(request: Request) -> Any:
        params = await _body(request)
        field(params, "model", str)
        return StreamingResponse(controller.worker_api_generate_stream(params))

    @app.post("/worker_get_status")
    async def worker_get_status() -> Any:
        return await controller.worker_api_get_status()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bunny.serve.controller", description=__doc__.split("\n")[0])
    add_bind_arguments(parser, 21001)
    parser.add_argument(
        "--dispatch-method", choices=DISPATCH_METHODS, default="shortest_queue",
        help="lottery: at random in proportion to speed; shortest_queue: the least busy worker",
    )
    parser.add_argument(
        "--heart-beat-expiration", type=float, default=CONTROLLER_HEART_BEAT_EXPIRATION,
        help="seconds without a heart beat after which a worker is removed",
    )
    parser.add_argument(
        "--secret-file", default=None,
        help="file holding the secret workers register with (created, mode 0600, if missing; default: "
        "controller-<port>.secret in $BUNNY_SECRET_DIR or ~/.cache/bunny, with $BUNNY_CONTROLLER_SECRET's value if set)",
    )
    parser.add_argument(
        "--worker-read-timeout", type=float, default=WORKER_READ_TIMEOUT,
        help="seconds a worker may stay silent during a request (e.g. while it waits for a free slot) before "
        "the request fails with error 3; connecting to it must take at most 5 s",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    import uvicorn

    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.worker_read_timeout > 0:
        parser.error("--worker-read-timeout must be positive")
    controller = Controller(args.dispatch_method, args.heart_beat_expiration, worker_read_timeout=args.worker_read_timeout)
    try:
        secret, secret_file = keep_secret(args.port, args.secret_file)
    except (SecretError, OSError) as err:
        raise SystemExit(f"controller: {err}")
    controller.logger.info(f"args: {args}")
    controller.logger.info(
        f"Workers register with the secret kept in {secret_file}: those of this user on this machine find it; "
        "give it to others with --secret-file or BUNNY_CONTROLLER_SECRET"
    )
    controller.watch_heart_beats()
    uvicorn.run(create_app(controller, secret), host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    main()
