import contextlib

import pytest
import torch

from ist_bench.data import SAMPLE_FILE, load_samples, render
from ist_bench.measure import backends, sim
from ist_bench.methods import MethodSpec
from ist_bench.runner.case import Case
from ist_bench.runner.memory import measure_memory


def memory_row(model="tiny-llama", method="lora", backend="cpu", **kw):
    """Measure a small case in-process and fail loudly if it did not finish."""
    spec = kw.pop("spec", None) or MethodSpec(name=method)
    case = Case(model=model, method=spec, backend=backend, seq_len=kw.pop("seq_len", 64),
                steps=kw.pop("steps", 2), **kw).check()
    row = measure_memory(case)
    assert row["status"] == "ok", row.get("traceback") or row["error"]
    return row


@pytest.fixture
def no_cuda_emulation(monkeypatch):
    """sim without the CUDA kernel emulation: meta then takes exactly the CPU's kernels."""
    def context(backend):
        return sim.fused_adam_on_meta() if backend == "sim" else contextlib.nullcontext()
    monkeypatch.setattr(backends, "step_context", context)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tokenizer_file(tmp_path_factory):
    """A small BPE tokenizer trained here on our sample file (no download)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "</s>"])
    tok.train_from_iterator([render(s) for s in load_samples(SAMPLE_FILE)], trainer)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(str(path))
    return path
