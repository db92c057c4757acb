import contextlib
import os

# One intra-op thread per test process (and its subprocesses): the tests' tensors are tiny, and on a
# shared 2-core machine torch's default pool spins against the other processes (a test that takes 7 s
# with one thread took 49 s with the default). Memory figures do not depend on it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from ist_bench.data import SAMPLE_FILE, load_samples, render  # noqa: E402
from ist_bench.measure import backends, sim  # noqa: E402
from ist_bench.methods import MethodSpec  # noqa: E402
from ist_bench.runner.case import Case  # noqa: E402
from ist_bench.runner.memory import measure_memory  # noqa: E402


@pytest.hookimpl(tryfirst=True)   # before pytest-benchmark reads its options
def pytest_configure(config):
    torch.set_num_threads(1)   # also where torch was imported before OMP_NUM_THREADS was set
    # A plain `pytest` runs each benchmark once, untimed (a smoke test); --benchmark-only or
    # --benchmark-enable time them (a `--benchmark-disable` in addopts would refuse --benchmark-only).
    opt = config.option
    if hasattr(opt, "benchmark_disable") and not (opt.benchmark_only or opt.benchmark_enable):
        opt.benchmark_disable = True


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
