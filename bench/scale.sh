#!/usr/bin/env bash
# The control plane at scale, with real tasks: every service has one running replica (a
# namespace, a veth on its overlay and a whoami process), created through the Engine API.
#
# Part 1, one 3-node netns cluster grown 0 -> 10 -> 100 -> 1000 -> 5000 services:
#   - adding one service until converged (the CLI's own wait: running and routed on every
#     node) and removing one until converged (its process gone, every agent in sync), at each
#     level, as a ratio to the same at 0 services measured in the same run;
#   - creation time per 1000 services of each batch (linear if flat);
#   - control-plane bytes the manager sent (all nodes) for one add and one remove;
#   - idle CPU of manager + agents over IDLE seconds (utime+stime from /proc), at 0 and at the top;
#   - agent RSS, and its growth per 1000 local tasks.
# Part 2, a 50-node netns cluster: `cluster up` time, then 500 services spread over it: adding
#   one until converged (it must reach every node) against the first, and the bytes it cost.
#
# Usage: bench/scale.sh [curve|nodes|all]   Env: LEVELS="10 100 1000 5000", ROUNDS=3, IDLE=20,
#   PER_NET=2400, BIG_NODES=50, BIG_SERVICES=500. Needs root and the release build.
set -euo pipefail
cd "$(dirname "$0")/.."
SK=${SWARMKIT:-target/release/swarmkit}
[ -x "$SK" ] || cargo build --release --quiet
SK=$(realpath "$SK")
LEVELS=${LEVELS:-"10 100 1000 5000"}
ROUNDS=${ROUNDS:-3}
IDLE=${IDLE:-20}
# A Linux bridge takes at most 1024 ports (BR_MAX_PORTS) and each task is one port on its
# network's bridge on its node: services go onto a further overlay every PER_NET of them
# (about 800 local tasks per node and network on 3 nodes).
PER_NET=${PER_NET:-2400}
BIG_NODES=${BIG_NODES:-50}
BIG_SERVICES=${BIG_SERVICES:-500}
C=scale$$
TCK=$(getconf CLK_TCK)

cleanup() { "$SK" cluster down "$C" >/dev/null 2>&1 || true; }
trap cleanup EXIT

sock() { echo "/run/swarmkit/$C/manager.sock"; }
api() { curl -sS --max-time 60 --unix-socket "$(sock)" "$@"; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", b - a}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
die() { echo "scale bench: $*" >&2; exit 1; }

# Polls `cond` (a command) every 0.2 s until it succeeds or `limit` seconds pass.
wait_for() {
  local limit=$1 what=$2 t0
  shift 2
  t0=$(date +%s)
  until "$@"; do
    (($(date +%s) - t0 < limit)) || die "timed out after ${limit}s waiting for $what"
    sleep 0.2
  done
}

# Pid files end without a newline.
pids() { for f in /run/swarmkit/"$C"/manager.pid /run/swarmkit/"$C"/node*.pid; do echo "$(<"$f")"; done; }
agent_pids() { for f in /run/swarmkit/"$C"/node*.pid; do echo "$(<"$f")"; done; }
# The host's pid 1 (on these machines a sandbox agent, not ours) costs more the more processes
# run in network namespaces of their own (15% of a core idle at 2000, ~58% at 5000 tasks),
# which the creation times include; the curve reports it beside them.
init_ticks() { awk '{print $14 + $15}' /proc/1/stat; }
cpu_ticks() { for p in $(pids); do awk '{print $14 + $15}' "/proc/$p/stat"; done | awk '{s += $1} END {print s}'; }
# Mean agent RSS in MiB.
agent_rss() { for p in $(agent_pids); do awk '/VmRSS/ {print $2}' "/proc/$p/status"; done | awk '{s += $1; n++} END {printf "%.1f", s / n / 1024}'; }
sent_bytes() { api http://swarmkit/swarmkit/v1/agents | jq '[.[].sent.bytes] | add'; }
all_in_sync() { api http://swarmkit/swarmkit/v1/agents | jq -e 'all(.in_sync and .pending == 0)' >/dev/null; }
# Running tasks as `docker info` counts them (its ContainersRunning). Not the task list: at 5000
# tasks one listing cost ~0.3 s of the manager's and jq's CPU, and polled every 0.2 s it took
# a core from the cluster being measured.
running_count() { api http://swarmkit/info | jq '.ContainersRunning'; }
has_running() { [ "$(running_count)" -ge "$1" ]; }

# Share of one core used by manager + agents over IDLE seconds (a measuring window, not a wait).
idle_cpu() {
  local a b
  a=$(cpu_ticks)
  sleep "$IDLE"
  b=$(cpu_ticks)
  awk -v a="$a" -v b="$b" -v t="$TCK" -v s="$IDLE" 'BEGIN {printf "%.2f", 100 * (b - a) / t / s}'
}

ensure_net() {
  local k=${1#net}
  "$SK" --cluster "$C" network inspect "$1" >/dev/null 2>&1 ||
    "$SK" --cluster "$C" network create --driver overlay --subnet "10.$((9 + k)).0.0/16" "$1" >/dev/null
}

# Creates services s$1..s$2 through the API, one replica each, and waits until all run. One
# curl process sends them all, one after another on one kept-alive connection, as a client
# such as `docker stack deploy` does: a curl started per service costs ~8 ms of its own here,
# which would be measured as the cluster's.
fill() {
  local from=$1 to=$2 i net made="" config codes bad socket
  config=$(mktemp)
  socket=$(sock)
  for i in $(seq "$from" "$to"); do
    net=net$(((i - 1) / PER_NET + 1))
    [ "$net" = "$made" ] || { ensure_net "$net" && made=$net; }
    [ "$i" = "$from" ] || echo next >>"$config"
    printf '%s\n' "unix-socket = \"$socket\"" "url = \"http://swarmkit/services/create\"" "header = \"Content-Type: application/json\"" \
      "data = \"{\\\"Name\\\":\\\"s$i\\\",\\\"TaskTemplate\\\":{\\\"ContainerSpec\\\":{\\\"Image\\\":\\\"whoami\\\"},\\\"Networks\\\":[{\\\"Target\\\":\\\"$net\\\"}]},\\\"Mode\\\":{\\\"Replicated\\\":{\\\"Replicas\\\":1}}}\"" \
      "output = \"/dev/null\"" "write-out = \"%{http_code}\\n\"" >>"$config"
  done
  codes=$(curl -sS --max-time $((60 + to)) -K "$config")
  rm -f "$config"
  bad=$(awk '$1 != 201' <<<"$codes" | sort | uniq -c | paste -sd' ')
  [ -z "$bad" ] || die "creating s$from..s$to: HTTP codes other than 201: $bad"
  [ "$(wc -l <<<"$codes")" -eq $((to - from + 1)) ] || die "creating s$from..s$to: $(wc -l <<<"$codes") answers"
  wait_for $((120 + to / 2)) "$to running tasks" has_running "$to"
  wait_for 120 "every agent in sync" all_in_sync
}

# One add and one remove of a service on net1 (the most crowded overlay): "add remove
# add_bytes remove_bytes".
probe() {
  local name=probe$1 t0 t1 t2 b0 b1 b2 pid
  wait_for 120 "every agent in sync" all_in_sync
  b0=$(sent_bytes)
  t0=$(now)
  "$SK" --cluster "$C" service create --quiet --name "$name" --network net1 whoami >/dev/null
  t1=$(now)
  wait_for 60 "every agent in sync" all_in_sync
  b1=$(sent_bytes)
  pid=$(api -G http://swarmkit/tasks --data-urlencode "filters={\"service\":[\"$name\"]}" |
    jq -r '.[0].Status.ContainerStatus.PID')
  [ -d "/proc/$pid" ] || die "the task of $name is not running (pid $pid)"
  t2=$(now)
  "$SK" --cluster "$C" service rm "$name" >/dev/null
  gone() { [ ! -d "/proc/$pid" ] && all_in_sync; }
  wait_for 60 "$name's task to stop and every agent to sync" gone
  local t3 b3
  t3=$(now)
  b3=$(sent_bytes)
  b2=$b1
  echo "$(secs "$t0" "$t1") $(secs "$t2" "$t3") $((b1 - b0)) $((b3 - b2))"
}

# Median over ROUNDS probes: "add remove add_bytes remove_bytes".
probes() {
  local out=() r
  for r in $(seq "$ROUNDS"); do out+=("$(probe "$r")"); done
  local col
  for col in 1 2 3 4; do
    printf '%s\n' "${out[@]}" | awk -v c="$col" '{print $c}' | median
  done | paste -sd' '
}

bench_curve() {
  echo "== scale curve: 3 netns nodes, one-replica services with real tasks, $ROUNDS probes per level"
  "$SK" cluster up --name "$C" --nodes 3 >/dev/null
  ensure_net net1
  local base have=0 level t0 t1 rss0 idle0 line inits=()
  idle0=$(idle_cpu)
  rss0=$(agent_rss)
  base=$(probes)
  read -r a0 r0 ab0 rb0 <<<"$base"
  printf '%-9s %-10s %-10s %-9s %-10s %-9s %-12s %-12s %-11s %s\n' services "add (s)" "add ratio" \
    "rm (s)" "rm ratio" "s/1000" "bytes/add" "bytes/rm" "agent RSS" "MiB/1000 local"
  printf '%-9s %-10s %-10s %-9s %-10s %-9s %-12s %-12s %-11s %s\n' 0 "$a0" 1.00 "$r0" 1.00 - \
    "$ab0" "$rb0" "$rss0" -
  for level in $LEVELS; do
    local init0 init1
    init0=$(init_ticks)
    t0=$(now)
    fill $((have + 1)) "$level"
    t1=$(now)
    init1=$(init_ticks)
    local per
    per=$(awk -v s="$(secs "$t0" "$t1")" -v n=$((level - have)) 'BEGIN {printf "%.1f", s / n * 1000}')
    inits+=("$have→$level: $(awk -v a="$init0" -v b="$init1" -v t="$TCK" -v s="$(secs "$t0" "$t1")" \
      'BEGIN {printf "%.0f", 100 * (b - a) / t / s}')%")
    have=$level
    line=$(probes)
    read -r a r ab rb <<<"$line"
    local rss grow
    rss=$(agent_rss)
    grow=$(awk -v a="$rss" -v b="$rss0" -v n="$level" 'BEGIN {printf "%.1f", (a - b) / (n / 3 / 1000)}')
    printf '%-9s %-10s %-10s %-9s %-10s %-9s %-12s %-12s %-11s %s\n' "$level" "$a" "$(ratio "$a" "$a0")" \
      "$r" "$(ratio "$r" "$r0")" "$per" "$ab" "$rb" "$rss" "$grow"
  done
  local idle1 pss
  idle1=$(idle_cpu)
  # awk reads all of pgrep's output: head would close the pipe early, and pipefail end the run.
  pss=$(pgrep -f "__image whoami" | awk 'NR <= 20' | while read -r p; do
    awk '/^Pss:/ {print $2}' "/proc/$p/smaps_rollup" 2>/dev/null; done |
    awk '{s += $1; n++} END {if (n) printf "%.1f", s / n / 1024}')
  echo "idle CPU, manager + 3 agents over ${IDLE}s: ${idle0}% of a core at 0 services, ${idle1}% at $have (target < 1%)"
  echo "a task's own process (whoami): ${pss} MiB PSS"
  echo "this machine's init (pid 1, not ours) during each fill, % of a core: ${inits[*]}"
  "$SK" cluster down "$C" >/dev/null
}

bench_nodes() {
  echo "== $BIG_NODES netns nodes, $BIG_SERVICES services"
  local t0 t1
  t0=$(now)
  "$SK" cluster up --name "$C" --nodes "$BIG_NODES" >/dev/null
  t1=$(now)
  echo "cluster up, $BIG_NODES nodes: $(secs "$t0" "$t1") s (goal < 3 s)"
  ensure_net net1
  local first many
  first=$(probes)
  PER_NET=$((BIG_SERVICES + 1)) fill 1 "$BIG_SERVICES"
  many=$(probes)
  read -r a0 r0 ab0 rb0 <<<"$first"
  read -r a r ab rb <<<"$many"
  echo "add one, converged on all $BIG_NODES nodes: ${a0}s first, ${a}s with $BIG_SERVICES, ratio $(ratio "$a" "$a0")"
  echo "remove one: ${r0}s first, ${r}s with $BIG_SERVICES, ratio $(ratio "$r" "$r0")"
  echo "control-plane bytes (all nodes): add $ab0 first, $ab with $BIG_SERVICES; remove $rb0 first, $rb with $BIG_SERVICES"
  local idle
  idle=$(idle_cpu)
  echo "idle CPU, manager + $BIG_NODES agents over ${IDLE}s: ${idle}% of a core"
  "$SK" cluster down "$C" >/dev/null
}

case "${1:-all}" in
curve) bench_curve ;;
nodes) bench_nodes ;;
all) bench_curve; bench_nodes ;;
*) echo "usage: $0 [curve|nodes|all]" >&2; exit 2 ;;
esac
