"""The optimizer step shared by the Ray Train loop and the benchmark (one process, no Ray)."""

from __future__ import annotations

import pytest
import torch
from train_helpers import concat, make_batch, make_model, make_tokenizer, sgd

from mm1.model.modeling import causal_lm_loss
from mm1.train.step import label_tokens, train_step

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


def _batches(model, seeds: list[int], rows: int = 2) -> list[dict]:
    cfg = model.config
    return [make_batch(s, rows, 24, cfg.image_token_id, cfg.text_config.vocab_size) for s in seeds]


def test_accumulated_micro_batches_equal_one_batch(tokenizer):
    """Two micro-batches with different label-token counts give the gradient of their concatenation: the
    loss is the mean over all label tokens of the step, not the mean of the two micro-batch means."""
    accumulated, whole = make_model(tokenizer), make_model(tokenizer)
    micro = _batches(accumulated, [1, 2])
    assert label_tokens(micro[0]) != label_tokens(micro[1]), "the test needs unequal micro-batches"

    stats = train_step(accumulated, *sgd(accumulated), micro, device=CPU, grad_clip=1e9)
    reference = train_step(whole, *sgd(whole), [concat(micro)], device=CPU, grad_clip=1e9)

    assert stats.loss == pytest.approx(reference.loss, rel=1e-5)
    assert stats.tokens == reference.tokens == sum(int(b["attention_mask"].sum()) for b in micro)
    assert stats.sub_images == 4
    for (name, a), b in zip(accumulated.named_parameters(), whole.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)


def test_step_reports_loss_before_the_update_and_the_lr_it_used(tokenizer):
    model = make_model(tokenizer)
    batch = _batches(model, [3])[0]
    with torch.no_grad():
        expected = causal_lm_loss(model(**batch).logits, batch["labels"]).item()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 ** (s + 1))
    stats = train_step(model, optimizer, scheduler, [batch], device=CPU, grad_clip=1e9)
    assert stats.loss == pytest.approx(expected, rel=1e-5)
    assert stats.lr == 0.5 and optimizer.param_groups[0]["lr"] == 0.25
    assert all(p.grad is None for p in model.parameters()), "gradients are cleared after the step"


def test_loss_only_runs_the_head_at_label_positions_with_the_full_forwards_loss_and_gradients(tokenizer):
    model = make_model(tokenizer)
    batch = _batches(model, [5])[0]
    full = model(**batch, num_items_in_batch=7.0)
    full.loss.backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    head_rows = []
    head = model.language_model.get_output_embeddings()
    handle = head.register_forward_hook(lambda module, args, out: head_rows.append(args[0].shape[:-1]))
    out = model(**batch, num_items_in_batch=7.0, loss_only=True)
    out.loss.backward()
    assert out.logits is None
    assert head_rows == [torch.Size([label_tokens(batch)])]
    assert label_tokens(batch) < batch["attention_mask"].sum()  # the test needs positions without a label
    torch.testing.assert_close(out.loss, full.loss, atol=1e-6, rtol=1e-5)
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, expected[name], atol=1e-6, rtol=1e-4, msg=name)
    head_rows.clear()
    assert model(**batch).logits.shape[:2] == batch["input_ids"].shape  # the head's filter is gone again
    assert head_rows == [batch["input_ids"].shape]
    handle.remove()
    with pytest.raises(ValueError, match="loss_only needs labels"):
        model(**{k: v for k, v in batch.items() if k != "labels"}, loss_only=True)


def test_grad_clip_bounds_the_update(tokenizer):
    model = make_model(tokenizer)
    before = [p.detach().clone() for p in model.parameters()]
    stats = train_step(model, *sgd(model), _batches(model, [4]), device=CPU, grad_clip=0.01)
    assert stats.grad_norm > 0.01  # the norm before clipping is reported
    moved = torch.sqrt(
        sum(((p.detach() - b) ** 2).sum() for p, b in zip(model.parameters(), before, strict=True))
    )
    assert moved.item() == pytest.approx(0.01, rel=1e-3)  # SGD at lr 1: the step is the clipped gradient


def test_activation_checkpointing_gives_the_same_step(tokenizer):
    from mm1.train.parallel import wrap_model

    plain = wrap_model(make_model(tokenizer), "ddp", "fp32", CPU)
    recomputed = wrap_model(make_model(tokenizer), "ddp", "fp32", CPU, activation_checkpointing="full")
    assert recomputed.is_activation_checkpointing
    micro = _batches(plain, [5, 6])
    for model in (plain, recomputed):
        model.train()
        train_step(model, *sgd(model), micro, device=CPU, grad_clip=1e9)
    for (name, a), b in zip(plain.named_parameters(), recomputed.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)
