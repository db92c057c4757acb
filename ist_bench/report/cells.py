"""What a report cell is (model x column) and whether a GPU validation covers it. Light (no pandas):
the console imports it after every measurement."""

from __future__ import annotations

import functools
import json
from importlib import resources

from ist_bench.results import case_label, model_label

# Settings that make a case a different cell from the paper's: shown in its column label when not the default.
KNOB_DEFAULTS = {"batch": 1, "attn": "eager", "grad_checkpointing": False, "seq_len": 1024, "dtype": "bf16",
                 "optimizer_state": "keep", "quant": "none", "double_quant": False, "quant_compute_dtype": "bf16",
                 "nproc": None, "shard": "fsdp2", "reshard_after_forward": True}
KNOB_LABELS = {"batch": "batch={}", "attn": "{}", "grad_checkpointing": "ckpt", "seq_len": "seq={}", "dtype": "{}",
               "optimizer_state": "state-{}", "quant": "{}", "double_quant": "dq", "quant_compute_dtype": "compute={}",
               "nproc": "N={}", "shard": "{}", "reshard_after_forward": "no-reshard"}
# The method's own knobs that change bytes (AdaLoRA's total_steps moves its schedule, not a byte).
METHOD_KNOBS = {"r": ("r={}", 32), "alpha": ("alpha={}", 64), "dropout": ("dropout={}", 0.05),
                "bottleneck": ("bottleneck={}", 256), "adalora_init_r": ("init_r={}", 12),
                "adalora_target_r": ("target_r={}", 8), "target_modules": ("targets={}", None)}


def column(case: dict) -> str:
    """A Table-1 column: method + policy (`lora+ist`), then every knob off the paper's setting that can
    change a byte (`lora batch=4`, `lora ckpt`, `lora sdpa`, `lora r=16`, `lora foreach`, `lora
    data=alpaca.json sample`), so two cases that may differ in memory never share a cell. Left out: the
    seed, the step count, the learning rate, the backend and a capacity, which move no byte of a step."""
    method = case["method"] if isinstance(case["method"], dict) else {"name": case["method"]}
    knobs = [KNOB_LABELS[k].format(case[k]) for k, d in KNOB_DEFAULTS.items() if case.get(k, d) != d]
    knobs += [label.format(method[k]) for k, (label, d) in METHOD_KNOBS.items() if method.get(k, d) != d]
    if case.get("optim", "fused") != "fused":
        knobs.append(case["optim"])
    if case.get("data"):
        knobs.append(f"data={_name(case['data'])} tok={_name(case.get('tokenizer'))} {case.get('data_mode', 'pack')}")
    return " ".join([case_label(case), *knobs])


def _name(path) -> str:
    from pathlib import PurePath

    return PurePath(str(path)).name


@functools.cache
def validated() -> dict:
    return json.loads((resources.files("ist_bench.report") / "validated.json").read_text())


def covered() -> str:
    """What the GPU validation covers, in one sentence: the models, methods and policies of its cells."""
    v = validated()
    models = sorted({c.split(" ", 1)[0] for c in v["cells"]})
    labels = [c.split(" ")[1] for c in v["cells"]]
    methods = sorted({x.split("+")[0] for x in labels})
    policies = sorted({x.split("+")[1].split("(")[0] for x in labels if "+" in x})
    return (f"{v['report']} checked {len(v['cells'])} cells on the {v['gpu']} (sim within {v['max_abs_gap_pct']}%): "
            f"models {', '.join(models)}; methods {', '.join(methods)}; policies {', '.join(policies)}; each in the "
            f"settings listed there, and only those.")


def check_note(row: dict) -> str:
    """One line saying whether this row's cell (model, method, policy and every knob) was checked
    against a GPU (reports/validation.md), and what the validation covers when it was not. A sim
    figure is an estimate of the GPU's."""
    backend = row.get("backend")
    if backend == "cuda":
        return "measured on the GPU (max_memory_allocated)."
    if backend == "cpu":
        return "cpu: the tracker's tensor bytes on the host; no GPU validation covers cpu rows."
    v = validated()
    cell = f"{model_label(row['case']['model'])} {column(row['case'])}"
    if cell in v["cells"]:
        return (f"validated: on the {v['gpu']} this cell's sim estimate was {v['cells'][cell]:+.2f}% off the "
                f"allocator peak ({v['report']}).")
    return f"NOT validated against a GPU: this cell is sim's unchecked estimate. {covered()}"
