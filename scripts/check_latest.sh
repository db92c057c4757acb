#!/usr/bin/env bash
# "Newest releases": a separate, reported check, not part of CI (.ci/run installs from constraints.txt).
# Installs ist-bench[dev] WITHOUT the constraints into a throw-away venv (so pip takes the newest
# releases the index has), prints which pinned packages moved, and runs the sim memory gate with them.
#
#   scripts/check_latest.sh            # report only: exit 0 if the gate holds on the newest releases, 1 if not
#   scripts/check_latest.sh --update   # also rewrite constraints.txt and results/baselines/sim.jsonl
#                                      # from that venv (then review the diff and commit both together)
#
# Keeps a torch you name: TORCH='torch==2.13.0' scripts/check_latest.sh (default: the newest torch too).
set -euo pipefail
cd "$(dirname "$0")/.."
update=0; [[ "${1:-}" == "--update" ]] && update=1
venv=${VENV:-$(mktemp -d)/venv}
python -m venv "$venv"
"$venv/bin/pip" install -q ${TORCH:+"$TORCH"} -e ".[dev]"
new=$(mktemp); "$venv/bin/pip" freeze | grep -v '^-e\|^#' | sed 's/^torch==\(.*\)+cpu$/torch==\1/' | sort -f > "$new"

echo "== packages that moved (pinned -> newest) =="
pins() { grep -v '^#' "$1" | sed 's/==/ /' | sort -f -k1,1; }
join -i -a1 -a2 -e '(none)' -o 0,1.2,2.2 <(pins constraints.txt) <(pins "$new") \
  | awk '$2 != $3 {printf "  %-24s %s -> %s\n", $1, $2, $3; n++} END {if (!n) print "  none"}'

echo "== sim memory gate on the newest releases =="
gate=$(mktemp -d)
"$venv/bin/ist-bench" run suites/ci-sim.yaml --out "$gate/ci-sim.jsonl" >/dev/null
set +e
"$venv/bin/ist-bench" compare results/baselines/sim.jsonl "$gate/ci-sim.jsonl" --allow-mismatch --markdown "$gate/compare.md"
code=$?
set -e
cat "$gate/compare.md"
if (( update )); then
  { grep '^#' constraints.txt; cat "$new"; } > constraints.txt.new && mv constraints.txt.new constraints.txt
  "$venv/bin/ist-bench" baseline update "$gate/ci-sim.jsonl" --name sim --dir results/baselines
  echo "updated constraints.txt and results/baselines/sim.jsonl: review 'git diff', commit them together"
  exit 0
fi
exit $code
