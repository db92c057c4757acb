# Source on a lent GPU box (no network, no pip install of this repo): wheels carried in .whl/ for the
# few dependencies its image lacks, this checkout on PYTHONPATH, the commit for provenance.
# Usage: IST_BENCH_GIT_COMMIT=<sha> . scripts/device-env.sh
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
ist() { python3 -m ist_bench.cli "$@"; }
