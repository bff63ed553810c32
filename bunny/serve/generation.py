"""Prompts for one image and batched answers to them: the helpers the CLI chat shares with
`script/batch_inference.py` and the evaluation answer generators, and the one batched loop.

Prompts are left-padded into a batch with an attention mask, so with greedy decoding every row
gets exactly the tokens it gets alone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from PIL import Image

from bunny.constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX
from bunny.conversation import Conversation, get_conv_template
from bunny.model.backbones import get_backbone
from bunny.util.mm_utils import KeywordsStoppingCriteria, pad_token_ids, process_images, tokenizer_image_token

logger = logging.getLogger(__name__)


def resolve_conv_mode(model_type: str, conv_mode: str | None = None) -> str:
    """The template to chat with: `conv_mode` if given, else the one `model_type` was trained with."""
    inferred = get_backbone(model_type).template
    if conv_mode is None:
        return inferred
    if conv_mode != inferred:
        logger.warning(
            "the conversation mode inferred from model type %s is %s, while --conv-mode is %s; using %s",
            model_type,
            inferred,
            conv_mode,
            conv_mode,
        )
    return conv_mode


def add_user_turn(conv: Conversation, text: str) -> None:
    """Append a user turn and the empty reply slot; the first turn carries the image, on its own line first."""
    if not conv.messages:
        text = DEFAULT_IMAGE_TOKEN + "\n" + text
    conv.append_message(conv.roles[0], text)
    conv.append_message(conv.roles[1], None)


def image_prompt(conv_mode: str, question: str) -> str:
    """The generation prompt for one question about one image (a single-turn chat)."""
    conv = get_conv_template(conv_mode)
    add_user_turn(conv, question)
    return conv.get_prompt()


def clean_reply(text: str, stop_str: str | None) -> str:
    """Generated text -> the reply to show and keep: cut at the stop string, surrounding whitespace stripped.

    `text` should be decoded with `skip_special_tokens=True`; the stop string is cut here as well
    because it is not a special token for every template/tokenizer pair.
    """
    if stop_str and stop_str in text:
        text = text[: text.index(stop_str)]
    return text.strip()


def stop_prefix_len(text: str, stops: Sequence[str]) -> int:
    """Length of the longest end of `text` that could still grow into one of `stops`."""
    longest = 0
    for stop in stops:
        for size in range(min(len(text), len(stop) - 1), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest


def to_model_inputs(images: torch.Tensor | list[torch.Tensor], model: Any) -> torch.Tensor | list[torch.Tensor]:
    """Processed images on the model's device and in its dtype (a list when the shapes differ)."""
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
    """One reply per (question, image) pair, generated as one batch."""
    if len(questions) != len(images):
        raise ValueError(f"got {len(questions)} questions and {len(images)} images; each question needs its image")
    stop_str = get_conv_template(conv_mode).stop_str
    prompts = [image_prompt(conv_mode, question) for question in questions]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    # [B, L] with IMAGE_TOKEN_INDEX in each row where its image goes
    input_ids, attention_mask = pad_token_ids(
        [tokenizer_image_token(prompt, tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt") for prompt in prompts],
        pad_id,
        side="left",
    )
    input_ids, attention_mask = input_ids.to(model.device), attention_mask.to(model.device)
    # [B, 3, H, W], one image per row
    pixel_values = to_model_inputs(process_images(images, image_processor, model.config), model)
    stopping_criteria = [KeywordsStoppingCriteria([stop_str], tokenizer, input_ids)] if stop_str else None
    with torch.inference_mode():
        output_ids = model.generate(
            input_ids,
            images=pixel_values,
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            repetition_penalty=repetition_penalty,
            use_cache=True,
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
