"""The per-stage GPU-path options on CPU with tiny models (issue 19.1): activation checkpointing (none,
selective, full), torch.compile per block, FSDP2's mixed-precision policy on every block and the root, CPU
offload, fused AdamW. Compiled tests use the aot_eager backend: Dynamo and AOTAutograd trace and
differentiate the blocks exactly as with inductor, without its C++ code generation (~40 s here)."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
from train_helpers import make_batch, make_model, make_tokenizer

from mm1.model.modeling import causal_lm_loss
from mm1.train.parallel import SELECTIVE_AC_EVERY, layer_lists, wrap_model
from mm1.train.schedule import build_optimizer, fused_supported
from mm1.train.step import train_step

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


@pytest.fixture
def no_compiled_state():
    import torch._dynamo

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    yield torch._dynamo.utils.counters
    torch._dynamo.reset()


@pytest.fixture(scope="module")
def one_process_group():
    """A gloo group of one process, so FSDP2 shards in this process (over a mesh of one)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def _batch(model, seed: int = 0) -> dict:
    cfg = model.config
    return make_batch(seed, 2, 24, cfg.image_token_id, cfg.text_config.vocab_size)


def _loss_and_grads(model, batch) -> tuple[float, dict[str, torch.Tensor]]:
    model.train()
    loss = causal_lm_loss(model(**batch).logits, batch["labels"])
    loss.backward()
    grads = {
        n: p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
        for n, p in model.named_parameters()
    }
    return loss.item(), grads


def _constant(optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)


def _assert_same(reference: tuple, got: tuple) -> None:
    assert got[0] == pytest.approx(reference[0], rel=1e-5)
    assert set(got[1]) == set(reference[1])
    for name, grad in reference[1].items():
        torch.testing.assert_close(got[1][name], grad, atol=1e-6, rtol=1e-4, msg=name)


@pytest.fixture(scope="module")
def reference(tokenizer):
    """Loss and gradients of one batch through the plain model: every option must reproduce them."""
    model = make_model(tokenizer)
    return _loss_and_grads(model, _batch(model))


@pytest.mark.parametrize("mode", ["selective", "full"])
def test_checkpointing_recomputes_its_blocks_and_changes_nothing_else(mode, tokenizer, reference):
    model = wrap_model(make_model(tokenizer), "ddp", "fp32", CPU, activation_checkpointing=mode)
    calls: dict[str, int] = {}
    for t, layers in enumerate(layer_lists(model)):
        for i, block in enumerate(layers):
            first = next(block.children())  # counts the block's forwards: twice when recomputed in backward
            key = f"{t}.{i}"
            first.register_forward_hook(lambda *_, key=key: calls.__setitem__(key, calls.get(key, 0) + 1))

    _assert_same(reference, _loss_and_grads(model, _batch(model)))
    for t, layers in enumerate(layer_lists(model)):
        for i, block in enumerate(layers):
            recomputed = mode == "full" or (i + 1) % SELECTIVE_AC_EVERY == 0
            assert block.gradient_checkpointing == recomputed
            assert calls[f"{t}.{i}"] == (2 if recomputed else 1), f"tower {t} block {i}"
    assert len(layer_lists(model)) == 2, "vision tower and LLM"


def test_unknown_checkpointing_mode_is_refused(tokenizer):
    with pytest.raises(ValueError, match="none, selective, full"):
        wrap_model(make_model(tokenizer), "ddp", "fp32", CPU, activation_checkpointing=True)
    with pytest.raises(ValueError, match="cpu_offload needs strategy fsdp"):
        wrap_model(make_model(tokenizer), "ddp", "fp32", CPU, cpu_offload=True)


def test_compiled_blocks_give_the_same_loss_and_gradients(tokenizer, reference, no_compiled_state):
    """Every block compiled (after selective checkpointing, as torchtitan orders them), without graph
    breaks; the same loss and gradients as the eager model."""
    model = make_model(tokenizer)
    wrap_model(model, "ddp", "fp32", CPU, "selective", compile=True, compile_backend="aot_eager")
    blocks = [b for layers in layer_lists(model) for b in layers]
    assert len(blocks) == 4 and all(b._compiled_call_impl is not None for b in blocks)
    _assert_same(reference, _loss_and_grads(model, _batch(model)))
    assert not no_compiled_state["graph_break"], dict(no_compiled_state["graph_break"])
    assert no_compiled_state["stats"]["unique_graphs"] >= 2, "the blocks ran compiled"


def test_fsdp_bf16_policy_on_every_block_and_the_root(tokenizer, one_process_group):
    """FSDP2 casts each vision and LLM block and the root (embeddings, connector, head) to bf16 for compute,
    keeps the sharded parameters fp32 and reduces gradients in fp32."""
    from torch.distributed.fsdp import FSDPModule

    model = wrap_model(make_model(tokenizer), "fsdp", "bf16", CPU)
    units = [b for layers in layer_lists(model) for b in layers]
    assert len(units) == 4
    for unit in [*units, model]:
        assert isinstance(unit, FSDPModule)
        policy = unit._get_fsdp_state()._mp_policy
        assert (policy.param_dtype, policy.reduce_dtype) == (torch.bfloat16, torch.float32)

    seen: dict[str, torch.dtype] = {}
    linears = {
        f"block {i}": next(m for m in b.modules() if isinstance(m, torch.nn.Linear))
        for i, b in enumerate(units)
    }
    linears["root"] = model.get_input_embeddings()
    for name, module in linears.items():
        module.register_forward_hook(lambda m, *_, name=name: seen.__setitem__(name, m.weight.dtype))
    model.train()
    batch = _batch(model)
    loss = causal_lm_loss(model(**batch).logits.float(), batch["labels"])
    loss.backward()
    assert seen == dict.fromkeys(linears, torch.bfloat16)
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in model.parameters())


def test_fsdp_with_offload_checkpointing_and_compile_gives_the_same_step(
    tokenizer, reference, one_process_group, no_compiled_state
):
    """Everything at once, in the loop's order (checkpoint, compile, shard with CPU offload): the same loss
    and gradients as the plain model, then a fused AdamW step equal to the unfused one."""
    from torch.distributed.fsdp import CPUOffloadPolicy

    model = wrap_model(
        make_model(tokenizer),
        "fsdp",
        "fp32",
        CPU,
        "full",
        compile=True,
        cpu_offload=True,
        compile_backend="aot_eager",
    )
    assert all(
        isinstance(b._get_fsdp_state()._fsdp_param_group.offload_policy, CPUOffloadPolicy)
        for layers in layer_lists(model)
        for b in layers
    )
    _assert_same(reference, _loss_and_grads(model, _batch(model)))
    model.zero_grad()

    plain = make_model(tokenizer)
    for net, optimizer in (
        (model, build_optimizer(model, 1e-2, 1e-3)),
        (plain, build_optimizer(plain, 1e-2, 1e-3, fused=False)),
    ):
        assert optimizer.defaults["fused"] == (net is model)
        train_step(net, optimizer, _constant(optimizer), [_batch(plain, 1)], device=CPU, grad_clip=1.0)
    for (name, a), b in zip(model.named_parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(a.full_tensor(), b, atol=1e-6, rtol=1e-5, msg=name)


def test_fused_adamw_is_chosen_where_torch_has_it_and_updates_like_foreach(tokenizer):
    """torch has a fused AdamW for CPU as well as CUDA: chosen on both, and three steps of the same gradients
    (decayed and undecayed groups, moments built up) move the weights as the foreach AdamW does. Not chosen
    for a device without the kernel (meta stands in for one) nor for integer tensors."""
    fused_model, foreach_model = make_model(tokenizer), make_model(tokenizer)
    fused = build_optimizer(fused_model, 1e-2, 1e-3)
    foreach = build_optimizer(foreach_model, 1e-2, 1e-3, fused=False)
    assert fused.defaults["fused"] and not foreach.defaults["fused"]
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        for a, b in zip(fused_model.parameters(), foreach_model.parameters(), strict=True):
            a.grad = torch.randn(a.shape, generator=g) * 10 ** torch.randint(-6, 0, (1,), generator=g).item()
            b.grad = a.grad.clone()
        fused.step()
        foreach.step()
    for (name, a), b in zip(fused_model.named_parameters(), foreach_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)
    assert fused_supported([torch.zeros(2), torch.zeros(2, dtype=torch.bfloat16)])
    assert not fused_supported([torch.zeros(2, device="meta")])
    assert not fused_supported([torch.zeros(2, dtype=torch.long)])
