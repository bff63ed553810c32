"""Replies from `model.generate`: the one tokenise -> generate -> decode -> clean path behind the
terminal chat, `script/batch_inference.py` and the evaluation answer generators.

Prompts are left-padded into a batch with an attention mask, so with greedy decoding every row
gets exactly the tokens it gets alone. (The model worker streams many requests at once through
the continuous-batching engine, `bunny.inference.engine`, which gives the same greedy tokens.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from PIL import Image

from bunny.constants import IMAGE_TOKEN_INDEX
from bunny.conversation import get_conv_template
from bunny.inference.prompts import image_prompt
from bunny.inference.stops import KeywordsStoppingCriteria, clean_reply
from bunny.util.images import process_images
from bunny.util.tokens import pad_token_ids, tokenizer_image_token


def to_model_inputs(images: torch.Tensor | list[torch.Tensor] | None, model: Any) -> torch.Tensor | list[torch.Tensor] | None:
    """Processed images on the model's device and in its dtype (a list when the shapes differ)."""
    if images is None:
        return None
    if isinstance(images, list):
        return [image.to(model.device, dtype=model.dtype) for image in images]
    return images.to(model.device, dtype=model.dtype)


@dataclass
class Reply:
    text: str  # decoded without special tokens, cut at the stop string, stripped
    token_ids: list[int]  # new tokens, without the padding of rows that finished early


def _strip_trailing(ids: list[int], pad_id: int | None) -> list[int]:
    end = len(ids)
    while pad_id is not None and end > 0 and ids[end - 1] == pad_id:
        end -= 1
    return ids[:end]


def generation_kwargs(temperature: float, top_p: float | None = None, num_beams: int = 1) -> dict[str, Any]:
    """Greedy at temperature 0 (no sampling parameter passed, so no warning); sampling otherwise."""
    kwargs: dict[str, Any] = {"do_sample": temperature > 0, "num_beams": num_beams}
    if temperature > 0:
        kwargs["temperature"] = temperature
        if top_p is not None:
            kwargs["top_p"] = top_p
    return kwargs


def generate_replies(
    prompts: Sequence[str],
    pixel_values: torch.Tensor | list[torch.Tensor] | None,
    tokenizer: Any,
    model: Any,
    stop_str: str | None,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float | None = None,
    num_beams: int = 1,
    repetition_penalty: float = 1.0,
    streamer: Any = None,
) -> list[Reply]:
    """One reply per prompt (with `<image>` where its images go), generated as one batch.

    `pixel_values` are the prompts' images in order, as `process_images` gives them (None for
    prompts without images); `streamer`
    (one prompt only) receives the new tokens as `generate` makes them.
    """
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    # [B, L] with IMAGE_TOKEN_INDEX in each row where its images go
    input_ids, attention_mask = pad_token_ids(
        [tokenizer_image_token(prompt, tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt") for prompt in prompts],
        pad_id,
        side="left",
    )
    input_ids, attention_mask = input_ids.to(model.device), attention_mask.to(model.device)
    stopping_criteria = [KeywordsStoppingCriteria([stop_str], tokenizer, input_ids)] if stop_str else None
    with torch.inference_mode():
        output_ids = model.generate(
            input_ids,
            images=to_model_inputs(pixel_values, model),
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            repetition_penalty=repetition_penalty,
            use_cache=True,
            streamer=streamer,
            stopping_criteria=stopping_criteria,
            **generation_kwargs(temperature, top_p, num_beams),
        )
    # generate returns the (padded) prompts followed by the new tokens; rows that finished early
    # are filled with the generation pad id
    replies = []
    for ids in output_ids[:, input_ids.shape[1] :].tolist():
        ids = _strip_trailing(ids, model.generation_config.pad_token_id)
        replies.append(Reply(clean_reply(tokenizer.decode(ids, skip_special_tokens=True), stop_str), ids))
    return replies


def answer_batch(
    questions: Sequence[str],
    images: Sequence[Image.Image],
    tokenizer: Any,
    model: Any,
    image_processor: Any,
    conv_mode: str,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float | None = None,
    num_beams: int = 1,
    repetition_penalty: float = 1.0,
) -> list[Reply]:
    """One reply per (question, image) pair, each a single-turn chat in `conv_mode`, as one batch."""
    if len(questions) != len(images):
        raise ValueError(f"got {len(questions)} questions and {len(images)} images; each question needs its image")
    return generate_replies(
        [image_prompt(conv_mode, question) for question in questions],
        process_images(images, image_processor, model.config),  # [B, 3, H, W], one image per row
        tokenizer,
        model,
        get_conv_template(conv_mode).stop_str,
        max_new_tokens,
        temperature,
        top_p,
        num_beams,
        repetition_penalty,
    )
