"""The samplers (bunny.data.samplers) against the original's recorded orders and hand-worked cases."""

from __future__ import annotations

import json

import pytest
import torch

from bunny.data.samplers import (
    LengthGroupedSampler,
    get_length_grouped_indices,
    get_modality_length_grouped_indices,
    split_to_even_chunks,
)
from tiny import FIXTURES

SAMPLER_CASES = json.loads((FIXTURES / "goldens" / "preprocess" / "sampler_public.json").read_text())["cases"]

# Signed lengths: positive = sample with an image, negative = text-only; 24 image, 13 text.
MIXED_LENGTHS = [(-1) ** (i % 3 == 0) * (5 + (7 * i) % 31) for i in range(37)]


@pytest.mark.parametrize("case", SAMPLER_CASES, ids=lambda c: f"{c['lengths_name']}-modality={c['group_by_modality']}")
def test_reproduces_recorded_orders(case):
    # Both seeds matter: the per-modality shuffles draw from the global RNG, the rest from the
    # passed generator.
    torch.manual_seed(case["global_torch_seed"])
    generator = torch.Generator().manual_seed(case["generator_seed"])
    group_indices = get_modality_length_grouped_indices if case["group_by_modality"] else get_length_grouped_indices
    indices = group_indices(case["lengths"], case["batch_size"], case["world_size"], generator=generator)
    assert indices == case["indices"]


@pytest.mark.parametrize("group_by_modality", [False, True])
def test_sampler_is_a_permutation_fixed_by_seed_and_epoch(group_by_modality):
    sampler = LengthGroupedSampler(4, 2, MIXED_LENGTHS, seed=7, group_by_modality=group_by_modality)
    assert len(sampler) == len(MIXED_LENGTHS)

    sampler.set_epoch(3)
    rng_state = torch.get_rng_state()
    first = list(sampler)
    assert torch.equal(torch.get_rng_state(), rng_state), "the sampler must not touch the caller's RNG"
    assert sorted(first) == list(range(len(MIXED_LENGTHS)))

    torch.rand(1000)  # a resumed run reaches the sampler with a different global RNG state
    assert list(sampler) == first

    sampler.set_epoch(4)
    assert list(sampler) != first
    sampler.set_epoch(3)
    assert list(sampler) == first


def test_sampler_seeds_the_global_rng_shuffles_with_seed_plus_epoch():
    sampler = LengthGroupedSampler(4, 1, MIXED_LENGTHS, seed=5, group_by_modality=True)
    sampler.set_epoch(2)
    torch.manual_seed(7)
    expected = get_modality_length_grouped_indices(MIXED_LENGTHS, 4, 1, generator=torch.Generator().manual_seed(7))
    assert list(sampler) == expected


def test_modality_batches_are_single_modality_except_the_leftover():
    batch_size = 4
    n_image = sum(length > 0 for length in MIXED_LENGTHS)
    n_text = len(MIXED_LENGTHS) - n_image
    # Each modality's last (partial or full) megabatch goes into the one mixed leftover.
    n_leftover = (n_image % batch_size or batch_size) + (n_text % batch_size or batch_size)
    assert (n_image, n_text, n_leftover) == (24, 13, 5)  # a full image megabatch is set aside too

    sampler = LengthGroupedSampler(batch_size, 1, MIXED_LENGTHS, seed=0, group_by_modality=True)
    for epoch in range(5):
        sampler.set_epoch(epoch)
        indices = list(sampler)
        assert sorted(indices) == list(range(len(MIXED_LENGTHS)))
        grouped, leftover = indices[:-n_leftover], indices[-n_leftover:]
        for start in range(0, len(grouped), batch_size):
            batch = grouped[start : start + batch_size]
            assert len({MIXED_LENGTHS[i] > 0 for i in batch}) == 1, (epoch, batch)
            # Within a batch (world size 1 = one megabatch) the longest sample comes first.
            sizes = [abs(MIXED_LENGTHS[i]) for i in batch]
            assert sizes == sorted(sizes, reverse=True), (epoch, batch)
        assert leftover == sorted(leftover)
        assert {MIXED_LENGTHS[i] > 0 for i in leftover} == {True, False}


def test_single_modality_falls_back_to_plain_grouping():
    lengths = [-abs(length) for length in MIXED_LENGTHS]
    plain = get_length_grouped_indices(lengths, 4, 2, generator=torch.Generator().manual_seed(3))
    grouped = get_modality_length_grouped_indices(lengths, 4, 2, generator=torch.Generator().manual_seed(3))
    assert grouped == plain


def test_split_to_even_chunks_round_robin_when_uneven():
    assert split_to_even_chunks([0, 1, 2, 3, 4], [9, 9, 9, 9, 9], 2) == [[0, 2, 4], [1, 3]]
    assert split_to_even_chunks([6, 5, 4, 3], [1] * 7, 3) == [[6, 3], [5], [4]]


def test_split_to_even_chunks_greedy_when_even():
    # 0 -> c0 (10); 1 -> c1 (8); 2 -> c1 (11, full); 3 -> c0.
    assert split_to_even_chunks([0, 1, 2, 3], [10, 8, 3, 1], 2) == [[0, 3], [1, 2]]
    # c1 fills up with the short samples and is closed, so c0 takes the rest despite its length.
    assert split_to_even_chunks([0, 1, 2, 3, 4, 5], [10, 1, 1, 1, 1, 1], 2) == [[0, 4, 5], [1, 2, 3]]
    # Lengths are looked up by index, not by position; ties go to the first chunk.
    assert split_to_even_chunks([5, 4, 3, 2, 1, 0], [1, 2, 3, 4, 5, 6], 3) == [[5, 0], [4, 1], [3, 2]]
    assert split_to_even_chunks([0, 1, 2, 3], [1, 1, 1, 1], 2) == [[0, 2], [1, 3]]


def test_zero_length_is_rejected_by_index():
    with pytest.raises(ValueError, match="Sample 2 has length 0"):
        get_modality_length_grouped_indices([3, -4, 0, 5], 2, 1)
    sampler = LengthGroupedSampler(2, 1, [3, -4, 0, 5], group_by_modality=True)
    with pytest.raises(ValueError, match="Sample 2"):
        list(sampler)


def test_empty_lengths_are_rejected():
    with pytest.raises(ValueError, match="at least one"):
        LengthGroupedSampler(4, 1, [])
