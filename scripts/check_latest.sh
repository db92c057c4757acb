#!/usr/bin/env bash
# "Newest releases": installs ist-bench[dev] WITHOUT the constraints into a throw-away venv (so pip takes the
# newest releases the index has), prints which pinned packages moved, runs README's test suite on them (the
# contract: every exact figure stays exact), then the sim memory gate against the committed baseline, as a
# report (a newer torch or transformers may move bytes for real: that is what moving the pins would do).
#
#   scripts/check_latest.sh            # exit 0 if the tests pass on the newest releases, 1 if not
#   scripts/check_latest.sh --update   # also rewrite constraints.txt and results/baselines/sim.jsonl
#                                      # from that venv (then review the diff and commit both together)
#
# Keeps a torch you name: TORCH='torch==2.13.0' scripts/check_latest.sh (default: the newest torch too).
# .ci/run runs it after the tests, not blocking; README shows its last result.
set -euo pipefail
cd "$(dirname "$0")/.."
update=0; [[ "${1:-}" == "--update" ]] && update=1
venv=${VENV:-$(mktemp -d)/venv}
[[ -x "$venv/bin/python" ]] || python -m venv "$venv"
"$venv/bin/pip" install -q ${TORCH:+"$TORCH"} -e ".[dev]"
new=$(mktemp); "$venv/bin/pip" freeze | grep -v '^-e\|^#' | sed 's/^torch==\(.*\)+cpu$/torch==\1/' | sort -f > "$new"

echo "== packages that moved (pinned -> newest) =="
pins() { grep -v '^#' "$1" | sed 's/==/ /' | sort -f -k1,1; }
join -i -a1 -a2 -e '(none)' -o 0,1.2,2.2 <(pins constraints.txt) <(pins "$new") \
  | awk '$2 != $3 {printf "  %-24s %s -> %s\n", $1, $2, $3; n++} END {if (!n) print "  none"}'

echo "== README's tests on the newest releases =="
set +e
"$venv/bin/python" -m pytest -p no:cacheprovider 2>&1 | tail -n 3
tests=${PIPESTATUS[0]}
set -e

echo "== sim memory gate on the newest releases (a report: moved bytes come with moved pins) =="
gate=$(mktemp -d)
"$venv/bin/ist-bench" run suites/ci-sim.yaml --out "$gate/ci-sim.jsonl" >/dev/null
"$venv/bin/ist-bench" compare results/baselines/sim.jsonl "$gate/ci-sim.jsonl" --allow-mismatch \
  --markdown "$gate/compare.md" > /dev/null || true
tail -n 4 "$gate/compare.md"
if (( update )); then
  { grep '^#' constraints.txt; cat "$new"; } > constraints.txt.new && mv constraints.txt.new constraints.txt
  "$venv/bin/ist-bench" baseline update "$gate/ci-sim.jsonl" --name sim --dir results/baselines
  echo "updated constraints.txt and results/baselines/sim.jsonl: review 'git diff', commit them together"
  exit 0
fi
echo "newest releases: tests $([[ $tests == 0 ]] && echo passed || echo FAILED)"
exit "$tests"
