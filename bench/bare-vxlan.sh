#!/usr/bin/env bash
# Baseline for overlay throughput: the least a VXLAN overlay between two nodes can be. Two
# node namespaces on an underlay bridge (as swarmkit's netns nodes are), each with a vxlan
# device of the overlay's MTU holding an overlay address, peers programmed statically (FDB +
# permanent neighbour, no learning), and nothing else: no overlay bridge, no task veth, no
# netfilter. iperf3 runs in the node namespaces on the vxlan devices.
# Usage: bare-vxlan.sh up|down|addr N. Touches only namespaces named skbv.*.
set -euo pipefail
p=skbv
MTU=${MTU:-1450}
case "${1:-}" in
down)
  for ns in $(ip netns list | awk '{print $1}' | grep "^$p\." || true); do
    # A daemon started in the namespace (iperf3 -s -D) would outlive it.
    ip netns pids "$ns" | xargs -r kill
    ip netns del "$ns"
  done
  exit 0 ;;
addr) echo "10.254.0.1$2"; exit 0 ;;
up) ;;
*) echo "usage: $0 up|down|addr N" >&2; exit 2 ;;
esac
ip netns add $p.ul
ip -n $p.ul link add br0 type bridge
ip -n $p.ul link set br0 up
for i in 1 2; do
  n=$p.node$i
  ip netns add $n
  ip -n $p.ul link add p$i type veth peer name eth0 netns $n
  ip -n $p.ul link set p$i master br0 up
  ip -n $n addr add 192.168.0.1$i/24 dev eth0
  ip -n $n link set eth0 up; ip -n $n link set lo up
  ip -n $n link add vx address 02:42:0a:fe:00:1$i type vxlan id 4097 local 192.168.0.1$i \
    dstport 4789 nolearning
  ip -n $n link set vx mtu "$MTU" up
  ip -n $n addr add 10.254.0.1$i/24 dev vx
done
for i in 1 2; do
  j=$((3 - i))
  ip -n $p.node$i neigh add 10.254.0.1$j lladdr 02:42:0a:fe:00:1$j dev vx nud permanent
  bridge -n $p.node$i fdb add 02:42:0a:fe:00:1$j dev vx dst 192.168.0.1$j self permanent
done
