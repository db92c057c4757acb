"""The model zoo: shipped configs (published shapes, random weights), and the way to a built model.

Nothing is ever downloaded: each name maps to a shipped `configs/<name>.json` in the Hugging Face
`config.json` format, and `--model` also takes a path to such a file. Memory and speed do not depend
on weight values, so random init is enough.

This module is light (JSON only): a case is validated against a config's raw values before torch or
transformers is imported. `build.py` turns a config into a transformers config and a model; its
functions are also reachable as `zoo.<name>` (imported on first use).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from ist_bench import schema
from ist_bench.errors import UsageError, choice_error, read_json

_CONFIGS = resources.files("ist_bench.zoo") / "configs"
SUMMARY = Path(__file__).parent / "summary.json"
UNBOUNDED_MAX_LEN = 32768   # the longest --seq-len taken for a model without a position limit (ALiBi)
POSITION_KEYS = ("max_position_embeddings", "n_positions")

_BUILD = ("load_config", "build_model", "count_parameters", "locate_layers", "max_positions", "check_attention",
          "text_config")


def __getattr__(name: str):
    if name in _BUILD:
        from ist_bench.zoo import build
        return getattr(build, name)
    raise AttributeError(f"module 'ist_bench.zoo' has no attribute {name!r}")


def names() -> list[str]:
    return sorted(p.name[: -len(".json")] for p in _CONFIGS.iterdir() if p.name.endswith(".json"))


def is_path(name_or_path: str) -> bool:
    """Whether `--model` names a file or folder rather than a zoo entry."""
    path = Path(name_or_path)
    return name_or_path not in names() and (path.suffix == ".json" or path.is_dir() or path.exists())


def raw_config(name_or_path: str) -> dict:
    """A config's JSON (zoo name or a path to a config.json or its folder), checked to be a bounded
    mapping with a string `model_type`; the `_ist_bench` block (our notes) removed."""
    if name_or_path in names():
        raw = json.loads((_CONFIGS / f"{name_or_path}.json").read_text())
        file = name_or_path
    elif is_path(name_or_path):
        path = Path(name_or_path)
        file = path / "config.json" if path.is_dir() else path
        raw = read_json(file, "config file")
        if not isinstance(raw, dict) or "model_type" not in raw:
            raise UsageError(f"malformed config file {file}: no 'model_type' key")
    else:
        raise choice_error("model", name_or_path, names() + ["<path/to/config.json>"], listed_by="ist-bench models")
    raw = dict(raw)
    raw.pop("_ist_bench", None)
    if not isinstance(raw["model_type"], str):
        raise UsageError(f"model config {name_or_path}: model_type must be str, got {schema.show(raw['model_type'])}")
    found = schema.bounded(raw, infinite=True)   # Mamba-2's time_step_limit is [0.0, Infinity] as published
    if found:
        raise UsageError(f"model config {name_or_path}: {found}")
    return raw


def raw_text(raw: dict) -> dict:
    """The language model's part of a raw config: a multimodal config (Gemma 3, Llama 4, Qwen3.5 as
    published) keeps its sizes in `text_config`; any other config is its own."""
    inner = raw.get("text_config")
    if "num_hidden_layers" not in raw and isinstance(inner, dict) and "num_hidden_layers" in inner:
        return inner
    return raw


def raw_positions(raw: dict) -> int | None:
    """The longest sequence a raw config's position embeddings allow, if it says (None: no limit
    named, e.g. ALiBi; the built config decides then)."""
    raw = raw_text(raw)
    for key in POSITION_KEYS:
        value = raw.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def summary() -> dict[str, dict]:
    """What `ist-bench models` lists, per zoo name (zoo/summary.json, derived from the configs by
    `build.summarize`; tests/test_zoo.py checks it against the built models)."""
    return json.loads(SUMMARY.read_text())
