"""A dynamic KV cache that grows in blocks instead of re-concatenating at every step.

transformers' `DynamicLayer` appends with `torch.cat`, copying the whole cache for every new
token: at batch 8 on a 2-core CPU that copy was 30% of a decode step. `BlockGrowingLayer` keeps
keys and values in a buffer with spare room (grown geometrically, in multiples of `BLOCK`
positions) and writes each step in place; what it hands to attention is a view of the filled part.
`generate` uses it unless the caller chose a cache.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

BLOCK = 256  # positions


class BlockGrowingLayer(DynamicLayer):
    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # key_states / value_states: [B, heads, new, head_dim]
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            self._buffers = None
        length = self.get_seq_length()
        end = length + key_states.shape[-2]
        buffers = self._buffers
        # DynamicLayer's own methods (crop, beam reordering, batch selection) replace self.keys; the
        # buffer is then stale and is seeded again from what they left.
        stale = buffers is None or self.keys is not self._handed_out
        if stale or end > buffers[0].shape[-2] or buffers[0].shape[:2] != key_states.shape[:2]:
            capacity = -(-max(end, 2 * length) // BLOCK) * BLOCK
            shape = (*key_states.shape[:2], capacity, key_states.shape[-1])
            keys, values = key_states.new_empty(shape), value_states.new_empty(shape)
            if length:
                keys[..., :length, :] = self.keys
                values[..., :length, :] = self.values
            self._buffers = buffers = (keys, values)
        buffers[0][..., length:end, :] = key_states
        buffers[1][..., length:end, :] = value_states
        self.keys, self.values = buffers[0][..., :end, :], buffers[1][..., :end, :]
        self._handed_out = self.keys
        return self.keys, self.values

    def hold(self, keys: torch.Tensor, values: torch.Tensor, length: int) -> None:
        """Take `keys`/`values` `[B, heads, capacity, head_dim]` as the buffers, the first `length`
        positions filled (rows regrouped by `BlockGrowingCache.regroup`)."""
        self.device, self.is_initialized = keys.device, True
        self._buffers = (keys, values)
        self.keys, self.values = keys[..., :length, :], values[..., :length, :]
        self._handed_out = self.keys

    def reset(self) -> None:
        self._buffers = None
        super().reset()


class BlockGrowingCache(DynamicCache):
    """`DynamicCache` whose full-attention layers are `BlockGrowingLayer`s (sliding-window layers
    are kept as transformers builds them)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.layers = [BlockGrowingLayer() if type(layer) is DynamicLayer else layer for layer in self.layers]

    @property
    def can_regroup(self) -> bool:
        """Whether rows can be joined and dropped between steps (`regroup`): every layer is a
        full-attention `BlockGrowingLayer` holding states. Sliding-window layers can't: they drop
        old positions by column, which would misalign rows padded by different amounts."""
        return all(type(layer) is BlockGrowingLayer and layer.is_initialized for layer in self.layers)

    @staticmethod
    def regroup(parts: list[tuple[BlockGrowingCache, torch.Tensor, int]]) -> BlockGrowingCache:
        """One cache holding, for each `(cache, rows, start)`, the `rows` of `cache` from column `start`
        on, stacked in that order and right-aligned (left-padded with zeros) to the widest part.

        This is how a running batch takes in newly prefilled rows (`[(running, all, 0), (new, all, 0)]`)
        and lets finished rows go (`[(running, kept, leading_padding)]`); the caller pads the attention
        mask the same way. The first part's cache object is reused."""
        target = parts[0][0]
        if not all(cache.can_regroup for cache, _, _ in parts):
            raise ValueError("only caches whose layers are all full-attention BlockGrowingLayers can be regrouped")
        widths = [cache.get_seq_length() - start for cache, _, start in parts]
        width = max(widths)
        rows = sum(len(index) for _, index, _ in parts)
        for i, layer in enumerate(target.layers):
            sources = [(cache.layers[i], index, start) for cache, index, start in parts]
            keys, values = sources[0][0].keys, sources[0][0].values  # [B, heads, L, head_dim]
            capacity = -(-(width + 1) // BLOCK) * BLOCK
            new_keys = keys.new_zeros(rows, keys.shape[1], capacity, keys.shape[-1])
            new_values = values.new_zeros(rows, values.shape[1], capacity, values.shape[-1])
            first = 0
            for (source, index, start), part_width in zip(sources, widths):
                index = index.to(source.keys.device)
                last = first + len(index)
                new_keys[first:last, :, width - part_width : width] = source.keys[index, :, start:]
                new_values[first:last, :, width - part_width : width] = source.values[index, :, start:]
                first = last
            layer.hold(new_keys, new_values, width)
        return target
