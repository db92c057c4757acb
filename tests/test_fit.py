"""`ist-bench fit` and the knobs it turns (batch, checkpointing, SDPA), against formulas derived here."""

import json

import pytest

from ist_bench import fit
from ist_bench.cli import main
from ist_bench.methods import MethodSpec
from ist_bench.runner.case import Case
from ist_bench.zoo import _CONFIGS
from tests.conftest import memory_row

T, h, H, f = 128, 64, 4, 176        # tiny-llama: 4 heads of 16, MLP 176


@pytest.fixture(scope="module")
def depth(tmp_path_factory):
    """tiny-llama with 2 and with 4 layers: the difference per layer isolates one block's saved tensors."""
    cfg = json.loads((_CONFIGS / "tiny-llama.json").read_text())
    d = tmp_path_factory.mktemp("cfg")
    paths = {}
    for n in (2, 4):
        (d / f"l{n}.json").write_text(json.dumps(dict(cfg, num_hidden_layers=n)))
        paths[n] = str(d / f"l{n}.json")
    return paths


def _act(model, backend="sim", **kw):
    return memory_row(model, "full", backend=backend, steps=1, seq_len=T, **kw)["memory"]["steps"][0]["activations"]


EAGER_LAYER = 2 * (4 * T * h + 4 * T + 2 * T * h + 2 * T * h) + 2 * T * h + 2 * 2 * T * h + 6 * H * T * T \
    + 2 * T * h + 4 * 2 * T * f      # see test_tracker.test_activations_of_tiny_llama_match_the_derived_formula


@pytest.mark.parametrize("backend", ["sim", "cpu"])
def test_checkpointing_keeps_only_each_blocks_input(depth, backend):
    """Non-reentrant activation checkpointing: a block keeps only its input (bf16, T x h) for the recompute."""
    per_layer = (_act(depth[4], backend, grad_checkpointing=True) - _act(depth[2], backend, grad_checkpointing=True)) / 2
    assert per_layer == 2 * T * h
    assert (_act(depth[4], backend) - _act(depth[2], backend)) / 2 == EAGER_LAYER


def test_sdpa_saves_what_cudnn_attention_saves(depth):
    """On sim, SDPA runs the op CUDA runs on the H200, cuDNN attention (docs/sim.md): instead of the fp32
    softmax (4HT^2) and its bf16 copy (2HT^2) a block saves a fp32 log-sum-exp per head and query (4HT)
    and two int64 RNG scalars (16 bytes); its output (laid out T x H x d) is the tensor o_proj saves, as
    eager's contiguous copy was; and k, v keep their KV = 2 heads (grouped-query attention: eager saved
    them expanded to the H = 4 query heads), d = h / H."""
    kv, d = 2, h // H
    per_layer = (_act(depth[4], attn="sdpa") - _act(depth[2], attn="sdpa")) / 2
    assert per_layer == EAGER_LAYER - 6 * H * T * T + 4 * H * T + 16 - 2 * T * (H - kv) * d * 2


@pytest.mark.parametrize("backend", ["sim", "cpu"])
def test_a_batch_scales_every_per_sequence_tensor(backend):
    """Batch B: everything per sequence x B, but the labels: with B = 1 the shifted labels are a view of the
    padded ones (8(T+1) bytes); with B > 1 the shift is a contiguous copy (8BT), the padded tensor freed;
    the loss and its total weight (4 + 4 bytes) do not scale."""
    one, four = _act("tiny-llama", backend), _act("tiny-llama", backend, batch=4)
    assert four == 4 * (one - 8 * (T + 1) - 8) + 8 * 4 * T + 8
    rows = [memory_row("tiny-llama", "lora", backend=backend, steps=1, seq_len=T, batch=b)["memory"]["steps"][0]
            for b in (1, 4)]
    assert all(rows[0][k] == rows[1][k] for k in ("weights", "gradients", "optimizer"))


@pytest.mark.slow
def test_fit_finds_exactly_what_a_brute_force_scan_finds():
    base = Case(model="tiny-llama", method=MethodSpec(name="lora"), backend="sim", steps=0).check()
    probe = fit.Fitter(base, fit.Target("x", 10**12, ""), 64)
    scan = {L: probe.probe(L)["peak"] for L in range(64, 2049, 64)}
    for usable in (scan[320] + fit.margin(scan[320]), scan[1024] + fit.margin(scan[1024]) - 1, 10**12):
        f = fit.Fitter(base, fit.Target("x", usable, ""), 64)
        a = fit.Answer("lora", "none", fits=False, granularity=64)
        f.seq_len(a)
        brute = max(L for L, p in scan.items() if p + fit.margin(p) <= usable)
        assert a.max_seq_len == brute and len(f.cache) < len(scan) // 2
    f = fit.Fitter(base, fit.Target("x", scan[64] + fit.margin(scan[64]) - 1, ""), 64)
    a = fit.Answer("lora", "none", fits=False, granularity=64)
    f.seq_len(a)
    assert not a.fits and a.over_by == 1


@pytest.mark.slow
def test_fit_batch_search_matches_a_scan():
    base = Case(model="tiny-gpt2", method=MethodSpec(name="series"), backend="sim", steps=0).check()
    scan = fit.Fitter(base, fit.Target("x", 10**12, ""), 256)
    peaks = {b: scan.probe(256, b)["peak"] for b in range(1, 40)}
    usable = peaks[23] + fit.margin(peaks[23]) + 1
    f = fit.Fitter(base, fit.Target("x", usable, ""), 256)
    a = fit.Answer("series", "none", fits=False, granularity=256)
    f.batch(a, 256)
    # the allocator replay makes the estimate not quite monotone in batch (here batch 23 peaks 0.46 MB below
    # batch 22: which cached blocks get reused), so the answer is a fitting batch whose next does not fit,
    # at least the largest batch below which every batch fits
    fitting = {b for b, p in peaks.items() if p + fit.margin(p) <= usable}
    every_below = max(b for b in peaks if set(range(1, b + 1)) <= fitting)
    assert a.max_batch in fitting and a.max_batch + 1 not in fitting and a.max_batch >= every_below


def test_fit_on_the_command_line_names_cards_and_sizes(tmp_path, capsys):
    assert main(["fit", "--model", "tiny-llama", "--gpu", "rtx4090", "--select", "none,ist", "--json",
                 str(tmp_path / "f.jsonl"), "--plot", str(tmp_path / "f.png")]) == 0
    out = capsys.readouterr().out
    assert "rtx4090: 24.0 GiB less 640 MiB of CUDA context" in out and "lora+ist" in out
    row = json.loads((tmp_path / "f.jsonl").read_text())
    assert [a["select"] for a in row["answers"]] == ["none", "ist"]
    assert all(a["fits"] and a["at_limit"] for a in row["answers"])       # 2048 positions, tiny weights
    assert (tmp_path / "f.png").stat().st_size > 10_000


def test_a_cards_memory_is_what_its_driver_reports_with_the_source_named():
    """A card is the MiB total nvidia-smi / NVML reports (what an allocator can hold), never the datasheet's
    round GB: an RTX 4090 is 24,564 MiB, not 24 x 10^9 B (fit once answered a length step short)."""
    from ist_bench.cards import CARDS

    for card in CARDS.values():
        assert card.memory % (1 << 20) == 0 and card.memory % 10**9 != 0, card.name
        assert "nvidia-smi" in card.source or "not seen published" in card.source, card.name
    assert CARDS["rtx4090"].memory == 24564 << 20 and CARDS["h200"].memory == 143771 << 20


@pytest.mark.slow
def test_llama7b_lora_ist_fits_768_tokens_on_an_rtx4090():
    from ist_bench import fit
    _, answers = fit.fit("llama-7b", "rtx4090", ["lora"], ["none", "ist"])
    assert [(a.label, a.max_seq_len) for a in answers] == [("lora", 512), ("lora+ist", 768)]
