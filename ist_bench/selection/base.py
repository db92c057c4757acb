"""The selection-policy interface, the gate that applies a selection, and policy settings.

A policy answers one question per optimizer step: which transformer blocks train now?
Every policy is one small file with the same shape: a `Settings` dataclass of its knobs
(validated in `check`) and a `SelectionPolicy` subclass that implements `select(step)` and,
where it learns something, `importance_due`/`update_importance` (extra no-grad forwards on a
held-out batch, IST) or `after_backward` (reads the gradients, ILA).

The same object serves three callers:
- a stock Hugging Face `Trainer`: a policy is a callback
  (`Trainer(model=peft_model, args=args, train_dataset=ds, callbacks=[IST()])`). It implements
  `TrainerCallback`'s protocol (every `on_*` event) rather than subclassing it: Trainer calls events
  by name and never checks the type, and the subclass would import transformers' trainer (seconds)
  whenever a policy's settings are read, e.g. to refuse a bad `--select-opt`;
- a plain PyTorch loop: `policy.bind(model, optimizer, eval_batch=...)`, then per step
  `policy.begin_step(step)` before the forward and `policy.after_backward(step)` after it;
- ist-bench's controlled step (runner/step.py), which also times and measures its work.

The gate turns an answer into `requires_grad` flags on the parameters the *method* made
trainable in those blocks (parameters outside the blocks, e.g. a full fine-tune's
embeddings and LM head, keep what the method gave them), clears stale gradients, and
applies the optimizer-state policy: `keep` (a deselected layer's AdamW moments stay, as
LISA's and IST's public code do) or `reset` (they are freed on deselection).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ist_bench.errors import UsageError, choice_error

if TYPE_CHECKING:   # policies are light to import (torch where it is used): see the docstring
    import torch
    from torch import nn

OPTIMIZER_STATES = ("keep", "reset")


@dataclasses.dataclass
class NoSettings:
    def check(self, policy: str) -> None:
        pass


def fraction(policy: str, name: str, value: float, low_open: bool = True) -> None:
    """`value` must lie in (0, 1] (or [0, 1] with low_open=False)."""
    ok = (0 < value <= 1) if low_open else (0 <= value <= 1)
    if not ok:
        raise UsageError(f"--select {policy}: {name} must be in {'(0' if low_open else '[0'}, 1], got {value:g}")


def at_least(policy: str, name: str, value: float, low: float) -> None:
    if value < low:
        raise UsageError(f"--select {policy}: {name} must be >= {low:g}, got {value:g}")


def at_most(policy: str, name: str, value: float, high: float) -> None:
    if value > high:
        raise UsageError(f"--select {policy}: {name} must be <= {high:g}, got {value:g}")


def count(frac: float, n_layers: int) -> int:
    """A fraction of L layers, rounded half up (30 x 25% -> 8), at least one."""
    return max(1, min(n_layers, math.floor(frac * n_layers + 0.5)))


def rng(seed: int, *stream: int) -> np.random.Generator:
    """A generator for (seed, step, ...): independent streams, the same on every data-parallel rank
    (seed 1 is not seed 0 shifted by a step)."""
    return np.random.default_rng([seed, *stream])


class LayerGate:
    """Freezes and unfreezes blocks between optimizer steps.

    Build it after the method is applied *and after the optimizer exists* (an optimizer
    built over frozen parameters would never train them).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                 optimizer_state: str = "keep"):
        from ist_bench.zoo import locate_layers

        self.modules = list(locate_layers(model))
        self.blocks = [[p for p in block.parameters() if p.requires_grad] for block in self.modules]
        self.optimizer, self.optimizer_state = optimizer, optimizer_state
        self.active: list[int] | None = None
        self.grad_below = _trains_below(model, self.modules[0]) if self.modules else False
        # what each block trains, in bytes: blocks of different kinds (an MoE among dense ones) weigh differently
        self.block_bytes = [sum(p.numel() * p.element_size() for p in params) for params in self.blocks]

    def apply(self, active: list[int] | None) -> None:
        self.active = None if active is None else sorted(active)
        on = set(range(len(self.blocks))) if active is None else set(active)
        for i, params in enumerate(self.blocks):
            for p in params:
                p.requires_grad_(i in on)
                if i not in on:
                    p.grad = None  # a frozen layer must not be touched by the optimizer
                    if self.optimizer_state == "reset" and self.optimizer is not None:
                        self.optimizer.state.pop(p, None)


def _trains_below(model: nn.Module, first_block: nn.Module) -> bool:
    """Does anything before the first block train (input embeddings, GPT-2's position embeddings,
    a tied LM head)? Then backward runs through every block whatever the draw."""
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if emb is not None and any(p.requires_grad for p in emb.parameters()):
        return True
    for module in model.modules():
        if module is first_block:
            return False
        if any(p.requires_grad for p in module.parameters(recurse=False)):
            return True
    return False


class SelectionPolicy:
    """Base class and the `none` policy: every block the method adapted trains at every step."""

    name: ClassVar[str] = "none"
    description: ClassVar[str] = "no selection: every layer the method adapted trains at every step"
    Settings: ClassVar[type] = NoSettings
    needs_adapters: ClassVar[bool] = False    # it scales PEFT outputs (IST): `full` has none
    needs_eval_batch: ClassVar[bool] = False  # it runs forwards on a held-out batch
    grad_below: bool = False                  # something before the first block trains (set by bind)
    freezes_outside: ClassVar[bool] = False   # only the blocks train, whatever the method (BAdam, HiFT)
    optimizer_state_rule: ClassVar[str | None] = None   # the policy's own rule for optimizer state (BAdam: reset)
    time_by: ClassVar[str] = "lowest"         # what decides a step's time: its lowest trained layer (or "count")
    block_bytes: list[int] | None = None      # each block's trainable bytes (set by bind)

    def __init__(self, *, seed: int = 0, optimizer_state: str = "keep", **settings: Any):
        if optimizer_state not in OPTIMIZER_STATES:
            raise choice_error("optimizer-state policy", optimizer_state, OPTIMIZER_STATES)
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
            raise UsageError(f"--select {self.name}: seed must be an integer in [0, 2^32), got {seed!r}")
        self.settings = parse_settings(self.Settings, settings, self.name)
        self.seed, self.optimizer_state = seed, self.optimizer_state_rule or optimizer_state
        self.gate: LayerGate | None = None
        self.eval_source: Callable[[int], dict] | None = None
        self.history: list[dict] = []     # per step: the active layers (and what the policy learned)

    # -- binding ---------------------------------------------------------------------
    def bind(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
             eval_batch: dict | Callable[[int], dict] | None = None) -> SelectionPolicy:
        """Attach to a model whose method is applied and whose optimizer exists. `eval_batch`: the
        held-out batch, or a function of the round's step giving one (IST's `eval_data=fresh` needs
        that: it draws a new batch every round; `fixed` takes the function's batch for step 0)."""
        self.eval_source = eval_batch if callable(eval_batch) else None
        self.model, self.eval_batch = model, eval_batch(0) if callable(eval_batch) else eval_batch
        if self.freezes_outside:   # embeddings, final norm and head stay frozen under --method full too
            from ist_bench.zoo import locate_layers

            inside = {id(p) for p in locate_layers(model).parameters()}
            for p in model.parameters():
                if id(p) not in inside:
                    p.requires_grad_(False)
        self.gate = LayerGate(model, optimizer, self.optimizer_state)
        self.n_layers, self.grad_below = len(self.gate.blocks), self.gate.grad_below
        self.block_bytes = self.gate.block_bytes
        if not any(self.gate.blocks):
            raise UsageError(f"--select {self.name}: no block of {type(model).__name__} has trainable parameters")
        if self.needs_adapters:
            from ist_bench.methods import has_adapters
            if not all(has_adapters(m) for m in self.gate.modules):
                raise UsageError(f"--select {self.name} scales each layer's PEFT output, and this model has none in "
                                 f"every layer; use a PEFT method (lora, dora, adalora, series, parallel)")
        if self.needs_eval_batch and eval_batch is None:
            raise UsageError(f"--select {self.name} needs a held-out batch for its importance forwards")
        if getattr(self.settings, "eval_data", "fixed") == "fresh" and self.eval_source is None:
            raise UsageError(f"--select {self.name} eval_data=fresh draws a held-out batch every round: pass "
                             f"eval_batch=<function of the round's step> to bind(), or train with a Trainer")
        self.setup()
        return self

    def setup(self) -> None:
        """Per-model state (importance vectors); called once the layer count is known."""

    def check_layers(self, n_layers: int) -> None:
        """What can be checked against the model's layer count before anything is built (light)."""

    # -- the step protocol ---------------------------------------------------------------
    def begin_step(self, step: int, mark: Callable[[str, int], None] = lambda phase, step: None,
                   active: list[int] | None | str = "select", importance: bool | None = None) -> None:
        """Before the forward of optimizer step `step`: run the importance round if one is due
        (between `mark("importance_start")` and `mark("importance")`), then apply this step's
        selection. `active` forces a selection and `importance` forces a round (or none)."""
        if self.gate is None:
            raise RuntimeError(f"{type(self).__name__}.bind(model, optimizer) must be called before training")
        if active != "select":
            self.check_draw(active)
        if importance if importance is not None else self.importance_due(step):
            mark("importance_start", step)
            self.update_importance(step)
            mark("importance", step)
        chosen = self.select(step) if active == "select" else active
        self.gate.apply(chosen)
        self.history.append({"step": step, "active": self.gate.active, **self.record()})

    def check_draw(self, active) -> None:
        """A forced selection is None (every layer) or distinct block indices of this model: a layer that does
        not exist would freeze every block while the history said it trained."""
        if active is None:
            return
        n = self.n_layers
        ok = isinstance(active, (list, tuple)) and all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < n
                                                       for i in active)
        if not ok or len(set(active)) != len(active):
            raise UsageError(f"--select {self.name}: active must be None or distinct layer indices in 0..{n - 1}, "
                             f"got {schema_show(active)}")

    def check_state(self, state: dict, lengths: dict[str, int]) -> None:
        """A state to resume from: a mapping whose vectors (`lengths`: key -> the length this model needs)
        are that long and finite."""
        if not isinstance(state, dict):
            raise UsageError(f"--select {self.name}: a state is a mapping, got {schema_show(state)}")
        for key, n in lengths.items():
            v = state.get(key)
            if not isinstance(v, list) or len(v) != n or not all(
                    isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v):
                raise UsageError(f"--select {self.name}: state '{key}' must be {n} finite numbers (one per layer of "
                                 f"this model), got {schema_show(v)}")

    def after_backward(self, step: int) -> None:
        """After backward, before the optimizer step (gradients are there)."""

    # -- what subclasses implement -----------------------------------------------------------
    @property
    def n_active(self) -> int:
        """Layers trained per step."""
        return self.n_layers

    def select(self, step: int) -> list[int] | None:
        """Indices of the blocks that train at optimizer step `step`; None means all."""
        return None

    def importance_due(self, step: int) -> bool:
        return False

    def update_importance(self, step: int) -> None:
        pass

    def record(self) -> dict:
        """What the policy knows after this step's decision (e.g. the importance vector)."""
        return {}

    def worst_cases(self) -> list[list[int] | None]:
        """The candidate worst draws; the steady step takes the one that peaks highest on the
        backend (the argument: docs/measurement.md, "The worst draw"). Nothing below the blocks
        trains: backward stops at the lowest trained layer, so layer 0 is in the worst draw, with
        the other n_active - 1 either at the top (their gradients appear while most activations
        live) or right above it (their gradients and weight-gradient temporaries come last, beside
        everything else's gradients: the worst when a layer's activations are small); and the top
        n_active layers, the worst where every block saves its input whatever the draw (gradient
        checkpointing, which re-runs each block in backward, and a quantized base prepared for it).
        Something below trains (full fine-tuning's embeddings): every block saves its activations
        whatever the draw, and the top n_active layers' gradients appear first. Blocks of different
        kinds (MoE among dense blocks, Llama 4's interleaving) train different bytes: the heaviest
        layers (ties toward the top) stand in for the top ones too."""
        k, n = self.n_active, self.n_layers
        if k >= n:
            return [None]
        top = list(range(n - k, n))
        weight = self.block_bytes if self.block_bytes and len(set(self.block_bytes)) > 1 else None

        def heavy(pool: range, m: int) -> list[int]:   # the m heaviest of pool, ties toward the top
            return sorted(sorted(pool, key=lambda i: (weight[i], i))[len(pool) - m:])
        if self.grad_below:
            return [top] if weight is None or heavy(range(n), k) == top else [top, heavy(range(n), k)]
        draws = [[0, *range(n - k + 1, n)], list(range(k)), top]
        if weight is not None:
            draws += [[0, *heavy(range(1, n), k - 1)], heavy(range(n), k)]
        out = []
        for draw in draws:
            if draw not in out:
                out.append(draw)
        return out

    def possible_draws(self, limit: int = 64) -> list[list[int] | None]:
        """Draws the policy can make (every set of n_active layers; `none`: all layers), at most
        `limit` of them: beyond that a fixed sample, the worst case and the top layers included.
        The brute-force bound tests force each under the steady step's conditions."""
        k, n = self.n_active, self.n_layers
        if k >= n:
            return [None]
        total = math.comb(n, k)
        if total <= limit:
            return [list(c) for c in itertools.combinations(range(n), k)]
        g = rng(self.seed, 2**31 - 2)
        sample = [sorted(g.choice(n, size=k, replace=False).tolist()) for _ in range(limit - 2)]
        return [[0, *range(n - k + 1, n)], list(range(n - k, n)), *sample]

    def typical_weights(self) -> np.ndarray | None:
        """P(lowest trained layer = m), m = 0 .. L-1, for a long run's draws on sim (docs/measurement.md,
        "typical"): n_active of L layers uniformly (RST, LISA; IST's and ILA's draws with the
        importance sim can learn, none; LIFT visits every layer equally), so P = C(L-1-m, k-1) / C(L, k).
        None where the draw cannot change a step's figures through its lowest layer: every layer
        trains, or something below the blocks trains (backward reaches every block anyway)."""
        k, n = self.n_active, self.n_layers
        if k >= n or self.grad_below:
            return None
        return np.array([math.comb(n - 1 - m, k - 1) for m in range(n)], dtype=float) / math.comb(n, k)

    def describe(self) -> dict:
        """Settings recorded in every result row."""
        return {"name": self.name, **dataclasses.asdict(self.settings), "seed": self.seed,
                "optimizer_state": self.optimizer_state}

    # -- helpers for importance forwards ---------------------------------------------------
    def heldout_loss(self, scaled: list[int], factor: float) -> float:
        """Loss on the held-out batch with the PEFT output of blocks `scaled` multiplied by `factor`:
        eval mode (no dropout, so the training RNG is untouched), `torch.inference_mode()`, and
        every scale restored exactly afterwards, also on error. On the meta device (sim) the loss
        has no value: 0.0 is returned, so rewards are 0 and draws stay uniform."""
        import torch

        from ist_bench.methods import scaled_adapters

        model, was_training = self.model, self.model.training
        model.eval()
        try:
            with torch.inference_mode(), scaled_adapters([self.gate.modules[i] for i in scaled], factor):
                loss = model(**self.eval_batch).loss
            return 0.0 if loss.is_meta else float(loss)
        finally:
            model.train(was_training)

    # -- state across a checkpoint ----------------------------------------------------------
    def state_dict(self) -> dict:
        """What the policy learned (plain lists and numbers); draws need nothing else: each is a function
        of (seed, step, stream). The per-step `history` is a record, not state, and is not saved."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def carry_state(self, optimizer) -> None:
        """Make the optimizer's `state_dict()` carry this policy's state (in its first param group, under
        `STATE_KEY`). Trainer saves the optimizer's state into every checkpoint and loads it from the
        checkpoint it resumes, whichever folder that is, so the policy's state comes back from exactly
        that checkpoint (a copied checkpoint keeps it; another run's in a reused output_dir is never read)."""
        inner = getattr(optimizer, "optimizer", optimizer)    # accelerate wraps the torch optimizer
        if getattr(self, "_carry", None) is not None:
            self._carry.remove()

        def add_state(opt, state_dict: dict) -> dict:
            state_dict["param_groups"][0][STATE_KEY] = {"policy": self.name, "state": self.state_dict()}
            return state_dict
        self._carry = inner.register_state_dict_post_hook(add_state)

    def restore_state(self, optimizer, step: int) -> None:
        """After Trainer resumed at `step` > 0: the state the resumed checkpoint's optimizer carried."""
        carried = optimizer.param_groups[0].get(STATE_KEY) if optimizer is not None else None
        if not isinstance(carried, dict) or carried.get("policy") != self.name:
            warnings.warn(f"--select {self.name}: resuming at step {step} from a checkpoint that holds no "
                          f"{self.name} state: the policy starts from scratch", stacklevel=3)
            return
        self.load_state_dict(carried["state"])

    # -- Hugging Face Trainer events (TrainerCallback's protocol; see the module's docstring) -----------
    def on_train_begin(self, args, state, control, model=None, optimizer=None, train_dataloader=None, **kwargs):
        if self.gate is None or self.model is not model:
            batch = (self.eval_source or self.eval_batch) if self.gate is not None else None
            if self.needs_eval_batch and batch is None:
                n, fresh = self.settings.eval_batch, self.settings.eval_data == "fresh"

                def batch(step: int) -> dict:   # fixed: one draw, stream 2^31-1; fresh: (step, 2) per round
                    stream = (step, 2) if fresh else (2**31 - 1,)
                    return _to_device(heldout_batch(train_dataloader, n, self.seed, *stream), model)
            self.bind(model, optimizer, eval_batch=batch if callable(batch) else _to_device(batch, model))
        self.carry_state(optimizer)
        if state.global_step > 0:   # resumed: Trainer has loaded the checkpoint's optimizer state
            self.restore_state(optimizer, state.global_step)

    def on_step_begin(self, args, state, control, **kwargs):
        self.begin_step(state.global_step)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.after_backward(state.global_step)

    def _nothing(self, args, state, control, **kwargs):
        return None

    on_init_end = on_train_end = on_epoch_begin = on_epoch_end = on_substep_end = on_optimizer_step = _nothing
    on_step_end = on_evaluate = on_predict = on_save = on_log = on_prediction_step = on_push_begin = _nothing

    def __getattr__(self, name: str):
        if name.startswith("on_"):   # an event a later transformers adds: nothing to do
            return self._nothing
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


STATE_KEY = "ist_bench.selection"


def heldout_batch(dataloader, n: int, seed: int, *stream: int) -> dict:
    """`n` samples of the training set drawn from the generator (seed, *stream), collated as
    training batches are: IST's `fixed` held-out batch is one such draw for the whole run, `fresh`
    one per round (as the public IST code does, 16 samples). Trainer's events never carry the
    current batch, so the callback takes its own."""
    if dataloader is None:
        raise UsageError("IST needs a held-out batch: pass eval_batch=... to bind(), or train with a Trainer")
    dataset = dataloader.dataset
    idx = rng(seed, *stream).choice(len(dataset), size=min(n, len(dataset)), replace=False)
    return dataloader.collate_fn([dataset[int(i)] for i in idx])


def _to_device(batch: dict | None, model: nn.Module) -> dict | None:
    import torch

    if batch is None:
        return None
    device = next(model.parameters()).device
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


MAX_OPTION = 2**31 - 1     # no integer setting of a policy is larger (intervals, counts, warm-ups)
_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


def parse_settings(cls: type, values: dict, policy: str):
    """A policy's Settings from a dict of option strings (CLI) or typed values (suites, Python)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    typed = {}
    for key, value in canonical_options(cls, values, policy).items():
        typed[key] = _convert(value, _kind(fields[key].type), policy, key)
    settings = cls(**typed)
    settings.check(policy)
    return settings


def canonical_options(cls: type, values: dict, policy: str) -> dict:
    """The options as a case records them: an option string of the CLI read as YAML reads a number (`100`
    an int, `0.5` a float; ASCII digits only: `５` or `1_0` would be stored as text that never pairs with
    a suite's 5 or 10), a typed value as it is. Unknown names and malformed numbers are one line."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    out = {}
    for key, value in values.items():
        if key not in fields:
            raise choice_error(f"option for --select {policy}", key, list(fields) or ["(none)"])
        kind = _kind(fields[key].type)
        if isinstance(value, str) and kind in ("int", "float"):
            text = value.strip()
            if _INT.fullmatch(text):
                value = int(text)
            elif kind == "float" and _FLOAT.fullmatch(text):
                value = float(text)
            else:
                raise UsageError(f"--select {policy}: {key} must be {'an integer' if kind == 'int' else 'a number'} "
                                 f"in ASCII digits (e.g. {'10' if kind == 'int' else '0.5'}), got {value!r}")
        out[key] = value
    return out


def _kind(annotation) -> str:
    """A settings field's type as a name: `float` whether the module has postponed annotations or not."""
    return annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))


def _convert(value: Any, kind: str, policy: str, key: str):
    want = {"float": float, "int": int, "str": str}.get(kind, str)
    if isinstance(value, bool) or (want is not str and isinstance(value, str)):
        raise UsageError(f"--select {policy}: {key} must be {kind}, got {value!r}")
    if want is str:
        if not isinstance(value, str):
            raise UsageError(f"--select {policy}: {key} must be str, got {value!r}")
        return value
    if isinstance(value, float) and not math.isfinite(value):
        raise UsageError(f"--select {policy}: {key} must be a finite number, got {value!r}")
    if want is int:
        if not isinstance(value, int) and not (isinstance(value, float) and value.is_integer()):
            raise UsageError(f"--select {policy}: {key} must be int, got {value!r}")
        value = int(value)
    elif not isinstance(value, (int, float)):
        raise UsageError(f"--select {policy}: {key} must be float, got {value!r}")
    if abs(value) > MAX_OPTION:
        raise UsageError(f"--select {policy}: {key} must be at most {MAX_OPTION:,} in size, got {schema_show(value)}")
    return want(value)


def schema_show(value) -> str:
    from ist_bench.schema import show
    return show(value)


def parse_options(text: str | None) -> dict[str, str]:
    """'beta=0.5,mu=100' -> {'beta': '0.5', 'mu': '100'} (values converted by the policy)."""
    out: dict[str, str] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--select-opt takes key=value pairs separated by commas, got {part.strip()!r}")
        out[key.strip()] = value.strip()
    return out
