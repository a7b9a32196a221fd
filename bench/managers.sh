#!/usr/bin/env bash
# Replicated managers (issue 24), from one run, every figure against one manager in the same
# run. For each of 1, 3 and 5 managers (on a 5-node netns cluster):
#   - write latency: hyperfine over one Engine API write (a config created under a new name)
#     through the leader's own socket; a read the same way is the control (what spawning curl
#     costs, which the write's figure includes too);
#   - write throughput: 400 such writes from 8 clients at once, timed by hyperfine;
#   - idle CPU: what the manager processes use in 30 s with nothing asked of them.
# Then ROUNDS rounds of the leader-kill test (cli/tests/managers.rs): from the kill of the
# leader's node to the first write a surviving manager accepted, median and worst.
# Needs root and ./scripts/setup (hyperfine, curl). Usage: bench/managers.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}
IDLE_SECS=${IDLE_SECS:-30}
cargo build --release -q -p swarmkit
SK=$PWD/target/release/swarmkit
work=$(mktemp -d)
clusters=()
cleanup() {
  for c in "${clusters[@]}"; do "$SK" cluster down "$c" >/dev/null 2>&1 || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# One write: a config under a name no run used before.
cat > "$work/write" <<'SH'
#!/bin/sh
exec curl -sf -o /dev/null --unix-socket "$1" -X POST -H 'Content-Type: application/json' \
  -d "{\"Name\":\"b$(cat /proc/sys/kernel/random/uuid)\",\"Data\":\"eA==\"}" http://swarmkit/configs/create
SH
cat > "$work/read" <<'SH'
#!/bin/sh
exec curl -sf -o /dev/null --unix-socket "$1" http://swarmkit/configs
SH
chmod +x "$work/write" "$work/read"

# The CPU seconds (user + system) the processes "$@" have used.
cpu_secs() {
  local total=0 pid
  for pid in "$@"; do
    total=$(awk -v t="$total" -v hz="$(getconf CLK_TCK)" '{print t + ($14 + $15) / hz}' "/proc/$pid/stat")
  done
  echo "$total"
}

mean_of() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["results"][0]["mean"])' "$1"; }

declare -A latency read_latency throughput idle
for m in 1 3 5; do
  c=bench-m$m
  clusters+=("$c")
  "$SK" cluster down "$c" >/dev/null 2>&1 || true
  "$SK" cluster up --name "$c" --nodes 5 --managers "$m" >/dev/null
  if [ "$m" = 1 ]; then
    sock=/run/swarmkit/$c/manager.sock
    pids=("$(cat /run/swarmkit/$c/manager.pid)")
  else
    leader=$(DOCKER_HOST=unix:///run/swarmkit/$c/managers/node1/manager.sock \
      docker node ls --format '{{.Hostname}} {{.ManagerStatus}}' | awk '$2=="Leader"{print $1}')
    sock=/run/swarmkit/$c/managers/$leader/manager.sock
    # Each manager node's agent runs its manager.
    mapfile -t pids < <(pgrep -f -- "--cluster $c __manager --replica")
    [ "${#pids[@]}" = "$m" ] || { echo "expected $m managers, found ${#pids[@]}" >&2; exit 1; }
  fi
  echo "== $m manager(s): idle ${IDLE_SECS}s, then writes through $sock" >&2
  before=$(cpu_secs "${pids[@]}")
  sleep "$IDLE_SECS"
  after=$(cpu_secs "${pids[@]}")
  idle[$m]=$(python3 -c "print(f'{100 * ($after - $before) / $IDLE_SECS:.2f}')")
  hyperfine -N --warmup 10 --runs 200 --export-json "$work/w$m.json" "$work/write $sock" >&2
  hyperfine -N --warmup 10 --runs 200 --export-json "$work/r$m.json" "$work/read $sock" >&2
  hyperfine --warmup 1 --runs 3 --export-json "$work/t$m.json" \
    "seq 400 | xargs -P 8 -n 1 sh -c '$work/write $sock'" >&2
  latency[$m]=$(mean_of "$work/w$m.json")
  read_latency[$m]=$(mean_of "$work/r$m.json")
  throughput[$m]=$(python3 -c "print(400 / $(mean_of "$work/t$m.json"))")
  "$SK" cluster down "$c" >/dev/null
done

echo "== leader kill, $ROUNDS rounds" >&2
kills=$(mktemp)
for i in $(seq "$ROUNDS"); do
  cargo test --release -q -p swarmkit --test managers -- --test-threads 1 --nocapture \
    the_leaders_machine_dies 2>&1 | grep -o 'MANAGERS leader_kill .*' | tee -a "$kills" >&2 || true
done

python3 - "$kills" <<PY
import statistics, sys
lat = {1: ${latency[1]}, 3: ${latency[3]}, 5: ${latency[5]}}
read = {1: ${read_latency[1]}, 3: ${read_latency[3]}, 5: ${read_latency[5]}}
tput = {1: ${throughput[1]}, 3: ${throughput[3]}, 5: ${throughput[5]}}
idle = {1: ${idle[1]}, 3: ${idle[3]}, 5: ${idle[5]}}
print(f"{'managers':>8} {'write ms':>9} {'ratio':>6} {'read ms':>8} {'writes/s':>9} {'ratio':>6} {'idle CPU %':>10}")
for m in (1, 3, 5):
    print(f"{m:>8} {lat[m]*1000:9.2f} {lat[m]/lat[1]:6.2f} {read[m]*1000:8.2f} {tput[m]:9.0f} {tput[m]/tput[1]:6.2f} {idle[m]:10.2f}")
firsts = []
for line in open(sys.argv[1]):
    for kv in line.split()[2:]:
        k, v = kv.split("=", 1)
        if k == "first_write_after_s":
            firsts.append(float(v))
if firsts:
    print(f"leader kill -> first accepted write: median {statistics.median(firsts):.2f} s, "
          f"worst {max(firsts):.2f} s over {len(firsts)} rounds (target 3 s: "
          f"{'met' if max(firsts) <= 3 else 'MISSED'})")
PY
