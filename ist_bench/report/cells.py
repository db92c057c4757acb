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
BNB_OPTIMS = ("adamw8bit", "paged-adamw8bit", "paged-adamw32bit")   # bitsandbytes' optimizers: their own cells


def column(case: dict) -> str:
    """A Table-1 column: method + policy (`lora+ist`), then every knob off the paper's setting
    (`lora batch=4`, `lora ckpt`, `lora sdpa`), so two different cases never share a cell."""
    return case_label(case) + "".join(" " + KNOB_LABELS[k].format(case[k]) for k, d in KNOB_DEFAULTS.items()
                                      if case.get(k, d) != d) + \
        (f" {case['optim']}" if case.get("optim") in BNB_OPTIMS else "")


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
