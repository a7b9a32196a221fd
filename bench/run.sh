#!/usr/bin/env bash
# swarmkit's benchmarks. Every figure is a ratio against a baseline measured in the same run,
# interleaved, because these machines are noisy. Needs root and ./scripts/setup.
# Usage: bench/run.sh [up|conn|overlay|scale|walkthrough|qemu|encrypted|all]   (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."
SK=${SWARMKIT:-target/release/swarmkit}
[ -x "$SK" ] || cargo build --release --quiet
C=bench$$
N=${N:-2000}          # connections per ab run
ROUNDS=${ROUNDS:-3}   # interleaved rounds; the median is reported

cleanup() { "$SK" cluster down "$C" >/dev/null 2>&1 || true; bench/handbuilt-mesh.sh down; bench/bare-vxlan.sh down; }
trap cleanup EXIT

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
rps() { awk '/Requests per second/ {print $4}'; }

bench_up() {
  echo "== cluster up (3 nodes) vs the same mesh hand-built with ip/nft"
  hyperfine --style basic --runs 10 --export-json /tmp/sk-up.json \
    --prepare "$SK cluster down $C >/dev/null 2>&1 || true; bench/handbuilt-mesh.sh down" \
    "$SK cluster up --name $C --nodes 3" "bench/handbuilt-mesh.sh up" | grep -E "Time|±" || true
  "$SK" cluster down "$C" >/dev/null 2>&1 || true
  bench/handbuilt-mesh.sh down
  python3 - <<'PY'
import json
r = json.load(open("/tmp/sk-up.json"))["results"]
sk, hb = r[0]["median"], r[1]["median"]
print(f"cluster up: swarmkit {sk:.3f} s, hand-built {hb:.3f} s, ratio {sk / hb:.2f} (median of 10)")
PY
}

bench_conn() {
  echo "== new connections per second (ab -c1 -n $N), interleaved, $ROUNDS rounds"
  "$SK" cluster up --name "$C" --nodes 3 >/dev/null
  "$SK" --cluster "$C" network create --driver overlay app >/dev/null
  # One replica on node2, published; a client task on node1 on the same network.
  "$SK" --cluster "$C" service create --name es --network app -p 9200:9200 \
    --constraint node.hostname==node2 elasticsearch:2 >/dev/null
  "$SK" --cluster "$C" service create --name client --network app \
    --constraint node.hostname==node1 whoami >/dev/null
  local vip task
  vip=$("$SK" --cluster "$C" exec client.1 -- dig +short es)
  task=$("$SK" --cluster "$C" exec client.1 -- dig +short tasks.es)
  local direct=() viar=() mesh=()
  for _ in $(seq "$ROUNDS"); do
    direct+=("$("$SK" --cluster "$C" exec client.1 -- ab -q -n "$N" -c 1 "http://$task:9200/" | rps)")
    viar+=("$("$SK" --cluster "$C" exec client.1 -- ab -q -n "$N" -c 1 "http://$vip:9200/" | rps)")
    mesh+=("$("$SK" --cluster "$C" node exec node1 -- ab -q -n "$N" -c 1 "http://127.0.0.1:9200/" | rps)")
  done
  local d v m
  d=$(printf '%s\n' "${direct[@]}" | median)
  v=$(printf '%s\n' "${viar[@]}" | median)
  m=$(printf '%s\n' "${mesh[@]}" | median)
  echo "direct to the task across nodes: $d conn/s (runs: ${direct[*]})"
  echo "through the VIP:                 $v conn/s (runs: ${viar[*]})  ratio $(ratio "$v" "$d")  (target >= 0.95)"
  echo "through the ingress mesh:        $m conn/s (runs: ${mesh[*]})  ratio $(ratio "$m" "$d")  (target >= 0.85)"
  "$SK" cluster down "$C" >/dev/null
}

bench_overlay() {
  echo "== TCP throughput task to task across nodes (iperf3 -t 5), interleaved, $ROUNDS rounds:"
  echo "   the underlay alone (veth + bridge), a bare VXLAN pair, swarmkit's overlay"
  bench/bare-vxlan.sh down
  bench/bare-vxlan.sh up
  "$SK" cluster up --name "$C" --nodes 2 >/dev/null
  "$SK" --cluster "$C" network create --driver overlay app >/dev/null
  "$SK" --cluster "$C" service create --name srv --network app \
    --constraint node.hostname==node2 whoami >/dev/null
  "$SK" --cluster "$C" service create --name client --network app \
    --constraint node.hostname==node1 whoami >/dev/null
  local task
  task=$("$SK" --cluster "$C" exec client.1 -- dig +short tasks.srv)
  "$SK" --cluster "$C" exec srv.1 -- iperf3 -s -D >/dev/null
  ip netns exec skbv.node2 iperf3 -s -D >/dev/null
  gbps() { "$@" -t 5 -O 1 -f m | awk '/receiver/ {printf "%.2f", $7 / 1000}'; }
  local under=() bare=() sk=()
  for _ in $(seq "$ROUNDS"); do
    under+=("$(gbps ip netns exec skbv.node1 iperf3 -c 192.168.0.12)")
    bare+=("$(gbps ip netns exec skbv.node1 iperf3 -c "$(bench/bare-vxlan.sh addr 2)")")
    sk+=("$(gbps "$SK" --cluster "$C" exec client.1 -- iperf3 -c "$task")")
  done
  local u b s
  u=$(printf '%s\n' "${under[@]}" | median)
  b=$(printf '%s\n' "${bare[@]}" | median)
  s=$(printf '%s\n' "${sk[@]}" | median)
  echo "underlay (veth + bridge): $u Gbit/s (runs: ${under[*]})"
  echo "bare VXLAN pair:          $b Gbit/s (runs: ${bare[*]})  ratio to underlay $(ratio "$b" "$u")"
  echo "swarmkit overlay:         $s Gbit/s (runs: ${sk[*]})  ratio to bare VXLAN $(ratio "$s" "$b")  (target >= 0.9)"
  "$SK" cluster down "$C" >/dev/null
  bench/bare-vxlan.sh down
}

# One-replica services with real tasks, grown to 5000 on one cluster, and 50 nodes: see
# bench/scale.sh (it runs its own clusters).
bench_scale() {
  SWARMKIT="$SK" bench/scale.sh all
}

bench_walkthrough() {
  echo "== the routing walkthrough, end to end (cluster up, 26 commands, cluster down)"
  hyperfine --style basic --runs 3 "$SK walkthrough routing" | grep -E "Time|±" || true
}

bench_qemu() {
  echo "== qemu backend (TCG): three guests ready vs three bare kernel boots, interleaved"
  local tiny=/tmp/sk-bench-tiny.cpio dir=/tmp/sk-bench-tiny
  rm -rf "$dir" && mkdir -p "$dir/bin"
  cp "$(command -v busybox)" "$dir/bin/busybox"
  printf '#!/bin/busybox sh\n/bin/busybox poweroff -f\n' > "$dir/init" && chmod +x "$dir/init"
  (cd "$dir" && find . | busybox cpio -o -H newc 2>/dev/null) > "$tiny"
  # One guest first: its SSH-ready time, and the host's TSC rate gets measured and kept.
  # The baseline (vm bare-boot) boots the same kernel, machine, CPU and kernel parameters as
  # the guests, with an init that powers off at once.
  local one
  one=$("$SK" cluster up --name "$C" --backend qemu --nodes 1 2>&1 | awk '/ssh up/ {print $1}')
  "$SK" cluster down "$C" >/dev/null
  local bare=() ready=() t0 t1
  for _ in $(seq "$ROUNDS"); do
    bare+=("$("$SK" vm bare-boot --initrd "$tiny" --count 3)")
    t0=$(date +%s.%N)
    "$SK" cluster up --name "$C" --backend qemu --nodes 3 >/dev/null 2>&1
    t1=$(date +%s.%N)
    "$SK" cluster down "$C" >/dev/null
    ready+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}')")
  done
  local b r
  b=$(printf '%s\n' "${bare[@]}" | median)
  r=$(printf '%s\n' "${ready[@]}" | median)
  echo "one guest, cluster up to SSH up: ${one%s} s"
  echo "three bare kernel boots:  ${b} s (runs: ${bare[*]})"
  echo "three guests ready:       ${r} s (runs: ${ready[*]})  ratio $(ratio "$r" "$b")  (target: under 10 s)"
  local w0 w1
  w0=$(date +%s.%N)
  "$SK" walkthrough routing --backend qemu >/dev/null
  w1=$(date +%s.%N)
  echo "walkthrough routing on qemu: $(awk -v a="$w0" -v b="$w1" 'BEGIN {printf "%.1f", b - a}') s  (target: under 60 s)"
}

bench_encrypted() {
  echo "== qemu guests (TCG): encrypted (ESP, AES-GCM) vs plain overlay, TCP throughput and RTT, interleaved, $ROUNDS rounds"
  "$SK" cluster up --name "$C" --backend qemu --nodes 2 >/dev/null
  "$SK" --cluster "$C" network create --driver overlay --opt encrypted sec >/dev/null
  "$SK" --cluster "$C" network create --driver overlay plain >/dev/null
  # A server task on node2 and a client task on node1, both on both networks (eth0: sec,
  # eth1: plain), so each measurement crosses between the guests.
  "$SK" --cluster "$C" service create --name srv --network sec --network plain \
    --constraint node.hostname==node2 whoami >/dev/null
  "$SK" --cluster "$C" service create --name client --network sec --network plain \
    --constraint node.hostname==node1 whoami >/dev/null
  local sec plain
  sec=$("$SK" --cluster "$C" exec srv.1 -- ip -4 addr show dev eth0 | awk '/inet / {sub("/.*", "", $2); print $2}')
  plain=$("$SK" --cluster "$C" exec srv.1 -- ip -4 addr show dev eth1 | awk '/inet / {sub("/.*", "", $2); print $2}')
  "$SK" --cluster "$C" exec srv.1 -- iperf3 -s -D >/dev/null
  mbps() { "$SK" --cluster "$C" exec client.1 -- iperf3 -c "$1" -t 5 -f m | awk '/receiver/ {print $7}'; }
  rtt() { "$SK" --cluster "$C" exec client.1 -- ping -c 20 -i 0.05 -q "$1" | awk -F/ '/round-trip/ {print $4}'; }
  local tput_e=() tput_p=() rtt_e=() rtt_p=()
  for _ in $(seq "$ROUNDS"); do
    tput_p+=("$(mbps "$plain")")
    tput_e+=("$(mbps "$sec")")
    rtt_p+=("$(rtt "$plain")")
    rtt_e+=("$(rtt "$sec")")
  done
  local tp te rp re
  tp=$(printf '%s\n' "${tput_p[@]}" | median)
  te=$(printf '%s\n' "${tput_e[@]}" | median)
  rp=$(printf '%s\n' "${rtt_p[@]}" | median)
  re=$(printf '%s\n' "${rtt_e[@]}" | median)
  echo "TCP plain overlay:     $tp Mbit/s (runs: ${tput_p[*]})"
  echo "TCP encrypted overlay: $te Mbit/s (runs: ${tput_e[*]})  ratio $(ratio "$te" "$tp")"
  echo "RTT plain overlay:     $rp ms (runs: ${rtt_p[*]})"
  echo "RTT encrypted overlay: $re ms (runs: ${rtt_e[*]})  ratio $(ratio "$re" "$rp")"
  "$SK" cluster down "$C" >/dev/null
}

case "${1:-all}" in
up) bench_up ;;
conn) bench_conn ;;
overlay) bench_overlay ;;
scale) bench_scale ;;
walkthrough) bench_walkthrough ;;
qemu) bench_qemu ;;
encrypted) bench_encrypted ;;
all) bench_up; bench_conn; bench_overlay; bench_scale; bench_walkthrough; bench_qemu; bench_encrypted ;;
*) echo "usage: $0 [up|conn|overlay|scale|walkthrough|qemu|encrypted|all]" >&2; exit 2 ;;
esac
