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


@dataclass
class _Layout:
    """Where every input position goes in the output rows."""

    start: torch.Tensor  # [B, T] first output position of each input position's span
    lengths: torch.Tensor  # [B] real output positions per row, after truncation
    width: int  # L, the longest row
    offset: torch.Tensor  # [B] left padding of each row

    @classmethod
    def of(cls, span: torch.Tensor, max_length: int | None, padding_side: str) -> "_Layout":
        """From each input position's output span `[B, T]` (1 per text token, N_k per image, 0 for padding)."""
        end = span.cumsum(dim=1)
        lengths = end[:, -1] if end.shape[1] else span.new_zeros(span.shape[0])
        if max_length is not None:
            lengths = lengths.clamp(max=max_length)
        width = int(lengths.max()) if span.shape[0] else 0
        offset = width - lengths if padding_side == "left" else torch.zeros_like(lengths)
        return cls(end - span, lengths, width, offset)


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
    span = is_text.long()  # [B, T]
    span[is_image] = chunk_lengths[chunk_index]
    layout = _Layout.of(span, max_length, padding_side)

    # [B, T, D]; placeholders and padding are embedded as id 0 (whatever the pad id), then dropped
    text_embeds = embed_tokens(input_ids.masked_fill(~is_text, 0))
    inputs_embeds = text_embeds.new_zeros(batch, layout.width, text_embeds.shape[-1])
    text_rows, text_cols, text_dest = _place_text(inputs_embeds, text_embeds, is_text, layout)
    _place_images(inputs_embeds, image_features, chunk_index, chunk_lengths[chunk_index], is_image, layout)
    if len(unused_chunks):
        # Text-only rows of a multimodal batch: their (zero) images stay in the graph with zero
        # weight, so every rank of a distributed run uses the projector and the tower.
        unused = [image_features[i] for i in unused_chunks.tolist()]
        inputs_embeds = inputs_embeds + 0.0 * sum(u.sum() for u in unused).to(inputs_embeds.dtype)

    positions = torch.arange(layout.width, device=device)[None, :] - layout.offset[:, None]  # [B, L]
    new_mask = (positions >= 0) & (positions < layout.lengths[:, None])
    position_ids = positions.clamp(min=0) * new_mask

    new_labels = None
    if labels is not None:
        new_labels = torch.full((batch, layout.width), IGNORE_INDEX, dtype=labels.dtype, device=device)
        new_labels[text_rows, text_dest + layout.offset[text_rows]] = labels[text_rows, text_cols]
    return MergedInputs(inputs_embeds, new_mask, position_ids, new_labels, layout.lengths)


def _place_text(
    inputs_embeds: torch.Tensor, text_embeds: torch.Tensor, is_text: torch.Tensor, layout: _Layout
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Write each text token that fits to its one output position; returns where each came from
    (row, column) and went (position before left padding)."""
    rows, cols = is_text.nonzero(as_tuple=True)
    dest = layout.start[rows, cols]
    fits = dest < layout.lengths[rows]
    rows, cols, dest = rows[fits], cols[fits], dest[fits]
    inputs_embeds[rows, dest + layout.offset[rows]] = text_embeds[rows, cols]
    return rows, cols, dest


def _place_images(
    inputs_embeds: torch.Tensor,
    image_features: torch.Tensor | Sequence[torch.Tensor],
    chunk_index: torch.Tensor,
    counts: torch.Tensor,
    is_image: torch.Tensor,
    layout: _Layout,
) -> None:
    """Write each placeholder's feature chunk (`counts[p]` rows) to consecutive output positions."""
    image_rows, image_cols = is_image.nonzero(as_tuple=True)  # row-major, same order as chunk_index
    if isinstance(image_features, torch.Tensor):
        features = image_features[chunk_index].flatten(0, 1)  # [sum N_k, D]
    else:
        features = torch.cat([image_features[i] for i in chunk_index.tolist()]) if len(chunk_index) else None
    if features is None or not features.shape[0]:
        return
    rows = image_rows.repeat_interleave(counts)
    within = torch.arange(features.shape[0], device=rows.device) - (counts.cumsum(0) - counts).repeat_interleave(counts)
    dest = layout.start[image_rows, image_cols].repeat_interleave(counts) + within
    fits = dest < layout.lengths[rows]
    inputs_embeds[rows[fits], dest[fits] + layout.offset[rows[fits]]] = features[fits].to(inputs_embeds.dtype)
