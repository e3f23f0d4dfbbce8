"""Packed rows: documents restart their position_ids and must not attend to each other."""

from __future__ import annotations

import pytest
import torch
from model_helpers import make_model, random_image

from mm1.data.chat import ImageSlot
from mm1.model import MM1Processor
from mm1.model.packing import document_ids


def test_document_ids_split_at_position_restarts():
    positions = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]])
    assert document_ids(positions).tolist() == [[0, 0, 0, 1, 1, 2, 2, 2, 2]]
    assert document_ids(torch.arange(6)[None]) is None


def test_sdpa_mask_is_the_one_transformers_builds():
    from transformers import LlamaConfig
    from transformers.masking_utils import create_causal_mask, packed_sequence_mask_function

    from mm1.model.packing import packed_attention_mask

    config = LlamaConfig(hidden_size=16, num_attention_heads=2, num_hidden_layers=1, vocab_size=8)
    config._attn_implementation = "sdpa"
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        rows = []
        for _ in range(3):  # documents of random lengths, then padding (positions 0, 1, ...)
            lengths = torch.randint(1, 9, (4,), generator=generator).tolist()
            rows.append(torch.cat([torch.arange(n) for n in lengths])[:24])
        positions = torch.stack([torch.nn.functional.pad(r, (0, 24 - len(r))) for r in rows])
        attention = (torch.rand(3, 24, generator=generator) > 0.2).long()
        embeds = torch.zeros(3, 24, 16)
        docs = document_ids(positions)
        expected = create_causal_mask(
            config=config,
            inputs_embeds=embeds,
            attention_mask=attention,
            cache=None,
            and_mask_function=packed_sequence_mask_function(docs),
        )
        assert torch.equal(packed_attention_mask(config, embeds, attention, docs), expected)


@pytest.mark.parametrize("padded", [True, False])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_row_matches_documents_run_separately(tokenizer, attn, padded):
    model = make_model(tokenizer)
    model.set_attn_implementation(attn)
    processor = MM1Processor.from_config(model.config, tokenizer)
    doc_a = processor.encode_document(["a red square", ImageSlot(), "above a blue circle"])
    doc_b = processor.encode_document(["the quick brown fox"])
    doc_c = processor.encode_document([ImageSlot(), "two circles"])
    pixels_a = processor.images_to_pixel_values([random_image(1)])
    pixels_c = processor.images_to_pixel_values([random_image(2)])

    def run(ids, pixels, positions=None, mask=None):
        with torch.no_grad():
            return model(
                input_ids=torch.tensor([ids]),
                pixel_values=pixels,
                position_ids=positions,
                attention_mask=mask,
            ).logits[0]

    separate = [run(d.input_ids, p) for d, p in ((doc_a, pixels_a), (doc_b, None), (doc_c, pixels_c))]
    packed_ids = doc_a.input_ids + doc_b.input_ids + doc_c.input_ids
    lengths = [len(doc_a.input_ids), len(doc_b.input_ids), len(doc_c.input_ids)]
    mask = None
    if padded:  # two pad tokens at the end, masked out
        packed_ids, lengths = packed_ids + [0, 0], lengths + [2]
        mask = torch.ones(1, len(packed_ids), dtype=torch.long)
        mask[0, -2:] = 0
    positions = torch.cat([torch.arange(n) for n in lengths])[None]
    packed = run(packed_ids, torch.cat([pixels_a, pixels_c]), positions, mask)
    for i, logits in enumerate(separate):
        start = sum(lengths[:i])
        assert torch.allclose(packed[start : start + lengths[i]], logits, atol=1e-4), f"document {i} differs"

    # Control: with continuous positions the later documents see the earlier ones and their logits change.
    leaky = run(packed_ids, torch.cat([pixels_a, pixels_c]), torch.arange(len(packed_ids))[None], mask)
    start_b = lengths[0]
    assert not torch.allclose(leaky[start_b : start_b + lengths[1]], separate[1], atol=1e-3)


def test_packed_loss_equals_token_weighted_separate_losses(tokenizer):
    model = make_model(tokenizer)
    processor = MM1Processor.from_config(model.config, tokenizer)
    docs = [processor.encode_document([t]) for t in ("a red square", "two circles and one square")]
    ids = docs[0].input_ids + docs[1].input_ids
    labels = docs[0].labels + docs[1].labels
    positions = torch.cat([torch.arange(len(d.input_ids)) for d in docs])[None]
    with torch.no_grad():
        packed = model(
            input_ids=torch.tensor([ids]), labels=torch.tensor([labels]), position_ids=positions
        ).loss
        parts = [
            model(input_ids=torch.tensor([d.input_ids]), labels=torch.tensor([d.labels])).loss for d in docs
        ]
    # Each document's first label is IGNORE_INDEX (<s>), so no token predicts across the boundary.
    counts = [len(d.input_ids) - 1 for d in docs]
    expected = sum(loss * n for loss, n in zip(parts, counts, strict=True)) / sum(counts)
    assert torch.allclose(packed, expected, atol=1e-5)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_padding_pseudo_document_keeps_gradients_finite(tokenizer, attn):
    """mm1.data.packing pads a row with a masked pseudo-document (positions 0, 1, 2, ...): its queries see no
    key at all, which must not turn into NaN logits or gradients."""
    model = make_model(tokenizer).train()
    model.set_attn_implementation(attn)
    ids = torch.tensor([[1, 20, 21, 22, 2, 1, 30, 31, 2, 0, 0, 0]])
    positions = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 3, 0, 1, 2]])
    mask = torch.tensor([[1] * 9 + [0] * 3])
    labels = ids.clone()
    labels[0, [0, 5, 9, 10, 11]] = -100
    out = model(input_ids=ids, position_ids=positions, attention_mask=mask, labels=labels)
    out.loss.backward()
    assert out.logits.isfinite().all() and out.loss.isfinite()
    assert all(p.grad.isfinite().all() for p in model.parameters() if p.grad is not None)
