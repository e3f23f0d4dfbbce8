"""A KV cache layer that appends in place: the decoder's cache without a full copy per generated token.

transformers' `DynamicLayer` appends each step's keys and values with `torch.cat`, which copies the whole
cache of every layer at every step; at batch 32 on a CPU that was 14% of a decode's time. `GrowingLayer`
keeps them in a buffer with spare room (doubling when full) and exposes `keys` / `values` as views of its
filled part, which attention reads as they are. Everything else about it is a `DynamicLayer` (the masks
ask for its length, the decoder's batch merges and compactions read its views and build new layers), so
only the layers a model's own cache makes as plain `DynamicLayer`s are converted (sliding-window and other
kinds keep their own behaviour).
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

MIN_SPARE = 32  # columns of room a new buffer gets at least: a short answer never regrows


class GrowingLayer(DynamicLayer):
    _key_buffer: torch.Tensor | None = None
    _value_buffer: torch.Tensor | None = None
    _view: torch.Tensor | None = None  # the `keys` this layer last handed out

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        length = self.keys.shape[-2] if self.keys.numel() else 0
        needed = length + key_states.shape[-2]
        # A DynamicLayer method (crop, batch selection) may have replaced `keys`: start a buffer from it.
        if self.keys is not self._view or needed > self._key_buffer.shape[-2]:
            self._regrow(length, needed, key_states, value_states)
        self._key_buffer[..., length:needed, :] = key_states
        self._value_buffer[..., length:needed, :] = value_states
        self.keys = self._view = self._key_buffer[..., :needed, :]
        self.values = self._value_buffer[..., :needed, :]
        return self.keys, self.values

    def _regrow(self, length: int, needed: int, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        capacity = max(2 * needed, needed + MIN_SPARE)
        keys = key_states.new_empty((*key_states.shape[:-2], capacity, key_states.shape[-1]))
        values = value_states.new_empty((*value_states.shape[:-2], capacity, value_states.shape[-1]))
        if length:
            keys[..., :length, :] = self.keys
            values[..., :length, :] = self.values
        self._key_buffer, self._value_buffer = keys, values

    def owns_view(self) -> bool:
        """Whether `keys`/`values` are still views of this layer's buffers (a DynamicLayer method such as
        batch selection replaces them with tensors of its own until the next `update`)."""
        return self._view is not None and self.keys is self._view

    def move_rows(self, sources: torch.Tensor, targets: torch.Tensor) -> None:
        """Copy the filled part of rows `sources` over rows `targets`, in place (`owns_view` layers)."""
        length = self.keys.shape[-2]
        for buffer in (self._key_buffer, self._value_buffer):
            buffer[targets, :, :length] = buffer[sources, :, :length]

    def keep_rows(self, rows: int) -> None:
        """Keep the first `rows` rows (the buffers' rows past them become unused room)."""
        length = self.keys.shape[-2]
        self._key_buffer, self._value_buffer = self._key_buffer[:rows], self._value_buffer[:rows]
        self.keys = self._view = self._key_buffer[..., :length, :]
        self.values = self._value_buffer[..., :length, :]

    def drop_leading(self, columns: int) -> None:
        """Forget the first `columns` columns of every row (padding in all of them) without a copy: the
        buffers become views starting past them, so attention stops reading them."""
        length = self.keys.shape[-2]
        self._key_buffer = self._key_buffer[..., columns:, :]
        self._value_buffer = self._value_buffer[..., columns:, :]
        self.keys = self._view = self._key_buffer[..., : length - columns, :]
        self.values = self._value_buffer[..., : length - columns, :]

    def adopt(self, keys: torch.Tensor, values: torch.Tensor, length: int) -> None:
        """Take these buffers as this layer's, their first `length` columns filled."""
        self.device, self.is_initialized = keys.device, True
        self._key_buffer, self._value_buffer = keys, values
        self.keys = self._view = keys[..., :length, :]
        self.values = values[..., :length, :]


def stacked_cache(groups: list[list[tuple[torch.Tensor, torch.Tensor]]], length: int) -> DynamicCache:
    """One cache of GrowingLayers holding several groups of rows: `groups[g][layer]` is (keys, values) of
    shape [rows, heads, columns <= length, dim], each group left-padded with zeros to `length` columns.
    Every element is copied once, straight into the new buffers (a padded copy, then a concatenation, then
    a buffer copy moved each element three times: at batch 32 that took most of a decode step per merge)."""
    cache = DynamicCache()
    cache.layer_class_to_replicate = GrowingLayer
    capacity = max(2 * length, length + MIN_SPARE)
    for parts in zip(*groups, strict=True):
        first = parts[0][0]
        rows = sum(keys.shape[0] for keys, _ in parts)
        buffers = [
            first.new_empty((rows, first.shape[1], capacity, first.shape[-1])),
            parts[0][1].new_empty((rows, parts[0][1].shape[1], capacity, parts[0][1].shape[-1])),
        ]
        start = 0
        for pair in parts:
            count, columns = pair[0].shape[0], pair[0].shape[-2]
            for buffer, tensor in zip(buffers, pair, strict=True):
                buffer[start : start + count, :, : length - columns].zero_()
                buffer[start : start + count, :, length - columns : length] = tensor
            start += count
        layer = GrowingLayer()
        layer.adopt(*buffers, length)
        cache.layers.append(layer)
    return cache


def growing_cache(layers: list[tuple[torch.Tensor, torch.Tensor]]) -> DynamicCache:
    """A cache of GrowingLayers holding these (keys, values) per layer."""
    cache = DynamicCache()
    cache.layer_class_to_replicate = GrowingLayer
    for keys, values in layers:
        layer = GrowingLayer()
        layer.update(keys, values)
        cache.layers.append(layer)
    return cache


def make_growing(cache: DynamicCache) -> DynamicCache:
    """The model's own cache after a prefill, its plain DynamicLayers turned into GrowingLayers (one copy)."""
    for index, layer in enumerate(cache.layers):
        if type(layer) is DynamicLayer and layer.is_initialized and layer.keys.numel():
            grown = GrowingLayer()
            grown.update(layer.keys, layer.values)
            cache.layers[index] = grown
    return cache


def appendable(layer: object) -> bool:
    """A layer the decoder may merge and compact (full attention, no window): plain or growing."""
    return type(layer) in (DynamicLayer, GrowingLayer)
