"""The declared schemas of everything ist-bench reads: suites, cases, policy options, model configs,
compare thresholds and result rows (pydantic v2).

Each edge has one schema here; `validate(schema, data, where)` checks data against it and turns the
first error into one `UsageError` line naming where, the field, what is allowed and the value:

    results/t1.jsonl:3: status must be 'ok', 'oom', 'error', 'crashed', 'killed' or 'timeout', got 'done'
    model config big.json: n_layer must be <= 1024, got 1000000

A field's `description`, where given, is the "what is allowed" text for every error on it. Numbers
are finite and bounded everywhere (NaN, infinity and 10**400 are refused), and sizes are capped so
that nothing a schema lets through can run away in memory.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, create_model, model_validator

from ist_bench.errors import UsageError

MAX_INT = 2**63 - 1          # the largest integer a result row may hold (int64)
MAX_DEPTH = 64               # nesting of a result row or a suite
MAX_CASES = 10_000           # cases one suite may expand to
MAX_LAYERS = 256             # transformer blocks (the largest published models have ~130; a sim step of 1024
                             # blocks took ~90 s)
MAX_HIDDEN = 1 << 18         # hidden size, intermediate size, head count
MAX_VOCAB = 1 << 24
MAX_POSITIONS = 1 << 22
MAX_TOKENS = 1 << 24         # batch x seq_len per step
MAX_STEPS = 100_000
MAX_RANKS = 4096             # world size of a sharded case (sim plays any; fit --nproc auto tries up to 64)


# -- the error line ------------------------------------------------------------------------------

_TYPE_WORDS = {int: "int", float: "float", str: "str", bool: "bool", dict: "dict", list: "list", type(None): "null"}


def show(value: Any) -> str:
    """A value as the error line shows it: short, one line, never a file's worth of text."""
    if isinstance(value, int) and abs(value) >= 10**15:     # (True, False and None: their repr, below)
        if abs(value) < 10**300:
            return f"{float(value):.3g}"
        digits = str(abs(value))
        return f"{str(value).removesuffix(digits)}10**{len(digits) - 1}"    # the sign, then the power of 10
    if isinstance(value, dict):
        return "a mapping" if value else "{}"
    text = " ".join(repr(value).split())
    return text if len(text) <= 40 else text[:37] + "..."


def _key(key: Any) -> str:
    """A key of a path as the error line shows it (a key of odd characters as its short repr)."""
    text = str(key)
    return text if text.isprintable() and text.strip() == text and text and len(text) <= 40 else show(key)


def _allowed(err: dict, field) -> str:
    """What a field allows: its description, else its type (for a wrong type), else pydantic's words."""
    import typing

    if field is not None and field.description:
        return field.description
    kind = err["type"]
    if field is not None and (kind.endswith("_type") or kind.endswith("_parsing") or kind == "int_from_float"):
        union = typing.get_origin(field.annotation) in (typing.Union, types.UnionType)
        kinds = typing.get_args(field.annotation) if union else (field.annotation,)
        words = [_TYPE_WORDS.get(typing.get_origin(a) or a) for a in kinds]
        if all(words):
            return " or ".join(words)
    msg = err["msg"].removeprefix("Input should be ").removeprefix("Value error, ")
    for words, sign in (("greater than or equal to ", ">= "), ("less than or equal to ", "<= "),
                        ("greater than ", "> "), ("less than ", "< ")):
        msg = msg.replace(words, sign)
    return msg


def usage_error(e: ValidationError, where: str, schema: type[BaseModel] | None = None, data: Any = None,
                label=lambda name: name) -> UsageError:
    """The first error of `e` as one line: `<where><field> must be <allowed>, got <value>`."""
    err = e.errors()[0]
    loc = _in_data(data, err["loc"], err["type"] == "missing")
    fields = getattr(schema, "model_fields", {})
    field = fields.get(loc[0]) if len(loc) == 1 and isinstance(loc[0], str) else None
    name = label(".".join(_key(p) for p in loc)) if loc else ""
    if err["type"] == "extra_forbidden":
        return UsageError(f"unknown key {'.'.join(map(_key, loc))!r} in {where.removeprefix('malformed ').rstrip(': ')}; "
                          f"valid: {', '.join(fields) if fields else '(see the docs)'}")
    if err["type"] == "missing":
        return UsageError(f"{where}{name} is missing")
    if not name or err["type"] == "value_error":    # a check across fields: its message names them
        return UsageError(where + err["msg"].removeprefix("Value error, "))
    return UsageError(f"{where}{name} must be {_allowed(err, field)}, got {show(err.get('input'))}")


def _in_data(data: Any, loc: tuple, missing: bool) -> list:
    """The parts of an error's location that are keys or indexes of the data (pydantic adds the names
    of union members and constrained types in between); a missing field keeps its name at the end."""
    out, node = [], data
    for i, part in enumerate(loc):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part in range(len(node)):
            node = node[part]
        elif not (missing and i == len(loc) - 1):
            continue
        out.append(part)
    return out


def validate(schema, data: Any, where: str, label=lambda name: name):
    """`data` checked against `schema` (a model class or a TypeAdapter); a UsageError line if not."""
    try:
        if isinstance(schema, TypeAdapter):
            return schema.validate_python(data)
        return schema.model_validate(data)
    except ValidationError as e:
        raise usage_error(e, where, schema if isinstance(schema, type) else None, data, label) from None


def bounded(value: Any, depth: int = 0, path: str = "", infinite: bool = False) -> str | None:
    """Where (a dotted path) `value` holds a number that is not finite (`infinite`: NaN) or not within int64,
    or nests deeper than MAX_DEPTH; None if nowhere."""
    if depth > MAX_DEPTH:
        return f"{path.split('.')[0] or 'the value'} nests deeper than {MAX_DEPTH} levels"
    if isinstance(value, int):      # a bool too (always within); None and text hold no number
        return None if -MAX_INT <= value <= MAX_INT else f"{path} must be a number within int64, got {show(value)}"
    if isinstance(value, float):
        if infinite and math.isinf(value):
            return None
        return None if math.isfinite(value) else f"{path} must be a {'number' if infinite else 'finite number'}, got {value}"
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, v in items:
        found = bounded(v, depth + 1, f"{path}.{_key(key)}" if path else _key(key), infinite)
        if found:
            return found
    return None


# -- suites --------------------------------------------------------------------------------------

Kind = Literal["memory", "time"]


class SuiteSpec(BaseModel):
    """The top level of a suite YAML (runner/suite.py); `defaults`, `grid`, `cases`, `exclude` hold
    case fields, checked case by case by the case schema (CASE_LIMITS below)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: str | None = Field(None, min_length=1, max_length=200, description="a non-empty name")
    kind: Kind | Annotated[list[Kind], Field(min_length=1, max_length=2)] = Field(
        "memory", description="memory, time (or a list of both)")
    defaults: dict[str, Any] = Field(default_factory=dict, description="a mapping of case fields")
    grid: dict[str, Any] = Field(default_factory=dict, description="a mapping of case fields to values or lists")
    cases: list[dict[str, Any]] = Field(default_factory=list, description="a list of mappings of case fields")
    exclude: list[dict[str, Any]] = Field(default_factory=list, description="a list of mappings of case fields")
    warmup: int = Field(10, ge=0, le=MAX_STEPS, description=f"an integer >= 0 (at most {MAX_STEPS})")
    profile_steps: int | None = Field(None, ge=0, le=MAX_STEPS, description=f"an integer >= 0 (at most {MAX_STEPS})")
    overhead_blocks: int = Field(0, ge=0, le=1000, description="an integer >= 0 (at most 1000)")
    gpu: str | None = Field(None, min_length=1, max_length=200,
                            description="a card name (the card that time cases on sim are predicted for)")

    @model_validator(mode="before")
    @classmethod
    def _empty_is_default(cls, data):
        # `defaults:` with nothing after it is YAML's null: the same as leaving the key out
        if isinstance(data, dict):
            data = {k: v for k, v in data.items() if not (v is None and k in ("defaults", "grid", "cases", "exclude"))}
        return data

    @model_validator(mode="after")
    def _distinct_kinds(self):
        if isinstance(self.kind, list) and len(set(self.kind)) != len(self.kind):
            raise ValueError(f"kind lists a kind twice ({', '.join(self.kind)}): each case would run twice")
        return self

    @property
    def kinds(self) -> list[str]:
        return self.kind if isinstance(self.kind, list) else [self.kind]


def suite_size(spec: SuiteSpec) -> int:
    """How many cases the grid and the case list expand to (before exclusions and duplicates)."""
    n = max(1, len(spec.cases))
    for v in spec.grid.values():
        n *= len(v) if isinstance(v, list) else 1
    return n


# -- cases and their parts -----------------------------------------------------------------------

# The ranges of Case's fields (runner/case.py); type errors come from Case's own annotations.
CASE_LIMITS: dict[str, Any] = {
    "steps": Field(ge=0, le=MAX_STEPS),     # 0: the steady-state step alone
    "seq_len": Field(ge=2),               # at most the model's positions (Case.check), and MAX_TOKENS
    "batch": Field(ge=1, le=MAX_TOKENS // 2),
    "seed": Field(ge=0, lt=2**32),
    "lr": Field(gt=0, description="a finite number > 0"),     # finite: dataclass_schema's config
    "model": Field(min_length=1),
    "nproc": Field(ge=1, le=MAX_RANKS, description=f"an integer >= 1 (at most {MAX_RANKS})"),
}
METHOD_LIMITS: dict[str, Any] = {
    key: Field(ge=1, le=1 << 16) for key in ("r", "bottleneck", "adalora_init_r", "adalora_target_r")
} | {"alpha": Field(ge=0, le=1 << 20), "total_steps": Field(ge=1, le=MAX_STEPS + 1)}
# (dropout: finite by dataclass_schema's config, in [0, 1) by MethodSpec itself)


@functools.cache
def dataclass_schema(cls: type, limits: tuple = (), exclude: tuple = ()) -> type[BaseModel]:
    """A strict pydantic model of a dataclass's fields (the dataclass stays as it is), with `limits`
    ((name, FieldInfo) pairs) on some of them; numbers finite."""
    import typing

    hints = typing.get_type_hints(cls)
    limit = dict(limits)
    fields = {}
    for f in dataclasses.fields(cls):
        if f.name in exclude:
            continue
        default = f.default if f.default is not dataclasses.MISSING else ...
        if f.default_factory is not dataclasses.MISSING:
            default = Field(default_factory=f.default_factory)
        kind = hints[f.name]
        if f.name in limit:
            kind = Annotated[kind, limit[f.name]]
        fields[f.name] = (kind, default)
    config = ConfigDict(strict=True, allow_inf_nan=False, extra="forbid", arbitrary_types_allowed=True)
    return create_model(f"{cls.__name__}Schema", __config__=config, **fields)


def check_dataclass(obj, where: str = "", limits: dict | None = None, exclude: tuple = (), label=lambda n: n):
    """Validate a dataclass instance's values against its schema; raises the one-line UsageError."""
    schema = dataclass_schema(type(obj), tuple((limits or {}).items()), exclude)
    values = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.name not in exclude}
    validate(schema, values, where, label)


def check_tokens(seq_len: int, batch: int) -> None:
    if seq_len * batch > MAX_TOKENS:
        raise UsageError(f"batch x seq_len must be <= {MAX_TOKENS:,} tokens per step, got {batch} x {seq_len}")


# -- model configs -------------------------------------------------------------------------------

def _size(cap: int, optional: bool = False):
    return Field(None if optional else ..., ge=1, le=cap)


_Width = Annotated[int, Field(ge=1, le=4 * MAX_HIDDEN)]


class ModelShape(BaseModel):
    """The sizes of a transformers config (check_config reads them from its attributes: GPT-2's n_layer
    is num_hidden_layers) that decide a model's memory; anything else is the family's own business."""

    model_config = ConfigDict(strict=True)

    num_hidden_layers: int = _size(MAX_LAYERS)
    hidden_size: int = _size(MAX_HIDDEN)
    num_attention_heads: int | None = _size(MAX_HIDDEN, optional=True)   # a state-space model has none
    num_key_value_heads: int | None = _size(MAX_HIDDEN, optional=True)
    vocab_size: int = _size(MAX_VOCAB)
    intermediate_size: _Width | Annotated[list[_Width], Field(max_length=MAX_LAYERS)] | None = None  # a list: per layer (Gemma 3n)
    max_position_embeddings: int | None = _size(MAX_POSITIONS, optional=True)
    head_dim: int | None = _size(MAX_HIDDEN, optional=True)

    @model_validator(mode="after")
    def _heads(self):
        if self.num_attention_heads is None:
            return self
        if self.head_dim is None and self.hidden_size % self.num_attention_heads:
            raise ValueError(f"num_attention_heads ({self.num_attention_heads}) must divide hidden_size "
                             f"({self.hidden_size})")
        kv = self.num_key_value_heads
        if kv is not None and self.num_attention_heads % kv:     # (more kv heads than heads never divides)
            raise ValueError(f"num_key_value_heads ({kv}) must divide num_attention_heads ({self.num_attention_heads})")
        return self


def check_config(config, where: str) -> None:
    """A built transformers config's sizes, named as its file names them (n_layer, not num_hidden_layers)."""
    own = getattr(config, "attribute_map", {})     # GPT-2: {"num_hidden_layers": "n_layer", ...}
    values = {}
    for name in ModelShape.model_fields:
        try:
            values[name] = getattr(config, name)
        except AttributeError:
            continue
    validate(ModelShape, values, where, label=lambda name: own.get(name, name))


# -- compare thresholds --------------------------------------------------------------------------

class Thresholds(BaseModel):
    """`ist-bench compare`'s tolerances (compare.py): finite, and a slow-down factor is >= 1."""

    model_config = ConfigDict(strict=False, allow_inf_nan=False, extra="forbid")

    memory_pct: float = Field(2.0, ge=0, le=1000)        # cuda memory: % of the baseline ...
    memory_floor: int = Field(64 << 20, ge=0, le=MAX_INT)  # ... or this many bytes, whichever is larger
    device_factor: float = Field(1.05, ge=1, le=1000)    # GPU busy time per phase
    wall_factor: float = Field(1.10, ge=1, le=1000)      # wall median per step (and the U test below)
    p_value: float = Field(0.002, gt=0, lt=1)
    gate_wall: bool = False          # fail on wall time even where GPU busy time was measured

    def __init__(self, **values):
        try:
            super().__init__(**values)
        except ValidationError as e:
            raise usage_error(e, "", type(self), values, label=lambda n: "--" + n.replace("_", "-")) from None


# -- result rows ---------------------------------------------------------------------------------

SCHEMA = 1
STATUSES = ("ok", "oom", "error", "crashed", "killed", "timeout")


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)    # finite: each float's own type (and Row._numbers)


class _MethodRow(_Open):     # a method, or a selection policy: a name and its settings
    name: str


class _CaseRow(_Open):
    model: str
    method: _MethodRow
    select: str = "none"
    select_opts: dict[str, Any] = Field(default_factory=dict)


Number = Annotated[float, Field(allow_inf_nan=False)] | int
Optional = Number | None
Bytes = Annotated[int | float, Field(ge=0, allow_inf_nan=False)]    # memory: never negative
Millis = Annotated[int | float, Field(gt=0, allow_inf_nan=False)]   # a time: above zero


class _Figure(_Open):           # one memory figure over the steps (measure/memory.py's summarize)
    first: Bytes
    max: Bytes = None
    min: Bytes = None               # absent or a number (never null): readers take .get(k, default)
    median: Bytes = None
    last: Bytes = None
    steady: Bytes = None
    typical: Bytes = None


class _Step(_Open):
    at_peak: dict[str, Bytes] | None = None
    top_activations: dict[str, Any] | None = None


class _Memory(_Open):
    summary: dict[str, Any]          # run_<figure>: a number over the run; any other key: a _Figure
    steps: list[_Step] = Field(default_factory=list)

    @model_validator(mode="after")
    def _figures(self):
        for key, value in self.summary.items():
            if key == "run_peak_blocks" or key == "temporary":   # rows of Nov 2026 held a derived `temporary`
                continue                                          # (peak minus the categories): it may be < 0
            try:
                _RUN.validate_python(value) if key.startswith("run_") else _Figure.model_validate(value)
            except ValidationError as e:
                detail, where = str(usage_error(e, "", data=value)), f"memory.summary.{_key(key)}"
                if detail.startswith("Input should"):    # the value itself is of the wrong type
                    figure = "a number of bytes >= 0" if key.startswith("run_") else "a mapping with first, max, ..."
                    raise ValueError(f"{where} must be {figure}, got {show(value)}") from None
                raise ValueError(f"{where}.{detail}") from None
        return self


_RUN = TypeAdapter(Bytes, config=ConfigDict(strict=True))
BUSY_PHASES = ("forward", "backward", "optimizer", "step")   # what a busy-time measurement always holds


class _Phase(_Open):
    median: Millis
    mean: Millis | None = None
    p10: Millis | None = None
    p90: Millis | None = None
    n: int | None = None


class _Device(_Open):
    busy_ms: dict[str, Millis] = Field(default_factory=dict)
    busy_steps_ms: list[Millis] = Field(default_factory=list)

    @model_validator(mode="after")
    def _whole(self):
        missing = [p for p in BUSY_PHASES if self.busy_ms and p not in self.busy_ms]
        if missing:   # a partial busy time would gate some phases and let the rest through
            raise ValueError(f"time.device.busy_ms has no {', '.join(missing)} (a busy-time measurement holds "
                             f"{', '.join(BUSY_PHASES)}, each > 0)")
        if self.busy_steps_ms and "step" in self.busy_ms:
            _agrees("time.device.busy_ms.step", self.busy_ms["step"], self.busy_steps_ms)
        return self


def _agrees(where: str, median: float, samples: list[float]) -> None:
    """A summary must be what its own samples give (compare reads the one, the U test the others)."""
    import statistics

    actual = statistics.median(samples)
    if not math.isclose(median, actual, rel_tol=1e-6, abs_tol=1e-9):
        raise ValueError(f"{where} is {show(median)} but the median of its samples is {show(actual)}")


class _Time(_Open):
    phases_ms: dict[str, _Phase]
    steps_ms: list[Millis] = Field(default_factory=list)
    device: _Device | None = None

    @model_validator(mode="after")
    def _step(self):
        if "step" not in self.phases_ms:
            raise ValueError("time.phases_ms has no 'step' phase")
        if self.steps_ms:
            _agrees("time.phases_ms.step.median", self.phases_ms["step"].median, self.steps_ms)
        return self


class _History(_Open):
    step: int
    active: list[int] | None = None
    importance: list[Number] | None = None


class _Selection(_Open):
    policy: _MethodRow | None = None
    history: list[_History] = Field(default_factory=list)


class Row(_Open):
    """One result row (docs/results.md): what every reader relies on. Other fields pass through,
    but every number in the row is finite and within int64."""

    schema_version: Literal[1] = Field(SCHEMA, alias="schema")   # `true` is refused (_numbers below)
    kind: Literal["memory", "time"] = "memory"
    case: _CaseRow
    status: Literal[STATUSES]
    backend: str | None = None
    error: str | None = None
    memory: _Memory = None          # absent, not null: readers take row.get("memory", {})
    time: _Time = None
    settings: dict[str, Any] = Field(default_factory=dict)
    selection: _Selection = None
    provenance: dict[str, Any] = Field(default_factory=dict)
    nvml: dict[str, Any] = Field(default_factory=dict)
    n_layers: Annotated[int, Field(ge=0)] | None = None
    params: Annotated[int, Field(ge=0)] | None = None
    trainable_params: Annotated[int, Field(ge=0)] | None = None
    peak_reached: Optional = None

    @model_validator(mode="before")
    @classmethod
    def _numbers(cls, data):
        found = bounded(data)
        if found:
            raise ValueError(found)
        if isinstance(data, dict) and isinstance(data.get("schema"), bool):
            raise ValueError(f"schema must be {SCHEMA}, got {show(data['schema'])}")
        return data

    @model_validator(mode="after")
    def _figures(self):
        if self.status == "ok" and getattr(self, self.kind) is None:
            raise ValueError(f"a finished {self.kind} row needs its '{self.kind}' figures")
        if self.status == "ok" and self.kind == "memory" and not self.memory.summary:
            raise ValueError("a finished memory row has an empty memory.summary")
        return self


def check_row(row: Any, where: str) -> dict:
    """A row (a parsed JSON line) validated; returned as it was (a dict)."""
    validate(Row, row, where)
    return row
