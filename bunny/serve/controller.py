"""The controller of the web demo: a registry of model workers and a dispatcher in front of them.

Run as (first of the three processes; then the web server, then one worker per model):
    python -m bunny.serve.controller [--host 127.0.0.1] [--port 21001] [--dispatch-method shortest_queue]

Endpoints (all POST, JSON bodies), as in the original: /register_worker, /refresh_all_workers,
/list_models, /get_worker_address, /receive_heart_beat, /worker_generate_stream (relays a worker's
NUL-delimited stream), /worker_get_status. Workers that check heart beats and miss them for
`--heart-beat-expiration` seconds are removed.

Differences from the original, on purpose:
- it binds 127.0.0.1 unless --host says otherwise;
- with no worker for the model, the stream is exactly one error chunk (the original sent two);
- a worker that dies mid-stream ends the relay with one error chunk (code 3), and the controller
  goes on serving;
- a body that is not a JSON object, or lacks a field, is answered with HTTP 400 naming the field;
  registering a worker whose status can't be fetched is HTTP 502 naming the worker, not a silent no-op.
"""

from __future__ import annotations

import argparse
import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import requests
from fastapi import FastAPI, Request
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

DISPATCH_METHODS = ("lottery", "shortest_queue")


@dataclass
class WorkerInfo:
    model_names: list[str]
    speed: float
    queue_length: int
    check_heart_beat: bool
    last_heart_beat: float


class Controller:
    """The registry (worker URL -> WorkerInfo) and the dispatch rule; thread-safe."""

    def __init__(
        self,
        dispatch_method: str = "shortest_queue",
        heart_beat_expiration: float = CONTROLLER_HEART_BEAT_EXPIRATION,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        if dispatch_method not in DISPATCH_METHODS:
            raise ValueError(f"Invalid dispatch method {dispatch_method!r}: choose one of {', '.join(DISPATCH_METHODS)}")
        self.dispatch_method = dispatch_method
        self.heart_beat_expiration = heart_beat_expiration
        self.clock = clock
        self.rng = rng or random.Random()
        self.workers: dict[str, WorkerInfo] = {}
        self.lock = threading.Lock()
        self.logger = build_logger("controller", "controller.log")

    # -- registry ----------------------------------------------------------------------------------
    def register_worker(self, worker_name: str, check_heart_beat: bool, worker_status: dict[str, Any] | None) -> None:
        """(Re-)register `worker_name`; without a status it is fetched from the worker (RuntimeError if that fails)."""
        status = worker_status or self.get_worker_status(worker_name)
        info = WorkerInfo(
            model_names=list(status["model_names"]),
            speed=status.get("speed", 1),
            queue_length=status.get("queue_length", 0),
            check_heart_beat=check_heart_beat,
            last_heart_beat=self.clock(),
        )
        with self.lock:
            self.workers[worker_name] = info
        self.logger.info(f"Registered worker {worker_name}: models {info.model_names}, heart beat checked: {check_heart_beat}")

    def get_worker_status(self, worker_name: str) -> dict[str, Any]:
        try:
            response = requests.post(worker_name + "/worker_get_status", timeout=WORKER_REQUEST_TIMEOUT)
            response.raise_for_status()
            status = response.json()
            if not isinstance(status, dict) or not isinstance(status.get("model_names"), list):
                raise ValueError(f"unexpected status {str(status)[:200]}")
            return status
        except (requests.RequestException, ValueError) as err:
            raise RuntimeError(f"could not get the status of worker {worker_name}: {err}") from None

    def remove_worker(self, worker_name: str) -> None:
        with self.lock:
            self.workers.pop(worker_name, None)

    def refresh_all_workers(self) -> None:
        """Forget every worker and register again those that answer; the others are dropped."""
        with self.lock:
            old = dict(self.workers)
            self.workers.clear()
        for name, info in old.items():
            try:
                self.register_worker(name, info.check_heart_beat, None)
            except RuntimeError as err:
                self.logger.warning(f"Dropped worker {name}: {err}")

    def list_models(self) -> list[str]:
        with self.lock:
            return sorted({name for info in self.workers.values() for name in info.model_names})

    def receive_heart_beat(self, worker_name: str, queue_length: int) -> bool:
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

    def worker_api_generate_stream(self, params: dict[str, Any]) -> Iterator[bytes]:
        """Relay the stream of the worker chosen for `params["model"]`, ending in one error chunk
        when there is none or it fails."""
        address = self.get_worker_address(params["model"])
        if not address:
            self.logger.info(f"No worker for model {params['model']!r}")
            yield error_chunk(ERROR_NO_WORKER)
            return
        try:
            with requests.post(
                address + "/worker_generate_stream", json=params, stream=True, timeout=WORKER_REQUEST_TIMEOUT
            ) as response:
                if response.status_code != 400:  # a 400 is the worker refusing the request: its chunk says why
                    response.raise_for_status()
                for chunk in response.iter_lines(delimiter=b"\0"):
                    if chunk:
                        yield chunk + b"\0"
        except requests.RequestException as err:
            self.logger.warning(f"Worker {address} failed: {err}")
            yield error_chunk(ERROR_UNREACHABLE)

    def worker_api_get_status(self) -> dict[str, Any]:
        """The live status of all workers together, so that this controller can serve as a worker."""
        model_names: set[str] = set()
        speed, queue_length = 0.0, 0
        with self.lock:
            names = list(self.workers)
        for name in names:
            try:
                status = self.get_worker_status(name)
            except RuntimeError as err:
                self.logger.warning(str(err))
                self.remove_worker(name)
                continue
            model_names.update(status["model_names"])
            speed += status.get("speed", 1)
            queue_length += status.get("queue_length", 0)
        return {"model_names": sorted(model_names), "speed": speed, "queue_length": queue_length}


def create_app(controller: Controller) -> FastAPI:
    """The FastAPI app serving `controller`'s endpoints."""
    app = FastAPI(title="Bunny controller")

    @app.exception_handler(PayloadError)
    async def bad_payload(request: Request, err: PayloadError) -> JSONResponse:
        return JSONResponse({"error": f"{request.url.path}: {err}"}, status_code=400)

    async def body(request: Request) -> dict[str, Any]:
        return parse_body(await request.body())

    @app.post("/register_worker")
    async def register_worker(request: Request) -> Any:
        data = await body(request)
        name = field(data, "worker_name", str)
        status = field(data, "worker_status", dict, None)
        if status is not None:
            field(status, "model_names", list)
        try:
            controller.register_worker(name, field(data, "check_heart_beat", bool, False), status)
        except RuntimeError as err:
            return JSONResponse({"error": str(err)}, status_code=502)
        return None

    @app.post("/refresh_all_workers")
    async def refresh_all_workers() -> Any:
        controller.refresh_all_workers()
        return None

    @app.post("/list_models")
    async def list_models() -> Any:
        return {"models": controller.list_models()}

    @app.post("/get_worker_address")
    async def get_worker_address(request: Request) -> Any:
        return {"address": controller.get_worker_address(field(await body(request), "model", str))}

    @app.post("/receive_heart_beat")
    async def receive_heart_beat(request: Request) -> Any:
        data = await body(request)
        exist = controller.receive_heart_beat(field(data, "worker_name", str), field(data, "queue_length", int, 0))
        return {"exist": exist}

    @app.post("/worker_generate_stream")
    async def worker_generate_stream(request: Request) -> Any:
        params = await body(request)
        field(params, "model", str)
        return StreamingResponse(controller.worker_api_generate_stream(params))

    @app.post("/worker_get_status")
    async def worker_get_status() -> Any:
        return controller.worker_api_get_status()

    return app


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
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    import uvicorn

    args = build_parser().parse_args(argv)
    controller = Controller(args.dispatch_method, args.heart_beat_expiration)
    controller.logger.info(f"args: {args}")
    controller.watch_heart_beats()
    uvicorn.run(create_app(controller), host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    main()
