"""The one place where image features are spliced into the token embeddings.

Bunny prompts carry one `IMAGE_TOKEN_INDEX` (-200) per image. Each placeholder is replaced by that
image's feature rows (e.g. 729 for SigLIP), padding is stripped, every row is truncated to
`max_length`, and the batch is re-padded on `padding_side`. This is done for the whole batch at
once with index arithmetic; `tests/test_merge.py` checks it against a per-sample loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from bunny.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX


@dataclass
class MergedInputs:
    inputs_embeds: torch.Tensor  # [B, L, D]
    attention_mask: torch.Tensor  # [B, L] bool
    position_ids: torch.Tensor  # [B, L], 0..len-1 over each row's real positions, 0 on padding
    labels: torch.Tensor | None  # [B, L], IGNORE_INDEX on image rows and padding
    lengths: torch.Tensor  # [B] real positions per row

    @property
    def has_padding(self) -> bool:
        return bool((self.lengths != self.inputs_embeds.shape[1]).any())


def _chunk_for_each_placeholder(
    is_image: torch.Tensor, num_chunks: int, text_only_slots: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Which feature chunk each placeholder takes, in row-major order, and the chunks left unused.

    Two layouts are accepted: one chunk per placeholder, or (as in Bunny training batches, when
    `text_only_slots`) one chunk per placeholder plus one per text-only row, which takes its slot
    without using it.
    """
    per_row = is_image.sum(dim=1)  # [B]
    num_placeholders = int(per_row.sum())
    text_only = per_row == 0
    if num_chunks == num_placeholders:
        return torch.arange(num_placeholders, device=is_image.device), is_image.new_zeros(0, dtype=torch.long)
    if text_only_slots and num_chunks == num_placeholders + int(text_only.sum()):
        slots = per_row.clamp(min=1)
        first_slot = slots.cumsum(0) - slots  # [B] index of each row's first chunk
        rank = is_image.long().cumsum(dim=1) - 1  # [B, T] rank of a placeholder within its row
        chunk_index = (first_slot[:, None] + rank)[is_image]
        return chunk_index, first_slot[text_only]
    raise ValueError(
        f"Image features and image placeholders do not match: {num_chunks} image(s) were given for "
        f"{num_placeholders} <image> placeholder(s) in {is_image.shape[0]} row(s) "
        f"({int(text_only.sum())} of them without a placeholder)"
    )


def merge_image_features(
    input_ids: torch.Tensor,
    image_features: torch.Tensor | Sequence[torch.Tensor],
    embed_tokens: Callable[[torch.Tensor], torch.Tensor],
    attention_mask: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    max_length: int | None = None,
    padding_side: str = "right",
    text_only_slots: bool = True,
) -> MergedInputs:
    """Replace every `IMAGE_TOKEN_INDEX` in `input_ids` `[B, T]` by the rows of its image's features.

    `image_features` is `[M, N, D]` or a list of `[N_k, D]` chunks, consumed by the placeholders in
    row-major order; with `text_only_slots`, rows without a placeholder may also take one (unused)
    chunk each, as in training batches. Placeholders under a zero `attention_mask` count as
    padding. The caller's tensors are never modified.
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    batch, _ = input_ids.shape
    device = input_ids.device
    keep = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    is_image = (input_ids == IMAGE_TOKEN_INDEX) & keep  # [B, T]
    is_text = keep & ~is_image  # [B, T]

    if isinstance(image_features, torch.Tensor):
        num_chunks = image_features.shape[0]
        chunk_lengths = torch.full((num_chunks,), image_features.shape[1], dtype=torch.long, device=device)
    else:
        num_chunks = len(image_features)
        chunk_lengths = torch.tensor([f.shape[0] for f in image_features], dtype=torch.long, device=device)
    chunk_index, unused_chunks = _chunk_for_each_placeholder(is_image, num_chunks, text_only_slots)

    # Output span of every input position: 1 per text token, N_k per image, 0 for padding.
    span = is_text.long()  # [B, T]
    span[is_image] = chunk_lengths[chunk_index]
    end = span.cumsum(dim=1)
    start = end - span  # [B, T] where each position's span begins in its output row
    lengths = end[:, -1] if end.shape[1] else span.new_zeros(batch)
    if max_length is not None:
        lengths = lengths.clamp(max=max_length)
    width = int(lengths.max()) if batch else 0
    offset = width - lengths if padding_side == "left" else torch.zeros_like(lengths)  # [B]

    # [B, T, D]; placeholders and padding are embedded as id 0 (whatever the pad id), then dropped
    text_embeds = embed_tokens(input_ids.masked_fill(~is_text, 0))
    hidden = text_embeds.shape[-1]
    inputs_embeds = text_embeds.new_zeros(batch, width, hidden)

    # Text tokens: one output position each.
    text_rows, text_cols = is_text.nonzero(as_tuple=True)
    text_dest = start[text_rows, text_cols]
    fits = text_dest < lengths[text_rows]
    text_rows, text_cols, text_dest = text_rows[fits], text_cols[fits], text_dest[fits]
    inputs_embeds[text_rows, text_dest + offset[text_rows]] = text_embeds[text_rows, text_cols]

    # Image features: N_k consecutive output positions per placeholder.
    image_rows, image_cols = is_image.nonzero(as_tuple=True)  # row-major, same order as chunk_index
    counts = chunk_lengths[chunk_index]  # [P]
    if isinstance(image_features, torch.Tensor):
        features = image_features[chunk_index].flatten(0, 1)  # [sum N_k, D]
    else:
        features = torch.cat([image_features[i] for i in chunk_index.tolist()]) if len(chunk_index) else None
    if features is not None and features.shape[0]:
        feature_rows = image_rows.repeat_interleave(counts)
        within = torch.arange(features.shape[0], device=device) - (counts.cumsum(0) - counts).repeat_interleave(counts)
        feature_dest = start[image_rows, image_cols].repeat_interleave(counts) + within
        fits = feature_dest < lengths[feature_rows]
        inputs_embeds[feature_rows[fits], feature_dest[fits] + offset[feature_rows[fits]]] = features[fits].to(
            inputs_embeds.dtype
        )
    if len(unused_chunks):
        # Text-only rows of a multimodal batch: their (zero) images stay in the graph with zero
        # weight, so every rank of a distributed run uses the projector and the tower.
        unused = [image_features[i] for i in unused_chunks.tolist()]
        inputs_embeds = inputs_embeds + 0.0 * sum(u.sum() for u in unused).to(inputs_embeds.dtype)

    positions = torch.arange(width, device=device)[None, :] - offset[:, None]  # [B, L]
    new_mask = (positions >= 0) & (positions < lengths[:, None])
    position_ids = positions.clamp(min=0) * new_mask

    new_labels = None
    if labels is not None:
        new_labels = torch.full((batch, width), IGNORE_INDEX, dtype=labels.dtype, device=device)
        new_labels[text_rows, text_dest + offset[text_rows]] = labels[text_rows, text_cols]
    return MergedInputs(inputs_embeds, new_mask, position_ids, new_labels, lengths)
