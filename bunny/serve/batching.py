"""Batched, streamed generation for the model worker: requests that arrive together are answered
by one `generate` call, and each request streams its own text as its tokens come.

A request is a prompt (token ids with `IMAGE_TOKEN_INDEX` where its images go), its images and
its generation settings. `BatchGenerator` runs one thread that takes the waiting
requests, groups those whose sampling settings agree (up to `max_batch_size`), left-pads them into
one batch and generates. Before a batch starts it waits `batch_window` seconds for more requests,
and up to `max_wait` for those still being prepared (`expecting`), so that requests that arrived
together are generated together even when decoding their images takes a while. Rows are
independent: each stops on its own stop strings, its own `max_new_tokens`, the end-of-sequence
token, or when its client goes away (`cancel`), and with greedy decoding each gets exactly the
tokens it would get alone (the core's batched generation).

Events a request receives, in order: any number of `Chunk` (the reply so far), then one `Done`
or one `Failed`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch
from transformers import StoppingCriteria

from bunny.serve.generation import generation_kwargs, stop_prefix_len, to_model_inputs
from bunny.util.mm_utils import pad_token_ids, process_images

logger = logging.getLogger(__name__)

GREEDY_BELOW = 0.001  # as in the original worker: a temperature at or below this decodes greedily


@dataclass(frozen=True)
class Chunk:
    text: str  # the reply so far, without special tokens and cut before any stop string


@dataclass(frozen=True)
class Done:
    text: str
    finish_reason: str  # "stop" (end of sequence or a stop string), "length" or "cancelled"
    completion_tokens: int


@dataclass(frozen=True)
class Failed:
    message: str


Event = Chunk | Done | Failed


@dataclass
class GenerationRequest:
    input_ids: torch.Tensor  # [L], IMAGE_TOKEN_INDEX where each image goes
    images: list[Any]  # PIL images in prompt order (processed in the generation thread)
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    stop: Sequence[str] = ()
    sink: Callable[[Event], None] | None = None  # default: a queue read by `events()`
    cancelled: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._queue: queue.SimpleQueue[Event] = queue.SimpleQueue()
        if self.sink is None:
            self.sink = self._queue.put

    @property
    def sampling_key(self) -> tuple:
        """Requests batch together when these agree (they are arguments of `generate`, not per row)."""
        if self.temperature <= GREEDY_BELOW:
            return (False, 0.0, 1.0, self.repetition_penalty)
        return (True, self.temperature, self.top_p, self.repetition_penalty)

    def cancel(self) -> None:
        """The client went away: stop generating for this request at the next step."""
        self.cancelled.set()

    def events(self, timeout: float | None = None) -> Iterator[Event]:
        """The events of a request made without a sink, until `Done` or `Failed`."""
        while True:
            event = self._queue.get(timeout=timeout)
            yield event
            if not isinstance(event, Chunk):
                return


class _Row:
    """One request's decoding state inside a batch."""

    def __init__(self, request: GenerationRequest) -> None:
        self.request = request
        self.tokens: list[int] = []
        self.sent = ""
        self.done = False

    def finish(self, text: str, reason: str) -> None:
        self.done = True
        self.request.sink(Done(text, reason, len(self.tokens)))


class _StreamRows(StoppingCriteria):
    """Called by `generate` after every step: reads each row's new token, streams its text and
    says which rows are finished (so that `generate` pads them from then on)."""

    def __init__(self, rows: list[_Row], tokenizer: Any, eos_ids: set[int]) -> None:
        self.rows = rows
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids

    def __call__(self, input_ids: torch.Tensor, scores: Any = None, **kwargs: Any) -> torch.BoolTensor:
        for row, token in zip(self.rows, input_ids[:, -1].tolist()):
            if not row.done:
                self._advance(row, token)
        return torch.tensor([row.done for row in self.rows], dtype=torch.bool, device=input_ids.device)

    def _advance(self, row: _Row, token: int) -> None:
        request = row.request
        row.tokens.append(token)
        if token in self.eos_ids:
            row.finish(row.sent, "stop")
            return
        text = self.tokenizer.decode(row.tokens, skip_special_tokens=True)
        hits = [text.index(stop) for stop in request.stop if stop and stop in text]
        if hits:
            row.finish(text[: min(hits)], "stop")
            return
        if len(row.tokens) >= request.max_new_tokens:
            row.finish(text, "length")
            return
        if request.cancelled.is_set():
            row.finish(text, "cancelled")
            return
        # Hold back an incomplete character and what may be the start of a stop string.
        shown = text.rstrip("\ufffd")
        shown = shown[: len(shown) - stop_prefix_len(shown, request.stop)]
        if shown != row.sent and shown.startswith(row.sent):
            row.sent = shown
            request.sink(Chunk(shown))

    def finish_all(self) -> None:
        """Rows still open when `generate` returned ran into its length limit."""
        for row in self.rows:
            if not row.done:
                text = self.tokenizer.decode(row.tokens, skip_special_tokens=True)
                row.finish(text, "cancelled" if row.request.cancelled.is_set() else "length")


class BatchGenerator:
    """One generation thread in front of `model`, batching the requests that wait together."""

    def __init__(
        self, model: Any, tokenizer: Any, image_processor: Any = None, max_batch_size: int = 8,
        batch_window: float = 0.01, max_wait: float = 0.25, background: bool = True, log: logging.Logger = logger,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.max_batch_size = max_batch_size
        self.batch_window = batch_window
        self.max_wait = max_wait
        self.background = background  # False: the owner calls run_forever
        self._expected = 0  # requests being prepared (see `expecting`)
        self.batch_sizes: list[int] = []  # of every batch generated so far
        self.log = log
        self._waiting: list[GenerationRequest] = []
        self._condition = threading.Condition()
        self._thread: threading.Thread | None = None
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = 0 if pad is None else pad
        eos = model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])

    def submit(self, request: GenerationRequest) -> None:
        """Queue `request`; the first submission starts the generation thread unless the owner
        said it runs `run_forever` itself (`background=False`)."""
        with self._condition:
            self._waiting.append(request)
            self._condition.notify()
        if self._thread is None and self.background:
            self.start()

    def start(self) -> None:
        """Generate in a background thread."""
        with self._condition:
            if self._thread is None:
                self._thread = threading.Thread(target=self.run_forever, name="batch-generator", daemon=True)
                self._thread.start()

    def run_forever(self, stop: Callable[[], bool] = lambda: False) -> None:
        """Generate in the calling thread until `stop()` (checked twice a second while idle) is true.

        On CPU, PyTorch runs fastest when one thread does all the tensor work: another thread
        that has used PyTorch's intra-op threads (OpenMP) and stays alive slows every operation
        of this one (1.7x on 2 cores). So images are preprocessed here, not where requests arrive,
        and a model worker generates on its main thread and serves HTTP from another.
        """
        with self._condition:
            if self._thread is None:
                self._thread = threading.current_thread()
        while True:
            batch = self._next_batch(stop)
            if batch is None:
                return
            if not batch:
                continue
            try:
                self.generate(batch)
            except Exception as err:  # noqa: BLE001 - every request must hear of the failure
                self.log.exception(f"generation failed for a batch of {len(batch)}")
                for request in batch:
                    request.sink(Failed(f"{type(err).__name__}: {err}"))

    @contextmanager
    def expecting(self) -> Iterator[None]:
        """Around the preparation of a request (decoding its images...) that will be submitted:
        a batch about to start waits for it, up to `max_wait` seconds."""
        with self._condition:
            self._expected += 1
        try:
            yield
        finally:
            with self._condition:
                self._expected -= 1
                self._condition.notify()

    def _next_batch(self, stop: Callable[[], bool]) -> list[GenerationRequest] | None:
        """Wait for a request; give others `batch_window` seconds to join, and the requests still
        being prepared up to `max_wait`; take the oldest request with those of its sampling
        settings (the rest wait for the next batch). None once `stop()` is true."""
        with self._condition:
            while not self._waiting:
                if stop():
                    return None
                self._condition.wait(0.5)
            start = time.monotonic()
            while len(self._waiting) < self.max_batch_size:
                now = time.monotonic()
                limit = start + (self.max_wait if self._expected else self.batch_window)
                if now >= limit:
                    break
                self._condition.wait(limit - now)
            key = self._waiting[0].sampling_key
            batch = [r for r in self._waiting if r.sampling_key == key][: self.max_batch_size]
            self._waiting = [r for r in self._waiting if not any(r is b for b in batch)]
        for request in batch:
            if request.cancelled.is_set():
                request.sink(Done("", "cancelled", 0))
        return [request for request in batch if not request.cancelled.is_set()]

    def generate(self, batch: list[GenerationRequest]) -> None:
        """Generate `batch` (same sampling settings) as one left-padded batch, streaming every row."""
        model = self.model
        rows = [_Row(request) for request in batch]
        streamer = _StreamRows(rows, self.tokenizer, self.eos_ids)
        input_ids, attention_mask = pad_token_ids([r.input_ids for r in batch], self.pad_id, side="left")
        pictures = [image for r in batch for image in r.images]
        # [N, 3, H, W] (or a list): preprocessing runs here, in the thread that runs the model
        images = to_model_inputs(process_images(pictures, self.image_processor, model.config), model) if pictures else None
        do_sample, temperature, top_p, repetition_penalty = batch[0].sampling_key
        self.batch_sizes.append(len(batch))
        start = time.perf_counter()
        with torch.inference_mode():
            model.generate(
                input_ids.to(model.device),
                images=images,
                attention_mask=attention_mask.to(model.device),
                max_new_tokens=max(r.max_new_tokens for r in batch),
                repetition_penalty=repetition_penalty,
                use_cache=True,
                stopping_criteria=[streamer],
                pad_token_id=self.pad_id,
                **generation_kwargs(temperature if do_sample else 0.0, top_p if do_sample else None),
            )
        streamer.finish_all()
        tokens = sum(len(row.tokens) for row in rows)
        self.log.info(f"generated a batch of {len(batch)}: {tokens} tokens in {time.perf_counter() - start:.2f} s")
