"""IST, Importance-aware Sparse Tuning (arXiv 2410.11772): the paper's form and the public code's.

A real-valued importance I (one entry per layer, starting at 0) drives two loops:

- every step, p_i ~ Uniform(0, sigmoid(I_i)) and the N_u layers with the largest p_i train;
  the others' PEFT modules still run in the forward pass, frozen;
- every T_c steps (`interval`; at steps T_c, 2 T_c, ...) an importance round draws N_c
  candidate sets of N_v layers. For candidate j, one forward on a held-out batch runs with the
  PEFT output of every layer *outside* the set scaled by beta (m(x) + beta a(x)), giving loss
  L_j; r_j = exp(-L_j) - mean_k exp(-L_k); then I_i += mu r_j for every i in set j.

`ist-code` is the form of the authors' public code, kept for comparison:
the score says how safe a layer is to *suppress*. Candidate sets are drawn without replacement
with weights sigmoid(s) and *their* layers are scaled by beta; update sets are drawn with
weights sigmoid(-s); and the increment is mu r_j sigmoid(s_i)(1 - sigmoid(s_i)) (computed from
the scores before the round), a policy-gradient step.

Draws use their own generators seeded by (seed, step, stream), and the importance forwards run
in eval mode under `torch.inference_mode()`: the training RNG, the optimizer state and the
gradients are untouched. On sim the losses have no values, so rewards are 0 (draws stay
uniform); memory does not depend on which layers the importance favours beyond the draw itself.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

from ist_bench.errors import choice_error
from ist_bench.selection.base import SelectionPolicy, at_least, at_most, count, fraction, rng

EVAL_DATA = ("fixed", "fresh")


@dataclass
class ISTSettings:
    layers: float = 0.25      # N_u: layers updated per step, as a fraction of L
    candidates: float = 0.5   # N_v: layers per candidate set, as a fraction of L
    beta: float = 0.25        # response suppression factor
    interval: int = 10        # T_c: steps between importance rounds
    n_candidates: int = 3     # N_c: candidate sets (one held-out forward each) per round
    mu: float = 10.0          # importance step size (the paper uses 10, and 100 for arithmetic)
    eval_batch: int = 1       # held-out sequences per forward; the paper's Table 13 timing (importance
                              # adds ~41 ms/iter = 30 forwards per 100 iterations, each as long as a
                              # training forward) implies one; the public code uses 16
    eval_data: str = "fixed"  # fixed: one draw for the whole run; fresh: a new draw every round (the
                              # public code's choice; with eval_batch=16 its whole setting)

    def check(self, policy: str) -> None:
        fraction(policy, "layers", self.layers)
        fraction(policy, "candidates", self.candidates)
        fraction(policy, "beta", self.beta, low_open=False)
        at_least(policy, "interval", self.interval, 1)
        at_least(policy, "n_candidates", self.n_candidates, 2)   # one candidate's reward is always 0
        at_most(policy, "n_candidates", self.n_candidates, 64)   # each is a forward of the held-out batch
        at_least(policy, "mu", self.mu, 0)
        at_least(policy, "eval_batch", self.eval_batch, 1)
        at_most(policy, "eval_batch", self.eval_batch, 1024)
        if self.eval_data not in EVAL_DATA:
            raise choice_error(f"--select {policy} eval_data", self.eval_data, EVAL_DATA)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


class IST(SelectionPolicy):
    name = "ist"
    description = "IST (paper form): N_u layers by importance-weighted draws; importance rounds every T_c steps"
    Settings = ISTSettings
    needs_adapters = True
    needs_eval_batch = True

    def setup(self) -> None:
        self.importance = np.zeros(self.n_layers)
        self.rounds: list[dict] = []

    @property
    def n_active(self) -> int:
        return count(self.settings.layers, self.n_layers)

    @property
    def n_candidate_layers(self) -> int:
        return count(self.settings.candidates, self.n_layers)

    def select(self, step: int) -> list[int]:
        p = rng(self.seed, step, 0).uniform(0.0, sigmoid(self.importance))
        return sorted(np.argsort(-p, kind="stable")[: self.n_active].tolist())

    def importance_due(self, step: int) -> bool:
        return step > 0 and step % self.settings.interval == 0

    def update_importance(self, step: int) -> None:
        if self.settings.eval_data == "fresh":    # this round's held-out batch: stream (seed, step, 2)
            self.eval_batch = self.eval_source(step)
        sets = self.candidate_sets(rng(self.seed, step, 1))
        losses = np.array([self.candidate_loss(c) for c in sets])
        ok = np.isfinite(losses)   # e.g. a held-out batch whose labels are all -100: NaN loss
        rewards = np.zeros(len(sets))
        if ok.sum() >= 2:          # one candidate's reward is always 0
            rewards[ok] = np.exp(-losses[ok]) - np.exp(-losses[ok]).mean()
        self.apply_rewards(sets, rewards)
        record = {"step": step, "candidates": sets, "losses": [float(x) if f else None for x, f in zip(losses, ok, strict=True)],
                  "rewards": rewards.tolist()}
        if not ok.all():
            record["skipped"] = np.flatnonzero(~ok).tolist()
            record["warning"] = (f"step {step}: {int((~ok).sum())} of {len(sets)} held-out losses not finite "
                                 f"(labels all -100?); those candidates skipped")
            warnings.warn(f"--select {self.name}: {record['warning']}", stacklevel=2)
        self.rounds.append(record)

    # The places where the paper's form and the public code's differ:
    def candidate_sets(self, g: np.random.Generator) -> list[list[int]]:
        """The round's N_c sets, drawn independently (a set may come twice: each copy counts)."""
        return [self.draw_candidates(g) for _ in range(self.settings.n_candidates)]

    def draw_candidates(self, g: np.random.Generator) -> list[int]:
        return sorted(g.choice(self.n_layers, size=self.n_candidate_layers, replace=False).tolist())

    def candidate_loss(self, candidates: list[int]) -> float:
        outside = [i for i in range(self.n_layers) if i not in candidates]
        return self.heldout_loss(outside, self.settings.beta)

    def apply_rewards(self, sets: list[list[int]], rewards: np.ndarray) -> None:
        for layers, r in zip(sets, rewards, strict=True):
            self.importance[layers] += self.settings.mu * r

    def record(self) -> dict:
        return {"importance": self.importance.round(6).tolist()}

    def state_dict(self) -> dict:
        return {"importance": self.importance.tolist(), "rounds": len(self.rounds)}

    def load_state_dict(self, state: dict) -> None:
        self.check_state(state, {"importance": self.n_layers})
        self.importance = np.array(state["importance"], dtype=float)


class ISTCode(IST):
    name = "ist-code"
    description = "IST as the public code does it: suppress-safety scores, weighted draws, p(1-p) updates"

    def candidate_sets(self, g: np.random.Generator) -> list[list[int]]:
        """Distinct sets, as the public code re-draws a set it already holds (`while tensor_in_list`);
        where fewer distinct sets of N_v layers exist than N_c, each of them once, then repeats."""
        distinct = math.comb(self.n_layers, self.n_candidate_layers)
        sets: list[list[int]] = []
        while len(sets) < self.settings.n_candidates:
            s = self.draw_candidates(g)
            if s not in sets or len(sets) >= distinct:
                sets.append(s)
        return sets

    def select(self, step: int) -> list[int]:
        w = sigmoid(-self.importance)
        return sorted(rng(self.seed, step, 0).choice(self.n_layers, size=self.n_active, replace=False,
                                                     p=w / w.sum()).tolist())

    def draw_candidates(self, g: np.random.Generator) -> list[int]:
        w = sigmoid(self.importance)
        return sorted(g.choice(self.n_layers, size=self.n_candidate_layers, replace=False, p=w / w.sum()).tolist())

    def candidate_loss(self, candidates: list[int]) -> float:
        return self.heldout_loss(candidates, self.settings.beta)

    def apply_rewards(self, sets: list[list[int]], rewards: np.ndarray) -> None:
        s = sigmoid(self.importance)
        grad = s * (1 - s)
        for layers, r in zip(sets, rewards, strict=True):
            self.importance[layers] += self.settings.mu * r * grad[layers]
