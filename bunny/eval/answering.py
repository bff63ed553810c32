"""Questions -> answer texts: the one generation path behind every answer generator.

A generator turns its benchmark's records into `Prompt`s (the user text, the picture if any, and
how the picture is prepared) and gets one answer per prompt, in order, from `answer_prompts`.
Prompts go through the conversation template and `bunny.inference.generate_replies` in batches
of consecutive prompts alike in kind (with or without a picture, padded or not); rows are
left-padded with an attention mask, so greedy answers do not depend on the batch size.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch
from PIL import Image
from tqdm import tqdm

from bunny.conversation import conv_templates, get_conv_template
from bunny.inference.generate import generate_replies
from bunny.inference.options import check_model_arguments, load_model
from bunny.inference.prompts import chat_prompt, resolve_conv_mode
from bunny.model.backbones import MODEL_TYPES
from bunny.util.images import process_images
from bunny.util.tokens import get_model_name_from_path


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


def answer_batch(batch: Sequence[Prompt], loaded: LoadedModel, settings: Settings) -> list[str]:
    with_images = batch[0].image is not None
    texts = [chat_prompt(settings.conv_mode, prompt.text, image=with_images) for prompt in batch]
    images = pixel_values([prompt.image() for prompt in batch], loaded, batch[0].pad) if with_images else None
    replies = generate_replies(
        texts,
        images,
        loaded.tokenizer,
        loaded.model,
        get_conv_template(settings.conv_mode).stop_str if settings.trim_stop else None,
        settings.max_new_tokens,
        settings.temperature,
        settings.top_p,
        settings.num_beams,
    )
    return [reply.text for reply in replies]


def answer_prompts(
    prompts: Sequence[Prompt], loaded: LoadedModel, settings: Settings, batch_size: int = 1, progress: bool = True
) -> Iterator[str]:
    """One answer per prompt, in order (lazily: a batch is answered when its first answer is asked for)."""
    if batch_size < 1:
        raise ValueError(f"the batch size must be at least 1, not {batch_size}")
    with tqdm(total=len(prompts), desc="answering", unit="question", disable=not progress) as bar:
        for batch in batches(prompts, batch_size):
            answers = answer_batch(batch, loaded, settings)
            bar.update(len(batch))
            yield from answers


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


def add_question_flags(parser: argparse.ArgumentParser, question_help: str = "questions, one JSON object per line") -> None:
    """The original generators' question-file flags and chunking."""
    parser.add_argument("--image-folder", type=str, default="", help="image paths in the question file are relative to this")
    parser.add_argument("--question-file", type=str, required=True, help=question_help)
    parser.add_argument("--answers-file", type=str, required=True, help="answers are written here, one JSON object per line")
    parser.add_argument("--num-chunks", type=int, default=1, help="split the questions into this many consecutive chunks")
    parser.add_argument("--chunk-idx", type=int, default=0, help="answer only this chunk (0-based)")


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
