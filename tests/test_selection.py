import pytest
import torch

from ist_bench import zoo
from ist_bench.errors import UsageError
from ist_bench.methods import MethodSpec, apply_method
from ist_bench.selection import RST, LayerGate, make_policy


def test_rst_draws_n_u_distinct_layers_reproducibly():
    policy = RST(32, 0.25, seed=7)
    draws = [policy.select(s) for s in range(50)]
    assert all(len(d) == 8 == len(set(d)) and all(0 <= i < 32 for i in d) for d in draws)
    assert draws == [RST(32, 0.25, seed=7).select(s) for s in range(50)]   # same on every rank
    assert len({tuple(d) for d in draws}) > 40                              # re-drawn each step
    counts = torch.bincount(torch.tensor(sum(draws, [])), minlength=32)
    assert counts.min() > 0                                                  # every layer gets picked


def test_fraction_is_validated_and_rounded():
    # the paper's N_u = 25% of L: 32 -> 8, 40 -> 10, 28 -> 7, 30 -> 8 (7.5 rounds up); halves round up
    assert [RST(L, 0.25).n_active for L in (32, 40, 28, 30, 22, 10)] == [8, 10, 7, 8, 6, 3]
    assert RST(4, 0.01).n_active == 1
    for bad in (0, -0.5, 1.5):
        with pytest.raises(UsageError, match="--layers must be a fraction in"):
            RST(32, bad)
    with pytest.raises(UsageError, match="unknown selection policy 'ist2'"):
        make_policy("ist2", 32)


def test_gate_trains_only_the_selected_layers_in_a_real_step():
    torch.manual_seed(0)
    model = apply_method(zoo.build_model(zoo.load_config("tiny-llama"), device="cpu", dtype=torch.float32),
                         MethodSpec(name="lora"))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    gate = LayerGate(model)
    before = [[p.detach().clone() for p in block] for block in gate.blocks]
    gate.apply([1, 3])
    ids = torch.randint(0, 512, (1, 16))
    model(input_ids=ids, labels=ids).loss.backward()
    for i, block in enumerate(gate.blocks):
        assert all((p.grad is not None) == (i in (1, 3)) for p in block)
    opt.step()
    for i, block in enumerate(gate.blocks):
        changed = any(not torch.equal(p, b) for p, b in zip(block, before[i], strict=False))
        assert changed == (i in (1, 3))
        assert all((p in opt.state) == (i in (1, 3)) for p in block)


def test_gate_clears_stale_grads_of_layers_it_freezes():
    model = apply_method(zoo.build_model(zoo.load_config("tiny-llama"), device="meta"), MethodSpec(name="series"))
    gate = LayerGate(model)
    for block in gate.blocks:
        for p in block:
            p.grad = torch.zeros_like(p)
    gate.apply([2])
    assert [all(p.grad is not None and p.requires_grad for p in b) for b in gate.blocks] == [False, False, True, False]
    gate.apply(None)
    assert all(p.requires_grad for b in gate.blocks for p in b)
