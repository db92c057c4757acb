"""The selection contract, as tests that fail when the algorithm is wrong (issue 16's mutants):
importance rounds in eval mode, without grad, off the training RNG; selection fixed within an
optimizer step under gradient accumulation; the Trainer callback reaching `after_backward`; the
`reset` steady step holding the worst draw's optimizer state; candidate draws on their own stream;
duplicate candidate sets; IST's held-out data (fixed or fresh each round)."""

import math

import numpy as np
import pytest
import torch

from ist_bench import zoo
from ist_bench.errors import UsageError
from ist_bench.methods import MethodSpec, apply_method
from ist_bench.selection import ILA, IST, LISA, RST, ISTCode, LayerGate, make_policy


def tiny(method="lora", dropout=0.0, seed=0):
    torch.manual_seed(seed)
    config = zoo.load_config("tiny-llama")
    config.attention_dropout = dropout
    return apply_method(zoo.build_model(config, device="cpu", dtype=torch.float32),
                        MethodSpec(name=method, dropout=dropout))


def batch(n=2, T=16, seed=1):
    ids = torch.randint(0, 512, (n, T), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "labels": ids}


def randomize_adapters(model, std=0.2):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad and "lora_B" in name:
                p.normal_(0, std, generator=torch.Generator().manual_seed(hash(name) % 2**31))


def unbound(policy, n_layers):
    policy.n_layers = n_layers
    policy.setup()
    return policy


# -- the importance round: eval mode, no grad, the training RNG untouched (dropout on) -------------
def _train_with_dropout(round_at: int | None, steps=5):
    """A LoRA model with attention and LoRA dropout 0.1; IST with mu = 0 (a round changes no
    importance, so both runs draw the same layers); the round at `round_at` or none."""
    model = tiny(dropout=0.1)
    randomize_adapters(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    policy = IST(seed=0, mu=0.0, layers=0.5).bind(model, opt, eval_batch=batch(seed=7))
    model.train()
    torch.manual_seed(123)
    losses = []
    for step in range(steps):
        policy.begin_step(step, importance=step == round_at)
        loss = model(**batch(seed=20 + step)).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses, policy


def test_an_importance_round_with_dropout_on_leaves_the_training_losses_bit_identical():
    skipped, _ = _train_with_dropout(None)
    with_round, policy = _train_with_dropout(2)
    assert len(policy.rounds) == 1 and policy.rounds[0]["step"] == 2
    assert with_round == skipped                  # the round drew no dropout mask from the training RNG
    # the check can fail: dropout is live, so one more draw from the RNG changes the losses after it
    model = tiny(dropout=0.1)
    model.train()
    x = batch(seed=3)
    with torch.no_grad():
        assert model(**x).loss.item() != model(**x).loss.item()


def test_an_importance_round_runs_in_eval_mode_under_inference_mode_and_restores_train_mode():
    model = tiny(dropout=0.1)
    randomize_adapters(model)
    policy = IST(seed=0).bind(model, None, eval_batch=batch())
    seen = []
    handles = [m.register_forward_pre_hook(lambda m, a: seen.append(
        (m.training, torch.is_grad_enabled(), torch.is_inference_mode_enabled())))
        for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    model.train()
    policy.update_importance(10)
    for h in handles:
        h.remove()
    assert len(seen) >= policy.settings.n_candidates                 # the dropout modules were reached
    assert set(seen) == {(False, False, True)}
    assert all(m.training for m in model.modules())                  # every module back in train mode
    model.eval()                                                     # and an eval-mode model stays so
    policy.update_importance(20)
    assert not any(m.training for m in model.modules())


def test_importance_losses_are_the_eval_mode_losses_of_the_suppressed_model():
    """Each candidate's recorded loss is the eval-mode loss with every layer outside it scaled by
    beta, computed here by scaling LoRA's B (the update B A x is linear in B)."""
    model = tiny(dropout=0.1)
    randomize_adapters(model)
    held = batch(seed=4)
    policy = IST(seed=2, beta=0.25).bind(model, None, eval_batch=held)
    model.train()
    policy.update_importance(10)
    record = policy.rounds[-1]
    blocks = zoo.locate_layers(model)
    for cand, loss in zip(record["candidates"], record["losses"], strict=True):
        saved = {}
        with torch.no_grad():
            for i, block in enumerate(blocks):
                if i not in cand:
                    for name, p in block.named_parameters():
                        if "lora_B" in name:
                            saved[p] = p.clone()
                            p.mul_(0.25)
            model.eval()
            expected = model(**held).loss.item()
            for p, v in saved.items():
                p.copy_(v)
        assert loss == pytest.approx(expected, rel=1e-5, abs=1e-6)
    rewards = np.exp(-np.array(record["losses"]))
    np.testing.assert_allclose(record["rewards"], rewards - rewards.mean(), rtol=1e-9)


# -- a stock Trainer: gradient accumulation, after_backward ------------------------------------
def _trainer(policy, recorder, tmp_path, steps=6, accumulation=2, weight_decay=0.1):
    from transformers import Trainer, TrainingArguments

    model = tiny()
    randomize_adapters(model)
    data = [{"input_ids": batch(n=1, seed=100 + i)["input_ids"][0],
             "labels": batch(n=1, seed=100 + i)["input_ids"][0]} for i in range(32)]
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=steps, per_device_train_batch_size=2,
                             gradient_accumulation_steps=accumulation, learning_rate=1e-2, weight_decay=weight_decay,
                             lr_scheduler_type="constant", report_to=[], save_strategy="no", use_cpu=True, seed=0,
                             disable_tqdm=True, logging_steps=1000)
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[policy, recorder])
    trainer.train()
    return model


def test_with_gradient_accumulation_selection_changes_only_between_optimizer_steps(tmp_path):
    """Accumulation 2 (and weight decay 0.1): one draw per optimizer step, the same over both
    micro-batches; after each step exactly the drawn layers' adapters moved and no other weight."""
    from transformers import TrainerCallback

    policy = RST(layers=0.5, seed=3)
    log = {"begin": [], "substep": [], "moved": []}

    class Recorder(TrainerCallback):
        def on_step_begin(self, args, state, control, model=None, **kw):
            log["begin"].append(policy.gate.active)
            self.before = {n: p.detach().clone() for n, p in model.named_parameters()}

        def on_substep_end(self, args, state, control, **kw):
            log["substep"].append(policy.gate.active)

        def on_step_end(self, args, state, control, model=None, **kw):
            log["moved"].append({n for n, p in model.named_parameters() if not torch.equal(p, self.before[n])})

    model = _trainer(policy, Recorder(), tmp_path)
    assert len(policy.history) == 6 == len(log["begin"]) == len(log["substep"])   # one draw per optimizer step
    assert [h["active"] for h in policy.history] == log["begin"] == log["substep"]
    assert [h["active"] for h in policy.history] == [policy.select(s) for s in range(6)]
    assert len({tuple(a) for a in log["begin"]}) > 1
    names = {n for n, p in model.named_parameters() if "lora_" in n}
    for active, moved in zip(log["begin"], log["moved"], strict=True):
        expected = {n for n in names if int(n.split(".layers.")[1].split(".")[0]) in active}
        assert moved == expected, (active, sorted(moved ^ expected)[:4])


def test_the_trainer_callback_feeds_ila_the_gradients_of_every_warmup_step(tmp_path):
    """ILA's score is computed here from the gradients Trainer holds before each optimizer step:
    a callback that never reached after_backward (or read the gradients after zero_grad) gives 0."""
    from transformers import TrainerCallback

    policy = ILA(warmup=3, freeze=0.5)
    expected = np.zeros(4)

    class Recorder(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
            if state.global_step < 3:
                for i, block in enumerate(zoo.locate_layers(model)):
                    expected[i] += abs(sum(float((p.detach() * p.grad).sum()) for p in block.parameters()
                                           if p.grad is not None))

    _trainer(policy, Recorder(), tmp_path, steps=5, accumulation=1, weight_decay=0.0)
    assert (expected > 0).all()
    np.testing.assert_allclose(policy.importance, expected, rtol=1e-4)
    kept = sorted(np.argsort(-expected, kind="stable")[:2].tolist())
    assert [h["active"] for h in policy.history] == [None, None, None, kept, kept]


# -- the reset steady step holds the worst draw's optimizer state ------------------------------
@pytest.mark.parametrize("state", ["keep", "reset"])
def test_the_steady_step_holds_the_optimizer_state_of_its_draw_to_the_byte(state):
    """AdamW holds exp_avg and exp_avg_sq (fp32, the parameter's shape) and a 4-byte step per
    parameter: `keep` for every layer's adapters, `reset` for the steady draw's only, and with
    `reset` already at the step's peak (a layer drawn twice in a row holds its state through
    the step), not only after the optimizer step creates it."""
    from ist_bench.runner.case import Case
    from ist_bench.runner.memory import measure_memory

    case = Case(model="tiny-llama", method=MethodSpec(name="lora"), backend="sim", seq_len=64, select="rst",
                steps=0, optimizer_state=state).check()
    row = measure_memory(case)
    steady = next(s for s in row["memory"]["steps"] if s["phase"] == "steady")
    model = tiny()
    per_layer = [[p for p in block.parameters() if p.requires_grad] for block in zoo.locate_layers(model)]
    held = range(4) if state == "keep" else steady["active_layers"]
    assert len(steady["active_layers"]) == 1
    expected = sum(2 * p.numel() * 4 + 4 for i in held for p in per_layer[i])
    assert steady["optimizer"] == expected
    assert steady["at_peak"]["optimizer"] == expected     # live before the forward, not created by the step


# -- draws and their streams --------------------------------------------------------------------
def test_ist_selection_is_the_top_n_u_of_uniform_draws_on_stream_zero():
    """p_i ~ U(0, sigmoid(I_i)) from the generator (seed, step, 0); computed here."""
    policy = unbound(IST(seed=9, layers=0.25), 8)
    policy.importance[:] = np.linspace(-1, 1, 8)
    for step in range(20):
        p = np.random.default_rng([9, step, 0]).uniform(0.0, 1 / (1 + np.exp(-policy.importance)))
        assert policy.select(step) == sorted(np.argsort(-p)[:2].tolist())


def test_candidate_sets_and_selection_come_from_different_streams():
    """With the selection's stream, a round's first candidate set would be a function of that
    step's draw; check each round's candidates against the (seed, step, 1) generator computed here."""
    policy = unbound(IST(seed=5, layers=0.5, candidates=0.5), 8)
    policy.heldout_loss = lambda scaled, factor: 1.0
    for step in (10, 20, 30):
        policy.update_importance(step)
        g = np.random.default_rng([5, step, 1])
        assert policy.rounds[-1]["candidates"] == [sorted(g.choice(8, size=4, replace=False).tolist())
                                                   for _ in range(3)]


def test_ist_code_candidate_draws_are_weighted_by_sigmoid_of_the_score_chi_square():
    """N_v = 1 of 8: a candidate set is layer i with probability sigmoid(s_i) / sum; computed here."""
    policy = unbound(ISTCode(candidates=0.125, seed=5), 8)
    policy.importance[:] = np.linspace(-2, 2, 8)
    w = 1 / (1 + np.exp(-policy.importance))
    g = np.random.default_rng(0)
    counts = np.bincount([policy.draw_candidates(g)[0] for _ in range(8000)], minlength=8)
    expected = 8000 * w / w.sum()
    assert ((counts - expected) ** 2 / expected).sum() < 24.322        # chi-square, 7 df, p = 0.001
    assert ((counts - 1000) ** 2 / 1000).sum() > 240                   # not uniform


def test_duplicate_candidate_sets_are_drawn_independently_and_each_counts():
    """The documented choice (docs/selection.md): the N_c sets are independent draws, so on 4 layers
    (N_v = 2: 6 possible sets, 3 candidates) a round holds a duplicate with probability
    1 - 6*5*4/6^3 = 4/9; a duplicated set's layers get its reward once per copy."""
    policy = unbound(IST(seed=1, mu=1.0), 4)
    policy.heldout_loss = lambda scaled, factor: 1.0                   # rewards 0: importance stays 0
    rounds = 1500
    for r in range(rounds):
        policy.update_importance(10 * (r + 1))
    dup = sum(len({tuple(c) for c in rec["candidates"]}) < 3 for rec in policy.rounds) / rounds
    assert abs(dup - 4 / 9) < 4 * math.sqrt(4 / 9 * 5 / 9 / rounds)
    # each copy counts: losses that depend on the set, at the first round with a duplicate (this seed)
    step = next(rec["step"] for rec in policy.rounds if len({tuple(c) for c in rec["candidates"]}) < 3)
    g = np.random.default_rng([1, step, 1])                            # (seed, step, stream 1), computed here
    cands = [sorted(g.choice(4, size=2, replace=False).tolist()) for _ in range(3)]
    assert len({tuple(c) for c in cands}) < 3
    policy = unbound(IST(seed=1, mu=1.0), 4)
    policy.heldout_loss = lambda scaled, factor: 1.0 + 0.5 * sum(scaled)
    policy.update_importance(step)
    losses = np.array([1.0 + 0.5 * sum(i for i in range(4) if i not in c) for c in cands])
    rewards = np.exp(-losses) - np.exp(-losses).mean()
    expected = np.zeros(4)
    for c, r in zip(cands, rewards, strict=True):
        expected[c] += r
    np.testing.assert_allclose(policy.importance, expected, atol=1e-12)


# -- IST's held-out data: fixed or fresh each round -------------------------------------------
def test_held_out_data_is_a_setting_fixed_by_default():
    assert IST().settings.eval_data == "fixed" and IST().settings.eval_batch == 1
    assert make_policy("ist", {"eval_data": "fresh", "eval_batch": "16"}).settings.eval_batch == 16
    with pytest.raises(UsageError, match="unknown --select ist eval_data 'sometimes'; valid: fixed, fresh"):
        make_policy("ist", {"eval_data": "sometimes"})
    with pytest.raises(UsageError, match="eval_data=fresh draws a held-out batch every round"):
        IST(eval_data="fresh").bind(tiny(), None, eval_batch=batch())


@pytest.mark.parametrize("mode", ["fixed", "fresh"])
def test_plain_pytorch_fresh_draws_a_batch_per_round_fixed_one_for_the_run(mode):
    model = tiny()
    asked = []

    def source(step):
        asked.append(step)
        return batch(seed=1000 + step)
    policy = IST(seed=0, eval_data=mode).bind(model, None, eval_batch=source)
    seen = []
    real = policy.heldout_loss
    policy.heldout_loss = lambda scaled, factor: (seen.append(policy.eval_batch["input_ids"]), real(scaled, factor))[1]
    for step in (10, 20):
        policy.update_importance(step)
    assert asked == ([0, 10, 20] if mode == "fresh" else [0])
    firsts = [seen[0], seen[3]]
    assert torch.equal(firsts[1], batch(seed=1020 if mode == "fresh" else 1000)["input_ids"])
    assert torch.equal(seen[0], seen[2])                      # one batch for every candidate of a round


def test_trainer_fresh_held_out_batches_are_new_each_round_and_the_same_on_a_rerun(tmp_path):
    from transformers import TrainerCallback

    def run(mode, out):
        policy = IST(seed=0, interval=2, eval_data=mode, eval_batch=4)
        seen = []

        class Recorder(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):
                if policy.rounds and policy.rounds[-1]["step"] == state.global_step - 1:
                    seen.append(policy.eval_batch["input_ids"].clone())
        _trainer(policy, Recorder(), out, steps=7, accumulation=1)
        return seen
    fresh = run("fresh", tmp_path / "a")
    assert len(fresh) == 3 and all(b.shape[0] == 4 for b in fresh)
    assert all(len({tuple(r.tolist()) for r in b}) == 4 for b in fresh)    # 4 distinct samples, no repeats
    assert not torch.equal(fresh[0], fresh[1]) and not torch.equal(fresh[1], fresh[2])
    assert all(torch.equal(a, b) for a, b in zip(fresh, run("fresh", tmp_path / "b"), strict=True))
    fixed = run("fixed", tmp_path / "c")
    assert all(torch.equal(fixed[0], b) for b in fixed)


def test_fresh_held_out_data_on_sim_draws_per_round_and_the_steady_round_bounds_every_round():
    from ist_bench.runner.case import Case
    from ist_bench.runner.memory import measure_memory

    rows = {}
    for mode in ("fixed", "fresh"):
        case = Case(model="tiny-llama", method=MethodSpec(name="lora"), backend="sim", seq_len=64, select="ist",
                    select_opts={"interval": 2, "eval_data": mode, "eval_batch": 4}, steps=5).check()
        rows[mode] = measure_memory(case, probe_draws=mode == "fresh")
        assert rows[mode]["status"] == "ok", rows[mode].get("traceback")
        steps = rows[mode]["memory"]["steps"]
        steady = next(s for s in steps if s["phase"] == "steady")
        measured = steps + rows[mode]["memory"].get("probes", [])
        assert all(s["peak"] <= steady["peak"] for s in measured)
        rounds = [s for s in measured if "importance_peak" in s]
        assert len(rounds) >= 3 and all(s["importance_peak"] <= steady["importance_peak"] for s in rounds)
        summary = rows[mode]["memory"]["summary"]   # the run's peak holds the larger of the step and its round
        assert summary["run_peak"] == max(steady["peak"], steady["importance_peak"])
        assert [r["step"] for r in rows[mode]["selection"]["rounds"]][:2] == [2, 4]
    assert rows["fresh"]["selection"]["policy"]["eval_data"] == "fresh"


def test_a_round_larger_than_the_step_is_said_and_the_run_peak_holds_it():
    """The public code's setting (16 fresh held-out sequences) on gpt2-small makes the importance round's
    peak larger than the training step's: the steady column (the training step) does not hold it, the
    note says so, and the run peak does."""
    from ist_bench.report.console import _steady_note
    from ist_bench.runner.case import Case
    from ist_bench.runner.memory import measure_memory

    case = Case(model="gpt2-small", method=MethodSpec(name="lora"), backend="sim", seq_len=256, select="ist-code",
                select_opts={"eval_batch": 16, "eval_data": "fresh"}, steps=0).check()
    row = measure_memory(case)
    s = row["memory"]["summary"]
    rnd, step = s["importance_allocated_peak_est"]["steady"], s["allocated_peak_est"]["steady"]
    assert rnd > step and s["run_allocated_peak_est"] == rnd
    assert "importance fwd peak" in _steady_note(row) and "above the step's" in _steady_note(row)


def test_the_gate_still_clears_grads_when_nothing_is_reset():
    """`keep` drops the grads of the layers it freezes but no optimizer state."""
    model = tiny()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    gate = LayerGate(model, opt, optimizer_state="keep")
    model(**batch()).loss.backward()
    opt.step()
    gate.apply([1])
    assert [all(p.grad is None for p in b) for b in gate.blocks] == [True, False, True, True]
    assert all(p in opt.state for b in gate.blocks for p in b)


def test_bind_refuses_a_model_without_trainable_blocks_only():
    """A method that adapts some layers only (peft's layers_to_transform) binds; nothing trainable
    in any block is refused."""
    from peft import LoraConfig, get_peft_model
    torch.manual_seed(0)
    base = zoo.build_model(zoo.load_config("tiny-llama"), device="cpu", dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj"], layers_to_transform=[1]))
    policy = RST(layers=0.5).bind(model, None)
    assert [bool(b) for b in policy.gate.blocks] == [False, True, False, False]
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(UsageError, match="no block of .* has trainable parameters"):
        RST().bind(model, None)


# -- what the mutation run found untested (docs/selection.md, "How the tests are checked") ---------
@pytest.mark.parametrize("policy", [RST(layers=0.5, seed=1), ISTCode(layers=0.5, seed=1),
                                    LISA(gamma=4, interval=1, seed=1), IST(layers=0.5, seed=1)],
                         ids=["rst", "ist-code", "lisa", "ist"])
def test_every_draw_is_n_active_distinct_sorted_layers(policy):
    policy = unbound(policy, 8)
    if hasattr(policy, "importance"):
        policy.importance[:] = np.linspace(-2, 2, 8)
    for step in range(300):
        d = policy.select(step)
        assert len(set(d)) == 4 == len(d) and d == sorted(d), (step, d)


def test_ist_code_candidate_sets_are_distinct_layers_weighted_without_replacement():
    policy = unbound(ISTCode(candidates=0.5, seed=2), 8)
    policy.importance[:] = np.linspace(-3, 3, 8)
    g = np.random.default_rng(1)
    for _ in range(300):
        c = policy.draw_candidates(g)
        assert len(set(c)) == 4 == len(c) and c == sorted(c)


def test_ist_code_selection_is_a_weighted_draw_on_stream_zero():
    """The update set: N_u layers without replacement, weights sigmoid(-s), from (seed, step, 0)."""
    policy = unbound(ISTCode(seed=4, layers=0.25), 8)
    policy.importance[:] = np.linspace(-1, 1, 8)
    w = 1 / (1 + np.exp(policy.importance))
    for step in range(20):
        g = np.random.default_rng([4, step, 0])
        assert policy.select(step) == sorted(g.choice(8, size=2, replace=False, p=w / w.sum()).tolist())


@pytest.mark.parametrize("name,opts,message", [
    ("ist", {"mu": -1}, "--select ist: mu must be >= 0, got -1"),
    ("ist", {"eval_batch": 0}, "--select ist: eval_batch must be >= 1, got 0"),
    ("ila", {"warmup": 0}, "--select ila: warmup must be >= 1, got 0"),
    ("ila", {"freeze": 0}, "--select ila: freeze must be in (0, 1), got 0"),
    ("lift", {"interval": 0}, "--select lift: interval must be >= 1, got 0"),
    ("lisa", {"interval": 0}, "--select lisa: interval must be >= 1, got 0"),
    ("rst", {"layers": 1.01}, "--select rst: layers must be in (0, 1], got 1.01"),
])
def test_every_bound_of_a_setting_is_checked(name, opts, message):
    with pytest.raises(UsageError) as e:
        make_policy(name, opts)
    assert message in str(e.value)
    edge = {k: {"mu": 0, "eval_batch": 1, "warmup": 1, "interval": 1, "layers": 1.0}.get(k) for k in opts}
    if all(v is not None for v in edge.values()):
        make_policy(name, edge)                                        # the bound itself is allowed


def test_the_defaults_are_the_ones_docs_selection_md_lists():
    """The table of docs/selection.md (and so the paper's and LMFlow's values) against the code."""
    import re
    from pathlib import Path

    from ist_bench.selection import POLICIES
    text = (Path(__file__).parent.parent / "docs" / "selection.md").read_text()
    rows = dict(re.findall(r"^\| `([a-z-]+)` \|[^|]*\| ([^|]*)\|$", text, flags=re.M))
    assert set(rows) == set(POLICIES)
    for name, cell in rows.items():
        documented = dict(re.findall(r"(\w+)=([\w.-]*)", cell))
        if cell.strip() == "as `ist`":
            documented = dict(re.findall(r"(\w+)=([\w.-]*)", rows["ist"]))
        actual = make_policy(name).describe()
        assert {k: str(actual[k]) if not isinstance(actual[k], float) else f"{actual[k]:g}" for k in documented} == \
            documented, name
        assert set(documented) == set(actual) - {"name", "seed", "optimizer_state"}, name


def test_select_options_parse_as_key_value_pairs():
    from ist_bench.selection import parse_options
    assert parse_options("beta=0.5, mu=100,") == {"beta": "0.5", "mu": "100"}
    assert parse_options(None) == {} == parse_options("")
    for bad in ("beta", "=3", "beta=0.5,mu"):
        with pytest.raises(UsageError, match="--select-opt takes key=value pairs"):
            parse_options(bad)


def test_possible_draws_of_a_large_model_are_a_fixed_sample_of_distinct_draws_with_the_worst_first():
    policy = unbound(RST(layers=0.25, seed=0), 32)             # C(32, 8) draws: a sample of 64
    draws = policy.possible_draws()
    assert len(draws) == 64 and draws == unbound(RST(layers=0.25, seed=0), 32).possible_draws()
    assert draws[:2] == [[0, *range(25, 32)], list(range(24, 32))]
    assert all(len(set(d)) == 8 == len(d) and d == sorted(d) for d in draws)
    assert len({tuple(d) for d in draws}) > 60
    assert unbound(RST(layers=0.5), 4).possible_draws() == [[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]]
    assert unbound(ILA(), 4).possible_draws()[0] is None


def test_one_policy_object_trained_on_a_second_model_binds_to_it(tmp_path):
    from transformers import TrainerCallback
    policy = RST(layers=0.5, seed=0)
    m1 = _trainer(policy, TrainerCallback(), tmp_path / "a", steps=2, accumulation=1)
    m2 = _trainer(policy, TrainerCallback(), tmp_path / "b", steps=2, accumulation=1)
    assert policy.model is m2 and policy.gate.modules[0] is zoo.locate_layers(m2)[0]
    assert policy.gate.modules[0] is not zoo.locate_layers(m1)[0]


# -- issue 26's surviving mutants, each pinned --------------------------------------------------
@pytest.mark.parametrize("select,method", [("none", "adalora"), ("ila", "adalora"), ("rst", "adalora")])
def test_adaloras_emas_are_in_the_steady_step_at_steps_zero_for_every_policy(select, method):
    """The steady step holds AdaLoRA's importance EMAs as a run holds them after its first step: three
    tensors the size of each adapter parameter (ipt, exp_avg_ipt, exp_avg_unc), fp32, computed here."""
    from ist_bench.runner.case import Case
    from ist_bench.runner.memory import measure_memory

    case = Case(model="tiny-llama", method=MethodSpec(name=method), backend="sim", seq_len=64, select=select,
                select_opts={"warmup": 2} if select == "ila" else {}, steps=0).check()
    row = measure_memory(case)
    steady = next(s for s in row["memory"]["steps"] if s["phase"] == "steady")
    model = apply_method(zoo.build_model(zoo.load_config("tiny-llama"), device="meta"), MethodSpec(name=method))
    adapters = [p for n, p in model.base_model.model.named_parameters() if "lora_" in n]
    expected = sum(3 * p.numel() * 4 for p in adapters)
    assert steady["method_state"] == expected > 0
    assert steady["at_peak"]["method_state"] == expected   # live through the step, not created by its optimizer step


def test_reset_keeps_full_finetunings_embeddings_and_head_state_in_the_steady_step():
    """Full fine-tuning + LISA (one layer) + reset: the embeddings, final norm and LM head train at every
    step, so the steady step holds their AdamW state beside the drawn layer's: bf16 moments (AdamW's state
    takes the parameter's dtype) and a 4-byte step each, computed here (without them: -21% on gpt2-small)."""
    from ist_bench.runner.case import Case
    from ist_bench.runner.memory import measure_memory

    case = Case(model="tiny-gpt2", method=MethodSpec(name="full"), backend="sim", seq_len=64, select="lisa",
                select_opts={"gamma": 1}, steps=0, optimizer_state="reset").check()
    row = measure_memory(case)
    steady = next(s for s in row["memory"]["steps"] if s["phase"] == "steady")
    model = zoo.build_model(zoo.load_config("tiny-gpt2"), device="meta")
    blocks = list(zoo.locate_layers(model))
    in_blocks = {id(p) for b in blocks for p in b.parameters()}
    outside = [p for p in {id(p): p for p in model.parameters()}.values() if id(p) not in in_blocks]
    held = outside + list(blocks[steady["active_layers"][0]].parameters())
    expected = sum(2 * p.numel() * p.element_size() + 4 for p in held)
    assert steady["optimizer"] == expected and outside
    assert steady["at_peak"]["optimizer"] == expected     # live before the forward, not created by the step


def test_the_trainers_held_out_batch_follows_the_policys_seed_and_has_no_repeated_sample():
    """IST's fixed held-out batch in a Trainer is drawn from (seed, 2^31 - 1) without replacement: two
    seeds give two batches; drawing all of a dataset of n samples gives each sample once."""
    from ist_bench.selection.base import heldout_batch

    class Loader:
        dataset = [{"input_ids": torch.tensor([i])} for i in range(8)]

        @staticmethod
        def collate_fn(items):
            return {"input_ids": torch.cat([x["input_ids"] for x in items])}
    a, b = (heldout_batch(Loader, 4, seed, 2**31 - 1)["input_ids"].tolist() for seed in (0, 1))
    assert a != b
    assert a == np.random.default_rng([0, 2**31 - 1]).choice(8, size=4, replace=False).tolist()
    for seed in range(20):                        # with replacement, 8 of 8 would repeat one almost surely
        assert sorted(heldout_batch(Loader, 8, seed, 5)["input_ids"].tolist()) == list(range(8))


@pytest.mark.parametrize("n_layers,freeze,frozen", [(4, 0.25, 1), (6, 0.25, 2), (10, 0.25, 3), (10, 0.45, 5),
                                                    (3, 0.5, 2), (7, 0.5, 4)])
def test_ila_freezes_a_fraction_of_the_layers_rounded_half_up(n_layers, freeze, frozen):
    """freeze x L rounded half up (6 x 25% = 1.5 -> 2), as N_u and N_v; at least one layer keeps training."""
    policy = unbound(ILA(freeze=freeze), n_layers)
    assert policy.n_layers - policy.n_active == frozen


def test_ist_code_candidate_sets_of_a_round_are_distinct():
    """The public code re-draws a set it already holds: on 4 layers (6 possible sets of 2) no round of
    `ist-code` holds a duplicate, where `ist`'s independent draws hold one in 4/9 of the rounds."""
    policy = unbound(ISTCode(seed=1, mu=1.0), 4)
    policy.heldout_loss = lambda scaled, factor: 1.0
    for r in range(300):
        policy.update_importance(10 * (r + 1))
    assert all(len({tuple(c) for c in rec["candidates"]}) == 3 for rec in policy.rounds)
    few = unbound(ISTCode(seed=1, candidates=0.5, n_candidates=3), 2)   # C(2, 1) = 2 sets < 3: each, then a repeat
    few.heldout_loss = lambda scaled, factor: 1.0
    few.update_importance(10)
    assert sorted(map(tuple, few.rounds[0]["candidates"]))[:2] == [(0,), (1,)]


def test_beta_zero_is_a_valid_suppression_and_ila_breaks_ties_toward_the_lower_layers():
    """beta lies in [0, 1] (the paper's Table 11 sweeps 0); ILA freezes the least important layers, the
    lower first among equals (a stable sort)."""
    assert IST(beta=0.0).settings.beta == 0.0
    with pytest.raises(UsageError, match=r"beta must be in \[0, 1\], got -0.1"):
        IST(beta=-0.1)
    policy = unbound(ILA(warmup=1, freeze=0.25), 40)      # 10 of 40 frozen; numpy's quicksort is not stable
    policy.importance[:] = np.tile([1.0, 2.0], 20)       # here: a tie among 20 layers of importance 1
    assert policy.select(5) == sorted(set(range(40)) - {0, 2, 4, 6, 8, 10, 12, 14, 16, 18})


def test_something_below_the_blocks_that_trains_sends_backward_through_every_block():
    """Not only the input embeddings: GPT-2's position embeddings, trainable with everything else frozen."""
    import copy

    from ist_bench.selection import LISA

    model = zoo.build_model(zoo.load_config("tiny-gpt2"), device="cpu", dtype=torch.float32)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in zoo.locate_layers(model).parameters():
        p.requires_grad_(True)
    assert not LISA().bind(copy.deepcopy(model), None).grad_below
    model.transformer.wpe.weight.requires_grad_(True)
    assert LISA().bind(model, None).grad_below is True
