"""The generation engine: continuously batched, streamed generation (the model worker's). The
requests in flight are decoded together, one token per step, and each streams its own text as its
tokens come.

A request is a prompt (token ids with `IMAGE_TOKEN_INDEX` where its images go), its images and
its generation settings. `BatchGenerator` runs one loop that keeps a batch of rows decoding: between
two steps it prefills the requests that arrived (as one left-padded group) and joins them to the
running rows, and it lets the rows that finished go. When nothing is running, the first group waits
`batch_window` seconds for more requests, and up to `max_wait` for those still being prepared
(`expecting`), so that requests that arrive together are prefilled together. Rows are independent:
each has its own sampling settings, stops on its own stop strings, its own `max_new_tokens`, the
end-of-sequence token, or when its client goes away (`cancel`), and with greedy decoding each gets
the tokens it would get alone (rows are left-padded with masked positions, as in the core's
batched generation).

Rows join a running batch only when the model's KV cache can be regrouped (every layer is
full-attention, see `BlockGrowingCache.regroup`); for a model with sliding-window layers (phi-3) a
batch runs until its last row finishes before the next group starts.

Events a request receives, in order: any number of `Chunk` (the reply so far), then one `Done`
or one `Failed`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch
from transformers import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from bunny.constants import IMAGE_TOKEN_INDEX
from bunny.model.kv_cache import BlockGrowingCache
from bunny.inference.generate import to_model_inputs
from bunny.inference.stops import visible_text
from bunny.util.images import process_images
from bunny.util.tokens import pad_token_ids

logger = logging.getLogger(__name__)

GREEDY_BELOW = 0.001  # as in the original worker: a temperature at or below this decodes greedily
DEFAULT_TOP_K = 50  # what `generate` samples with when the model's generation config sets no top_k


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
    def sampling(self) -> bool:
        return self.temperature > GREEDY_BELOW

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


def logits_processors(request: GenerationRequest, generation_config: Any) -> LogitsProcessorList:
    """What `generate` applies to a row's next-token scores for the request's settings: the
    repetition penalty, then (when sampling) temperature, top-k and top-p, in that order."""
    processors = LogitsProcessorList()
    if request.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(request.repetition_penalty))
    if request.sampling:
        if request.temperature != 1.0:
            processors.append(TemperatureLogitsWarper(request.temperature))
        top_k = getattr(generation_config, "top_k", None)
        top_k = DEFAULT_TOP_K if top_k is None else top_k
        if top_k:
            processors.append(TopKLogitsWarper(top_k))
        if request.top_p < 1.0:
            processors.append(TopPLogitsWarper(request.top_p))
    return processors


class _Row:
    """One request's decoding state."""

    def __init__(self, request: GenerationRequest, generation_config: Any) -> None:
        self.request = request
        self.processors = logits_processors(request, generation_config)
        # The ids the repetition penalty sees, as in `generate`: the prompt (0 where an image goes)
        # followed by the new tokens.
        self.history = request.input_ids.masked_fill(request.input_ids == IMAGE_TOKEN_INDEX, 0).tolist()
        self.tokens: list[int] = []
        self.sent = ""
        self.done = False

    def choose(self, scores: torch.Tensor) -> int | None:
        """The next token from this row's float32 scores `[V]`, or None when plain greedy decoding
        (the argmax, taken for all such rows at once) applies."""
        if not self.processors and not self.request.sampling:
            return None
        scores = self.processors(torch.tensor([self.history], device=scores.device), scores[None])[0]
        if self.request.sampling:
            return int(torch.multinomial(scores.softmax(dim=-1), num_samples=1))
        return int(scores.argmax())

    def advance(self, token: int, tokenizer: Any, eos_ids: set[int]) -> None:
        """Take the new `token`: stream the text it completes, or finish the row."""
        request = self.request
        self.tokens.append(token)
        self.history.append(token)
        if token in eos_ids:
            # The whole reply, as `generate` + `clean_reply` leave it: what was streamed so far holds
            # back an incomplete character and an end that could still have grown into a stop string.
            text = tokenizer.decode(self.tokens, skip_special_tokens=True)
            self.finish(visible_text(text, request.stop, final=True)[0], "stop")
            return
        text = tokenizer.decode(self.tokens, skip_special_tokens=True)
        shown, stopped = visible_text(text, request.stop)
        if stopped:
            self.finish(shown, "stop")
        elif len(self.tokens) >= request.max_new_tokens:
            self.finish(text, "length")
        elif request.cancelled.is_set():
            self.finish(text, "cancelled")
        else:
            if shown != self.sent and shown.startswith(self.sent):
                self.sent = shown
                request.sink(Chunk(shown))

    def finish(self, text: str, reason: str) -> None:
        self.done = True
        self.request.sink(Done(text, reason, len(self.tokens)))


@dataclass
class _Batch:
    """The rows decoding together and their model state, left-padded to a common width W."""

    rows: list[_Row]
    cache: BlockGrowingCache  # W positions per row
    mask: torch.Tensor  # [B, W] 1 on each row's positions, 0 on its left padding
    positions: torch.Tensor  # [B] position id of each row's next input token
    tokens: torch.Tensor  # [B] each row's newest token: the next step's input


class BatchGenerator:
    """One generation loop in front of `model`, decoding every request in flight together."""

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
        self.prefill_sizes: deque[int] = deque(maxlen=1000)  # requests in each of the latest groups prefilled
        self.peak_rows = 0  # the most rows decoded in one step so far
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

    @contextmanager
    def expecting(self) -> Iterator[None]:
        """Around the preparation of a request (decoding its images...) that will be submitted:
        a group about to be prefilled while nothing runs waits for it, up to `max_wait` seconds."""
        with self._condition:
            self._expected += 1
        try:
            yield
        finally:
            with self._condition:
                self._expected -= 1
                self._condition.notify()

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
        batch: _Batch | None = None
        while True:
            arrivals = self._next_arrivals(batch, stop)
            if arrivals is None:
                return
            if arrivals:
                batch = self._admit(batch, arrivals)
            if batch is not None:
                batch = self._decode_step(batch)

    # -- scheduling ----------------------------------------------------------------------------------
    def _next_arrivals(self, batch: _Batch | None, stop: Callable[[], bool]) -> list[GenerationRequest] | None:
        """The waiting requests to prefill now (None once `stop()` is true while idle).

        While rows decode, whatever waits joins them at once, up to `max_batch_size` rows. When
        nothing runs, wait for a request, then give others `batch_window` seconds to join and
        those still being prepared up to `max_wait`."""
        with self._condition:
            if batch is not None:
                room = self.max_batch_size - len(batch.rows) if batch.cache.can_regroup else 0
            else:
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
                room = self.max_batch_size
            taken, self._waiting = self._waiting[:room], self._waiting[room:]
        for request in taken:
            if request.cancelled.is_set():
                request.sink(Done("", "cancelled", 0))
            elif request.max_new_tokens < 1:
                request.sink(Done("", "length", 0))
        return [r for r in taken if not r.cancelled.is_set() and r.max_new_tokens >= 1]

    def _admit(self, batch: _Batch | None, requests: list[GenerationRequest]) -> _Batch | None:
        """Prefill `requests` and join their rows to `batch`. A failure fails only these requests."""
        start = time.perf_counter()
        try:
            group = self._prefill(requests)
        except Exception as err:  # noqa: BLE001 - every request must hear of the failure
            self.log.exception(f"prefill failed for {len(requests)} request(s)")
            for request in requests:
                request.sink(Failed(f"{type(err).__name__}: {err}"))
            return batch
        if group is not None and batch is not None:
            cache = BlockGrowingCache.regroup(
                [(batch.cache, torch.arange(len(batch.rows)), 0), (group.cache, torch.arange(len(group.rows)), 0)]
            )
            width = cache.get_seq_length()
            batch = _Batch(
                rows=batch.rows + group.rows,
                cache=cache,
                mask=torch.cat([_pad_left(batch.mask, width), _pad_left(group.mask, width)]),
                positions=torch.cat([batch.positions, group.positions]),
                tokens=torch.cat([batch.tokens, group.tokens]),
            )
        else:
            batch = batch or group
        rows = len(batch.rows) if batch is not None else 0
        self.log.info(f"prefilled {len(requests)} request(s) in {time.perf_counter() - start:.2f} s; {rows} row(s) decoding")
        return batch

    # -- the model -----------------------------------------------------------------------------------
    def _prefill(self, requests: list[GenerationRequest]) -> _Batch | None:
        """One forward over the prompts of `requests` (left-padded, images spliced in), the first new
        token of each, and the batch of the rows that go on (None if all finished)."""
        model = self.model
        device = model.device
        input_ids, attention_mask = pad_token_ids([r.input_ids for r in requests], self.pad_id, side="left")
        pictures = [image for r in requests for image in r.images]
        # [N, 3, H, W] (or a list): preprocessing runs here, in the thread that runs the model
        images = to_model_inputs(process_images(pictures, self.image_processor, model.config), model) if pictures else None
        with torch.inference_mode():
            merged = model.prepare_multimodal_inputs(
                input_ids.to(device), images, attention_mask.to(device), padding_side="left", text_only_slots=False
            )
            cache = BlockGrowingCache(config=model.config)
            mask = merged.attention_mask.long()
            output = model(
                inputs_embeds=merged.inputs_embeds, attention_mask=mask, position_ids=merged.position_ids,
                past_key_values=cache, use_cache=True, logits_to_keep=1,
            )
        rows = [_Row(request, model.generation_config) for request in requests]
        tokens = self._choose_and_advance(rows, output.logits[:, -1])
        self.prefill_sizes.append(len(requests))
        batch = _Batch(rows, cache, mask, positions=merged.lengths.clone(), tokens=tokens)
        return self._without_finished(batch)

    def _decode_step(self, batch: _Batch) -> _Batch | None:
        """Feed every row its newest token; stream and finish rows; None when none is left."""
        try:
            self.peak_rows = max(self.peak_rows, len(batch.rows))
            mask = torch.cat([batch.mask, batch.mask.new_ones(len(batch.rows), 1)], dim=1)  # [B, W + 1]
            with torch.inference_mode():
                output = self.model(
                    input_ids=batch.tokens[:, None], attention_mask=mask, position_ids=batch.positions[:, None],
                    past_key_values=batch.cache, use_cache=True,
                )
            batch.mask, batch.positions = mask, batch.positions + 1
            batch.tokens = self._choose_and_advance(batch.rows, output.logits[:, -1])
        except Exception as err:  # noqa: BLE001 - every request must hear of the failure
            self.log.exception(f"generation failed for {len(batch.rows)} row(s)")
            for row in batch.rows:
                if not row.done:
                    row.done = True
                    row.request.sink(Failed(f"{type(err).__name__}: {err}"))
            return None
        return self._without_finished(batch)

    def _choose_and_advance(self, rows: list[_Row], logits: torch.Tensor) -> torch.Tensor:
        """The next token of every row from the last position's logits `[B, V]`, as `generate`
        picks it (float32 scores, the row's processors); each row takes its token. Returns `[B]`."""
        scores = logits.float()
        tokens = scores.argmax(dim=-1)  # [B]
        for i, row in enumerate(rows):
            chosen = None if row.done else row.choose(scores[i])
            if chosen is not None:
                tokens[i] = chosen
        for row, token in zip(rows, tokens.tolist()):
            if not row.done:  # finished rows of a batch that can't let them go are decoded on, unheard
                row.advance(token, self.tokenizer, self.eos_ids)
        return tokens

    def _without_finished(self, batch: _Batch) -> _Batch | None:
        """`batch` less its finished rows and the padding columns no row needs any more."""
        kept = [i for i, row in enumerate(batch.rows) if not row.done]
        if not kept:
            return None
        if len(kept) == len(batch.rows) or not batch.cache.can_regroup:
            return batch  # (a cache that can't be regrouped keeps its finished rows until the batch ends)
        index = torch.tensor(kept, device=batch.mask.device)
        mask = batch.mask[index]
        leading = int(mask.any(dim=0).long().argmax())  # first column some row still uses
        cache = BlockGrowingCache.regroup([(batch.cache, index, leading)])
        return _Batch(
            rows=[batch.rows[i] for i in kept],
            cache=cache,
            mask=mask[:, leading:],
            positions=batch.positions[index],
            tokens=batch.tokens[index],
        )


def _pad_left(mask: torch.Tensor, width: int) -> torch.Tensor:
    """`[B, w]` -> `[B, width]` with zeros on the left."""
    return torch.cat([mask.new_zeros(mask.shape[0], width - mask.shape[1]), mask], dim=1)
