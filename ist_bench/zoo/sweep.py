"""Every causal-LM model type transformers registers, built tiny and measured on sim: which ist-bench runs.

For each `model_type` of `MODEL_FOR_CAUSAL_LM_MAPPING_NAMES`: the config class's defaults, shrunk (2 blocks,
small widths, few experts: `shrink`), written to a config.json; then `ist-bench memory` on sim for LoRA and
for Series + IST, 32 tokens, the steady step alone. A type is `ok` when both run, `refused` when ist-bench
says in one line why not (its reason is the table's), `partial` when one runs and the other is refused,
`model` when transformers' own code fails on a text-only step (GIT's loss expects image tokens first), `error`
when something else happened (a bug: the sweep's test fails on any). The reasons group as docs/models.md lists them.

    python -m ist_bench.zoo.sweep --out results/sweep/models.jsonl        # about 2 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
from pathlib import Path

# Sizes a tiny model takes, by the config attribute (standard names; a config's attribute_map gives its own).
SMALL = {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
         "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 512, "max_position_embeddings": 256,
         "num_experts": 4, "num_local_experts": 4, "n_routed_experts": 4, "num_experts_per_tok": 2,
         "moe_intermediate_size": 32, "shared_expert_intermediate_size": 64, "n_shared_experts": 1,
         "first_k_dense_replace": 1, "n_group": 1, "topk_group": 1, "q_lora_rank": 32, "kv_lora_rank": 16,
         "qk_rope_head_dim": 8, "qk_nope_head_dim": 8, "v_head_dim": 16, "rotary_dim": 8, "sliding_window": 64,
         "ffn_dim": 128, "n_inner": 128, "d_ff": 128, "num_local_experts_per_tok": 2, "layer_types": None,
         "linear_num_key_heads": 2, "linear_num_value_heads": 4, "linear_key_head_dim": 16, "linear_value_head_dim": 16,
         "conv_kernel_size": 4, "state_size": 8, "expand": 2, "time_step_rank": 8, "mamba_d_state": 8,
         "mamba_n_heads": 4, "mamba_d_head": 16, "ssm_state_size": 8, "intermediate_size_mlp": 128,
         "global_rope_theta": 10000.0}
LIST_KEYS = ("layer_types", "mlp_only_layers", "layers_block_type", "hybrid_override_pattern", "block_types")


def shrink(model_type: str) -> dict:
    """The config class's defaults with the sizes of SMALL where the class has them, as a config.json dict."""
    from transformers import AutoConfig

    config = AutoConfig.for_model(model_type)
    text = getattr(config, "text_config", None) or config
    layers = _get(text, "num_hidden_layers")
    for key, value in SMALL.items():
        old = _get(text, key)
        if old is not None and not isinstance(old, bool):
            _set(text, key, value)
    if _get(text, "kv_lora_rank"):   # multi-head latent attention: as many key/value heads as query heads,
        _set(text, "num_key_value_heads", text.num_attention_heads)   # rotary over the rope part of a head
        _set(text, "head_dim", _get(text, "qk_rope_head_dim"))
    small = SMALL["num_hidden_layers"]
    for key, v in list(vars(text).items()):   # per-layer lists follow the layer count
        if isinstance(v, (list, tuple)) and (key in LIST_KEYS or (layers and len(v) == layers)) and len(v) > small:
            _set(text, key, list(v)[:small])
    vocab = _get(text, "vocab_size")
    for key in ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id"):
        v = _get(text, key)   # token ids within the smaller vocabulary
        if isinstance(v, int) and vocab and v >= vocab:
            _set(text, key, vocab - 1)
    raw = config.to_dict()
    raw["model_type"] = model_type
    return raw


def _get(config, key):
    try:     # transformers 5 raises on a per-layer attribute read as one value (Gemma 4's head_dim)
        return getattr(config, key, None)
    except Exception:
        return None


def _set(config, key, value) -> None:
    try:
        setattr(config, key, value)
    except Exception:
        pass


class Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise Timeout


def measure(model_type: str, folder: Path, timeout_s: int = 120) -> dict:
    """One type's sweep row: ok / refused (why) / error (what) for LoRA and Series + IST."""
    from ist_bench.errors import UsageError
    from ist_bench.methods import MethodSpec
    from ist_bench.runner.case import Case
    from ist_bench.runner.memory import measure_memory

    row = {"model_type": model_type, "status": "ok", "runs": {}}
    start = time.time()
    try:
        raw = shrink(model_type)
    except Exception as e:
        return {**row, "status": "refused", "why": f"its config class builds no config: {type(e).__name__}: {str(e)[:160]}"}
    path = folder / f"{model_type}.json"
    path.write_text(json.dumps(raw, default=str))
    for name, method, select in (("lora", "lora", "none"), ("series+ist", "series", "ist")):
        signal.signal(signal.SIGALRM, _alarm)
        signal.alarm(timeout_s)
        try:
            case = Case(model=str(path), method=MethodSpec(name=method), select=select, backend="sim", seq_len=32,
                        steps=0).check()
            r = measure_memory(case)
            out = {"status": r["status"]}
            if r["status"] == "ok":
                out["peak"] = r["memory"]["summary"]["run_allocated_peak_est"]
                out["params"] = r.get("params")
                out["structure"] = r.get("settings", {}).get("structure")
            else:
                out["error"] = r.get("error")
                if r["status"] == "error" and _in_model_code(r.get("traceback", "")):
                    out["status"] = "model"   # the model's own code fails on a text-only causal-LM step
        except UsageError as e:
            out = {"status": "refused", "why": " ".join(str(e).split())[:300]}
        except Timeout:
            out = {"status": "error", "error": f"no answer in {timeout_s} s"}
        except Exception as e:
            out = {"status": "error", "error": f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"}
        finally:
            signal.alarm(0)
        row["runs"][name] = out
    statuses = {r["status"] for r in row["runs"].values()}
    if statuses == {"ok"}:
        row["status"] = "ok"
    elif "error" in statuses or "oom" in statuses:
        row["status"] = "error"
    elif "model" in statuses:
        row["status"] = "model"
        row["why"] = next(r.get("error") for r in row["runs"].values() if r["status"] == "model")
    else:
        row["status"] = "refused" if statuses <= {"refused"} else "partial"
        row["why"] = next((r.get("why") for r in row["runs"].values() if r.get("why")), None)
    row["wall_s"] = round(time.time() - start, 1)
    return row


def _in_model_code(traceback: str) -> bool:
    """Whether the innermost frame outside torch of a failure's traceback is transformers' modelling
    code (the model itself refuses the step: GIT's loss expects image tokens before the text), not
    ist-bench's or peft's."""
    frames = [line.split('"')[1] for line in traceback.splitlines() if line.strip().startswith('File "')]
    frames = [f for f in frames if "/torch/" not in f and not f.endswith("measure/tracker.py")]  # dispatch layers
    return bool(frames) and "/transformers/" in frames[-1] and "/peft/" not in frames[-1]


def model_types() -> list[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def main(argv: list[str] | None = None) -> int:
    from ist_bench.process import prepare

    prepare()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="results/sweep/models.jsonl")
    ap.add_argument("--only", help="comma-separated model types")
    ap.add_argument("--timeout", type=int, default=120, help="seconds per type and method")
    args = ap.parse_args(argv)
    types = args.only.split(",") if args.only else model_types()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    import torch
    import transformers

    meta = {"transformers": transformers.__version__, "torch": torch.__version__, "types": len(types)}
    out.write_text(json.dumps(meta) + "\n")
    rows = []
    with tempfile.TemporaryDirectory() as tmp, out.open("a") as f:
        for i, t in enumerate(types, 1):
            row = measure(t, Path(tmp), args.timeout)
            rows.append(row)
            f.write(json.dumps(row) + "\n")   # a finished type is kept if a later one hangs the process
            f.flush()
            print(f"[{i}/{len(types)}] {t:32s} {row['status']:8s} {row.get('why') or ''}"[:200], flush=True)
    counts = {s: sum(r["status"] == s for r in rows) for s in ("ok", "partial", "refused", "model", "error")}
    print(f"{counts} of {len(rows)} model types; rows in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
