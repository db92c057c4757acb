import json

import pytest
import torch

from ist_bench.data import PROMPT_NO_INPUT, SAMPLE_FILE, TokenBatches, load_samples, render
from ist_bench.errors import UsageError


def test_render_uses_the_alpaca_template():
    with_input = render({"instruction": "Translate.", "input": "Hallo", "output": "Hello"})
    assert with_input.startswith("Below is an instruction that describes a task, paired with an input")
    assert "### Instruction:\nTranslate.\n\n### Input:\nHallo\n\n### Response:\nHello" in with_input
    no_input = render({"instruction": "Say hi.", "input": "", "output": "Hi"})
    assert no_input == PROMPT_NO_INPUT.format(instruction="Say hi.", output="Hi")
    assert "### Input:" not in no_input


def test_shipped_sample_file_is_valid_alpaca():
    samples = load_samples(SAMPLE_FILE)
    assert len(samples) >= 20
    assert all({"instruction", "input", "output"} <= set(s) for s in samples)


def test_pack_mode_gives_exactly_seq_len_real_tokens(tokenizer_file):
    from transformers import PreTrainedTokenizerFast
    tok = PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_file))
    batches = TokenBatches(256, 300, data=SAMPLE_FILE, tokenizer=tokenizer_file)
    ids = batches.ids(0)
    assert ids.shape == (1, 256) and batches.kind == "alpaca"
    # the packed stream starts with the first rendered sample, token for token
    first = tok(render(load_samples(SAMPLE_FILE)[0]))["input_ids"]
    assert ids[0, : len(first)].tolist() == first
    assert batches.ids(1).shape == (1, 256) and not torch.equal(batches.ids(1), ids)
    # a step past the end of the stream wraps around and still fills seq_len
    assert batches.ids(10_000).shape == (1, 256)


def test_sample_mode_uses_one_sample_per_step_truncated(tokenizer_file):
    from transformers import PreTrainedTokenizerFast
    tok = PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_file))
    real = [len(tok(render(s))["input_ids"]) + 1 for s in load_samples(SAMPLE_FILE)]  # + EOS
    long = TokenBatches(4096, 300, data=SAMPLE_FILE, tokenizer=tokenizer_file, mode="sample")
    assert [long.ids(i).shape[1] for i in range(24)] == real      # one whole sample per step
    limit = sorted(real)[len(real) // 2]                           # truncates about half of them
    cut = TokenBatches(limit, 300, data=SAMPLE_FILE, tokenizer=tokenizer_file, mode="sample")
    assert [cut.ids(i).shape[1] for i in range(24)] == [min(n, limit) for n in real]
    assert long.describe() == {"data": "alpaca", "batch": 1, "max_len": 4096, "mode": "sample", "samples": 24,
                               "mean_len": round(sum(real) / len(real), 1)}   # the lengths used, not the cap


def test_synthetic_tokens_are_deterministic_and_labelled():
    a, b = TokenBatches(128, 1000, seed=3), TokenBatches(128, 1000, seed=3)
    assert torch.equal(a.ids(5), b.ids(5)) and not torch.equal(a.ids(5), a.ids(6))
    assert a.ids(0).max() < 1000 and a.describe() == {"data": "synthetic", "batch": 1, "seq_len": 128}


def test_data_errors_are_usage_errors(tmp_path, tokenizer_file):
    with pytest.raises(UsageError, match="data file not found"):
        TokenBatches(64, 300, data=tmp_path / "missing.json", tokenizer=tokenizer_file)
    with pytest.raises(UsageError, match="--data and --tokenizer go together"):
        TokenBatches(64, 300, data=SAMPLE_FILE)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"output": "no instruction"}]))
    with pytest.raises(UsageError, match="sample 0 has no 'instruction'"):
        TokenBatches(64, 300, data=bad, tokenizer=tokenizer_file)
    with pytest.raises(UsageError, match="beyond the model's vocabulary of 100"):
        TokenBatches(64, 100, data=SAMPLE_FILE, tokenizer=tokenizer_file)
    with pytest.raises(UsageError, match="unknown data mode 'chunk'"):
        TokenBatches(64, 300, mode="chunk")


def test_memory_on_alpaca_data_is_recorded_as_alpaca(tokenizer_file):
    from tests.conftest import memory_row
    row = memory_row("tiny-llama", "lora", backend="sim", data=str(SAMPLE_FILE), tokenizer=str(tokenizer_file))
    assert row["settings"]["data"] == "alpaca"


def test_the_footer_says_sample_mode_lengths_not_the_cap(tokenizer_file):
    from ist_bench.report.console import settings_line
    from ist_bench.runner.case import Case
    from ist_bench.runner.memory import measure_memory
    row = measure_memory(Case(model="tiny-llama", backend="sim", steps=1, seq_len=1024, data=str(SAMPLE_FILE),
                              tokenizer=str(tokenizer_file), data_mode="sample").check())
    line = settings_line(row)
    assert "one Alpaca sample per step (max 1024, mean" in line and "x 1024 tokens" not in line


def test_sim_token_batches_are_shapes_on_meta_not_host_memory():
    """sim's steps never hold host memory in proportion to the simulated batch: its synthetic token ids
    are meta tensors (a batch of 4096 x 4096 would be 128 MiB of int64 ids on the host)."""
    import tracemalloc

    from ist_bench.data import TokenBatches
    from ist_bench.runner.build import build
    from ist_bench.runner.case import Case

    batches = TokenBatches(4096, 32000, batch=4096, meta=True)
    tracemalloc.start()
    ids, held = batches.ids(3), batches.heldout(16)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert ids.is_meta and tuple(ids.shape) == (4096, 4096) and held.is_meta and tuple(held.shape) == (16, 4096)
    assert peak < 1 << 20
    case = Case(model="tiny-llama", backend="sim", seq_len=64, batch=8, steps=0).check()
    assert build(case).batches.ids(0).is_meta
    assert not TokenBatches(64, 100, batch=2).ids(0).is_meta          # cpu and cuda: real ids, as before
