"""The original's `bunny.util.mm_utils`: the image and token helpers scripts written against it
import from here. They live in `bunny.util.images` (reading and preprocessing images) and
`bunny.util.tokens` (image-aware tokenisation, padding, model names); `KeywordsStoppingCriteria`
in `bunny.inference.stops`.
"""

from __future__ import annotations

from typing import Any

from bunny.util.images import (
    MAX_IMAGE_BYTES,
    MAX_PADDED_SIDE,
    ImageLoadError,
    expand2square,
    fit_for_padding,
    load_image,
    load_image_from_base64,
    load_image_from_bytes,
    pad_to_square,
    process_images,
)
from bunny.util.tokens import get_model_name_from_path, pad_token_ids, tokenizer_image_token


__all__ = [
    "MAX_IMAGE_BYTES", "MAX_PADDED_SIDE", "ImageLoadError", "expand2square",
    "fit_for_padding", "get_model_name_from_path", "load_image", "load_image_from_base64", "load_image_from_bytes",
    "pad_to_square", "pad_token_ids", "process_images", "tokenizer_image_token",
]


def __getattr__(name: str) -> Any:
    # Imported on first use: inference sits above this package.
    if name == "KeywordsStoppingCriteria":
        from bunny.inference.stops import KeywordsStoppingCriteria

        return KeywordsStoppingCriteria
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
