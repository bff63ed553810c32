"""Token ids for Bunny prompts: `<image>` placeholders as `IMAGE_TOKEN_INDEX`, and padding a batch."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from bunny.constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX


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
