"""Adding a policy or a method is one class and one registry line (docs/architecture.md, "Seams"): here each
is defined in the test, registered with one line, and runs through the command line on sim."""

import json
from dataclasses import dataclass

from ist_bench.cli import main


def test_a_policy_is_one_class_and_one_registry_line(monkeypatch, tmp_path, capsys):
    from ist_bench import selection
    from ist_bench.selection.base import SelectionPolicy, count, fraction

    @dataclass
    class TopSettings:
        layers: float = 0.25

        def check(self, policy: str) -> None:
            fraction(policy, "layers", self.layers)

    class Top(SelectionPolicy):
        name = "top"
        description = "the top layers only (an example)"
        Settings = TopSettings

        @property
        def n_active(self) -> int:
            return count(self.settings.layers, self.n_layers)

        def select(self, step: int) -> list[int]:
            return list(range(self.n_layers - self.n_active, self.n_layers))

    monkeypatch.setitem(selection.POLICIES, Top.name, Top)          # the registry line
    out = tmp_path / "r.jsonl"
    assert main(["memory", "--model", "tiny-llama", "--select", "top", "--select-opt", "layers=0.5",
                 "--seq-len", "32", "--steps", "3", "--json", str(out)]) == 0
    row = json.loads(out.read_text())
    assert row["status"] == "ok" and [s["active_layers"] for s in row["memory"]["steps"][:3]] == [[2, 3]] * 3


def test_a_method_is_one_class_and_one_registry_line(monkeypatch, tmp_path):
    from ist_bench import methods
    from ist_bench.methods.base import Method

    class Norms(Method):
        name = "norms"
        description = "the blocks' normalization weights only (an example)"
        peft = False

        def apply(self, model, spec):
            for n, p in model.named_parameters():
                p.requires_grad_("layers." in n and "norm" in n)
            return model

    monkeypatch.setitem(methods.METHODS, Norms.name, Norms())           # the registry line
    out = tmp_path / "r.jsonl"
    assert main(["memory", "--model", "tiny-llama", "--method", "norms", "--seq-len", "32", "--steps", "1",
                 "--json", str(out)]) == 0
    row = json.loads(out.read_text())
    assert row["status"] == "ok" and row["trainable_params"] == 4 * 2 * 64   # 4 blocks x 2 RMSNorms x hidden 64
