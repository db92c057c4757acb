"""Draw memory timelines side by side: python3 scripts/plot_timelines.py A.json B.json ... OUT.png

Each JSON is what `ist-bench memory ... --timeline X.json` wrote (e.g. the same case on cuda and on sim)."""

import sys

from ist_bench.measure.timeline import Timeline
from ist_bench.report.timeline import plot_timelines

if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: python3 scripts/plot_timelines.py TIMELINE.json [TIMELINE.json ...] OUT.png")
    print(plot_timelines([Timeline.load(p) for p in sys.argv[1:-1]], sys.argv[-1]))
