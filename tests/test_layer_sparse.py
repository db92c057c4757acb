"""The newer layer-sparse methods (issue 31): BAdam, HiFT, DropBP, outlier-weighted sampling — their rules,
their Trainer use, and their bad input. Their steady bound is brute-forced with the others (test_steady.py)."""

import json

import pytest
import torch

from ist_bench import zoo
from ist_bench.errors import UsageError
from ist_bench.methods import MethodSpec
from ist_bench.runner.case import Case
from ist_bench.runner.memory import measure_memory
from ist_bench.selection import OWS, BAdam, DropBP, HiFT, make_policy


def _bound(policy, n_layers=8):
    policy.n_layers = n_layers
    policy.setup() if not isinstance(policy, (OWS, DropBP)) else None
    if isinstance(policy, OWS):
        import numpy as np
        policy.p = np.full(n_layers, 1 / n_layers)
    return policy


@pytest.mark.parametrize("order,expected", [("ascending", [[0], [0], [1], [1], [2]]),
                                            ("descending", [[7], [7], [6], [6], [5]])])
def test_badam_moves_one_block_every_interval_steps(order, expected):
    policy = _bound(BAdam(order=order, interval=2))
    assert [policy.select(s) for s in range(5)] == expected


def test_badam_random_order_visits_every_block_once_per_pass():
    policy = _bound(BAdam(order="random", interval=1, seed=3))
    first, second = [policy.select(s)[0] for s in range(8)], [policy.select(s)[0] for s in range(8, 16)]
    assert sorted(first) == sorted(second) == list(range(8)) and first != second


def test_hift_updates_one_group_per_step_in_its_order():
    up = _bound(HiFT(group=3, order="bottom-up"))
    assert [up.select(s) for s in range(4)] == [[0, 1, 2], [3, 4, 5], [6, 7], [0, 1, 2]]
    down = _bound(HiFT(group=3, order="top-down"))
    assert down.select(0) == [6, 7] and down.worst_cases() == [[0, 1, 2], [6, 7]]
    assert down.typical_weights().tolist() == [1 / 3, 0, 0, 1 / 3, 0, 0, 1 / 3, 0]


def test_dropbp_keeps_each_block_with_one_minus_rate():
    policy = _bound(DropBP(rate=0.5, seed=1))
    kept = [len(policy.select(s)) for s in range(400)]
    assert 3.6 < sum(kept) / len(kept) < 4.4 and min(kept) >= 1
    assert _bound(DropBP(rate=0.0)).select(0) == list(range(8))


def test_ows_never_draws_a_layer_of_probability_zero_and_its_typical_is_exact(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps([0, 1, 1, 2]))
    policy = OWS(gamma=2, interval=1, probabilities=str(path))
    policy.n_layers = 4
    policy.setup()
    draws = [policy.select(s) for s in range(300)]
    assert all(0 not in d for d in draws)
    w = policy.typical_weights()
    assert w[0] == 0 and abs(w.sum() - 1) < 1e-12
    # P(lowest = 1): every draw that holds layer 1 (p = 1/4 first, or second after 2 or 3)
    p = [0, .25, .25, .5]
    expected = p[1] + p[2] * p[1] / (1 - p[2]) + p[3] * p[1] / (1 - p[3])
    assert abs(w[1] - expected) < 1e-12


@pytest.mark.parametrize("name,opts,message", [
    ("badam", {"order": "sideways"}, "unknown --select badam order 'sideways'"),
    ("badam", {"interval": 0}, "interval must be >= 1"),
    ("hift", {"group": 0}, "group must be >= 1"),
    ("hift", {"order": "middle-out"}, "unknown --select hift order 'middle-out'"),
    ("dropbp", {"rate": 1.0}, "rate must be <= 0.99"),
    ("dropbp", {"rate": -0.1}, "rate must be >= 0"),
    ("ows", {"threshold": 0.5}, "threshold must be >= 1"),
])
def test_bad_settings_are_one_line(name, opts, message):
    with pytest.raises(UsageError, match=message):
        make_policy(name, opts)


def test_an_ows_probabilities_file_that_does_not_match_the_layers_is_one_line(tmp_path, capsys):
    from ist_bench.cli import main

    path = tmp_path / "p.json"
    path.write_text(json.dumps([1, 2, 3]))
    assert main(["memory", "--model", "tiny-llama", "--select", "ows", "--select-opt", f"probabilities={path}",
                 "--seq-len", "32", "--steps", "0"]) == 2
    err = capsys.readouterr().err
    assert "must hold 4 non-negative numbers" in err and err.count("\n") == 1


def test_a_dropped_block_trains_nothing_saves_nothing_and_passes_the_gradient():
    """CPU, a real step: blocks 1 and 3 dropped get no gradient, block 0 below them still does (through
    their residual path); on sim the dropped step saves less than the step that keeps every block."""
    case = Case(model="tiny-llama", method=MethodSpec(name="lora"), select="dropbp", backend="cpu", seq_len=32,
                steps=0).check()
    from ist_bench.runner.build import build
    from ist_bench.runner.step import run_steps

    b = build(case)
    seen = {}

    class AfterBackward:   # a meter: the gradients as backward left them, before the optimizer
        def mark(self, phase, step):
            if phase == "backward":
                seen.update({i: [p.grad for p in block] for i, block in enumerate(b.policy.gate.blocks)})
    run_steps(b.model, b.optimizer, b.batches, b.device, b.policy, [0], meters=[AfterBackward()],
              force={"active": [0, 2], "importance": False})
    assert all(g is None for g in seen[1] + seen[3])
    # the kept blocks learn (LoRA's B gets a gradient; A's is 0 while B is 0), layer 0 through the dropped
    # blocks above it
    assert all(any(g is not None and g.abs().sum() > 0 for g in seen[i]) for i in (0, 2))
    sim = {draw: measure_memory(Case(model="tiny-llama", method=MethodSpec(name="lora"), select="dropbp",
                                     backend="sim", seq_len=64, steps=0).check(), probe_draws=[list(draw)])
           for draw in [(0, 2)]}
    row = sim[(0, 2)]
    steady, probe = row["memory"]["steps"][-1], row["memory"]["probes"][0]
    assert steady["active_layers"] is None and probe["activations"] < steady["activations"]


def test_badam_under_a_trainer_holds_only_the_active_blocks_state_and_freezes_the_head(tmp_path, tokenizer_file):
    from peft import LoraConfig, get_peft_model  # noqa: F401  (full fine-tuning here)
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    from ist_bench.data import SAMPLE_FILE, load_samples, load_tokenizer, render

    tok = load_tokenizer(tokenizer_file)
    tok.pad_token = "<unk>"
    data = [{"input_ids": tok(render(s))["input_ids"][:64]} for s in load_samples(SAMPLE_FILE)]
    torch.manual_seed(0)
    model = zoo.build_model(zoo.load_config("tiny-llama"), dtype=torch.float32, device="cpu")
    badam = BAdam(order="ascending", interval=2)
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=5, per_device_train_batch_size=2, report_to=[],
                             save_strategy="no", use_cpu=True, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[badam],
                      data_collator=DataCollatorForLanguageModeling(tok, mlm=False))
    head = model.get_output_embeddings().weight.detach().clone()
    trainer.train()
    assert [h["active"] for h in badam.history] == [[0], [0], [1], [1], [2]]
    held = {i for i, block in enumerate(badam.gate.blocks) if any(p in trainer.optimizer.state for p in block)}
    assert held == {2}
    assert torch.equal(model.get_output_embeddings().weight, head)   # frozen under full fine-tuning
