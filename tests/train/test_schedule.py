"""MM1's optimisation recipe: the LR scaling law, warm-up + cosine to 10%, decoupled weight decay."""

from __future__ import annotations

import math

import pytest
import torch
from train_helpers import make_model, make_tokenizer

from mm1.train.schedule import (
    build_optimizer,
    build_scheduler,
    choose_lr,
    scaling_law_lr,
    sync_lr,
    warmup_cosine,
)


@pytest.mark.parametrize(("n", "expected"), [(3e9, 5.8e-5), (30e9, 2.2e-5)])
def test_scaling_law_matches_the_papers_values(n, expected):
    assert scaling_law_lr(int(n)) == pytest.approx(expected, rel=0.02)


def test_scaling_law_is_the_fitted_power_law():
    # lr = e^-0.5535 * N^-0.4214: ten times the parameters -> 10^-0.4214 = 0.379 x the LR
    assert scaling_law_lr(10**10) / scaling_law_lr(10**9) == pytest.approx(10**-0.4214)
    assert scaling_law_lr(1) == pytest.approx(math.exp(-0.5535))
    with pytest.raises(ValueError, match="N > 0"):
        scaling_law_lr(0)


def test_choose_lr_defaults_to_the_law_and_a_tenth_of_it_as_weight_decay():
    lr, wd, why = choose_lr(None, None, 3_000_000_000)
    assert lr == scaling_law_lr(3_000_000_000) and wd == pytest.approx(0.1 * lr)
    assert "scaling law" in why and "0.1 x lr" in why
    assert choose_lr(2e-3, 0.05, 10)[:2] == (2e-3, 0.05)
    lr, wd, _ = choose_lr(1e-5, None, 10)
    assert (lr, wd) == (1e-5, pytest.approx(1e-6))


def test_warmup_then_cosine_to_ten_percent():
    warmup, total = 2000, 200_000
    values = [warmup_cosine(s, warmup, total, 0.1) for s in range(total)]
    assert values[0] == pytest.approx(1 / warmup)
    assert values[warmup - 1] == 1.0  # the peak is reached at the last warm-up step
    assert all(a < b for a, b in zip(values[: warmup - 1], values[1:warmup], strict=True))
    decay = values[warmup - 1 :]
    assert all(a >= b for a, b in zip(decay, decay[1:], strict=False))
    assert values[-1] == pytest.approx(0.1)  # the last step trains at 10% of the peak
    middle = warmup - 1 + (total - warmup) // 2
    assert values[middle] == pytest.approx(0.55, abs=1e-4)  # halfway down the cosine: (1 + 0.1) / 2
    assert warmup_cosine(total + 50, warmup, total, 0.1) == pytest.approx(0.1)


def test_no_warmup_and_scheduler_drives_the_optimizer():
    param = torch.nn.Parameter(torch.zeros(2, 2))
    optimizer = torch.optim.AdamW([param], lr=1.0)
    scheduler = build_scheduler(optimizer, warmup=0, total=4, min_ratio=0.1)
    used = []
    for _ in range(4):
        used.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert used[-1] == pytest.approx(0.1) and used[0] < 1.0
    assert used == sorted(used, reverse=True)


@pytest.fixture(scope="module")
def model():
    return make_model(make_tokenizer())


def test_no_decay_on_norms_biases_and_embeddings(model):
    model.vision_tower.requires_grad_(False)
    try:
        optimizer = build_optimizer(model, lr=1e-3, weight_decay=1e-4)
    finally:
        model.vision_tower.requires_grad_(True)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in optimizer.param_groups[0]["params"]}
    kept = {names[id(p)] for p in optimizer.param_groups[1]["params"]}
    assert optimizer.param_groups[1]["weight_decay"] == 0.0
    assert not any(n.startswith("vision_tower.") for n in decayed | kept), "frozen parameters are left out"
    assert "language_model.model.embed_tokens.weight" in kept
    assert any("norm" in n for n in kept) and not any("norm" in n for n in decayed)
    assert not any(n.endswith(".bias") for n in decayed)
    assert "language_model.lm_head.weight" in decayed  # a projection, not a lookup table
    assert any(n.endswith("q_proj.weight") for n in decayed)
    trainable = {
        n for n, p in model.named_parameters() if p.requires_grad and not n.startswith("vision_tower.")
    }
    assert decayed | kept == trainable and not decayed & kept


def test_weight_decay_is_decoupled_from_the_peak_lr():
    """MM1's lambda = 0.1 x lr shrinks a weight by lambda x schedule per step (Loshchilov & Hutter, Alg. 2),
    not by lr x lambda as torch's AdamW would with weight_decay=lambda (a ~1e-10 no-op at MM1's LRs)."""
    lr, wd, _ = choose_lr(5.8e-5, None, 10)
    layer = torch.nn.Linear(4, 4, bias=False)
    torch.nn.init.ones_(layer.weight)
    optimizer = build_optimizer(layer, lr, wd)
    scheduler = build_scheduler(optimizer, warmup=4, total=10, min_ratio=0.1)
    layer.weight.grad = torch.zeros_like(layer.weight)  # Adam's update is 0: only the decay moves it
    optimizer.step()
    scheduler.step()
    multiplier = warmup_cosine(0, 4, 10, 0.1)
    torch.testing.assert_close(layer.weight, torch.full((4, 4), 1 - wd * multiplier))


def test_continued_run_takes_the_lr_of_the_new_schedule():
    param = torch.nn.Parameter(torch.zeros(1))
    first = torch.optim.AdamW([param], lr=1e-3)
    schedule = build_scheduler(first, warmup=2, total=6, min_ratio=0.1)
    for _ in range(6):
        first.step()
        schedule.step()
    # The loop's order: build both, then restore both.
    second = torch.optim.AdamW([param], lr=1e-3)
    longer = build_scheduler(second, warmup=2, total=10, min_ratio=0.1)
    second.load_state_dict(first.state_dict())
    longer.load_state_dict(schedule.state_dict())
    assert second.param_groups[0]["lr"] == pytest.approx(1e-3 * warmup_cosine(6, 2, 6, 0.1))  # stale
    sync_lr(second, longer)
    assert second.param_groups[0]["lr"] == pytest.approx(1e-3 * warmup_cosine(6, 2, 10, 0.1))
    assert longer.get_last_lr() == [second.param_groups[0]["lr"]]
