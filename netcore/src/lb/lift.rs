//! How a VIP's replies find their way back through the network sandbox without every bridged
//! packet paying for it.
//!
//! The sandbox balances a VIP by rewriting the destination of the client's packets (they
//! reach its IP stack: the VIP is an address of its bridge). The backend answers the client
//! directly, across the bridge, and something must restore the VIP as the reply's source.
//! br_netfilter would do it by running every bridged packet through the sandbox's IP hooks
//! and conntrack, plain task-to-task traffic included: on these hosts that was the largest
//! cost between swarmkit's overlay and a bare VXLAN pair (see the README's overlay
//! benchmark). Instead, br_netfilter stays off in the sandbox, and only the replies of
//! connections the sandbox rewrote are lifted off the bridge into its IP stack, where
//! conntrack restores the VIP and routes them on to the client:
//!
//! - each packet the sandbox rewrote and forwards to a backend is marked (IP family, where
//!   conntrack knows it was rewritten), and the bridge's output hook, seeing that mark as the
//!   packet leaves, records the reply's tuple in a set and clears the mark;
//! - the bridge's prerouting hook lifts a frame whose tuple is in the set: addressed to the
//!   bridge itself, it goes up to the sandbox's IP stack instead of across the bridge.
//!
//! Every other bridged packet meets one set lookup and no conntrack.
//!
//! Because the sandbox no longer sees a task's direct connections, it cannot keep a VIP
//! connection from reusing the tuple a direct one left in TIME_WAIT at the backend (the
//! client picks its port per destination, and the VIP and the backend's address are two).
//! The backend then refuses the SYN, and the client waits a second to retry: with a client
//! alternating between a task and its VIP, `bench/run.sh conn` fell from ~2000 to 17
//! connections a second. So the sandbox gives a VIP connection a source port below the
//! kernel's ephemeral range (1024-32767; the client's address is kept), which a client's
//! direct connections never use, and forgets a closed one's tuple after 10 s instead of
//! 120 s: ~31700 ports per client, backend and port, ~3000 new connections a second. A
//! backend accepts a port reused while its socket is still in TIME_WAIT, because the client's
//! timestamps toward one VIP only grow. A recorded tuple lives
//! as long as its connection: it is refreshed by every packet the client sends, for 5 days
//! (conntrack's own timeout for an established TCP connection) while the sandbox's conntrack
//! holds the connection established, for 15 s while a TCP connection opens or closes, and
//! for 130 s for UDP, so a closed connection's tuple goes soon after it closes and the set
//! holds about 15 s worth of a client's new connections.
//! The bridge keeps a fixed address ([`bridge_mac`]), because lifted frames are re-addressed
//! to it and a bridge otherwise takes the lowest address among its ports, which changes as
//! tasks come and go.
//!
//! Only the nftables driver balances this way; IPVS, which rewrites replies in its own
//! hooks, still needs br_netfilter in the sandbox.

use crate::lb::LbError;
use crate::netns::NetNs;

/// Both tables' name (one in the ip family, one in the bridge family).
const TABLE: &str = "swarmkit-lift";

/// The packet mark the IP side leaves for the bridge side (and the bridge side clears): one
/// for a connection conntrack holds established, one for anything else. No other mark is
/// used in a network sandbox.
const MARK_ESTABLISHED: u32 = 0x5c11_0001;
const MARK_BRIEF: u32 = 0x5c11_0002;
/// An established connection's tuple lives as long as conntrack keeps an idle established
/// TCP connection (`nf_conntrack_tcp_timeout_established`); one opening or closing a little
/// longer than its handshake's or its close's retransmissions take (each of the client's
/// packets refreshes it); UDP's as long as conntrack keeps a stream.
const ESTABLISHED_SECS: u64 = 432_000;
const TCP_BRIEF_SECS: u64 = 15;
const UDP_SECS: u64 = 130;
/// Conntrack's time left above which a connection counts as established: only an
/// established TCP connection is given more than a day.
const ESTABLISHED_ABOVE: &str = "1d";
/// The source ports a VIP connection is given: below the kernel's default ephemeral range
/// (32768-60999, which tasks keep), so no direct connection of a client shares one.
const VIP_PORTS: &str = "1024-32767";
/// After the load balancer's own source NAT (masquerading a published port or a hairpin,
/// priority srcnat): a connection it NATed keeps that.
const VIP_PORTS_PRIORITY: i32 = 101;
/// How long the sandbox's conntrack keeps a closed connection's tuple (the kernel's 120 s
/// would hold each VIP port that long).
const TIME_WAIT_SECS: &str = "10";
/// At most this many replies' tuples at once; the kernel's default conntrack table is
/// smaller, so a sandbox runs out of conntrack entries first.
const MAX_TUPLES: u32 = 1 << 20;

/// The bridge's fixed address: locally administered, derived from the sandbox's namespace
/// name, so each node's sandbox for a network has its own (they meet over VXLAN) and a
/// restarted agent sets the same one again.
pub fn bridge_mac(sandbox_name: &str) -> [u8; 6] {
    // FNV-1a: stable across releases, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in sandbox_name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let b = h.to_be_bytes();
    // 0x06: unicast, locally administered, and never Docker's 02:42 task prefix.
    [0x06, b[3], b[4], b[5], b[6], b[7]]
}

/// The two tables, as one nft transaction: `ip swarmkit-lift` marks, `bridge swarmkit-lift`
/// records and lifts. Their rules are rewritten and the set is declared again, which keeps
/// its tuples: a restarted agent leaves the connections in flight alone.
pub fn ruleset(bridge_mac: [u8; 6]) -> String {
    let mac = bridge_mac
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    let reply = "ip daddr . meta l4proto . th dport . ip saddr . th sport";
    let tuple = "ip saddr . meta l4proto . th sport . ip daddr . th dport";
    let rewritten = "ct direction original ct status dnat ct expiration";
    let record = |mark: u32, proto: &str, secs: u64| {
        format!(
            "add rule bridge {TABLE} record meta mark {mark:#x} meta mark set 0 \
             meta l4proto {proto} update @replies {{ {reply} timeout {secs}s }}\n"
        )
    };
    format!(
        "table ip {TABLE} {{\n\
         \tchain rewritten {{ type filter hook forward priority 0; policy accept; }}\n\
         \tchain ports {{ type nat hook postrouting priority {VIP_PORTS_PRIORITY}; policy accept; }}\n\
         }}\n\
         flush chain ip {TABLE} rewritten\n\
         flush chain ip {TABLE} ports\n\
         add rule ip {TABLE} ports ct status dnat meta l4proto tcp snat to ip saddr : {VIP_PORTS}\n\
         add rule ip {TABLE} ports ct status dnat meta l4proto udp snat to ip saddr : {VIP_PORTS}\n\
         add rule ip {TABLE} rewritten {rewritten} > {ESTABLISHED_ABOVE} meta mark set {MARK_ESTABLISHED:#x}\n\
         add rule ip {TABLE} rewritten {rewritten} <= {ESTABLISHED_ABOVE} meta mark set {MARK_BRIEF:#x}\n\
         table bridge {TABLE} {{\n\
         \tset replies {{\n\
         \t\ttype ipv4_addr . inet_proto . inet_service . ipv4_addr . inet_service\n\
         \t\tsize {MAX_TUPLES}\n\
         \t\tflags dynamic,timeout\n\
         \t}}\n\
         \tchain record {{ type filter hook output priority 0; policy accept; }}\n\
         \tchain lift {{ type filter hook prerouting priority 0; policy accept; }}\n\
         }}\n\
         flush chain bridge {TABLE} record\n\
         flush chain bridge {TABLE} lift\n\
         {}{}{}\
         add rule bridge {TABLE} lift {tuple} @replies meta pkttype set host ether daddr set {mac}\n",
        record(MARK_ESTABLISHED, "tcp", ESTABLISHED_SECS),
        record(MARK_BRIEF, "tcp", TCP_BRIEF_SECS),
        record(MARK_BRIEF, "udp", UDP_SECS),
    )
}

/// Installs the lift in `sandbox`, then turns br_netfilter off there (where it is loaded at
/// all) and shortens conntrack's TIME_WAIT: in that order, so a failure leaves replies still
/// reaching conntrack the old way, and a retry completes it.
pub fn install(sandbox: &NetNs, bridge_mac: [u8; 6]) -> Result<(), LbError> {
    crate::nft::apply_nft(sandbox, &ruleset(bridge_mac))?;
    if sandbox
        .sysctl("net/bridge/bridge-nf-call-iptables")
        .is_ok_and(|v| v != "0")
    {
        sandbox.set_sysctl("net/bridge/bridge-nf-call-iptables", "0")?;
    }
    sandbox.set_sysctl(
        "net/netfilter/nf_conntrack_tcp_timeout_time_wait",
        TIME_WAIT_SECS,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridge_addresses_are_unicast_local_and_differ_per_sandbox() {
        let a = bridge_mac("sk-c.node1.1-abc");
        let b = bridge_mac("sk-c.node2.1-abc");
        assert_ne!(a, b);
        assert_eq!(a, bridge_mac("sk-c.node1.1-abc"));
        assert_eq!(a[0] & 0x01, 0, "unicast");
        assert_eq!(a[0] & 0x02, 0x02, "locally administered");
    }

    #[test]
    fn the_lift_readdresses_frames_to_the_bridge() {
        let r = ruleset([0x06, 0, 0, 0, 0, 0x0a]);
        assert!(r.contains("ether daddr set 06:00:00:00:00:0a"), "{r}");
        assert!(r.contains("type filter hook prerouting"), "{r}");
    }
}
