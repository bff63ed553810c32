"""Images for Bunny models: reading them safely (local files, bytes, base64, URLs with a deadline)
and turning them into the pixel values a vision tower takes (`pad` mode included).
"""

from __future__ import annotations

import base64
import binascii
import os
from io import BytesIO
from typing import Any, Sequence

import torch
from PIL import Image, UnidentifiedImageError

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
