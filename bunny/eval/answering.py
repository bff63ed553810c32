"""Questions -> answer texts: the one generation path behind every answer generator.

A generator turns its benchmark's records into `Prompt`s (the user text, the picture if any, and
how the picture is prepared) and gets one answer per prompt, in order, from `answer_prompts`.
With `--batch-size` above 1 (and one beam) the prompts stream through the continuous-batching
engine, `bunny.inference.engine.BatchGenerator`: up to that many rows decode together, and a
finished row's place goes to the next prompt at the next step, so a long answer holds up no one.
With batch size 1, or beam search, consecutive prompts alike in kind (with or without a picture,
padded or not) go through `bunny.inference.generate_replies` as static batches. Rows are
left-padded with an attention mask either way, so greedy answers do not depend on the batch size
(tests/test_eval_batching.py).
"""

from __future__ import annotations

import argparse
import logging
import queue
import threading
from contextlib import closing
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch
from PIL import Image
from tqdm import tqdm

from bunny.constants import IMAGE_TOKEN_INDEX
from bunny.conversation import conv_templates, get_conv_template
from bunny.inference.engine import GREEDY_BELOW, BatchGenerator, Done, Event, Failed, GenerationRequest
from bunny.inference.generate import generate_replies
from bunny.inference.options import check_model_arguments, load_model
from bunny.inference.prompts import chat_prompt, resolve_conv_mode
from bunny.model.backbones import MODEL_TYPES
from bunny.util.images import process_images
from bunny.util.tokens import get_model_name_from_path, tokenizer_image_token

# The engine logs every prefill at INFO; an evaluation shows a progress bar instead.
_ENGINE_LOG = logging.getLogger("bunny.eval.engine")
_ENGINE_LOG.setLevel(logging.WARNING)


@dataclass(frozen=True)
class Settings:
    """How every question of a run is answered."""

    conv_mode: str
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float | None = None
    num_beams: int = 1
    # Cut the template's stop string from the answer and stop there (the original's model_vqa,
    # mmbench and science generators did; its loader, MMMU and CMMMU generators did not).
    trim_stop: bool = True


@dataclass
class Prompt:
    text: str  # the user's message, without the image marker
    image: Callable[[], Image.Image] | None = None  # loads the picture; None: a text-only question
    pad: bool = True  # False: the processor's own resize, as the original's ScienceQA generator


@dataclass
class LoadedModel:
    tokenizer: Any
    model: Any
    image_processor: Any


def pixel_values(images: Sequence[Image.Image], loaded: LoadedModel, pad: bool) -> torch.Tensor | list[torch.Tensor]:
    """`process_images` (the model's aspect-ratio mode), or with `pad=False` the processor alone on each
    RGB picture."""
    if pad:
        return process_images(images, loaded.image_processor, loaded.model.config)
    rows = [
        loaded.image_processor.preprocess(image.convert("RGB"), return_tensors="pt")["pixel_values"][0]
        for image in images
    ]
    return torch.stack(rows) if all(row.shape == rows[0].shape for row in rows) else rows


def batches(prompts: Sequence[Prompt], batch_size: int) -> Iterator[list[Prompt]]:
    """Consecutive runs of at most `batch_size` prompts of one kind."""
    batch: list[Prompt] = []
    for prompt in prompts:
        kind = (prompt.image is None, prompt.pad)
        if batch and (len(batch) == batch_size or (batch[0].image is None, batch[0].pad) != kind):
            yield batch
            batch = []
        batch.append(prompt)
    if batch:
        yield batch


def _stop_strings(settings: Settings) -> tuple[str, ...]:
    """Where an answer ends besides the end-of-sequence token: the template's stop string, or nowhere."""
    return (get_conv_template(settings.conv_mode).stop_str,) if settings.trim_stop else ()


def answer_batch(batch: Sequence[Prompt], loaded: LoadedModel, settings: Settings) -> list[str]:
    """One static batch through `generate` (it runs until its longest answer ends)."""
    with_images = batch[0].image is not None
    texts = [chat_prompt(settings.conv_mode, prompt.text, image=with_images) for prompt in batch]
    images = pixel_values([prompt.image() for prompt in batch], loaded, batch[0].pad) if with_images else None
    stops = _stop_strings(settings)
    replies = generate_replies(
        texts,
        images,
        loaded.tokenizer,
        loaded.model,
        stops[0] if stops else None,
        settings.max_new_tokens,
        settings.temperature,
        settings.top_p,
        settings.num_beams,
    )
    return [reply.text for reply in replies]


def answer_prompts(
    prompts: Sequence[Prompt], loaded: LoadedModel, settings: Settings, batch_size: int = 1, progress: bool = True
) -> Iterator[str]:
    """One answer per prompt, in order, each yielded as soon as it and every answer before it are done.

    With `batch_size` > 1 and one beam the prompts stream through the continuous-batching engine:
    up to `batch_size` rows decode together and a finished row's place goes to the next prompt at
    the next step. Otherwise (batch size 1, beam search) consecutive prompts alike in kind run as
    static batches through `generate`, each answered when its first answer is asked for. Greedy
    answers are the same either way and at any batch size.
    """
    if batch_size < 1:
        raise ValueError(f"the batch size must be at least 1, not {batch_size}")
    if _continuous(settings, batch_size):
        answers = _EngineRun(prompts, loaded, settings, batch_size).answers()
    else:
        answers = (answer for batch in batches(prompts, batch_size) for answer in answer_batch(batch, loaded, settings))
    with closing(answers), tqdm(total=len(prompts), desc="answering", unit="question", disable=not progress) as bar:
        for answer in answers:
            bar.update(1)
            yield answer


def _continuous(settings: Settings, batch_size: int) -> bool:
    """Whether the engine answers: it pays off from two rows up, decodes one beam, and samples exactly
    when `generate` does (it decodes greedily at temperatures up to `GREEDY_BELOW`, `generate` above 0)."""
    greedy_alike = settings.temperature <= 0 or settings.temperature > GREEDY_BELOW
    return batch_size > 1 and settings.num_beams == 1 and greedy_alike


@dataclass(eq=False)
class _Picture:
    """A prompt's picture as the engine carries it: `process_images` takes this square RGB stand-in as
    it is (no conversion, no padding) and hands it to `_PictureProcessor`, which loads and prepares
    the real picture as `pixel_values` does, padded or not as the prompt says. So pictures are read
    in the engine's thread, when their row is prefilled."""

    prompt: Prompt
    mode: str = "RGB"
    size: tuple[int, int] = (1, 1)


class _PictureProcessor:
    """The engine's image processor: `_Picture`s -> the pixel values `pixel_values` makes of them."""

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded
        self.image_mean = loaded.image_processor.image_mean  # read by `process_images` in pad mode
        self.errors: list[BaseException] = []  # what reading a picture raised, first first

    def preprocess(self, picture: _Picture, return_tensors: str = "pt") -> dict[str, torch.Tensor]:
        return {"pixel_values": self._pixels(picture)[None]}  # [1, 3, H, W]

    def __call__(self, pictures: Sequence[_Picture], return_tensors: str = "pt") -> dict[str, Any]:
        rows = [self._pixels(picture) for picture in pictures]
        return {"pixel_values": torch.stack(rows) if all(row.shape == rows[0].shape for row in rows) else rows}

    def _pixels(self, picture: _Picture) -> torch.Tensor:
        if not isinstance(picture, _Picture):
            raise TypeError(
                f"the eval engine's image processor got a {type(picture).__name__}, not the stand-in it made "
                "(bunny.util.images.process_images no longer passes square RGB pictures through unchanged?)"
            )
        try:
            return pixel_values([picture.prompt.image()], self.loaded, picture.prompt.pad)[0]  # [3, H, W]
        except Exception as err:
            self.errors.append(err)
            raise


class _EngineRun:
    """One pass of prompts through a `BatchGenerator` that runs in its own thread.

    Rows finish in any order; their events come back through a queue and are yielded in prompt
    order. Each finished row submits the next prompt from inside the engine's loop (its sink is
    called there), so the new row joins the running batch at the very next step. The engine's
    thread does all the tensor work, pictures included; this thread only waits for answers.
    """

    def __init__(self, prompts: Sequence[Prompt], loaded: LoadedModel, settings: Settings, batch_size: int) -> None:
        self.prompts, self.loaded, self.settings = prompts, loaded, settings
        self.stops = _stop_strings(settings)
        self.pictures = _PictureProcessor(loaded) if loaded.image_processor is not None else None
        self.engine = BatchGenerator(
            loaded.model, loaded.tokenizer, self.pictures, max_batch_size=batch_size, batch_window=0.0, max_wait=0.0,
            background=False, log=_ENGINE_LOG,
        )
        self.events: queue.SimpleQueue[tuple[int, Event | BaseException | None]] = queue.SimpleQueue()
        self.lock = threading.Lock()
        self.in_flight: dict[int, GenerationRequest] = {}
        self.submitted = 0
        self.closed = False  # no more submissions: every prompt is in, a row failed, or the reader left

    def answers(self) -> Iterator[str]:
        """The answers in prompt order; an unanswerable prompt raises what went wrong."""
        if not self.prompts:
            return
        for _ in range(min(self.engine.max_batch_size, len(self.prompts))):
            self._submit_next()
        thread = threading.Thread(target=self._run, name="eval-batch-generator", daemon=True)
        thread.start()
        finished: dict[int, Event] = {}
        try:
            for index in range(len(self.prompts)):
                while index not in finished:
                    where, event = self.events.get()
                    if not isinstance(event, (Done, Failed)):
                        raise RuntimeError(
                            f"the generation engine stopped before answering question {index + 1}"
                        ) from event
                    finished[where] = event
                event = finished.pop(index)
                if not isinstance(event, Done) or event.finish_reason == "cancelled":
                    raise self._failure(index, event)
                yield event.text.strip()  # as `clean_reply` leaves a static batch's answers
        finally:
            self._close()
            thread.join()

    def _run(self) -> None:
        try:
            self.engine.run_forever(stop=lambda: self.closed)
        except BaseException as err:  # noqa: BLE001 - the reader must hear of it, not wait forever
            _ENGINE_LOG.exception("the evaluation's generation loop failed")
            self.events.put((-1, err))
        else:
            self.events.put((-1, None))

    def _submit_next(self) -> None:
        """Queue the next prompt (called with the lock held, or before the engine's thread starts)."""
        index = self.submitted
        prompt = self.prompts[index]
        text = chat_prompt(self.settings.conv_mode, prompt.text, image=prompt.image is not None)
        request = GenerationRequest(
            input_ids=tokenizer_image_token(text, self.loaded.tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt"),
            images=[] if prompt.image is None else [_Picture(prompt)],
            max_new_tokens=self.settings.max_new_tokens,
            temperature=self.settings.temperature,
            top_p=1.0 if self.settings.top_p is None else self.settings.top_p,
            stop=self.stops,
            sink=lambda event: self._hear(index, event),
        )
        self.in_flight[index] = request
        self.submitted += 1
        self.closed = self.submitted == len(self.prompts)
        self.engine.submit(request)

    def _hear(self, index: int, event: Event) -> None:
        """A request's event, in the engine's thread: pass on the end of a row and put the next prompt in."""
        if not isinstance(event, (Done, Failed)):
            return
        self.events.put((index, event))
        with self.lock:
            self.in_flight.pop(index, None)
            if isinstance(event, Failed):
                self._cancel_all()
            elif not self.closed:
                try:
                    self._submit_next()
                except Exception as err:  # noqa: BLE001 - raised from inside the engine's loop otherwise
                    self.events.put((self.submitted, Failed(f"{type(err).__name__}: {err}")))
                    self._cancel_all()

    def _cancel_all(self) -> None:
        """No more prompts go in, and the rows in flight stop at their next step (lock held)."""
        self.closed = True
        for request in self.in_flight.values():
            request.cancel()

    def _close(self) -> None:
        with self.lock:
            self._cancel_all()

    def _failure(self, index: int, event: Event) -> BaseException:
        """What to raise for a prompt the engine did not answer: what reading a picture raised (as a
        static batch would raise it), else the engine's message naming the question."""
        if self.pictures is not None and self.pictures.errors:
            return self.pictures.errors[0]
        message = event.message if isinstance(event, Failed) else "cancelled after another question failed"
        return RuntimeError(f"question {index + 1} of {len(self.prompts)} was not answered: {message}")


def add_model_flags(parser: argparse.ArgumentParser, temperature: float | None = 0.2) -> None:
    """The original generators' model flags, plus `--device` and `--batch-size`
    (`temperature=None`: no `--temperature` flag, greedy as MMMU and CMMMU)."""
    parser.add_argument("--model-path", type=str, required=True, help="checkpoint directory or hub id")
    parser.add_argument("--model-base", type=str, default=None, help="base LLM, for LoRA or projector-only checkpoints")
    parser.add_argument(
        "--model-type", type=str, required=True, choices=MODEL_TYPES, help="the LLM back-end of the checkpoint"
    )
    parser.add_argument(
        "--conv-mode", type=str, default=None, choices=sorted(conv_templates),
        help="conversation template; default: the one the model type was trained with",
    )
    if temperature is not None:
        parser.add_argument("--temperature", type=float, default=temperature, help="sampling temperature; 0 decodes greedily")
    parser.add_argument("--batch-size", type=int, default=1, help="questions answered together (greedy answers do not change)")
    parser.add_argument(
        "--device", type=str, default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device (default: cuda when available, else cpu)",
    )
    parser.add_argument(
        "--progress-dir", type=str, default=None,
        help="where answers are kept as they are made, for resuming (default: beside the answers file)",
    )


def add_chunk_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num-chunks", type=int, default=1, help="split the questions into this many consecutive chunks")
    parser.add_argument("--chunk-idx", type=int, default=0, help="answer only this chunk (0-based)")


def add_question_flags(parser: argparse.ArgumentParser, question_help: str = "questions, one JSON object per line") -> None:
    """The original generators' question-file flags and chunking."""
    parser.add_argument("--image-folder", type=str, default="", help="image paths in the question file are relative to this")
    parser.add_argument("--question-file", type=str, required=True, help=question_help)
    parser.add_argument("--answers-file", type=str, required=True, help="answers are written here, one JSON object per line")
    add_chunk_flags(parser)


def add_sampling_flags(parser: argparse.ArgumentParser, max_new_tokens: int | None = None) -> None:
    """`--top_p`, `--num_beams` and (where the generator has it) `--max_new_tokens`, spelled as the original."""
    parser.add_argument("--top_p", type=float, default=None, help="nucleus sampling mass (with --temperature > 0)")
    parser.add_argument("--num_beams", type=int, default=1, help="beam search width")
    if max_new_tokens is not None:
        parser.add_argument("--max_new_tokens", type=int, default=max_new_tokens, help="most tokens per answer")


def check_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """`parser.error` for flags that can't work, before the model is loaded."""
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    if getattr(args, "num_chunks", 1) < 1 or not 0 <= getattr(args, "chunk_idx", 0) < getattr(args, "num_chunks", 1):
        parser.error(f"--chunk-idx {args.chunk_idx} must be in [0, --num-chunks {args.num_chunks})")
    check_model_arguments(parser, args)


def settings_from_flags(args: argparse.Namespace, max_new_tokens: int, trim_stop: bool) -> Settings:
    """Generation settings from the flags a generator has (greedy where it has no `--temperature`)."""
    return Settings(
        conv_mode=resolve_conv_mode(args.model_type, args.conv_mode),
        max_new_tokens=getattr(args, "max_new_tokens", None) or max_new_tokens,
        temperature=getattr(args, "temperature", 0.0),
        top_p=getattr(args, "top_p", None),
        num_beams=getattr(args, "num_beams", 1),
        trim_stop=trim_stop,
    )


def load(args: argparse.Namespace) -> tuple[LoadedModel, str]:
    """The model the flags name, and its name as answer files record it (`model_id`)."""
    tokenizer, model, image_processor, _ = load_model(args, "the benchmark's images")
    return LoadedModel(tokenizer, model, image_processor), get_model_name_from_path(args.model_path)
