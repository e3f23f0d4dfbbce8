"""The decoder's KV cache layer that appends in place (mm1.model.kv_cache) holds what transformers'
DynamicLayer holds, without a copy of the whole cache per step."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicLayer

from mm1.model.kv_cache import GrowingLayer, growing_cache, stacked_cache


def states(rows: int, length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(rows, 2, length, 8, generator=generator) for _ in range(2))


def test_appends_equal_dynamic_layers_and_the_buffer_regrows_rarely():
    growing, plain = GrowingLayer(), DynamicLayer()
    buffers = set()
    for step in range(60):  # a 10-token prefill, then one token per step: past several capacities
        keys, values = states(3, 10 if step == 0 else 1, step)
        got = growing.update(keys, values)
        want = plain.update(keys, values)
        assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
        assert growing.get_seq_length() == plain.get_seq_length()
        buffers.add(growing._key_buffer.data_ptr())
    assert len(buffers) <= 2  # 10 -> room for 42, then 86: two buffers for 69 columns, not 60 copies


def test_a_layer_whose_rows_were_selected_goes_on_growing_from_them():
    growing, plain = GrowingLayer(), DynamicLayer()
    for layer in (growing, plain):
        layer.update(*states(4, 5, 0))
        layer.batch_select_indices(torch.tensor([0, 2]))
        layer.update(*states(2, 1, 1))
    assert torch.equal(growing.keys, plain.keys) and torch.equal(growing.values, plain.values)
    assert growing.keys.shape == (2, 2, 6, 8)


def test_a_cache_built_from_tensors_holds_them_and_appends():
    keys, values = states(2, 7, 3)
    cache = growing_cache([(keys, values), (keys + 1, values + 1)])
    assert [type(layer) for layer in cache.layers] == [GrowingLayer, GrowingLayer]
    assert torch.equal(cache.layers[1].keys, keys + 1) and cache.get_seq_length() == 7
    cache.update(*states(2, 1, 4), layer_idx=0)
    assert cache.layers[0].keys.shape[-2] == 8 and cache.layers[1].keys.shape[-2] == 7


def test_groups_of_rows_stack_left_padded_with_zeros_and_go_on_appending():
    (k1, v1), (k2, v2) = states(3, 5, 6), states(2, 9, 7)
    # Two layers per group; the second layer's states differ from the first's.
    cache = stacked_cache([[(k1, v1), (k1 * 2, v1 * 2)], [(k2, v2), (k2 * 2, v2 * 2)]], 9)
    expected_keys = torch.cat([F.pad(k1, [0, 0, 4, 0]), k2])
    assert torch.equal(cache.layers[0].keys, expected_keys)
    assert torch.equal(cache.layers[0].values, torch.cat([F.pad(v1, [0, 0, 4, 0]), v2]))
    assert torch.equal(cache.layers[1].keys, expected_keys * 2)
    step = states(5, 1, 8)
    keys, values = cache.update(*step, layer_idx=0)
    assert torch.equal(keys, torch.cat([expected_keys, step[0]], dim=-2))
    assert torch.equal(values[:, :, -1:], step[1])
