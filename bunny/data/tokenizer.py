"""The tokenizer as training sets it up: right padding, a pad token, the model type's eos.

Shared by `bunny/train/train.py` and `python -m bunny.data.inspect`, so that what the inspector
shows is what training sees.
"""

from __future__ import annotations

from typing import Any

from bunny.model.backbones import get_backbone
from bunny.model.builder import load_tokenizer


def load_training_tokenizer(
    model_name_or_path: str, model_type: str | None, model_max_length: int, cache_dir: str | None = None
) -> Any:
    """The tokenizer of `model_name_or_path` set up for training; `model_type` None applies no
    model-specific quirk (only pad = unk)."""
    backbone = get_backbone(model_type) if model_type is not None else None  # unknown: error naming valid ones
    tokenizer = load_tokenizer(
        model_name_or_path, backbone, cache_dir=cache_dir, model_max_length=model_max_length, padding_side="right"
    )
    if tokenizer.pad_token is None and tokenizer.unk_token is not None:
        tokenizer.pad_token = tokenizer.unk_token
    if backbone is not None and backbone.eos_token is not None:
        # llama-3: eos is <|end_of_text|> (id 128001 in the real vocabulary), which also pads.
        if tokenizer.convert_tokens_to_ids(backbone.eos_token) in (None, tokenizer.unk_token_id):
            raise ValueError(f"tokenizer {model_name_or_path} has no {backbone.eos_token!r} token, the eos of {model_type}")
        tokenizer.eos_token = backbone.eos_token
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.pad_token is None:
        raise ValueError(
            f"tokenizer {model_name_or_path} has neither a pad nor an unk token; training pads with one of them"
        )
    return tokenizer
