"""Selection policies as training components: real steps on a tiny model, updates checked against
values computed here, and the draws' statistics."""

import math

import numpy as np
import pytest
import torch

from ist_bench import zoo
from ist_bench.errors import UsageError
from ist_bench.methods import MethodSpec, apply_method
from ist_bench.selection import ILA, IST, LIFT, LISA, RST, ISTCode, LayerGate, SelectionPolicy, make_policy

CHI2_7DF_P001 = 24.322   # chi-square critical value, 7 degrees of freedom, p = 0.001


def unbound(policy: SelectionPolicy, n_layers: int) -> SelectionPolicy:
    """A policy's draws without a model (selection only: no gate, no held-out batch)."""
    policy.n_layers = n_layers
    policy.setup()
    return policy


def tiny(method="lora", seed=0):
    torch.manual_seed(seed)
    return apply_method(zoo.build_model(zoo.load_config("tiny-llama"), device="cpu", dtype=torch.float32),
                        MethodSpec(name=method, dropout=0.0))


def batch(n=2, T=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 512, (n, T), generator=g)
    return {"input_ids": ids, "labels": ids}


def randomize_adapters(model, std=0.2):
    """Give LoRA's B (zero at start) and the adapters' up projections values, so adapters matter."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad and ("lora_B" in name or ".up." in name or "lora_E" in name):
                p.normal_(0, std)


# -- draws ------------------------------------------------------------------------------------
def test_rst_draws_n_u_distinct_layers_per_seed_and_step():
    draws = [unbound(RST(seed=7), 32).select(s) for s in range(50)]
    assert all(len(d) == 8 == len(set(d)) and all(0 <= i < 32 for i in d) for d in draws)
    assert draws == [unbound(RST(seed=7), 32).select(s) for s in range(50)]      # same on every rank
    assert len({tuple(d) for d in draws}) > 40                                    # re-drawn each step
    # seed 1 is not seed 0 shifted by a step
    seed0 = [tuple(unbound(RST(seed=0), 32).select(s)) for s in range(50)]
    seed1 = [tuple(unbound(RST(seed=1), 32).select(s)) for s in range(50)]
    assert not set(seed1[:-1]) & set(seed0[1:])


def test_fraction_is_validated_and_rounded_half_up():
    # the paper's N_u = 25% of L: 32 -> 8, 40 -> 10, 28 -> 7, 30 -> 8 (7.5 rounds up)
    assert [unbound(RST(), L).n_active for L in (32, 40, 28, 30, 22, 10)] == [8, 10, 7, 8, 6, 3]
    assert unbound(RST(layers=0.01), 4).n_active == 1
    assert unbound(IST(), 32).n_candidate_layers == 16


@pytest.mark.parametrize("name,opts,message", [
    ("rst", {"layers": 0}, "--select rst: layers must be in (0, 1], got 0"),
    ("ist", {"layers": 1.5}, "--select ist: layers must be in (0, 1], got 1.5"),
    ("ist", {"candidates": 0}, "--select ist: candidates must be in (0, 1], got 0"),
    ("ist", {"beta": 1.2}, "--select ist: beta must be in [0, 1], got 1.2"),
    ("ist", {"beta": -0.1}, "--select ist: beta must be in [0, 1], got -0.1"),
    ("ist", {"interval": 0}, "--select ist: interval must be >= 1, got 0"),
    ("ist", {"interval": "2.5"}, "--select ist: interval must be an integer in ASCII digits (e.g. 10), got '2.5'"),
    ("ist", {"n_candidates": 1}, "--select ist: n_candidates must be >= 2, got 1"),
    ("ist", {"gamma": 2}, "unknown option for --select ist 'gamma'; valid: layers, candidates, beta"),
    ("lisa", {"gamma": 0}, "--select lisa: gamma must be >= 1, got 0"),
    ("ila", {"freeze": 1}, "--select ila: freeze must be in (0, 1), got 1"),
    ("lift", {"order": "sideways"}, "unknown --select lift order 'sideways'; valid: front, back, random"),
    ("none", {"layers": 0.5}, "unknown option for --select none 'layers'; valid: (none)"),
    ("ist2", {}, "unknown selection policy 'ist2'; valid: none, rst, ist, ist-code, lisa, ila, lift"),
])
def test_bad_policy_settings_are_usage_errors(name, opts, message):
    with pytest.raises(UsageError) as e:
        make_policy(name, opts)
    assert message in str(e.value)


def test_ist_with_mu_zero_selects_layers_uniformly():
    policy = unbound(IST(mu=0.0, layers=0.25, seed=3), 8)
    counts = np.bincount(np.concatenate([policy.select(s) for s in range(4000)]), minlength=8)
    expected = 4000 * 2 / 8
    assert ((counts - expected) ** 2 / expected).sum() < CHI2_7DF_P001
    # the same statistic does see a preference once importance is uneven
    policy.importance[:] = [3, 0, 0, 0, 0, 0, 0, -3]
    skewed = np.bincount(np.concatenate([policy.select(s) for s in range(4000)]), minlength=8)
    assert ((skewed - expected) ** 2 / expected).sum() > 10 * CHI2_7DF_P001
    assert skewed[0] > expected > skewed[7]


def test_lisa_redraws_gamma_layers_every_interval():
    policy = unbound(LISA(gamma=2, interval=5, seed=1), 32)
    draws = [policy.select(s) for s in range(50)]
    assert all(len(d) == 2 for d in draws)
    periods = [draws[i:i + 5] for i in range(0, 50, 5)]
    assert all(all(d == p[0] for d in p) for p in periods)                 # fixed within a period
    assert len({tuple(p[0]) for p in periods}) > 5                         # re-drawn between periods


def test_lift_moves_one_block_at_a_time_in_each_order():
    front = unbound(LIFT(order="front", interval=2), 4)
    assert [front.select(s) for s in range(10)] == [[0], [0], [1], [1], [2], [2], [3], [3], [0], [0]]
    back = unbound(LIFT(order="back", interval=1), 4)
    assert [back.select(s)[0] for s in range(5)] == [3, 2, 1, 0, 3]
    rand = unbound(LIFT(order="random", interval=1, seed=5), 6)
    first_pass = [rand.select(s)[0] for s in range(6)]
    assert sorted(first_pass) == list(range(6))                            # every block once per pass
    assert [rand.select(s)[0] for s in range(6, 12)] != first_pass          # a new permutation next pass


def test_worst_draw_candidates_are_layer_zero_with_the_top_or_the_next_layers_and_the_top_layers():
    """The top layers too: under gradient checkpointing a higher draw peaks higher (docs/measurement.md)."""
    assert unbound(IST(), 8).worst_cases() == [[0, 7], [0, 1], [6, 7]]
    assert unbound(LIFT(), 8).worst_cases() == [[0], [7]]
    assert unbound(LISA(gamma=3), 8).worst_cases() == [[0, 6, 7], [0, 1, 2], [5, 6, 7]]
    assert unbound(SelectionPolicy(), 8).worst_cases() == [None]
    assert unbound(ILA(), 8).worst_cases() == [None]                      # its warm-up trains every layer
    full = unbound(LISA(gamma=3), 8)
    full.grad_below = True                                                 # embeddings train: the top layers
    assert full.worst_cases() == [[5, 6, 7]]


def test_a_model_whose_embeddings_train_is_seen_as_training_below_the_blocks():
    assert LISA().bind(tiny("full"), None).grad_below
    assert not LISA().bind(tiny("lora"), None).grad_below


# -- the gate and the optimizer-state policy --------------------------------------------------
@pytest.mark.parametrize("policy", [RST(layers=0.5, seed=2), IST(layers=0.5, seed=2)])
def test_after_a_real_step_only_the_selected_layers_peft_parameters_changed(policy):
    model = tiny("lora")
    randomize_adapters(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    policy.bind(model, opt, eval_batch=batch())
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    before = [[p.detach().clone() for p in block] for block in policy.gate.blocks]
    for step in range(3):
        policy.begin_step(step)
        chosen = policy.gate.active
        assert len(chosen) == 2
        snapshot = [[p.detach().clone() for p in block] for block in policy.gate.blocks]
        model(**batch(seed=10 + step)).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        for i, block in enumerate(policy.gate.blocks):
            changed = [not torch.equal(p, b) for p, b in zip(block, snapshot[i], strict=True)]
            assert all(changed) if i in chosen else not any(changed), (step, i)
    assert any(not torch.equal(p, b) for blk, old in zip(policy.gate.blocks, before, strict=True)
               for p, b in zip(blk, old, strict=True))
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n                     # base weights never move


@pytest.mark.parametrize("state,kept", [("keep", True), ("reset", False)])
def test_optimizer_state_policy_keeps_or_frees_a_deselected_layers_moments(state, kept):
    model = tiny("lora")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    gate = LayerGate(model, opt, optimizer_state=state)
    for active in ([0, 1], [2, 3]):
        gate.apply(active)
        model(**batch()).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    gate.apply([2, 3])
    assert all((p in opt.state) == kept for i in (0, 1) for p in gate.blocks[i])
    assert all(p in opt.state for i in (2, 3) for p in gate.blocks[i])


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


def test_lisa_with_full_finetuning_always_trains_embeddings_and_head():
    model = tiny("full")
    policy = LISA(gamma=1, interval=1).bind(model, torch.optim.AdamW(model.parameters()))
    policy.begin_step(0)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    layer = policy.gate.active[0]
    assert {"model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"} <= trainable
    assert {n.split(".")[2] for n in trainable if n.startswith("model.layers.")} == {str(layer)}


def test_ist_refuses_a_model_without_peft_outputs():
    model = tiny("full")
    with pytest.raises(UsageError, match="--select ist scales each layer's PEFT output"):
        IST().bind(model, torch.optim.AdamW(model.parameters()), eval_batch=batch())


# -- suppression ------------------------------------------------------------------------------
def _module_output(model, method):
    """The first adapted MLP projection of layer 0 and a function giving its output for x."""
    block = zoo.locate_layers(model)[0]
    module = block.mlp.up_proj
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(0))
    return block, module, x


@pytest.mark.parametrize("method", ["lora", "adalora", "series", "parallel"])
def test_suppression_scales_each_methods_peft_output_by_beta_and_is_undone(method):
    from ist_bench.methods import scaled_adapters
    model = tiny(method).eval()
    randomize_adapters(model)
    block, module, x = _module_output(model, method)
    base = module.base_layer if hasattr(module, "base_layer") else module.base
    with torch.no_grad():
        full, plain = module(x), base(x)
        with scaled_adapters([block], 0.25) as n:
            scaled = module(x)
        assert n > 0
        after = module(x)
    assert not torch.allclose(full, plain)                       # the adapter matters
    torch.testing.assert_close(scaled - plain, 0.25 * (full - plain), rtol=1e-5, atol=1e-6)
    assert torch.equal(after, full)                              # restored exactly


def test_suppression_of_dora_scales_the_low_rank_part_inside_the_norm():
    """DoRA: out = m / ||W + s B A||_row * (W + s B A) x. Suppression multiplies s by beta."""
    from ist_bench.methods import scaled_adapters
    model = tiny("dora").eval()
    randomize_adapters(model)
    block, module, x = _module_output(model, "dora")
    W, A, B = module.base_layer.weight, module.lora_A["default"].weight, module.lora_B["default"].weight
    m, s = module.lora_magnitude_vector["default"].weight, module.scaling["default"]

    def dora(scale):
        merged = W + scale * B @ A
        return (m / merged.norm(dim=1)) * (x @ merged.T)
    with torch.no_grad():
        full = module(x)
        torch.testing.assert_close(full, dora(s), rtol=1e-4, atol=1e-5)
        with scaled_adapters([block], 0.25):
            torch.testing.assert_close(module(x), dora(0.25 * s), rtol=1e-4, atol=1e-5)
        assert torch.equal(module(x), full)                      # restored exactly


def test_suppression_is_restored_when_the_forward_raises():
    from ist_bench.methods import scaled_adapters
    model = tiny("lora")
    layers = model.base_model.model.model.layers
    saved = [dict(m.scaling) for m in layers.modules() if hasattr(m, "scaling") and isinstance(m.scaling, dict)]
    with pytest.raises(RuntimeError, match="boom"), scaled_adapters(layers, 0.0):
        raise RuntimeError("boom")
    now = [dict(m.scaling) for m in layers.modules() if hasattr(m, "scaling") and isinstance(m.scaling, dict)]
    assert now == saved and saved[0]["default"] == 64 / 32


def test_an_importance_round_leaves_outputs_rng_grads_and_optimizer_untouched():
    model = tiny("lora")
    randomize_adapters(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    policy = IST(seed=0).bind(model, opt, eval_batch=batch())
    model.train()
    model.eval()
    with torch.no_grad():
        before = model(**batch(seed=5)).logits
    model.train()
    rng_before = torch.get_rng_state()
    policy.update_importance(10)
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert model.training and not opt.state and all(p.grad is None for p in model.parameters())
    assert len(policy.rounds) == 1 and np.abs(policy.importance).sum() > 0
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(**batch(seed=5)).logits, before)


# -- importance updates against values computed here ---------------------------------------
def _fake_losses(policy, table):
    """Replace the held-out forward by a known function of the scaled layers; log the calls."""
    calls = []

    def loss(scaled, factor):
        calls.append((sorted(scaled), factor))
        return table(sorted(scaled))
    policy.heldout_loss = loss
    return calls


def test_ist_update_changes_exactly_the_candidate_layers_by_mu_times_reward():
    policy = unbound(IST(mu=10.0, n_candidates=3, candidates=0.5, beta=0.25, seed=4), 8)
    policy.importance[:] = np.linspace(-1, 1, 8)
    start = policy.importance.copy()
    calls = _fake_losses(policy, lambda scaled: 1.0 + 0.1 * sum(scaled))
    policy.update_importance(20)
    sets = policy.rounds[-1]["candidates"]
    assert len(sets) == 3 and all(len(c) == 4 for c in sets)
    # each candidate's forward scaled every layer *outside* it by beta
    assert [c for c, _ in calls] == [[i for i in range(8) if i not in s] for s in sets]
    assert all(f == 0.25 for _, f in calls)
    losses = np.array([1.0 + 0.1 * sum(i for i in range(8) if i not in s) for s in sets])
    rewards = np.exp(-losses) - np.exp(-losses).mean()
    expected = start.copy()
    for s, r in zip(sets, rewards, strict=True):
        expected[s] += 10.0 * r
    np.testing.assert_allclose(policy.importance, expected, rtol=0, atol=1e-12)
    untouched = [i for i in range(8) if not any(i in s for s in sets)]
    assert all(policy.importance[i] == start[i] for i in untouched)


def test_ist_code_update_suppresses_the_candidates_and_scales_by_p_one_minus_p():
    policy = unbound(ISTCode(mu=100.0, seed=4), 8)
    policy.importance[:] = np.linspace(-2, 2, 8)
    start = policy.importance.copy()
    calls = _fake_losses(policy, lambda scaled: 2.0 - 0.05 * sum(scaled))
    policy.update_importance(30)
    sets = policy.rounds[-1]["candidates"]
    assert [c for c, _ in calls] == sets                           # the candidates themselves are scaled
    losses = np.array([2.0 - 0.05 * sum(s) for s in sets])
    rewards = np.exp(-losses) - np.exp(-losses).mean()
    sig = 1 / (1 + np.exp(-start))
    expected = start.copy()
    for s, r in zip(sets, rewards, strict=True):
        expected[s] += 100.0 * r * sig[s] * (1 - sig[s])
    np.testing.assert_allclose(policy.importance, expected, rtol=0, atol=1e-12)


def test_importance_rounds_fall_every_t_c_steps():
    policy = unbound(IST(interval=10), 8)
    assert [s for s in range(35) if policy.importance_due(s)] == [10, 20, 30]


def _planted(layer=2, steps=40):
    """A tiny LoRA model whose only adapter that matters is `layer`'s, trained on the held-out batch."""
    model = tiny("lora", seed=1)
    held = batch(n=4, T=32, seed=9)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-2)
    gate = LayerGate(model, opt)
    gate.apply([layer])
    for _ in range(steps):
        model(**held).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    gate.apply(None)
    return model, held


@pytest.mark.parametrize("cls,planted_rank", [(IST, 0), (ISTCode, -1)])
def test_ist_finds_the_one_layer_whose_adapter_matters(cls, planted_rank):
    """Paper form: the planted layer gets the highest importance; the code's form scores how safe a
    layer is to suppress, so the planted layer gets the lowest score."""
    model, held = _planted(layer=2)
    policy = cls(seed=0, mu=10.0).bind(model, None, eval_batch=held)
    for r in range(1, 9):
        policy.update_importance(10 * r)
    order = np.argsort(-policy.importance, kind="stable")
    assert order[planted_rank] == 2, policy.importance
    others = np.delete(policy.importance, 2)
    assert (policy.importance[2] > others.max()) if planted_rank == 0 else (policy.importance[2] < others.min())


def test_ila_freezes_the_least_important_layers_after_its_warmup():
    model = tiny("lora")
    policy = ILA(warmup=3, freeze=0.5).bind(model, None)
    grads = {0: 0.1, 1: 3.0, 2: 0.01, 3: 1.0}                      # per-layer gradient scale
    expected_score = np.zeros(4)
    for step in range(3):
        policy.begin_step(step)
        assert policy.gate.active is None                           # every layer trains in the window
        for i, block in enumerate(policy.gate.blocks):
            for p in block:
                p.grad = torch.full_like(p, grads[i])
            expected_score[i] += abs(sum(float((p.detach() * p.grad).sum()) for p in block))
        policy.after_backward(step)
    np.testing.assert_allclose(policy.importance, expected_score, rtol=1e-5)
    policy.begin_step(3)
    frozen = sorted(np.argsort(expected_score)[:2].tolist())
    assert policy.gate.active == sorted(set(range(4)) - set(frozen))
    policy.begin_step(50)
    assert policy.gate.active == sorted(set(range(4)) - set(frozen))     # fixed for good


def test_adalora_rank_allocation_survives_frozen_layers():
    model = tiny("adalora")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    policy = RST(layers=0.5, seed=0).bind(model, opt)
    for step in range(3):
        policy.begin_step(step)
        model(**batch()).loss.backward()
        opt.step()
        model.base_model.update_and_allocate(step)
        opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        assert math.isfinite(float(model(**batch()).loss))


def test_a_non_finite_held_out_loss_is_skipped_with_a_warning_in_the_rounds_record():
    policy = unbound(IST(mu=10.0, n_candidates=3, seed=4), 8)
    losses = iter([1.0, float("nan"), 2.0])
    policy.heldout_loss = lambda scaled, factor: next(losses)
    with pytest.warns(UserWarning, match="1 of 3 held-out losses not finite"):
        policy.update_importance(10)
    r = policy.rounds[-1]
    assert r["skipped"] == [1] and r["losses"][1] is None and "labels all -100" in r["warning"]
    sets = r["candidates"]
    e = np.exp(-np.array([1.0, 2.0]))
    expected = np.zeros(8)
    for s, rew in zip([sets[0], sets[2]], e - e.mean(), strict=True):
        expected[s] += 10.0 * rew
    np.testing.assert_allclose(policy.importance, expected, atol=1e-12)
    assert np.isfinite(policy.select(11)).all()                       # the next draw still works


def test_a_held_out_batch_with_every_label_masked_gives_a_skipped_round_not_a_crash():
    model = tiny("lora")
    held = batch()
    held["labels"] = torch.full_like(held["labels"], -100)
    policy = IST(seed=0).bind(model, None, eval_batch=held)
    with pytest.warns(UserWarning, match="3 of 3 held-out losses not finite"):
        policy.update_importance(10)
    assert not np.abs(policy.importance).any() and len(policy.select(11)) == 1


def _chi2(counts, expected):
    return float(((counts - expected) ** 2 / expected).sum())


def test_rst_and_lisa_draw_each_layer_uniformly_chi_square():
    for policy, draws in ((unbound(RST(layers=0.25, seed=11), 8), range(4000)),
                          (unbound(LISA(gamma=2, interval=1, seed=11), 8), range(4000))):
        counts = np.bincount(np.concatenate([policy.select(s) for s in draws]), minlength=8)
        assert _chi2(counts, 4000 * 2 / 8) < CHI2_7DF_P001, type(policy).__name__


def test_ist_code_draws_update_sets_weighted_by_sigmoid_of_minus_score_chi_square():
    """Sequential weighted draws without replacement: for N_u = 1 each layer's frequency is exactly
    sigmoid(-s_i) / sum; computed here, not by the code."""
    policy = unbound(ISTCode(layers=0.125, seed=5), 8)      # N_u = 1 of 8
    policy.importance[:] = np.linspace(-2, 2, 8)
    w = 1 / (1 + np.exp(policy.importance))
    counts = np.bincount(np.concatenate([policy.select(s) for s in range(8000)]), minlength=8)
    assert _chi2(counts, 8000 * w / w.sum()) < CHI2_7DF_P001
    uniform = np.full(8, 1000.0)
    assert _chi2(counts, uniform) > 10 * CHI2_7DF_P001                 # not uniform


def test_ist_paper_form_draw_frequencies_match_uniform_p_over_sigmoid_chi_square():
    """p_i ~ U(0, sigmoid(I_i)), N_u = 1: P(layer i max) computed here by numeric integration."""
    policy = unbound(IST(layers=0.125, seed=6), 8)
    policy.importance[:] = np.linspace(-1.5, 1.5, 8)
    c = 1 / (1 + np.exp(-policy.importance))
    x = np.linspace(0, 1, 200001)
    cdf = np.clip(x[:, None] / c[None, :], 0, 1)
    prob = np.array([np.trapezoid((x <= c[i]) / c[i] * np.prod(np.delete(cdf, i, axis=1), axis=1), x)
                     for i in range(8)])
    counts = np.bincount(np.concatenate([policy.select(s) for s in range(8000)]), minlength=8)
    assert abs(prob.sum() - 1) < 1e-3
    assert _chi2(counts, 8000 * prob) < CHI2_7DF_P001


def test_candidate_draws_use_their_own_stream_not_the_selections():
    policy = unbound(IST(seed=3), 8)
    before = [policy.select(s) for s in range(20)]
    policy.heldout_loss = lambda scaled, factor: 1.0                   # rewards 0: importance unchanged
    policy.update_importance(10)
    assert [policy.select(s) for s in range(20)] == before
    g = np.random.default_rng([3, 10, 1])                              # (seed, step, stream 1)
    assert policy.rounds[-1]["candidates"][0] == sorted(g.choice(8, size=4, replace=False).tolist())


def test_frozen_layers_never_move_with_zeroed_grads_and_weight_decay():
    """zero_grad(set_to_none=False) keeps zero tensors; AdamW would decay any parameter with a grad.
    The gate must leave a deselected layer without one."""
    model = tiny("lora")
    randomize_adapters(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.5)
    policy = RST(layers=0.25, seed=1).bind(model, opt)
    for step in range(6):
        policy.begin_step(step)
        chosen = policy.gate.active
        before = [[p.detach().clone() for p in b] for b in policy.gate.blocks]
        model(**batch(seed=step)).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=False)
        for i, block in enumerate(policy.gate.blocks):
            if i not in chosen:
                assert all(torch.equal(p, q) for p, q in zip(block, before[i], strict=True)), (step, i)
