#!/usr/bin/env bash
# Failover timings (issue 11): a node killed, a node isolated and healed, the manager killed,
# an agent restarted, each under a bounded load through the routing mesh (cli/tests/failover.rs,
# <= 20000 requests or 60 s each). Runs the suite ROUNDS times and prints the median of every
# figure, with the issue's targets where it sets one. Needs root and ./scripts/setup.
# Usage: bench/failover.sh [TEST-NAME-FILTER]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
FILTER=${1:-}
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for i in $(seq "$ROUNDS"); do
  echo "== round $i/$ROUNDS" >&2
  # A failed assertion still leaves its figures: they are what this reports.
  cargo test --release -q -p swarmkit --test failover -- --test-threads 1 --nocapture $FILTER \
    2>&1 | grep -o 'FAILOVER .*' | tee -a "$out" >&2 || true
done
python3 - "$out" <<'PY'
import collections, statistics, sys
targets = {"no_failure_after_s": 3.0, "down_after_s": 3.0, "replicas_back_after_s": 5.0, "failed": None}
figures = collections.defaultdict(list)
for line in open(sys.argv[1]):
    _, test, *pairs = line.split()
    for kv in pairs:
        k, v = kv.split("=", 1)
        figures[(test, k)].append(float(v))
print(f"{'scenario':10} {'figure':24} {'median':>8} {'worst':>8}  target")
for (test, k), vs in sorted(figures.items()):
    worst = max(vs)
    target = targets.get(k)
    verdict = "" if target is None else f"<= {target:g}  {'met' if worst <= target else 'MISSED'}"
    if k == "failed" and test in ("manager", "agent"):
        verdict = f"0  {'met' if worst == 0 else 'MISSED'}"
    print(f"{test:10} {k:24} {statistics.median(vs):8.2f} {worst:8.2f}  {verdict}")
PY
