"""IST and its peers on a stock Hugging Face Trainer: one added line, a real (tiny) training run."""

import numpy as np
import pytest
import torch

from ist_bench import zoo
from ist_bench.data import SAMPLE_FILE, load_samples, load_tokenizer, render
from ist_bench.selection import ILA, IST, LIFT, LISA, RST

STEPS = 200


@pytest.fixture(scope="module")
def alpaca(tokenizer_file):
    tok = load_tokenizer(tokenizer_file)
    tok.pad_token = "<unk>"
    return tok, [{"input_ids": tok(render(s))["input_ids"][:96]} for s in load_samples(SAMPLE_FILE)]


def _lora_model():
    from peft import LoraConfig, get_peft_model
    torch.manual_seed(0)
    model = zoo.build_model(zoo.load_config("tiny-llama"), dtype=torch.float32, device="cpu")
    return get_peft_model(model, LoraConfig(r=8, lora_alpha=16, task_type="CAUSAL_LM",
                                            target_modules=["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]))


def _mean_loss(model, tok, data):
    from transformers import DataCollatorForLanguageModeling
    model.eval()
    with torch.no_grad():
        out = model(**DataCollatorForLanguageModeling(tok, mlm=False)(data)).loss.item()
    model.train()
    return out


def _train(alpaca, tmp_path, callbacks):
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments
    tok, data = alpaca
    model = _lora_model()
    before = _mean_loss(model, tok, data)
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=STEPS, per_device_train_batch_size=8,
                             learning_rate=1e-2, lr_scheduler_type="constant", logging_steps=50, report_to=[],
                             save_strategy="no", use_cpu=True, seed=0, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=callbacks,
                      data_collator=DataCollatorForLanguageModeling(tok, mlm=False))
    trainer.train()
    return before, _mean_loss(model, tok, data), model


@pytest.mark.slow
def test_lora_plus_ist_trains_through_a_stock_trainer_about_as_well_as_lora(alpaca, tmp_path):
    """200 steps, batch 8, on our 24 Alpaca samples (tiny Llama, 4 layers; IST trains 1 per step).
    Seen on CPU (torch 2.13, transformers 5.24, peft 0.21.2): mean loss 6.26 -> LoRA 5.27, LoRA+IST 5.54
    (0.73 of LoRA's drop)."""
    start, lora_end, _ = _train(alpaca, tmp_path / "lora", [])
    ist = IST(seed=0)
    ist_start, ist_end, model = _train(alpaca, tmp_path / "ist", [ist])
    assert ist_start == start
    assert lora_end < start - 0.5
    assert start - ist_end > 0.6 * (start - lora_end)
    # the callback really did the work: one layer per step, every layer drawn, importance rounds at T_c
    assert len(ist.history) == STEPS and all(len(h["active"]) == 1 for h in ist.history)
    assert {h["active"][0] for h in ist.history} == {0, 1, 2, 3}
    assert [r["step"] for r in ist.rounds] == list(range(10, STEPS, 10))
    assert any(abs(v) > 0 for v in ist.history[-1]["importance"])
    # and it never touched a frozen base weight
    assert not any(p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)


def test_every_policy_is_a_trainer_callback(alpaca, tmp_path):
    """A policy implements every event of transformers' TrainerCallback (Trainer calls them by name), and
    an event a later transformers adds is a no-op rather than an AttributeError."""
    from transformers import TrainerCallback

    from ist_bench.selection import POLICIES
    events = [n for n in dir(TrainerCallback) if n.startswith("on_")]
    assert len(events) >= 16
    for cls in POLICIES.values():
        policy = cls()
        assert all(callable(getattr(policy, e)) for e in events), cls.name
        assert policy.on_some_future_event(None, None, None) is None
    lisa = LISA(gamma=1, interval=5, optimizer_state="reset")
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments
    tok, data = alpaca
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=12, per_device_train_batch_size=4, report_to=[],
                             save_strategy="no", use_cpu=True, disable_tqdm=True)
    trainer = Trainer(model=_lora_model(), args=args, train_dataset=data, callbacks=[lisa],
                      data_collator=DataCollatorForLanguageModeling(tok, mlm=False))
    trainer.train()
    periods = [h["active"] for h in lisa.history]
    assert periods[0] == periods[4] and len(periods) == 12
    # reset: only the layer trained last holds AdamW moments
    held = {i for i, block in enumerate(lisa.gate.blocks) if any(p in trainer.optimizer.state for p in block)}
    assert held == set(periods[-1])


def _run(alpaca, out, policy, max_steps, resume=None, stop_at=None, save_steps=6):
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainerCallback, TrainingArguments
    tok, data = alpaca

    class Stop(TrainerCallback):         # the run is killed right after its checkpoint
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == stop_at:
                control.should_training_stop = True
    args = TrainingArguments(output_dir=str(out), max_steps=max_steps, per_device_train_batch_size=4,
                             learning_rate=1e-2, report_to=[], save_strategy="steps", save_steps=save_steps,
                             use_cpu=True, seed=0, disable_tqdm=True, logging_steps=1000)
    trainer = Trainer(model=_lora_model(), args=args, train_dataset=data, callbacks=[policy, Stop()],
                      data_collator=DataCollatorForLanguageModeling(tok, mlm=False))
    trainer.train(resume_from_checkpoint=resume)
    return [h["active"] for h in policy.history]


@pytest.mark.parametrize("make", [
    lambda: IST(seed=0, interval=2, layers=0.5, mu=1e6), lambda: ILA(warmup=8, freeze=0.5),
    pytest.param(lambda: LIFT(order="random", interval=1, seed=3), marks=pytest.mark.slow),
    pytest.param(lambda: LISA(gamma=2, interval=3, seed=1), marks=pytest.mark.slow),
    pytest.param(lambda: RST(layers=0.5, seed=2), marks=pytest.mark.slow)], ids=["ist", "ila", "lift", "lisa", "rst"])
def test_a_run_killed_after_a_checkpoint_and_resumed_selects_what_an_uninterrupted_run_does(alpaca, tmp_path, make):
    """12 steps, checkpoint at 6: IST's rounds at 2, 4, 6, ... (mu large, so that what it learned
    decides its draws) and ILA's warm-up of 8 steps straddle it."""
    full = make()
    whole = _run(alpaca, tmp_path / "whole", full, 12)
    head = _run(alpaca, tmp_path / "cut", make(), 12, stop_at=6)
    assert head == whole[:6]
    assert (tmp_path / "cut" / "checkpoint-6").is_dir()
    resumed = make()
    tail = _run(alpaca, tmp_path / "cut", resumed, 12, resume=str(tmp_path / "cut" / "checkpoint-6"))
    assert tail == whole[6:]
    if isinstance(resumed, (IST, ILA)):     # what it learned came back, not a fresh start
        np.testing.assert_allclose(resumed.importance, full.importance, rtol=1e-4)


def test_resuming_without_the_policys_state_warns(alpaca, tmp_path):
    _run(alpaca, tmp_path, RST(seed=0), 12, stop_at=6)          # a checkpoint of a run without IST
    with pytest.warns(UserWarning, match="from a checkpoint that holds no ist state: the policy starts from scratch"):
        _run(alpaca, tmp_path, IST(seed=0, interval=2), 12, resume=str(tmp_path / "checkpoint-6"))


def test_the_policy_state_comes_from_the_checkpoint_resumed_wherever_it_lies(alpaca, tmp_path):
    """Resuming a copied checkpoint restores what it learned; another run's checkpoint-6 lying in a reused
    output_dir is never read (the state travels in the checkpoint's optimizer.pt)."""
    import shutil

    full = IST(seed=0, interval=2, layers=0.5, mu=1e6)
    whole = _run(alpaca, tmp_path / "whole", full, 12)
    _run(alpaca, tmp_path / "cut", IST(seed=0, interval=2, layers=0.5, mu=1e6), 12, stop_at=6)
    shutil.copytree(tmp_path / "cut" / "checkpoint-6", tmp_path / "copied")
    _run(alpaca, tmp_path / "other", IST(seed=5, interval=2, layers=0.5, mu=1.0), 12, stop_at=6)   # stale
    resumed = IST(seed=0, interval=2, layers=0.5, mu=1e6)
    tail = _run(alpaca, tmp_path / "other", resumed, 12, resume=str(tmp_path / "copied"))
    assert tail == whole[6:]
    np.testing.assert_allclose(resumed.importance, full.importance, rtol=1e-4)
