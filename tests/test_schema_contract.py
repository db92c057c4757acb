"""The contract of ist_bench/schema.py, written out here (not read back from the schema's own Field
metadata): every bounded field's edges, the one-line error (`<where><field> must be <allowed>, got
<value>`), the helpers behind that line (show, _key, _allowed, _in_data, usage_error, bounded), the
defaults, and the checks across fields of suites, cases, model configs, compare thresholds and rows.

The limits come from the module's documented constants and the docs (docs/results.md, the error texts
of the bad-input catalogue): int64 numbers, 64 levels of nesting, 256 blocks, 2**18 hidden units, ...
"""

from __future__ import annotations

import dataclasses
import math
import types

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import Field, TypeAdapter, ValidationError

from ist_bench import schema
from ist_bench.errors import UsageError
from ist_bench.runner.case import Case

FAST = settings(max_examples=60, derandomize=True, deadline=None, database=None)
INT64 = 2**63 - 1
TINY = 5e-324                      # the smallest float above 0
BIGGEST = 1.7976931348623157e308   # the largest finite float


def refusal(fn, *args, **kwargs) -> str:
    """The one line `fn` refuses with (a UsageError, never a pydantic ValidationError)."""
    with pytest.raises(UsageError) as e:
        fn(*args, **kwargs)
    text = str(e.value)
    assert "\n" not in text, text
    return text


# -- the documented limits ----------------------------------------------------------------------

def test_the_limits_are_the_documented_ones():
    assert (schema.MAX_INT, schema.MAX_DEPTH, schema.MAX_CASES) == (2**63 - 1, 64, 10_000)
    assert (schema.MAX_LAYERS, schema.MAX_HIDDEN, schema.MAX_VOCAB, schema.MAX_POSITIONS) == (256, 262_144, 16_777_216,
                                                                                            4_194_304)
    assert (schema.MAX_TOKENS, schema.MAX_STEPS, schema.MAX_RANKS) == (16_777_216, 100_000, 4096)
    assert schema.SCHEMA == 1
    assert schema.STATUSES == ("ok", "oom", "error", "crashed", "killed", "timeout")
    assert schema.BUSY_PHASES == ("forward", "backward", "optimizer", "step")


# -- every bounded field at its edges -----------------------------------------------------------

def _suite(field):
    return lambda v: schema.validate(schema.SuiteSpec, {field: v}, "s.yaml: ")


def _case(field):
    return lambda v: Case.from_dict({field: v})


def _method(field):
    return lambda v: Case.from_dict({"method": {"name": "adalora", field: v}})


SHAPE = {"num_hidden_layers": 2, "hidden_size": 1 << 18, "vocab_size": 8}


def _shape(field):
    extra = {"num_attention_heads": 1 << 18} if field == "num_key_value_heads" else {}
    return lambda v: schema.validate(schema.ModelShape, {**SHAPE, **extra, field: v}, "model config c.json: ")


def _thresholds(field):
    return lambda v: schema.Thresholds(**{field: v})


ROW = {"schema": 1, "kind": "memory", "case": {"model": "m", "method": {"name": "lora"}}, "status": "ok",
       "memory": {"summary": {"peak": {"first": 1, "max": 1}}}}
TIME_ROW = {"schema": 1, "kind": "time", "case": {"model": "m", "method": {"name": "lora"}}, "status": "ok",
            "time": {"phases_ms": {"step": {"median": 2.0}}}}


def _row(put):
    return lambda v: schema.check_row(put(v), "r.jsonl:3: ")


def _at_peak(v):
    return {**ROW, "memory": {"summary": ROW["memory"]["summary"], "steps": [{"at_peak": {"attn": v}}]}}


def _median(v):
    return {**TIME_ROW, "time": {"phases_ms": {"step": {"median": v}}}}


def _run_peak(v):
    return {**ROW, "memory": {"summary": {"run_peak": v}}}


# (id, check, the field as the line names it, where, smallest allowed, largest allowed,
#  (first refused below, its allowed text, its shown value), (first refused above, allowed text, shown value));
# None: no bound on that side. The allowed text is the field's description where it has one.
STEPS_TEXT = "an integer >= 0 (at most 100000)"
EDGES = [
    ("suite.warmup", _suite("warmup"), "warmup", "s.yaml: ", 0, 100_000, (-1, STEPS_TEXT, "-1"),
     (100_001, STEPS_TEXT, "100001")),
    ("suite.profile_steps", _suite("profile_steps"), "profile_steps", "s.yaml: ", 0, 100_000, (-1, STEPS_TEXT, "-1"),
     (100_001, STEPS_TEXT, "100001")),
    ("suite.overhead_blocks", _suite("overhead_blocks"), "overhead_blocks", "s.yaml: ", 0, 1000,
     (-1, "an integer >= 0 (at most 1000)", "-1"), (1001, "an integer >= 0 (at most 1000)", "1001")),
    ("suite.name", _suite("name"), "name", "s.yaml: ", "x", "x" * 200, ("", "a non-empty name", "''"),
     ("y" * 201, "a non-empty name", "'" + "y" * 36 + "...")),
    ("suite.gpu", _suite("gpu"), "gpu", "s.yaml: ", "x", "x" * 200,
     ("", "a card name (the card that time cases on sim are predicted for)", "''"),
     ("y" * 201, "a card name (the card that time cases on sim are predicted for)", "'" + "y" * 36 + "...")),
    ("case.steps", _case("steps"), "steps", "", 0, 100_000, (-1, ">= 0", "-1"), (100_001, "<= 100000", "100001")),
    ("case.seq_len", _case("seq_len"), "seq_len", "", 2, None, (1, ">= 2", "1"), None),
    ("case.batch", _case("batch"), "batch", "", 1, 8_388_608, (0, ">= 1", "0"), (8_388_609, "<= 8388608", "8388609")),
    ("case.seed", _case("seed"), "seed", "", 0, 2**32 - 1, (-1, ">= 0", "-1"), (2**32, "< 4294967296", "4294967296")),
    ("case.lr", _case("lr"), "lr", "", TINY, BIGGEST, (0.0, "a finite number > 0", "0.0"),
     (math.inf, "a finite number > 0", "inf")),
    ("case.nproc", _case("nproc"), "nproc", "", 1, 4096, (0, "an integer >= 1 (at most 4096)", "0"),
     (4097, "an integer >= 1 (at most 4096)", "4097")),
    *[(f"method.{k}", _method(k), k, "", 1, 65_536, (0, ">= 1", "0"), (65_537, "<= 65536", "65537"))
      for k in ("r", "bottleneck", "adalora_init_r", "adalora_target_r")],
    ("method.alpha", _method("alpha"), "alpha", "", 0, 1 << 20, (-1, ">= 0", "-1"), ((1 << 20) + 1, "<= 1048576", "1048577")),
    ("method.total_steps", _method("total_steps"), "total_steps", "", 1, 100_001, (0, ">= 1", "0"),
     (100_002, "<= 100001", "100002")),
    ("method.dropout", _method("dropout"), "dropout", "", 0.0, 0.5, (-math.inf, "a finite number", "-inf"),
     (math.nan, "a finite number", "nan")),
    *[(f"config.{k}", _shape(k), k, "model config c.json: ", 1, hi, (0, ">= 1", "0"), (hi + 1, f"<= {hi}", str(hi + 1)))
      for k, hi in (("num_hidden_layers", 256), ("hidden_size", 1 << 18), ("num_attention_heads", 1 << 18),
                    ("num_key_value_heads", 1 << 18), ("vocab_size", 1 << 24), ("intermediate_size", 1 << 20),
                    ("max_position_embeddings", 1 << 22), ("head_dim", 1 << 18))],
    ("thresholds.memory_pct", _thresholds("memory_pct"), "--memory-pct", "", 0, 1000,
     (-TINY, ">= 0", "-5e-324"), (math.nextafter(1000, 2000), "<= 1000", "1000.0000000000001")),
    ("thresholds.memory_floor", _thresholds("memory_floor"), "--memory-floor", "", 0, INT64, (-1, ">= 0", "-1"),
     (2**63, "<= 9223372036854775807", "9.22e+18")),
    *[(f"thresholds.{k}", _thresholds(k), "--" + k.replace("_", "-"), "", 1, 1000,
       (math.nextafter(1, 0), ">= 1", "0.9999999999999999"), (math.nextafter(1000, 2000), "<= 1000", "1000.0000000000001"))
      for k in ("device_factor", "wall_factor")],
    ("thresholds.p_value", _thresholds("p_value"), "--p-value", "", TINY, math.nextafter(1, 0), (0, "> 0", "0"),
     (1, "< 1", "1")),
    ("row.at_peak", _row(_at_peak), "memory.steps.0.at_peak.attn", "r.jsonl:3: ", 0, INT64, (-TINY, ">= 0", "-5e-324"),
     (2**63, "a number within int64", "9.22e+18")),
    ("row.phase_median", _row(_median), "time.phases_ms.step.median", "r.jsonl:3: ", TINY, BIGGEST, (0, "> 0", "0"),
     (math.inf, "a finite number", "inf")),
    ("row.run_peak", _row(_run_peak), "memory.summary.run_peak", "r.jsonl:3: ", 0, INT64,
     (-1, "a number of bytes >= 0", "-1"), (2**63, "a number within int64", "9.22e+18")),
    *[(f"row.{k}", _row(lambda v, k=k: {**ROW, k: v}), k, "r.jsonl:3: ", 0, INT64, (-1, ">= 0", "-1"),
       (2**63, "a number within int64", "9.22e+18")) for k in ("n_layers", "params", "trainable_params")],
    ("row.any_number", _row(lambda v: {**ROW, "wall_s": v}), "wall_s", "r.jsonl:3: ", -INT64, INT64,
     (-(2**63), "a number within int64", "-9.22e+18"), (2**63, "a number within int64", "9.22e+18")),
]


@pytest.mark.parametrize("check,field,where,lo,hi,below,above", [e[1:] for e in EDGES], ids=[e[0] for e in EDGES])
def test_a_bounded_field_takes_its_edges_and_refuses_one_step_beyond(check, field, where, lo, hi, below, above):
    for ok in (lo, hi):
        if ok is not None:
            check(ok)
    for out in (below, above):
        if out is not None:
            value, allowed, shown = out
            assert refusal(check, value) == f"{where}{field} must be {allowed}, got {shown}"


# -- show and _key: a value and a key as the line shows them ------------------------------------

@pytest.mark.parametrize("value,shown", [
    (True, "True"), (False, "False"), (None, "None"), (0, "0"), (-7, "-7"),
    (10**15 - 1, "999999999999999"), (-(10**15 - 1), "-999999999999999"),
    (10**15, "1e+15"), (-(10**15), "-1e+15"), (1234567890123456789, "1.23e+18"),
    (1.5e15, "1500000000000000.0"), (2.5, "2.5"), (math.nan, "nan"), (-math.inf, "-inf"),
    (10**299, "1e+299"), (10**300 - 1, "1e+300"), (10**300, "10**300"), (9 * 10**300, "10**300"),
    (-(10**300), "-10**300"), (10**400, "10**400"), (-(10**400) - 7, "-10**400"),
    ({}, "{}"), ({"a": 1}, "a mapping"), ([], "[]"), ([1, 2], "[1, 2]"),
    ("a    b", "'a b'"), ("x" * 38, "'" + "x" * 38 + "'"), ("x" * 39, "'" + "x" * 36 + "..."),
    (list(range(30)), "[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11..."),
])
def test_show(value, shown):
    assert schema.show(value) == shown


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
                    max_leaves=12)


@FAST
@given(JSON)
def test_show_is_one_short_line_for_any_value(value):
    text = schema.show(value)
    assert len(text) <= 40 and "\n" not in text


@pytest.mark.parametrize("key,shown", [
    ("peak", "peak"), (0, "0"), (17, "17"), ("x" * 40, "x" * 40), ("x" * 41, "'" + "x" * 36 + "..."),
    ("", "''"), (" a", "' a'"), ("a ", "'a '"), ("a\nb", "'a\\nb'"), ("tab\t", "'tab\\t'"),
])
def test_key(key, shown):
    assert schema._key(key) == shown


@FAST
@given(st.text(min_size=1, max_size=40))
def test_a_plain_key_shows_as_itself(key):
    plain = key.isprintable() and key.strip() == key
    assert (schema._key(key) == key) == plain


# -- _allowed: what the line says a field allows -------------------------------------------------

def _info(annotation, **kw):
    from pydantic.fields import FieldInfo
    return FieldInfo(annotation=annotation, **kw)


@pytest.mark.parametrize("err,field,allowed", [
    ({"type": "int_type", "msg": "Input should be a valid integer"}, _info(int, description="a count"), "a count"),
    ({"type": "greater_than", "msg": "Input should be greater than 0"}, _info(int, description="a count"), "a count"),
    ({"type": "int_type", "msg": "Input should be a valid integer"}, None, "a valid integer"),
    ({"type": "int_type", "msg": "Input should be a valid integer"}, _info(int), "int"),
    ({"type": "bool_type", "msg": "Input should be a valid boolean"}, _info(bool), "bool"),
    ({"type": "string_type", "msg": "Input should be a valid string"}, _info(str | None), "str or null"),
    ({"type": "float_parsing", "msg": "Input should be a valid number"}, _info(float), "float"),
    ({"type": "int_from_float", "msg": "Input should be a valid integer, got a number with a fractional part"},
     _info(int), "int"),
    ({"type": "dict_type", "msg": "Input should be a valid dictionary"}, _info(dict[str, int]), "dict"),
    ({"type": "list_type", "msg": "Input should be a valid list"}, _info(list[int] | None), "list or null"),
    ({"type": "int_type", "msg": "Input should be a valid integer"}, _info(types.SimpleNamespace | None),
     "a valid integer"),     # a type without a word: pydantic's words
    ({"type": "greater_than_equal", "msg": "Input should be greater than or equal to 3"}, _info(int), ">= 3"),
    ({"type": "less_than_equal", "msg": "Input should be less than or equal to 9"}, _info(int), "<= 9"),
    ({"type": "greater_than", "msg": "Input should be greater than 0"}, None, "> 0"),
    ({"type": "less_than", "msg": "Input should be less than 1"}, None, "< 1"),
    ({"type": "value_error", "msg": "Value error, odd"}, None, "odd"),
    ({"type": "literal_error", "msg": "Input should be 'a' or 'b'"}, _info(str), "'a' or 'b'"),
])
def test_allowed(err, field, allowed):
    assert schema._allowed(err, field) == allowed


# -- _in_data: the parts of an error's location that are keys or indexes of the data --------------

@pytest.mark.parametrize("data,loc,missing,parts", [
    ({"a": [5, {"b": 1}]}, ("a", 1, "b"), False, ["a", 1, "b"]),
    ({"a": [7]}, ("a", 0), False, ["a", 0]),
    ({"a": [7]}, ("a", 1), False, ["a"]),                      # no such index
    ({"a": [7]}, ("a", "int"), False, ["a"]),
    ({"a": 1}, ("a", "constrained-int"), False, ["a"]),        # a union member's name
    ({"x": True}, ("x", "float"), False, ["x"]),
    ({"x": "float"}, ("x", "float"), False, ["x"]),
    ({}, ("status",), True, ["status"]),                        # a missing field keeps its name
    ({}, ("status",), False, []),
    ({"case": {}}, ("case", "tagged", "model"), True, ["case", "model"]),
    ({"case": {}}, ("case", "model", "x"), True, ["case", "x"]),
    (None, ("a", 0), False, []),
])
def test_in_data(data, loc, missing, parts):
    assert schema._in_data(data, loc, missing) == parts


# -- usage_error and validate --------------------------------------------------------------------

SUITE_KEYS = "name, kind, defaults, grid, cases, exclude, warmup, profile_steps, overhead_blocks, gpu"


def test_validate_returns_what_it_validated():
    spec = schema.validate(schema.SuiteSpec, {"name": "x", "warmup": 3}, "")
    assert isinstance(spec, schema.SuiteSpec) and (spec.name, spec.warmup) == ("x", 3)
    assert schema.validate(TypeAdapter(int), 3, "") == 3
    assert schema.validate(TypeAdapter(schema.Bytes), 2.5, "") == 2.5


def test_an_unknown_key_lists_the_valid_ones():
    assert refusal(schema.validate, schema.SuiteSpec, {"gird": 1}, "malformed suite s.yaml: ") == \
        f"unknown key 'gird' in suite s.yaml; valid: {SUITE_KEYS}"
    assert refusal(schema.validate, schema.SuiteSpec, {"grid": {}, "gird": 1}, "suite t.yaml: ", label=repr) == \
        f"unknown key 'gird' in suite t.yaml; valid: {SUITE_KEYS}"
    # through a TypeAdapter there is no model to list: the docs
    assert refusal(schema.validate, TypeAdapter(list[schema.SuiteSpec]), [{}, {"gird": 1}], "malformed suites: ") == \
        "unknown key '1.gird' in suites; valid: (see the docs)"


def test_a_missing_field_names_itself():
    where = "model config c.json: "
    assert refusal(schema.validate, schema.ModelShape, {}, where) == where + "num_hidden_layers is missing"
    assert refusal(schema.validate, schema.ModelShape, {"num_hidden_layers": 1}, where) == where + "hidden_size is missing"
    assert refusal(schema.validate, schema.ModelShape, {"num_hidden_layers": 1, "hidden_size": 8}, where) == \
        where + "vocab_size is missing"


def test_the_first_error_is_the_one_named():
    assert refusal(schema.validate, schema.ModelShape, {"num_hidden_layers": 0, "hidden_size": 0, "vocab_size": 0},
                   "c: ") == "c: num_hidden_layers must be >= 1, got 0"


def test_a_check_across_fields_is_its_own_message():
    assert refusal(schema.validate, schema.SuiteSpec, {"kind": ["time", "time"]}, "s: ") == \
        "s: kind lists a kind twice (time, time): each case would run twice"
    # not a mapping at all: pydantic's words after where
    assert refusal(schema.validate, schema.SuiteSpec, [], "s: ") == \
        "s: Input should be a valid dictionary or instance of SuiteSpec"
    assert refusal(schema.validate, TypeAdapter(schema.Bytes), -1, "w: ") == "w: Input should be greater than or equal to 0"


def test_the_label_names_the_field():
    assert refusal(schema.validate, schema.SuiteSpec, {"warmup": -1}, "s: ", label=repr) == \
        f"s: 'warmup' must be {STEPS_TEXT}, got -1"


def test_usage_error_directly():
    with pytest.raises(ValidationError) as caught:
        schema.SuiteSpec.model_validate({"overhead_blocks": 5000})
    e = caught.value
    err = schema.usage_error(e, "w: ", schema.SuiteSpec, {"overhead_blocks": 5000})
    assert isinstance(err, UsageError)
    assert str(err) == "w: overhead_blocks must be an integer >= 0 (at most 1000), got 5000"
    # without the schema there is no description to use; without the data no path
    assert str(schema.usage_error(e, "w: ", None, {"overhead_blocks": 5000})) == "w: overhead_blocks must be <= 1000, got 5000"
    assert str(schema.usage_error(e, "w: ")) == "w: Input should be less than or equal to 1000"


# -- bounded: finite numbers within int64, nesting at most 64 deep -------------------------------

def _nest(levels: int, leaf=1, key="x"):
    """{"top": {"x": ... leaf}}: the leaf `levels` levels below the top."""
    value = leaf
    for _ in range(levels - 1):
        value = {key: value}
    return {"top": value}


@pytest.mark.parametrize("value,found", [
    ({"a": INT64}, None), ({"a": -INT64}, None),
    ({"a": INT64 + 1}, "a must be a number within int64, got 9.22e+18"),
    ({"a": -INT64 - 1}, "a must be a number within int64, got -9.22e+18"),
    ({"a": 10**400}, "a must be a number within int64, got 10**400"),
    ({"a": [0, {"b": math.nan}]}, "a.1.b must be a finite number, got nan"),
    ({"a": math.inf}, "a must be a finite number, got inf"),
    ([1, [2, -math.inf]], "1.1 must be a finite number, got -inf"),
    ({" k": math.nan}, "' k' must be a finite number, got nan"),
    ({"a": True, "b": None, "c": "text", "d": 1.5, "e": [], "f": {}, "g": 0, "h": -0.0}, None),
    (True, None), (None, None), ("x", None), (1.5, None), (object(), None), (b"\x00", None), (0, None),
    ({"first": math.nan, "then": 2**64}, "first must be a finite number, got nan"),
])
def test_bounded(value, found):
    assert schema.bounded(value) == found


def test_bounded_with_infinities_allowed():
    assert schema.bounded({"a": [0.0, math.inf, -math.inf]}, infinite=True) is None
    assert schema.bounded({"a": [math.inf, math.nan]}, infinite=True) == "a.1 must be a number, got nan"
    assert schema.bounded({"a": 2**63}, infinite=True) == "a must be a number within int64, got 9.22e+18"


def test_nesting_up_to_64_levels_and_not_65():
    assert schema.bounded(_nest(64)) is None
    assert schema.bounded(_nest(65)) == "top nests deeper than 64 levels"
    assert schema.bounded(_nest(65, leaf="text")) == "top nests deeper than 64 levels"
    assert schema.bounded(_nest(200)) == "top nests deeper than 64 levels"
    lists = 1
    for _ in range(64):
        lists = [lists]
    assert schema.bounded(lists) is None
    assert schema.bounded([lists]) == "0 nests deeper than 64 levels"
    assert schema.bounded(1, depth=64) is None
    assert schema.bounded(1, depth=65) == "the value nests deeper than 64 levels"


@FAST
@given(st.integers(min_value=-(2**65), max_value=2**65))
def test_an_integer_is_bounded_by_int64(n):
    assert (schema.bounded({"n": n}) is None) == (abs(n) <= 2**63 - 1)
    assert (schema.bounded({"n": n}, infinite=True) is None) == (abs(n) <= 2**63 - 1)


@FAST
@given(st.floats())
def test_a_float_is_finite_or_refused(x):
    assert (schema.bounded([x]) is None) == math.isfinite(x)
    assert (schema.bounded([x], infinite=True) is None) == (not math.isnan(x))


# -- suites --------------------------------------------------------------------------------------

def _spec(data, where="s: ", label=lambda n: n):
    return schema.validate(schema.SuiteSpec, data, where, label)


def test_a_suite_s_defaults():
    for spec in (_spec({}), _spec({"defaults": None, "grid": None, "cases": None, "exclude": None})):
        assert (spec.name, spec.kind, spec.kinds, spec.defaults, spec.grid, spec.cases, spec.exclude) == \
            (None, "memory", ["memory"], {}, {}, [], [])
        assert (spec.warmup, spec.profile_steps, spec.overhead_blocks, spec.gpu) == (10, None, 0, None)


def test_null_is_the_default_only_for_the_case_mappings():
    assert refusal(_spec, {"warmup": None}) == f"s: warmup must be {STEPS_TEXT}, got None"
    assert refusal(_spec, {"kind": None}) == "s: kind must be memory, time (or a list of both), got None"
    spec = _spec({"defaults": {"steps": 1}, "grid": {"model": ["a", "b"]}, "cases": [{"seed": 1}],
                  "exclude": [{"model": "a"}], "name": None, "gpu": None})
    assert (spec.defaults, spec.grid, spec.cases, spec.exclude) == \
        ({"steps": 1}, {"model": ["a", "b"]}, [{"seed": 1}], [{"model": "a"}])


def test_a_suite_instance_validates_as_itself():
    spec = _spec(schema.SuiteSpec(name="x", warmup=2))
    assert (spec.name, spec.warmup) == ("x", 2)


@pytest.mark.parametrize("kind,kinds", [("memory", ["memory"]), ("time", ["time"]), (["memory"], ["memory"]),
                                        (["time"], ["time"]), (["memory", "time"], ["memory", "time"]),
                                        (["time", "memory"], ["time", "memory"])])
def test_kinds(kind, kinds):
    assert _spec({"kind": kind}).kinds == kinds


@pytest.mark.parametrize("kind", ["train", [], ["memory", "time", "memory"], ["train"], 1, "Memory"])
def test_a_kind_outside_memory_and_time_is_refused(kind):
    assert refusal(_spec, {"kind": kind}) == \
        f"s: kind must be memory, time (or a list of both), got {schema.show(kind)}"


@pytest.mark.parametrize("field,value,allowed", [
    ("defaults", 3, "a mapping of case fields"), ("defaults", [], "a mapping of case fields"),
    ("grid", [1], "a mapping of case fields to values or lists"),
    ("cases", {}, "a list of mappings of case fields"), ("exclude", 3, "a list of mappings of case fields"),
    ("name", 5, "a non-empty name"), ("gpu", 5, "a card name (the card that time cases on sim are predicted for)"),
    ("warmup", "5", STEPS_TEXT), ("warmup", True, STEPS_TEXT), ("warmup", 1.0, STEPS_TEXT),
    ("profile_steps", "1", STEPS_TEXT), ("overhead_blocks", 2.0, "an integer >= 0 (at most 1000)"),
])
def test_a_suite_field_of_the_wrong_type_says_what_it_takes(field, value, allowed):
    assert refusal(_spec, {field: value}) == f"s: {field} must be {allowed}, got {schema.show(value)}"


def test_inside_a_suite_list_the_words_are_pydantic_s():
    assert refusal(_spec, {"cases": [{}, 3]}) == "s: cases.1 must be a valid dictionary, got 3"
    assert refusal(_spec, {"cases": [3]}, label=repr) == "s: 'cases.0' must be a valid dictionary, got 3"


@pytest.mark.parametrize("data,size", [
    ({}, 1), ({"cases": [{}, {}, {}]}, 3), ({"grid": {"a": [1, 2], "b": [1, 2, 3], "c": 5}}, 6),
    ({"grid": {"a": [1, 2], "b": "x"}, "cases": [{}, {}]}, 4), ({"grid": {"a": []}}, 0), ({"grid": {"a": 7}}, 1),
])
def test_suite_size(data, size):
    assert schema.suite_size(_spec(data)) == size


@FAST
@given(st.lists(st.integers(0, 5), max_size=4), st.integers(0, 4))
def test_a_suite_is_the_product_of_its_lists_times_its_cases(lengths, n_cases):
    grid = {f"k{i}": list(range(n)) for i, n in enumerate(lengths)}
    expected = math.prod(lengths) * max(1, n_cases)
    assert schema.suite_size(_spec({"grid": grid, "cases": [{}] * n_cases})) == expected


# -- cases, methods and dataclasses --------------------------------------------------------------

@pytest.mark.parametrize("data,line", [
    ({"steps": "5"}, "steps must be int, got '5'"), ({"steps": True}, "steps must be int, got True"),
    ({"steps": 1.0}, "steps must be int, got 1.0"), ({"nproc": "2"}, "nproc must be an integer >= 1 (at most 4096), got '2'"),
    ({"lr": math.nan}, "lr must be a finite number > 0, got nan"), ({"lr": "1e-4"}, "lr must be a finite number > 0, got '1e-4'"),
    ({"grad_checkpointing": 1}, "grad_checkpointing must be bool, got 1"),
    ({"data": 5}, "data must be str or null, got 5"),
    ({"method": {"name": "lora", "r": "8"}}, "r must be int, got '8'"),
    ({"method": {"name": "lora", "dropout": "0.1"}}, "dropout must be float, got '0.1'"),
])
def test_a_case_field_is_strictly_of_its_type(data, line):
    assert refusal(Case.from_dict, data) == line


def test_a_case_accepts_what_its_types_allow():
    case = Case.from_dict({"lr": 1, "nproc": None, "model": "x", "method": {"name": "dora"}})
    assert (case.lr, case.nproc, case.model) == (1, None, "x")
    assert (case.method.name, case.method.r, case.method.alpha, case.method.total_steps) == ("dora", 32, 64, 1)


def test_an_empty_model_name_is_refused():
    line = refusal(Case.from_dict, {"model": ""})
    assert line.startswith("model must be ") and line.endswith(", got ''")


@pytest.mark.parametrize("seq_len,batch,ok", [(2048, 8192, True), (2048, 8193, False), (1 << 24, 1, True),
                                             ((1 << 24) + 1, 1, False), (1, 1 << 24, True), (4097, 4096, False)])
def test_tokens_per_step(seq_len, batch, ok):
    if ok:
        assert schema.check_tokens(seq_len, batch) is None
    else:
        assert refusal(schema.check_tokens, seq_len, batch) == \
            f"batch x seq_len must be <= 16,777,216 tokens per step, got {batch} x {seq_len}"


class Blob:           # a type pydantic knows nothing of
    pass


@dataclasses.dataclass
class Knobs:
    n: int
    x: float = 0.5
    tags: list = dataclasses.field(default_factory=list)
    blob: Blob | None = None
    skip: str = "y"


def test_a_dataclass_schema_keeps_defaults_and_requires_the_rest():
    model = schema.dataclass_schema(Knobs)
    k = schema.validate(model, {"n": 1}, "k: ")
    assert (k.n, k.x, k.tags, k.blob, k.skip) == (1, 0.5, [], None, "y")
    assert schema.validate(model, {"n": 1, "tags": [1]}, "").tags == [1]
    assert isinstance(schema.validate(model, {"n": 1, "blob": Blob()}, "").blob, Blob)
    assert refusal(schema.validate, model, {}, "k: ") == "k: n is missing"
    assert schema.dataclass_schema(Knobs) is model


@pytest.mark.parametrize("data,line", [
    ({"n": "1"}, "k: n must be int, got '1'"), ({"n": 1.0}, "k: n must be int, got 1.0"),
    ({"n": 1, "x": math.nan}, "k: x must be a finite number, got nan"),
    ({"n": 1, "x": math.inf}, "k: x must be a finite number, got inf"),
    ({"n": 1, "x": "0.5"}, "k: x must be float, got '0.5'"),
    ({"n": 1, "m": 2}, "unknown key 'm' in knobs; valid: n, x, tags, blob, skip"),
])
def test_a_dataclass_schema_is_strict_finite_and_closed(data, line):
    where = "knobs: " if "m" in data else "k: "
    assert refusal(schema.validate, schema.dataclass_schema(Knobs), data, where) == line


def test_a_dataclass_schema_with_limits_and_exclusions():
    limited = schema.dataclass_schema(Knobs, (("n", Field(ge=3)), ("x", Field(le=1))))
    assert refusal(schema.validate, limited, {"n": 2}, "") == "n must be >= 3, got 2"
    assert refusal(schema.validate, limited, {"n": 3, "x": 1.5}, "") == "x must be <= 1, got 1.5"
    assert schema.validate(limited, {"n": 3, "x": 1}, "").x == 1
    without = schema.dataclass_schema(Knobs, (), ("skip",))
    assert refusal(schema.validate, without, {"n": 1, "skip": "y"}, "knobs: ") == \
        "unknown key 'skip' in knobs; valid: n, x, tags, blob"


def test_check_dataclass():
    assert schema.check_dataclass(Knobs(n=1)) is None
    assert refusal(schema.check_dataclass, Knobs(n=1, x=math.nan), "k: ") == "k: x must be a finite number, got nan"
    assert refusal(schema.check_dataclass, Knobs(n="a")) == "n must be int, got 'a'"
    assert schema.check_dataclass(Knobs(n="a"), exclude=("n",)) is None
    assert refusal(schema.check_dataclass, Knobs(n=1), limits={"n": Field(ge=2)}) == "n must be >= 2, got 1"
    assert refusal(schema.check_dataclass, Knobs(n=0), "w: ", {"n": Field(ge=1)}, label=lambda n: "--" + n) == \
        "w: --n must be >= 1, got 0"
    assert schema.check_dataclass(Knobs(n=5), limits={"n": Field(ge=2)}) is None


# -- model configs -------------------------------------------------------------------------------

def _shape_of(**values):
    return schema.validate(schema.ModelShape, {"num_hidden_layers": 2, "hidden_size": 64, "vocab_size": 8, **values}, "c: ")


def test_a_model_shape_s_optional_sizes():
    shape = _shape_of()
    assert (shape.num_hidden_layers, shape.hidden_size, shape.vocab_size) == (2, 64, 8)
    assert (shape.num_attention_heads, shape.num_key_value_heads, shape.intermediate_size,
            shape.max_position_embeddings, shape.head_dim) == (None, None, None, None, None)
    assert _shape_of(intermediate_size=[1, 1 << 20] * 128).intermediate_size == [1, 1 << 20] * 128
    assert _shape_of(family_specific=[1, 2], n_embd="x").hidden_size == 64        # other keys: not ours


@pytest.mark.parametrize("values,line", [
    ({"hidden_size": "64"}, "c: hidden_size must be int, got '64'"),
    ({"hidden_size": 64.0}, "c: hidden_size must be int, got 64.0"),
    ({"vocab_size": True}, "c: vocab_size must be int, got True"),
    ({"num_attention_heads": "a"}, "c: num_attention_heads must be int or null, got 'a'"),
    ({"head_dim": 1.5}, "c: head_dim must be int or null, got 1.5"),
    ({"intermediate_size": 0}, "c: intermediate_size must be >= 1, got 0"),
    ({"intermediate_size": [0]}, "c: intermediate_size must be a valid integer, got [0]"),
    ({"intermediate_size": [(1 << 20) + 1]}, "c: intermediate_size must be a valid integer, got [1048577]"),
    ({"intermediate_size": [1] * 257}, "c: intermediate_size must be a valid integer, got " + schema.show([1] * 257)),
])
def test_a_model_shape_is_strict(values, line):
    assert refusal(_shape_of, **values) == line


@pytest.mark.parametrize("values,line", [
    ({"num_attention_heads": 4}, None), ({"num_attention_heads": 64}, None), ({"num_attention_heads": 1}, None),
    ({"num_attention_heads": 5}, "c: num_attention_heads (5) must divide hidden_size (64)"),
    ({"num_attention_heads": 128}, "c: num_attention_heads (128) must divide hidden_size (64)"),
    ({"num_attention_heads": 5, "head_dim": 16}, None),             # a head size of its own: no division
    ({"num_attention_heads": 8, "num_key_value_heads": 8}, None),
    ({"num_attention_heads": 8, "num_key_value_heads": 2}, None),
    ({"num_attention_heads": 8, "num_key_value_heads": 1}, None),
    ({"num_attention_heads": 8, "num_key_value_heads": 3}, "c: num_key_value_heads (3) must divide num_attention_heads (8)"),
    ({"num_attention_heads": 8, "num_key_value_heads": 16},
     "c: num_key_value_heads (16) must divide num_attention_heads (8)"),
    ({"num_attention_heads": 5, "num_key_value_heads": 3, "head_dim": 7},
     "c: num_key_value_heads (3) must divide num_attention_heads (5)"),
    ({"num_key_value_heads": 3}, None),                              # no attention heads (a state-space model)
    ({"num_key_value_heads": 3, "hidden_size": 7}, None),
])
def test_heads_divide(values, line):
    if line is None:
        shape = _shape_of(**values)
        assert isinstance(shape, schema.ModelShape)
        assert shape.num_attention_heads == values.get("num_attention_heads")
    else:
        assert refusal(_shape_of, **values) == line


def test_a_config_is_named_as_its_file_names_it():
    gpt2 = {"num_hidden_layers": "n_layer", "hidden_size": "n_embd", "num_attention_heads": "n_head"}
    config = types.SimpleNamespace(attribute_map=gpt2, num_hidden_layers=0, hidden_size=64, vocab_size=8)
    assert refusal(schema.check_config, config, "model config g.json: ") == "model config g.json: n_layer must be >= 1, got 0"
    config = types.SimpleNamespace(attribute_map=gpt2, num_hidden_layers=2, hidden_size=64)
    assert refusal(schema.check_config, config, "m: ") == "m: vocab_size is missing"
    config = types.SimpleNamespace(attribute_map=gpt2, num_hidden_layers=2, hidden_size=64, vocab_size=8,
                                   num_attention_heads=5)
    assert refusal(schema.check_config, config, "m: ") == "m: num_attention_heads (5) must divide hidden_size (64)"
    plain = types.SimpleNamespace(num_hidden_layers=2, hidden_size=64, vocab_size=8, num_attention_heads=5,
                                  head_dim=None, max_position_embeddings=0)
    assert refusal(schema.check_config, plain, "m: ") == "m: max_position_embeddings must be >= 1, got 0"
    for head_dim in (None, 16):
        fine = types.SimpleNamespace(num_hidden_layers=2, hidden_size=64, vocab_size=8, num_attention_heads=4,
                                     head_dim=head_dim, intermediate_size=[8, 16], other="x")
        assert schema.check_config(fine, "m: ") is None
    assert schema.check_config(types.SimpleNamespace(num_hidden_layers=2, hidden_size=64, vocab_size=8,
                                                     num_attention_heads=5, head_dim=16), "m: ") is None


# -- compare thresholds --------------------------------------------------------------------------

def test_the_thresholds_defaults():
    th = schema.Thresholds()
    assert (th.memory_pct, th.memory_floor, th.device_factor, th.wall_factor, th.p_value, th.gate_wall) == \
        (2.0, 64 * 2**20, 1.05, 1.10, 0.002, False)
    assert th.memory_floor == 67_108_864


def test_thresholds_parse_like_the_command_line():
    assert schema.Thresholds(memory_pct="2.5").memory_pct == 2.5
    floor = schema.Thresholds(memory_floor=1.0).memory_floor
    assert floor == 1 and type(floor) is int
    assert schema.Thresholds(gate_wall=True).gate_wall is True
    assert schema.Thresholds(wall_factor=1, device_factor=1000, memory_pct=0, p_value=0.5).wall_factor == 1


@pytest.mark.parametrize("values,line", [
    ({"memory_pct": math.nan}, "--memory-pct must be a finite number, got nan"),
    ({"memory_pct": math.inf}, "--memory-pct must be a finite number, got inf"),
    ({"device_factor": math.inf}, "--device-factor must be a finite number, got inf"),
    ({"wall_factor": -math.inf}, "--wall-factor must be a finite number, got -inf"),
    ({"p_value": math.nan}, "--p-value must be a finite number, got nan"),
    ({"memory_floor": 1.5}, "--memory-floor must be int, got 1.5"),
    ({"memory_pct": "x"}, "--memory-pct must be float, got 'x'"),
    ({"gate_wall": "maybe"}, "--gate-wall must be bool, got 'maybe'"),
    ({"wall_factor": 0.9}, "--wall-factor must be >= 1, got 0.9"),
])
def test_thresholds_refuse_in_one_line(values, line):
    assert refusal(schema.Thresholds, **values) == line


def test_thresholds_refuse_an_unknown_tolerance():
    line = refusal(schema.Thresholds, bogus=1)
    assert line.startswith("unknown key 'bogus'")
    assert line.endswith("valid: memory_pct, memory_floor, device_factor, wall_factor, p_value, gate_wall")


@FAST
@given(st.floats(allow_nan=True, allow_infinity=True))
def test_a_tolerance_is_accepted_exactly_within_its_range(x):
    for field, ok in (("memory_pct", 0 <= x <= 1000), ("device_factor", 1 <= x <= 1000), ("wall_factor", 1 <= x <= 1000),
                      ("p_value", 0 < x < 1)):
        try:
            schema.Thresholds(**{field: x})
            accepted = True
        except UsageError:
            accepted = False
        assert accepted == ok, (field, x)


# -- the number types of a row -------------------------------------------------------------------

@pytest.mark.parametrize("kind,value,ok", [
    ("Bytes", 0, True), ("Bytes", 2.5, True), ("Bytes", INT64, True), ("Bytes", -1, False), ("Bytes", -TINY, False),
    ("Bytes", math.inf, False), ("Bytes", math.nan, False),
    ("Millis", TINY, True), ("Millis", 3, True), ("Millis", 0, False), ("Millis", -1.0, False), ("Millis", math.inf, False),
    ("Number", -1, True), ("Number", 1.5, True), ("Number", math.nan, False), ("Number", math.inf, False),
    ("Number", -math.inf, False), ("Optional", None, True), ("Optional", math.inf, False),
])
def test_the_number_types_of_a_row(kind, value, ok):
    adapter = TypeAdapter(getattr(schema, kind))
    if ok:
        assert adapter.validate_python(value) == value
    else:
        with pytest.raises(ValidationError):
            adapter.validate_python(value)


# -- result rows ---------------------------------------------------------------------------------

def _check(row, where="r.jsonl:3: "):
    return schema.check_row(row, where)


def _model(row):
    return schema.validate(schema.Row, row, "")


def test_a_row_is_returned_as_it_was():
    row = {**ROW, "wall_s": 3.5, "case": {**ROW["case"], "steps": 5}}
    assert _check(row) is row and row["wall_s"] == 3.5


def test_a_row_s_defaults_and_other_fields():
    r = _model({k: v for k, v in ROW.items() if k != "schema"} | {"wall_s": 3.5, "selection": {}})
    assert (r.schema_version, r.kind, r.case.select, r.case.select_opts) == (1, "memory", "none", {})
    assert (r.settings, r.provenance, r.nvml, r.backend, r.error, r.time) == ({}, {}, {}, None, None, None)
    assert (r.memory.summary, r.memory.steps) == ({"peak": {"first": 1, "max": 1}}, [])
    assert (r.selection.policy, r.selection.history) == (None, [])
    assert r.model_extra == {"wall_s": 3.5}                       # other fields pass through
    assert r.case.method.name == "lora" and r.case.method.model_extra == {}
    r = _model({**ROW, "memory": {"summary": {}}, "status": "oom", "kind": "memory"})
    assert r.memory.summary == {} and r.status == "oom"


@pytest.mark.parametrize("status", ["ok", "oom", "error", "crashed", "killed", "timeout"])
def test_every_status(status):
    assert _model({**ROW, "status": status}).status == status
    if status != "ok":      # a row that did not finish needs no figures
        assert _model({k: v for k, v in ROW.items() if k != "memory"} | {"status": status}).memory is None
        assert _model({**ROW, "kind": "time", "status": status}).time is None


@pytest.mark.parametrize("change,line", [
    ({"schema": 2}, "schema must be 1, got 2"), ({"schema": True}, "schema must be 1, got True"),
    ({"schema": "1"}, "schema must be 1, got '1'"),
    ({"status": "done"}, "status must be 'ok', 'oom', 'error', 'crashed', 'killed' or 'timeout', got 'done'"),
    ({"kind": "train"}, "kind must be 'memory' or 'time', got 'train'"),
    ({"backend": 5}, "backend must be str or null, got 5"), ({"error": ["x"]}, "error must be str or null, got ['x']"),
    ({"settings": 3}, "settings must be dict, got 3"), ({"provenance": []}, "provenance must be dict, got []"),
    ({"nvml": "x"}, "nvml must be dict, got 'x'"),
    ({"n_layers": "x"}, "n_layers must be a valid integer, got 'x'"), ({"params": "5"}, "params must be a valid integer, got '5'"),
    ({"trainable_params": 1.0}, "trainable_params must be a valid integer, got 1.0"),
    ({"peak_reached": True}, "peak_reached must be a valid number, got True"),
    ({"peak_reached": "x"}, "peak_reached must be a valid number, got 'x'"),
    ({"case": {"model": "m"}}, "case.method is missing"),
    ({"case": {"method": {"name": "lora"}}}, "case.model is missing"),
    ({"case": {"model": 5, "method": {"name": "lora"}}}, "case.model must be a valid string, got 5"),
    ({"case": {"model": "m", "method": {"name": "lora"}, "select_opts": 3}}, "case.select_opts must be a valid dictionary, got 3"),
    ({"case": {"model": "m", "method": {}}}, "case.method.name is missing"),
    ({"memory": None}, "memory must be a valid dictionary or instance of _Memory, got None"),
    ({"memory": {}}, "memory.summary is missing"),
    ({"wall_s": math.nan}, "wall_s must be a finite number, got nan"),
    ({"extra": {"deep": [1, math.inf]}}, "extra.deep.1 must be a finite number, got inf"),
    ({"junk": _nest(64)["top"]}, None), ({"junk": _nest(65)["top"]}, "junk nests deeper than 64 levels"),
    ({"status": "ok", "memory": {"summary": {}}}, "a finished memory row has an empty memory.summary"),
    ({"selection": {"policy": {}}}, "selection.policy.name is missing"),
    ({"selection": {"history": [{"active": [1]}]}}, "selection.history.0.step is missing"),
    ({"selection": {"history": [{"step": 0, "importance": ["x"]}]}}, "selection.history.0.importance.0 must be a valid number, got 'x'"),
    ({"selection": {"history": [{"step": 0, "active": [1.0]}]}}, "selection.history.0.active.0 must be a valid integer, got 1.0"),
])
def test_a_bad_row_is_one_line_naming_the_field(change, line):
    if line is None:
        assert _check({**ROW, **change}) is not None
    else:
        assert refusal(_check, {**ROW, **change}) == "r.jsonl:3: " + line


def test_a_finished_row_needs_its_figures():
    no_memory = {k: v for k, v in ROW.items() if k != "memory"}
    assert refusal(_check, no_memory) == "r.jsonl:3: a finished memory row needs its 'memory' figures"
    assert refusal(_check, {**no_memory, "kind": "time"}) == "r.jsonl:3: a finished time row needs its 'time' figures"
    assert _check({**TIME_ROW, "memory": {"summary": {}}}) is not None    # a time row's memory may be empty
    r = _model({**TIME_ROW, "memory": {"summary": {}}})
    assert r.kind == "time" and r.time.phases_ms["step"].median == 2.0


def test_a_row_that_is_not_a_mapping():
    assert refusal(_check, [1]) == "r.jsonl:3: Input should be a valid dictionary or instance of Row"
    assert refusal(_check, None) == "r.jsonl:3: Input should be a valid dictionary or instance of Row"


def _summary(summary, steps=None):
    return {**ROW, "memory": {"summary": summary, **({"steps": steps} if steps is not None else {})}}


@pytest.mark.parametrize("summary", [
    {"run_peak": 0, "run_allocated_peak": 2.5},
    {"run_peak_blocks": [[1, 2], "x"]}, {"run_peak_blocks": -5},                 # not a figure
    {"temporary": -5}, {"temporary": {"first": -5}},                              # old rows: may be < 0
    {"peak": {"first": 0, "max": 0, "min": 0, "median": 0, "last": 0, "steady": 0, "typical": 0, "extra": "x"}},
])
def test_a_summary_that_is_fine(summary):
    assert _model(_summary(summary)).memory.summary == summary


@pytest.mark.parametrize("summary,line", [
    ({"run_peak": -1}, "memory.summary.run_peak must be a number of bytes >= 0, got -1"),
    ({"run_peak": "x"}, "memory.summary.run_peak must be a number of bytes >= 0, got 'x'"),
    ({"run_peak": "5"}, "memory.summary.run_peak must be a number of bytes >= 0, got '5'"),
    ({"run_peak": True}, "memory.summary.run_peak must be a number of bytes >= 0, got True"),
    ({"run_x": {"first": 1}}, "memory.summary.run_x must be a number of bytes >= 0, got a mapping"),
    ({"peak": 5}, "memory.summary.peak must be a mapping with first, max, ..., got 5"),
    ({"peak": [1]}, "memory.summary.peak must be a mapping with first, max, ..., got [1]"),
    ({"peak": {"first": -1}}, "memory.summary.peak.first must be >= 0, got -1"),
    ({"peak": {"first": 1, "max": -2}}, "memory.summary.peak.max must be >= 0, got -2"),
    ({"peak": {"first": "x"}}, "memory.summary.peak.first must be a valid integer, got 'x'"),
    ({"peak": {"first": 1, "min": None}}, "memory.summary.peak.min must be a valid integer, got None"),
    ({"peak": {"max": 1}}, "memory.summary.peak.first is missing"),
    ({"peak": {"first": 1}, "a b ": {"first": -1}}, "memory.summary.'a b '.first must be >= 0, got -1"),
])
def test_a_summary_that_is_not(summary, line):
    assert refusal(_check, _summary(summary)) == "r.jsonl:3: " + line


def test_memory_steps():
    r = _model(_summary({"peak": {"first": 1}}, [{"at_peak": {"a": 0}}, {"at_peak": None, "top_activations": {"x": "y"}}]))
    assert r.memory.steps[0].at_peak == {"a": 0} and r.memory.steps[1].top_activations == {"x": "y"}
    assert refusal(_check, _summary({"peak": {"first": 1}}, [{}, {"at_peak": {"a": -1}}])) == \
        "r.jsonl:3: memory.steps.1.at_peak.a must be >= 0, got -1"


def _time(time):
    return {**TIME_ROW, "time": time}


BUSY = {"forward": 1.0, "backward": 1.0, "optimizer": 1.0, "step": 3.0}


@pytest.mark.parametrize("time", [
    {"phases_ms": {"step": {"median": 2.0}}, "steps_ms": [1.0, 2.0, 3.0]},
    {"phases_ms": {"step": {"median": 2.0, "mean": 2.0, "p10": 1.0, "p90": 3.0, "n": 3}}, "steps_ms": [1.0, 3.0]},
    {"phases_ms": {"step": {"median": 2.0}}, "device": {"busy_ms": BUSY}},
    {"phases_ms": {"step": {"median": 2.0}}, "device": {"busy_ms": BUSY, "busy_steps_ms": [2.0, 3.0, 4.0]}},
    {"phases_ms": {"step": {"median": 2.0}}, "device": {"busy_steps_ms": [1.0]}},      # no busy time: nothing to agree
    {"phases_ms": {"step": {"median": 2.0}}, "device": {"busy_ms": {**BUSY, "extra": 1.0}}},
])
def test_times_that_are_fine(time):
    r = _model(_time(time))
    assert r.time.phases_ms["step"].median == 2.0
    assert r.time.steps_ms == time.get("steps_ms", [])
    if "device" in time:
        assert r.time.device.busy_ms == time["device"].get("busy_ms", {})
        assert r.time.device.busy_steps_ms == time["device"].get("busy_steps_ms", [])


def test_an_empty_device_figure_is_no_busy_time():
    r = _model(_time({"phases_ms": {"step": {"median": 2.0}}, "device": {}}))
    assert (r.time.device.busy_ms, r.time.device.busy_steps_ms) == ({}, [])


@pytest.mark.parametrize("time,line", [
    ({"phases_ms": {"forward": {"median": 1.0}}}, "time.phases_ms has no 'step' phase"),
    ({"phases_ms": {}}, "time.phases_ms has no 'step' phase"),
    ({"phases_ms": {"step": {"median": 2.5}}, "steps_ms": [1.0, 2.0, 3.0]},
     "time.phases_ms.step.median is 2.5 but the median of its samples is 2.0"),
    ({"phases_ms": {"step": {"median": 2.0}}, "steps_ms": [0.0]}, "time.steps_ms.0 must be > 0, got 0.0"),
    ({"phases_ms": {"step": {"median": 2.0, "p90": 0}}}, "time.phases_ms.step.p90 must be > 0, got 0"),
    ({"phases_ms": {"step": {"median": 2.0}}, "device": {"busy_ms": {"step": 3.0}}},
     "time.device.busy_ms has no forward, backward, optimizer (a busy-time measurement holds forward, backward, "
     "optimizer, step, each > 0)"),
    ({"phases_ms": {"step": {"median": 2.0}}, "device": {"busy_ms": {k: v for k, v in BUSY.items() if k != "optimizer"}}},
     "time.device.busy_ms has no optimizer (a busy-time measurement holds forward, backward, optimizer, step, each > 0)"),
    ({"phases_ms": {"step": {"median": 2.0}}, "device": {"busy_ms": {**BUSY, "step": 0}}},
     "time.device.busy_ms.step must be > 0, got 0"),
    ({"phases_ms": {"step": {"median": 2.0}}, "device": {"busy_ms": BUSY, "busy_steps_ms": [4.0]}},
     "time.device.busy_ms.step is 3.0 but the median of its samples is 4.0"),
    ({"phases_ms": {"step": {"median": 2.0}}, "device": {"busy_ms": {k: v for k, v in BUSY.items() if k != "step"},
                                                       "busy_steps_ms": [4.0]}},
     "time.device.busy_ms has no step (a busy-time measurement holds forward, backward, optimizer, step, each > 0)"),
])
def test_times_that_are_not(time, line):
    assert refusal(_check, _time(time)) == "r.jsonl:3: " + line


@pytest.mark.parametrize("median,samples,ok", [
    (1000.0, [1000.0], True), (1000.0005, [1000.0], True), (1000.0015, [1000.0], False), (999.9985, [1000.0], False),
    (2.0, [1.0, 3.0], True), (2.0, [1.0, 2.0, 100.0], True),
    (5e-10, [1e-10], True), (1.5e-9, [1e-10], False),
])
def test_a_summary_agrees_with_its_samples(median, samples, ok):
    if ok:
        assert schema._agrees("w", median, samples) is None
    else:
        with pytest.raises(ValueError, match=f"^w is {median} but the median of its samples is "):
            schema._agrees("w", median, samples)


def test_selection_rows():
    r = _model({**ROW, "selection": {"policy": {"name": "ist", "beta": 0.5},
                                     "history": [{"step": 0, "active": [1, 2], "importance": [0.5, 1]}]}})
    assert r.selection.policy.name == "ist" and r.selection.history[0].active == [1, 2]
    assert r.selection.history[0].importance == [0.5, 1]
