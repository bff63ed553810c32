"""bfloat16 parameters stepped through float32 master copies (`--bf16 True` on the CPU): the steps
are those of the float32 optimiser, updates below bfloat16's resolution still add up, and the
masters survive a save and load of the optimiser state."""

from __future__ import annotations

import io

import pytest
import torch

from bunny.train.master_weights import MASTER_KEY, with_master_weights


def bf16_params(*shapes: tuple[int, ...], seed: int = 0) -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(*shape, generator=generator).to(torch.bfloat16)) for shape in shapes]


def set_grads(params: list[torch.Tensor], seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for param in params:
        param.grad = torch.randn(param.shape, generator=generator).to(param.dtype)


def test_steps_are_the_float32_optimiser_steps():
    params = bf16_params((8, 16), (16,))
    reference = [torch.nn.Parameter(p.detach().float()) for p in params]
    groups = [{"params": params[:1], "weight_decay": 0.1}, {"params": params[1:], "weight_decay": 0.0}]
    optimizer = with_master_weights(torch.optim.AdamW, groups, lr=1e-2, fused=True)
    expected = torch.optim.AdamW(
        [{"params": reference[:1], "weight_decay": 0.1}, {"params": reference[1:], "weight_decay": 0.0}], lr=1e-2, fused=True
    )
    for step in range(3):
        set_grads(params, seed=step)
        for ref, param in zip(reference, params):
            ref.grad = param.grad.float()
        optimizer.step()
        expected.step()
        for param in params:
            param.grad = None
    masters = [p for group in optimizer.param_groups for p in group["params"]]
    assert all(m.dtype == torch.float32 for m in masters)
    for master, ref, param in zip(masters, reference, params):
        torch.testing.assert_close(master, ref.detach(), atol=0, rtol=0)
        assert param.dtype == torch.bfloat16
        torch.testing.assert_close(param.detach(), ref.detach().to(torch.bfloat16), atol=0, rtol=0)


def test_updates_below_bfloat16_resolution_add_up():
    """1.0 - 1e-4 rounds back to 1.0 in bfloat16: a bfloat16 SGD never moves, the masters do."""
    ones = [torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16)) for _ in range(2)]
    plain = torch.optim.SGD([ones[0]], lr=1e-4)
    mastered = with_master_weights(torch.optim.SGD, [{"params": [ones[1]]}], lr=1e-4)
    for _ in range(100):
        for param in ones:
            param.grad = torch.ones_like(param)
        plain.step()
        mastered.step()
    assert torch.equal(ones[0].detach(), torch.ones(4, dtype=torch.bfloat16))
    torch.testing.assert_close(ones[1].detach(), torch.full((4,), 0.99, dtype=torch.bfloat16), atol=0, rtol=0)


def test_masters_survive_saving_and_loading_the_state():
    params = bf16_params((8, 16), (16,))
    optimizer = with_master_weights(torch.optim.AdamW, [{"params": params}], lr=1e-3)
    for step in range(2):
        set_grads(params, seed=step)
        optimizer.step()
    masters = [p.detach().clone() for p in optimizer.param_groups[0]["params"]]
    assert any(not torch.equal(m, p.detach().float()) for m, p in zip(masters, params))  # low bits beyond bfloat16
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert len(state[MASTER_KEY]) == 2

    # A resumed run: parameters from the checkpoint (the rounded weights), then the optimiser state.
    resumed = [torch.nn.Parameter(p.detach().clone()) for p in params]
    optimizer2 = with_master_weights(torch.optim.AdamW, [{"params": resumed}], lr=1e-3)
    optimizer2.load_state_dict(state)
    for master, loaded in zip(masters, optimizer2.param_groups[0]["params"]):
        torch.testing.assert_close(loaded, master, atol=0, rtol=0)
    set_grads(params, seed=5)
    set_grads(resumed, seed=5)
    optimizer.step()
    optimizer2.step()
    for a, b in zip(params, resumed):
        torch.testing.assert_close(b.detach(), a.detach(), atol=0, rtol=0)


def test_a_state_without_masters_starts_them_from_the_weights(caplog):
    """A checkpoint of a run without master weights (float32 weights under autocast) resumed here."""
    params = bf16_params((4,))
    optimizer = with_master_weights(torch.optim.AdamW, [{"params": params}], lr=1e-3)
    with torch.no_grad():
        params[0].copy_(torch.arange(4.0))  # the checkpoint's weights, loaded after the optimiser was built
    plain = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(4))], lr=1e-3)
    plain.step()  # no gradient: an empty state
    with caplog.at_level("WARNING", logger="bunny.train.master_weights"):
        optimizer.load_state_dict(plain.state_dict())
    assert "no float32 master weights" in caplog.text
    assert torch.equal(optimizer.param_groups[0]["params"][0], torch.arange(4.0))


def test_a_state_for_other_parameters_is_refused():
    optimizer = with_master_weights(torch.optim.AdamW, [{"params": bf16_params((4,))}], lr=1e-3)
    other = with_master_weights(torch.optim.AdamW, [{"params": bf16_params((4,), (2,))}], lr=1e-3)
    with pytest.raises(ValueError, match="2 master weights do not match this model's 1"):
        optimizer.load_state_dict(other.state_dict())


def test_float32_parameters_are_stepped_directly():
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = with_master_weights(torch.optim.SGD, [{"params": [weight]}], lr=0.5)
    assert optimizer.param_groups[0]["params"][0] is weight
    weight.grad = torch.ones(3)
    optimizer.step()
    assert torch.equal(weight.detach(), torch.full((3,), 0.5))
