#!/usr/bin/env bash
# Agents back after a manager restart (issue 22's benchmark): on a 3-node netns cluster with
# SERVICES running services, SIGKILL the manager (its supervisor starts it again) and time
# until a new 3-replica service has converged on every node (`service create`'s own wait:
# running and routed everywhere), which needs the API back and every agent polling the new
# manager again: over mutual TLS, a fresh handshake and its certificate checked. With
# BASELINE=path/to/other/swarmkit, the same with that build, interleaved round by round.
#
# BACKEND=qemu runs the nodes as QEMU guests, whose agents reach the manager through the relay
# over SSH (see testbed/src/vm/relay.rs) rather than the underlay.
#
# Usage: bench/reconnect.sh   Env: ROUNDS=5, SERVICES=20, SWARMKIT, BASELINE, BACKEND=netns.
# Needs root and the release build.
set -euo pipefail
cd "$(dirname "$0")/.."
SK=${SWARMKIT:-target/release/swarmkit}
[ -x "$SK" ] || cargo build --release --quiet
SK=$(realpath "$SK")
ROUNDS=${ROUNDS:-5}
SERVICES=${SERVICES:-20}
builds=("$SK")
[ -n "${BASELINE:-}" ] && builds=("$(realpath "$BASELINE")" "$SK")

clusters=()
cleanup() { for c in "${clusters[@]}"; do "$SK" cluster down "$c" >/dev/null 2>&1 || true; done; }
trap cleanup EXIT

now() { date +%s.%N; }

# One cluster per build, up for the whole run.
for i in "${!builds[@]}"; do
  c="bench-reconnect-$i"
  clusters+=("$c")
  "${builds[$i]}" cluster down "$c" >/dev/null 2>&1 || true
  "${builds[$i]}" cluster up --name "$c" --nodes 3 --backend "${BACKEND:-netns}" >/dev/null
  for s in $(seq "$SERVICES"); do
    "${builds[$i]}" --cluster "$c" service create --detach --name "s$s" whoami >/dev/null
  done
done

declare -A times
for r in $(seq "$ROUNDS"); do
  for i in "${!builds[@]}"; do
    b=${builds[$i]} c=${clusters[$i]}
    pid=$(cat "/run/swarmkit/$c/manager.pid")
    t0=$(now)
    kill -9 "$pid"
    # Bounded: 60 s of tries at most.
    deadline=$(( $(date +%s) + 60 ))
    until timeout 60 "$b" --cluster "$c" service create --name "r$r" --replicas 3 whoami >/dev/null 2>&1; do
      [ "$(date +%s)" -lt "$deadline" ] || { echo "round $r, $b: no convergence within 60 s" >&2; exit 1; }
      "$b" --cluster "$c" service rm "r$r" >/dev/null 2>&1 || true
      sleep 0.05
    done
    t1=$(now)
    times[$i]+="$(echo "$t1 - $t0" | bc) "
    "$b" --cluster "$c" service rm "r$r" >/dev/null
  done
done

python3 - "${#builds[@]}" "${times[0]}" "${times[1]:-}" <<'PY'
import statistics, sys
n = int(sys.argv[1])
runs = [[float(x) for x in a.split()] for a in sys.argv[2:2 + n]]
names = ["this build"] if n == 1 else ["baseline", "this build"]
for name, ts in zip(names, runs):
    print(f"{name:10}  manager SIGKILL -> a change converged on every node: "
          f"median {statistics.median(ts):.2f} s, worst {max(ts):.2f} s, rounds {', '.join(f'{t:.2f}' for t in ts)}")
if n == 2:
    print(f"ratio (this build / baseline, medians): {statistics.median(runs[1]) / statistics.median(runs[0]):.2f}")
PY
