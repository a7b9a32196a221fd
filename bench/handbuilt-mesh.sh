#!/usr/bin/env bash
# Baseline for `swarmkit cluster up`: the same 3-node mesh built by hand with `ip` and `nft`
# commands (underlay bridge, node namespaces, an ingress overlay sandbox per node with a
# bridge and a vxlan device created in the node and moved in, the ingress sandbox and its
# gateway link, peers' neighbour and FDB entries, the node's routing-mesh table).
# Usage: handbuilt-mesh.sh up|down. Touches only namespaces named skhb.*.
set -euo pipefail
p=skhb
case "${1:-}" in
down)
  for ns in $(ip netns list | awk '{print $1}' | grep "^$p\." || true); do ip netns del "$ns"; done
  exit 0 ;;
up) ;;
*) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
ip netns add $p.ul
ip -n $p.ul link add br0 type bridge
ip -n $p.ul link set br0 up
for i in 1 2 3; do
  n=$p.node$i sb=$p.node$i.sb is=$p.node$i.isb
  ip netns add $n; ip netns add $sb; ip netns add $is
  ip -n $p.ul link add p$i type veth peer name eth0 netns $n
  ip -n $p.ul link set p$i master br0 up
  ip -n $n addr add 192.168.0.1$i/24 dev eth0
  ip -n $n link set eth0 up; ip -n $n link set lo up
  ip -n $sb link add ov type bridge; ip -n $sb addr add 10.255.0.1/16 dev ov; ip -n $sb link set ov up
  ip -n $n link add vx type vxlan id 4096 local 192.168.0.1$i dstport 4789 nolearning proxy l2miss l3miss
  ip -n $n link set vx netns $sb
  ip -n $sb link set vx mtu 1450 master ov up
  ip -n $is link add eth0 type veth peer name ve$i netns $sb
  ip -n $sb link set ve$i master ov up
  ip -n $is addr add 10.255.0.$((1 + i))/16 dev eth0; ip -n $is link set eth0 up
  ip -n $n link add docker_gwbridge type veth peer name eth1 netns $is
  ip -n $n addr add 172.18.0.1/16 dev docker_gwbridge; ip -n $n link set docker_gwbridge up
  ip -n $is addr add 172.18.0.2/16 dev eth1; ip -n $is link set eth1 up
  for j in 1 2 3; do
    [ "$j" = "$i" ] && continue
    ip -n $sb neigh add 10.255.0.$((1 + j)) lladdr 02:42:0a:ff:00:0$((1 + j)) dev vx nud permanent
    bridge -n $sb fdb add 02:42:0a:ff:00:0$((1 + j)) dev vx dst 192.168.0.1$j self permanent
  done
  ip netns exec $n nft -f - <<NFT
table ip $p-ingress {
  chain prerouting { type nat hook prerouting priority dstnat; fib daddr type local tcp dport 9200 dnat to 172.18.0.2; }
  chain output { type nat hook output priority -100; fib daddr type local tcp dport 9200 dnat to 172.18.0.2; }
}
NFT
done
