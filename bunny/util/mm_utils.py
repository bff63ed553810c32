"""Image and token helpers used around the model: loading and preprocessing images, image-aware
tokenisation, model names, and per-sequence keyword stopping for `generate`.

The signatures are the original Bunny ones, so scripts written against it keep working.
"""

from __future__ import annotations

import base64
import binascii
import os
from io import BytesIO
from typing import Any, Sequence

import torch
from PIL import Image, UnidentifiedImageError
from transformers import StoppingCriteria

from bunny.constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX
from bunny.util.image_fetch import FetchError, FetchTooLarge, fetch_image


class ImageLoadError(ValueError):
    """An image could not be read; the message names the source and the cause."""


# Decompression bombs: PIL warns above this many pixels; we refuse instead.
Image.MAX_IMAGE_PIXELS = 89_478_485
MAX_IMAGE_BYTES = 50 * 1024 * 1024
# Padding to a square multiplies a thin picture's pixels (20000x1 -> 20000x20000, 1.2 GB): a picture
# longer than this and more than twice as long as wide is shrunk to it first (see `fit_for_padding`).
MAX_PADDED_SIDE = 4096


def _open_image(data: BytesIO, source: str, max_pixels: int | None = None) -> Image.Image:
    try:
        image = Image.open(data)
        # The header gives the size; refuse before decoding anything.
        if max_pixels is not None and image.width * image.height > max_pixels:
            raise ImageLoadError(
                f"{source} is too large to decode safely: {image.width}x{image.height} pixels, "
                f"more than the limit of {max_pixels}"
            )
        image.load()
    except ImageLoadError:
        raise
    except UnidentifiedImageError as err:
        raise ImageLoadError(f"{source} is not a readable image (unknown or corrupt image format)") from err
    except Image.DecompressionBombError as err:
        raise ImageLoadError(f"{source} is too large to decode safely: {err}") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageLoadError(f"{source} is not a readable image ({type(err).__name__}: {err})") from err
    return image


def load_image(
    image_file: str, timeout: float = 10.0, max_bytes: int = MAX_IMAGE_BYTES, max_pixels: int | None = None
) -> Image.Image:
    """Open a local path or an http(s) URL as an RGB image, with an error naming the file and the cause.

    A download must end within `timeout` seconds in all and is refused beyond `max_bytes`; any
    address may be fetched (the operator's own tools use this; servers use `image_fetch` with
    public addresses only). An image of more than `max_pixels` pixels is refused before it is decoded.
    """
    if image_file.startswith(("http://", "https://")):
        try:
            content = fetch_image(image_file, timeout, max_bytes, allow_private=True)
        except FetchTooLarge as err:
            raise ImageLoadError(str(err)) from None
        except FetchError as err:
            raise ImageLoadError(f"{err}: {err.detail}") from None
        return load_image_from_bytes(content, f"image {image_file}", max_pixels).convert("RGB")
    if os.path.isdir(image_file):
        raise ImageLoadError(f"image path is a directory, not an image file: {image_file}")
    if not os.path.isfile(image_file):
        raise ImageLoadError(f"image file not found: {image_file}")
    with open(image_file, "rb") as f:
        content = f.read()
    return _open_image(BytesIO(content), f"image file {image_file}", max_pixels).convert("RGB")


def load_image_from_bytes(data: bytes, source: str, max_pixels: int | None = None) -> Image.Image:
    """Decode an image file's bytes; errors name `source` and the cause."""
    return _open_image(BytesIO(data), source, max_pixels)


def load_image_from_base64(image: str, source: str = "base64 image", max_pixels: int | None = None) -> Image.Image:
    """Decode a base64 string (no data-URL prefix) into an image; errors name `source` and the cause."""
    try:
        data = base64.b64decode(image, validate=True)
    except (binascii.Error, ValueError) as err:
        raise ImageLoadError(f"{source} is not valid base64: {err}") from err
    return _open_image(BytesIO(data), source, max_pixels)


def expand2square(pil_img: Image.Image, background_color: tuple[int, ...]) -> Image.Image:
    """Paste `pil_img` centred on a square canvas of side max(w, h) filled with `background_color`."""
    width, height = pil_img.size
    if width == height:
        return pil_img
    side = max(width, height)
    result = Image.new(pil_img.mode, (side, side), background_color)
    result.paste(pil_img, ((side - width) // 2, (side - height) // 2))
    return result


def fit_for_padding(image: Image.Image, max_side: int = MAX_PADDED_SIDE) -> Image.Image:
    """`image`, or a copy shrunk (aspect kept) to `max_side` on its longer side when its square would
    be both larger than `max_side` and more than twice its own pixels (a side ratio above 2).

    So the square `expand2square` makes has at most max(max_side², 2 x the picture's) pixels, and
    every picture up to `max_side` or up to 2:1, photographs of any size included, is untouched.
    """
    width, height = image.size
    if max(width, height) <= max_side or max(width, height) <= 2 * min(width, height):
        return image
    scale = max_side / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return image.resize(size, Image.Resampling.BICUBIC, reducing_gap=2.0)


def pad_to_square(image: Image.Image, background_color: tuple[int, ...]) -> Image.Image:
    """`expand2square` of the picture `fit_for_padding` leaves: the square Bunny's `pad` mode sees."""
    return expand2square(fit_for_padding(image), background_color)


def process_images(images: Sequence[Image.Image], image_processor: Any, model_cfg: Any) -> torch.Tensor | list:
    """Images -> pixel values the vision tower expects: `[N, 3, H, W]`, or a list if shapes differ.

    With `image_aspect_ratio == "pad"` each image is first centred on a square of the processor's
    mean colour (`int(mean * 255)` per channel), as in training; a long thin picture is shrunk first
    (`fit_for_padding`), so that the square stays small whatever the side ratio.
    """
    images = [image if image.mode == "RGB" else image.convert("RGB") for image in images]
    if getattr(model_cfg, "image_aspect_ratio", None) == "pad":
        background = tuple(int(x * 255) for x in image_processor.image_mean)
        new_images = []
        for image in images:
            square = pad_to_square(image, background)
            new_images.append(image_processor.preprocess(square, return_tensors="pt")["pixel_values"][0])
        if all(x.shape == new_images[0].shape for x in new_images):
            return torch.stack(new_images, dim=0)
        return new_images
    return image_processor(images, return_tensors="pt")["pixel_values"]


def tokenizer_image_token(
    prompt: str,
    tokenizer: Any,
    image_token_index: int = IMAGE_TOKEN_INDEX,
    return_tensors: str | None = None,
) -> list[int] | torch.Tensor:
    """Tokenise `prompt` with each `<image>` replaced by one `image_token_index`.

    Every text chunk is tokenised on its own. When the tokenizer prepends BOS, the sequence starts
    with one BOS and every chunk's own leading id (its BOS) is dropped.
    """
    chunks = [tokenizer(chunk).input_ids for chunk in prompt.split(DEFAULT_IMAGE_TOKEN)]
    bos = tokenizer.bos_token_id
    input_ids: list[int] = []
    skip = 0
    if chunks and chunks[0] and bos is not None and chunks[0][0] == bos:
        input_ids.append(bos)
        skip = 1
    for i, chunk in enumerate(chunks):
        if i > 0:
            input_ids.append(image_token_index)
        input_ids.extend(chunk[skip:])
    if return_tensors is None:
        return input_ids
    if return_tensors == "pt":
        return torch.tensor(input_ids, dtype=torch.long)
    raise ValueError(f"Unsupported tensor type: {return_tensors}")


def pad_token_ids(
    sequences: Sequence[torch.Tensor], pad_id: int, side: str = "left"
) -> tuple[torch.Tensor, torch.Tensor]:
    """1-D id tensors -> `(input_ids, attention_mask)`, both `[batch, longest]`, padded on `side`
    (left for generation, so that new tokens follow every prompt directly)."""
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    longest = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for row, ids in enumerate(sequences):
        span = slice(longest - len(ids), longest) if side == "left" else slice(0, len(ids))
        input_ids[row, span] = torch.as_tensor(ids, dtype=torch.long)
        attention_mask[row, span] = 1
    return input_ids, attention_mask


def get_model_name_from_path(model_path: str) -> str:
    """`.../run/checkpoint-500` -> `run_checkpoint-500`; otherwise the last path component."""
    parts = model_path.strip("/").split("/")
    if parts[-1].startswith("checkpoint-") and len(parts) > 1:
        return parts[-2] + "_" + parts[-1]
    return parts[-1]


class KeywordsStoppingCriteria(StoppingCriteria):
    """Stops each sequence of a batch on its own once it ends with one of `keywords`.

    The original stopped the batch only when every sequence matched, so finished rows kept
    generating; here finished rows stop and are padded by `generate`.
    """

    def __init__(self, keywords: Sequence[str], tokenizer: Any, input_ids: torch.Tensor) -> None:
        self.keywords = list(keywords)
        self.tokenizer = tokenizer
        self.keyword_ids = []
        for keyword in self.keywords:
            ids = tokenizer(keyword).input_ids
            if ids and tokenizer.bos_token_id is not None and ids[0] == tokenizer.bos_token_id and len(ids) > 1:
                ids = ids[1:]
            self.keyword_ids.append(torch.tensor(ids, dtype=torch.long))
        self.max_keyword_len = max(len(ids) for ids in self.keyword_ids)
        self.start_len = input_ids.shape[1]

    def _sequence_done(self, output_ids: torch.Tensor) -> bool:
        for ids in self.keyword_ids:
            if len(ids) and output_ids.shape[0] >= len(ids) and torch.equal(output_ids[-len(ids) :].cpu(), ids):
                return True
        offset = min(output_ids.shape[0] - self.start_len, self.max_keyword_len)
        if offset <= 0:
            return False
        text = self.tokenizer.decode(output_ids[-offset:], skip_special_tokens=True)
        return any(keyword in text for keyword in self.keywords)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor | None = None, **kwargs) -> torch.BoolTensor:
        done = [self._sequence_done(row) for row in input_ids]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)
