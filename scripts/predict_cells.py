"""Predict, for every measured time row of a file, the same case on sim for the card it ran on; with
--held-out, from the other cards' tables only (the card's own are hidden: the held-out experiment).

    python scripts/predict_cells.py MEASURED.jsonl OUT.jsonl [--held-out] [--jobs 2]

`ist-bench validate MEASURED.jsonl OUT.jsonl` (or scripts/time_report.py) then pairs them."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _one(job) -> dict:
    from ist_bench.process import prepare

    prepare()
    from ist_bench.predict import predict_time
    from ist_bench.runner.case import Case

    case_dict, gpu, warmup = job
    return predict_time(Case.from_dict({**case_dict, "backend": "sim"}).check(), gpu, warmup)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("measured")
    ap.add_argument("out")
    ap.add_argument("--held-out", action="store_true", help="hide each card's own tables")
    ap.add_argument("--jobs", type=int, default=2)
    a = ap.parse_args()
    from ist_bench.cards import CARDS, path_of
    from ist_bench.results import append_rows

    rows = [json.loads(line) for line in open(a.measured) if line.strip()]
    rows = [r for r in rows if r.get("kind") == "time" and r.get("status") == "ok" and r.get("backend") == "cuda"]
    tmp = Path(tempfile.mkdtemp())
    jobs = []
    for r in rows:
        card = r["time"]["device"].get("card")
        if card not in CARDS:
            continue
        gpu = card
        if a.held_out:   # the card's spec sheet without its tables
            data = json.loads(path_of(card).read_text())
            data.pop("calibration", None)
            gpu = str(tmp / f"{card}.json")
            Path(gpu).write_text(json.dumps(data))
        jobs.append(({k: v for k, v in r["case"].items() if k != "backend"}, gpu, r.get("warmup", 10)))
    with ProcessPoolExecutor(a.jobs) as pool:
        for i, row in enumerate(pool.map(_one, jobs), 1):
            append_rows(a.out, [row])
            t = row.get("time", {})
            print(f"[{i}/{len(jobs)}] {row['case']['model']} {row['status']} "
                  f"{t.get('phases_ms', {}).get('step', {}).get('median', 0):.1f} ms", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
