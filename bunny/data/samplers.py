"""Length- and modality-grouped sampling for training (`--group_by_modality_length True`).

The orders reproduce the original Bunny trainer exactly (data spec section 7, checked against
tests/fixtures/reference/goldens/preprocess/sampler_public.json): indices are shuffled, cut
into megabatches of ``world_size * batch_size``, sorted by length inside each megabatch and
dealt out so every rank gets a similar token count. With modality grouping, image samples
(positive lengths) and text-only samples (negative lengths) are batched apart.

Used by the trainer; run the tests with: pytest tests/test_samplers.py
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


def split_to_even_chunks(indices: Sequence[int], lengths: Sequence[int], num_chunks: int) -> list[list[int]]:
    """Deal ``indices`` into ``num_chunks`` chunks of equal size with similar total length."""
    if len(indices) % num_chunks != 0:
        # Equal sizes are impossible, so the original falls back to plain round-robin.
        return [list(indices[i::num_chunks]) for i in range(num_chunks)]

    chunk_size = len(indices) // num_chunks
    chunks: list[list[int]] = [[] for _ in range(num_chunks)]
    chunk_lengths: list[float] = [0] * num_chunks
    for index in indices:
        # list.index(min(...)) picks the first of equally short chunks, as the original does.
        shortest = chunk_lengths.index(min(chunk_lengths))
        chunks[shortest].append(index)
        chunk_lengths[shortest] += lengths[index]
        if len(chunks[shortest]) == chunk_size:
            # A full chunk must never be picked again.
            chunk_lengths[shortest] = float("inf")
    return chunks


def get_length_grouped_indices(
    lengths: Sequence[int],
    batch_size: int,
    world_size: int,
    generator: torch.Generator | None = None,
) -> list[int]:
    """Shuffle, then sort by length (descending) within each megabatch and balance across ranks.

    ``generator=None`` draws from the global torch RNG.
    """
    permutation = torch.randperm(len(lengths), generator=generator).tolist()
    megabatch_size = world_size * batch_size
    megabatches = [permutation[i : i + megabatch_size] for i in range(0, len(lengths), megabatch_size)]
    # sorted() is stable, so equal lengths keep their shuffled order, matching the original.
    megabatches = [sorted(megabatch, key=lambda i: lengths[i], reverse=True) for megabatch in megabatches]
    return [
        index
        for megabatch in megabatches
        for chunk in split_to_even_chunks(megabatch, lengths, world_size)
        for index in chunk
    ]


def get_modality_length_grouped_indices(
    lengths: Sequence[int],
    batch_size: int,
    world_size: int,
    generator: torch.Generator | None = None,
) -> list[int]:
    """Like :func:`get_length_grouped_indices`, but no megabatch mixes image and text-only samples.

    ``lengths`` are signed: positive for samples with an image, negative for text-only ones.
    The two leftover (last) megabatches are joined into one mixed megabatch at the very end.
    """
    for index, length in enumerate(lengths):
        if length == 0:
            raise ValueError(
                f"Sample {index} has length 0; modality grouping needs a positive (image) or "
                "negative (text-only) length for every sample."
            )
    if all(length > 0 for length in lengths) or all(length < 0 for length in lengths):
        return get_length_grouped_indices(lengths, batch_size, world_size, generator=generator)

    image_indices = [i for i, length in enumerate(lengths) if length > 0]
    image_lengths = [length for length in lengths if length > 0]
    text_indices = [i for i, length in enumerate(lengths) if length < 0]
    text_lengths = [-length for length in lengths if length < 0]

    # generator=None on purpose: the original shuffles each modality with the global torch RNG,
    # not the sampler's generator, and the recorded orders depend on that.
    image_order = [
        image_indices[i] for i in get_length_grouped_indices(image_lengths, batch_size, world_size, generator=None)
    ]
    text_order = [
        text_indices[i] for i in get_length_grouped_indices(text_lengths, batch_size, world_size, generator=None)
    ]

    megabatch_size = world_size * batch_size
    image_megabatches = [image_order[i : i + megabatch_size] for i in range(0, len(image_order), megabatch_size)]
    text_megabatches = [text_order[i : i + megabatch_size] for i in range(0, len(text_order), megabatch_size)]

    # Each modality's last megabatch is set aside (even when full, as in the original) so the
    # shuffled megabatches below are all single-modality; the leftovers go last, in index order.
    leftover = image_megabatches[-1] + text_megabatches[-1]
    megabatches = image_megabatches[:-1] + text_megabatches[:-1]
    megabatches = [megabatches[i] for i in torch.randperm(len(megabatches), generator=generator).tolist()]
    if leftover:
        megabatches.append(sorted(leftover))
    return [index for megabatch in megabatches for index in megabatch]


class LengthGroupedSampler(Sampler[int]):
    """Yields sample indices grouped by length (and optionally by modality), seeded per epoch."""

    def __init__(
        self,
        batch_size: int,
        world_size: int,
        lengths: Sequence[int],
        *,
        seed: int = 0,
        group_by_modality: bool = False,
    ) -> None:
        super().__init__()
        if not lengths:
            raise ValueError("LengthGroupedSampler needs at least one sample length; got none.")
        self.batch_size = batch_size
        self.world_size = world_size
        self.lengths = list(lengths)
        self.seed = seed
        self.group_by_modality = group_by_modality
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.lengths)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        # A resumed run must replay the same data order, so the order is a function of
        # (seed, epoch) alone. The original's per-modality shuffles consumed the global RNG,
        # which made the order depend on whatever had drawn from it before; here the global
        # CPU RNG is seeded inside fork_rng, which also restores the caller's RNG state after.
        # Only the CPU default generator is seeded (torch.manual_seed would also reseed the
        # CUDA generators, which fork_rng(devices=[]) does not restore); randperm on CPU uses
        # nothing else.
        seed = self.seed + self.epoch
        generator = torch.Generator().manual_seed(seed)
        group_indices = get_modality_length_grouped_indices if self.group_by_modality else get_length_grouped_indices
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(seed)
            indices = group_indices(self.lengths, self.batch_size, self.world_size, generator=generator)
        return iter(indices)
