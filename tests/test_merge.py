"""The vectorised splice (bunny.model.merge) against a per-sample loop written from the spec."""

from __future__ import annotations

import pytest
import torch

from bunny.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from bunny.model.merge import merge_image_features

D = 8


def embed(ids: torch.Tensor) -> torch.Tensor:
    # A deterministic "embedding" that depends on the id, so misplaced tokens show up.
    return torch.stack([ids.float() + k for k in range(D)], dim=-1) / 10


def loop_oracle(input_ids, chunks, mask, labels, max_length, padding_side, slot_per_text_only_row):
    """Sample by sample, as the original did: strip padding, split at each placeholder, take the
    next image chunk (a text-only row takes a slot too when the batch has one per row), truncate,
    re-pad."""
    rows, row_labels = [], []
    chunk = 0
    for b in range(input_ids.shape[0]):
        keep = mask[b].bool()
        ids, lab = input_ids[b][keep], labels[b][keep]
        pieces, piece_labels = [], []
        start = 0
        for pos in (ids == IMAGE_TOKEN_INDEX).nonzero().flatten().tolist() + [len(ids)]:
            pieces.append(embed(ids[start:pos]))
            piece_labels.append(lab[start:pos])
            if pos < len(ids):
                pieces.append(chunks[chunk])
                piece_labels.append(torch.full((len(chunks[chunk]),), IGNORE_INDEX))
                chunk += 1
            start = pos + 1
        if not (ids == IMAGE_TOKEN_INDEX).any() and slot_per_text_only_row:
            chunk += 1
        rows.append(torch.cat(pieces)[:max_length])
        row_labels.append(torch.cat(piece_labels)[:max_length])
    assert chunk == len(chunks)
    width = max(len(r) for r in rows)
    out = torch.zeros(len(rows), width, D)
    out_labels = torch.full((len(rows), width), IGNORE_INDEX)
    out_mask = torch.zeros(len(rows), width, dtype=torch.bool)
    out_pos = torch.zeros(len(rows), width, dtype=torch.long)
    for b, (r, lab) in enumerate(zip(rows, row_labels)):
        n = len(r)
        sl = slice(width - n, width) if padding_side == "left" else slice(0, n)
        out[b, sl], out_labels[b, sl], out_mask[b, sl] = r, lab, True
        out_pos[b, sl] = torch.arange(n)
    return out, out_labels, out_mask, out_pos


def random_batch(seed: int, side: str):
    g = torch.Generator().manual_seed(seed)
    batch = int(torch.randint(1, 6, (1,), generator=g))
    rows = []
    for _ in range(batch):
        n = int(torch.randint(1, 12, (1,), generator=g))
        ids = torch.randint(0, 50, (n,), generator=g)
        images = int(torch.randint(0, 4, (1,), generator=g))  # 0 = text-only row
        for slot in torch.randperm(n, generator=g)[: min(images, n)]:
            ids[slot] = IMAGE_TOKEN_INDEX
        rows.append(ids)
    width = max(len(r) for r in rows)
    input_ids = torch.full((batch, width), 7)
    mask = torch.zeros(batch, width, dtype=torch.long)
    for b, r in enumerate(rows):
        sl = slice(width - len(r), width) if side == "left" else slice(0, len(r))
        input_ids[b, sl], mask[b, sl] = r, 1
    labels = torch.where(mask.bool(), torch.randint(0, 50, (batch, width), generator=g), IGNORE_INDEX)
    return input_ids, mask, labels, g


@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize("in_side,out_side", [("right", "right"), ("left", "left"), ("left", "right"), ("right", "left")])
def test_matches_loop_oracle(seed, in_side, out_side):
    input_ids, mask, labels, g = random_batch(seed, in_side)
    placeholders = int((input_ids == IMAGE_TOKEN_INDEX).sum())
    text_only_rows = int(((input_ids == IMAGE_TOKEN_INDEX).sum(1) == 0).sum())
    slot_mode = seed % 2 == 1
    n_chunks = placeholders + (text_only_rows if slot_mode else 0)
    # Chunks of different lengths (a list) on odd-numbered cases, a [M, N, D] tensor otherwise.
    if seed % 3 == 0:
        chunks_tensor = torch.randn(n_chunks, 3, D, generator=g)
        chunks = list(chunks_tensor)
        features = chunks_tensor
    else:
        chunks = [torch.randn(int(torch.randint(1, 5, (1,), generator=g)), D, generator=g) for _ in range(n_chunks)]
        features = chunks
    max_length = None if seed % 4 == 0 else int(torch.randint(3, 20, (1,), generator=g))
    before = (input_ids.clone(), mask.clone(), labels.clone())

    merged = merge_image_features(
        input_ids, features, embed, attention_mask=mask, labels=labels, max_length=max_length, padding_side=out_side
    )
    expected = loop_oracle(input_ids, chunks, mask, labels, max_length or 10**9, out_side, slot_mode)

    torch.testing.assert_close(merged.inputs_embeds, expected[0])
    assert torch.equal(merged.labels, expected[1])
    assert torch.equal(merged.attention_mask, expected[2])
    assert torch.equal(merged.position_ids, expected[3])
    # The caller's tensors are untouched (the original wrote 0 over every -200 in place).
    assert all(torch.equal(a, b) for a, b in zip((input_ids, mask, labels), before))


def test_no_mask_no_labels_single_row():
    ids = torch.tensor([[5, 6, IMAGE_TOKEN_INDEX, 8]])
    feats = torch.randn(1, 3, D)
    merged = merge_image_features(ids, feats, embed)
    assert merged.inputs_embeds.shape == (1, 6, D)
    torch.testing.assert_close(merged.inputs_embeds[0, 2:5], feats[0])
    torch.testing.assert_close(merged.inputs_embeds[0, 5], embed(torch.tensor(8)))
    assert merged.labels is None and not merged.has_padding
    assert merged.position_ids.tolist() == [[0, 1, 2, 3, 4, 5]]


def test_gradients_reach_features_and_unused_text_only_slots():
    ids = torch.tensor([[5, IMAGE_TOKEN_INDEX, 6], [5, 6, 7]])
    feats = torch.randn(2, 2, D, requires_grad=True)  # row 1 is text-only and takes slot 1
    merged = merge_image_features(ids, feats, embed)
    merged.inputs_embeds.sum().backward()
    assert feats.grad is not None
    assert torch.equal(feats.grad[0], torch.ones(2, D)) and torch.equal(feats.grad[1], torch.zeros(2, D))


@pytest.mark.parametrize("n_images", [0, 1, 4])  # 2 (one per placeholder) and 3 (plus the text-only row) are valid
def test_mismatched_image_count_is_an_error(n_images):
    ids = torch.tensor([[5, IMAGE_TOKEN_INDEX, 6, IMAGE_TOKEN_INDEX], [1, 2, 3, 4]])  # 2 placeholders, 1 text-only row
    with pytest.raises(ValueError, match=r"Image features and image placeholders do not match: \d+ image"):
        merge_image_features(ids, torch.randn(n_images, 2, D), embed)
