"""Fit a card's in-model factors (calibration.insitu) from measured steps: the factor per kernel group
(gemm, attention, elementwise, softmax, norm, reduce, index, optimizer) by which the microbenchmark's isolated
times must be scaled to give the GPU busy time of real steps, per phase.

    python scripts/fit_insitu.py CARD MEASURED.jsonl [...] [--every 2 --offset 0]

Only the measured rows at positions offset, offset + every, ... (in file order) are used: the rest are left
for validation, which must never see the cells the factors were fitted on. Least squares on the relative
error of each phase's busy time, factors bounded to [0.5, 3] and pulled toward 1 (ridge 0.05)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    from ist_bench.process import prepare

    prepare()
    import numpy as np
    from scipy.optimize import lsq_linear

    from ist_bench.cards import path_of
    from ist_bench.predict import predict_time
    from ist_bench.predict.kernels import GROUPS
    from ist_bench.report.cells import column
    from ist_bench.runner.case import Case

    ap = argparse.ArgumentParser()
    ap.add_argument("card")
    ap.add_argument("measured", nargs="+")
    ap.add_argument("--every", type=int, default=2)
    ap.add_argument("--offset", type=int, default=0)
    a = ap.parse_args()
    rows = [json.loads(line) for p in a.measured for line in open(p) if line.strip()]
    rows = [r for r in rows if r.get("kind") == "time" and r["status"] == "ok" and r.get("backend") == "cuda"
            and r["time"].get("device", {}).get("busy_ms") and r["time"]["device"].get("card") == a.card]
    chosen = rows[a.offset::a.every]
    import tempfile

    bare = json.loads(path_of(a.card).read_text())          # the isolated times: no factors yet
    bare["calibration"].pop("insitu", None)
    tmp = Path(tempfile.mkdtemp()) / f"{a.card}.json"
    tmp.write_text(json.dumps(bare))
    A, y, labels = [], [], []
    for r in chosen:
        case = Case.from_dict({**r["case"], "backend": "sim"}).check()
        pred = predict_time(case, str(tmp), r.get("warmup", 10))["prediction"]["busy_ms_by_group"]
        busy = r["time"]["device"]["busy_ms"]
        for phase in ("forward", "backward", "optimizer"):
            A.append([pred.get(f"{phase}/{g}", 0.0) / busy[phase] for g in GROUPS])
            y.append(1.0)
        labels.append(f"{r['case']['model']} {column(r['case'])}")
    A, y = np.array(A), np.array(y)
    used = A.sum(axis=0) > 0
    ridge = 0.05
    A2 = np.vstack([A[:, used], ridge * np.eye(used.sum())])
    y2 = np.concatenate([y, ridge * np.ones(used.sum())])
    fit = lsq_linear(A2, y2, bounds=(0.5, 3.0))
    factors = {str(g): round(float(f), 4) for g, f in zip(np.array(GROUPS)[used], fit.x, strict=True)}
    residual = A[:, used] @ fit.x - 1
    print(f"{len(chosen)} steps, {len(y)} phases: factors {factors}; |relative residual| median "
          f"{100 * np.median(np.abs(residual)):.1f}%, max {100 * np.max(np.abs(residual)):.1f}%")
    path = path_of(a.card)
    data = json.loads(path.read_text())
    data["calibration"]["insitu"] = {"factors": factors, "fitted_on": labels,
                                     "rule": f"measured rows {a.offset}, {a.offset} + {a.every}, ... of "
                                             f"{', '.join(Path(p).name for p in a.measured)}"}
    text = path.read_text()
    head = text[:text.index(',\n "calibration": ')]
    path.write_text(head + ',\n "calibration": ' + json.dumps(data["calibration"], separators=(",", ":")) + "\n}\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
