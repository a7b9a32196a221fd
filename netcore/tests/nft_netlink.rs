//! The nftables load balancer's incremental batches sent as nf_tables netlink messages,
//! against the same batches sent through libnftables, in namespaces these tests create
//! (`sktest-<unique>-nftnl-...`, removed by testkit's guard). Needs root; skipped otherwise.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use netcore::lb::nft::NftLb;
use netcore::lb::{Frontend, LoadBalancer, Protocol, VirtualService};
use netcore::netns::NetNs;
use netcore::nft::ops::Op;
use netcore::nft::{NftBatch, Transport, run_nft};
use testkit::netns::Namespaces;

fn vip(mark: u32, vip: [u8; 4], backends: &[u8]) -> VirtualService {
    VirtualService {
        fwmark: mark,
        frontend: Frontend::Vip(vip.into()),
        backends: backends
            .iter()
            .map(|b| Ipv4Addr::new(10, 0, 0, *b))
            .collect(),
    }
}

fn port(mark: u32, proto: Protocol, port: u16, target: u16, backends: &[u8]) -> VirtualService {
    VirtualService {
        fwmark: mark,
        frontend: Frontend::Port {
            proto,
            port,
            target,
        },
        backends: backends
            .iter()
            .map(|b| Ipv4Addr::new(10, 0, 0, *b))
            .collect(),
    }
}

fn listing(ns: &NetNs) -> String {
    run_nft(ns, &["list", "table", "ip", "swarmkit"], None).expect("list the table")
}

/// One load balancer per transport, each in its namespace, changed in step.
struct Pair {
    netlink: NftLb,
    json: NftLb,
    netlink_ns: NetNs,
    json_ns: NetNs,
    desired: Vec<VirtualService>,
}

impl Pair {
    fn new(nss: &Namespaces) -> Pair {
        let make = |what: &str, transport| {
            let ns = NetNs::create(&nss.name(what)).expect("create namespace");
            let mut lb = NftLb::new(ns.clone());
            lb.set_transport(transport);
            (lb, ns)
        };
        let (netlink, netlink_ns) = make("netlink", Transport::Netlink);
        let (json, json_ns) = make("json", Transport::Libnftables);
        Pair {
            netlink,
            json,
            netlink_ns,
            json_ns,
            desired: Vec::new(),
        }
    }

    fn apply(&mut self, step: &str, desired: Vec<VirtualService>) {
        self.netlink.apply(&desired).expect(step);
        self.json.apply(&desired).expect(step);
        self.desired = desired;
        self.compare(step);
    }

    fn change(&mut self, step: &str, changes: Vec<(u32, Option<VirtualService>)>) {
        for (mark, svc) in &changes {
            self.desired.retain(|s| s.fwmark != *mark);
            self.desired.extend(svc.clone());
        }
        let full = self.desired.clone();
        let full = move || full.clone();
        self.netlink.apply_changes(&changes, &full).expect(step);
        self.json.apply_changes(&changes, &full).expect(step);
        self.compare(step);
    }

    fn compare(&self, step: &str) {
        let (by_netlink, by_json) = (listing(&self.netlink_ns), listing(&self.json_ns));
        assert_eq!(
            by_netlink, by_json,
            "after {step}: netlink (left) and libnftables (right) differ"
        );
    }
}

/// Every kind of incremental change, sent once as netlink messages and once through
/// libnftables: nft lists both tables identically after each step.
#[test]
fn netlink_and_libnftables_leave_identical_tables() {
    testkit::require_root!();
    let nss = Namespaces::new("nftnl-same");
    let mut pair = Pair::new(&nss);
    pair.apply(
        "the first apply (table made through libnftables on both sides)",
        vec![
            vip(256, [10, 1, 0, 1], &[2, 3]),
            port(300, Protocol::Tcp, 8000, 8080, &[2]),
        ],
    );
    pair.change(
        "adding VIP, published-port and backendless services",
        vec![
            (257, Some(vip(257, [10, 1, 0, 2], &[4, 5, 6]))),
            (301, Some(port(301, Protocol::Udp, 53, 5353, &[4, 7]))),
            (258, Some(vip(258, [10, 1, 0, 3], &[]))),
        ],
    );
    pair.change(
        "changing backends (the rotations move to the other offset)",
        vec![
            (256, Some(vip(256, [10, 1, 0, 1], &[3, 8]))),
            (300, Some(port(300, Protocol::Tcp, 8000, 8080, &[2, 9]))),
        ],
    );
    let listed = listing(&pair.netlink_ns);
    assert!(
        listed.contains("ct mark set numgen inc mod 2 offset 65536 dnat to ip daddr"),
        "{listed}"
    );
    pair.change(
        "changing them back (the rotations return to offset 0)",
        vec![
            (256, Some(vip(256, [10, 1, 0, 1], &[2, 3]))),
            (300, Some(port(300, Protocol::Tcp, 8000, 8080, &[2]))),
        ],
    );
    let listed = listing(&pair.netlink_ns);
    for shape in [
        "reject with tcp reset",
        "ct mark set numgen inc mod 3 dnat to ip daddr . ct mark map @backends",
        "meta l4proto udp ct mark set numgen inc mod 2 dnat to meta l4proto . udp dport . ct mark \
         map @port_backends:5353",
        "udp . 53 . 0x00000001 : 10.0.0.7",
        "10.1.0.3 : goto svc-258",
        "10.0.0.6 . 10.0.0.6",
    ] {
        assert!(listed.contains(shape), "no {shape:?} in:\n{listed}");
    }
    pair.change(
        "moving a VIP and emptying a published port",
        vec![
            (257, Some(vip(257, [10, 1, 0, 9], &[4, 5, 6]))),
            (301, Some(port(301, Protocol::Udp, 53, 5353, &[]))),
        ],
    );
    let mut whole = pair.desired.clone();
    whole.retain(|s| s.fwmark != 258);
    whole.push(vip(259, [10, 1, 0, 4], &[2, 4]));
    pair.apply(
        "a whole desired set against the existing table (a delta)",
        whole,
    );
    pair.change(
        "removing services (their backends' hairpin pairs go with the last user)",
        vec![(256, None), (300, None), (301, None)],
    );
    pair.change(
        "a freed mark taken again in one change",
        vec![
            (257, None),
            (257, Some(port(257, Protocol::Tcp, 443, 8443, &[5]))),
        ],
    );
}

/// A refused op names its object and leaves nothing of its transaction behind.
#[test]
fn a_refused_netlink_batch_names_the_object_and_applies_nothing() {
    testkit::require_root!();
    let nss = Namespaces::new("nftnl-refused");
    let ns = NetNs::create(&nss.name("lb")).expect("create namespace");
    let mut lb = NftLb::new(ns.clone());
    lb.set_transport(Transport::Netlink);
    let first = vec![vip(256, [10, 1, 0, 1], &[2]), vip(257, [10, 1, 0, 2], &[3])];
    lb.apply(&first).unwrap();
    // Behind the driver's back: the element its next delete expects.
    run_nft(
        &ns,
        &[
            "delete",
            "element",
            "ip",
            "swarmkit",
            "backends",
            "{ 10.1.0.1 . 0 }",
        ],
        None,
    )
    .unwrap();
    let before = listing(&ns);
    let err = lb
        .apply_changes(&[(256, None)], &|| first[1..].to_vec())
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&format!(
            "deleting element 10.1.0.1 . 0 from backends in table ip swarmkit in namespace {}: \
             No such file or directory (ENOENT)",
            ns.name()
        )),
        "{text}"
    );
    assert_eq!(
        listing(&ns),
        before,
        "the ops before the refused one (the VIP's dispatch element, its chain) were undone"
    );
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// What undoes `make` (a batch that only adds): its elements and chains deleted in reverse
/// order, so no element outlives the chain it points to (a chain goes with its rules).
fn undo(make: &NftBatch) -> NftBatch {
    let mut undo = NftBatch::new(make.table());
    for op in make.ops().expect("typed").into_iter().rev() {
        match op {
            Op::AddElement { set, key, .. } => undo.delete_element(set, key.clone()),
            Op::AddChain(chain) => undo.delete_chain(chain),
            Op::AddRule { .. } => {}
            other => panic!("not an add: {other}"),
        }
    }
    undo
}

/// Prints the median time of one incremental batch (one service with one backend added) on
/// a table already holding 1 and 2400 services, through each transport: the batch alone, and
/// the driver's whole `apply_changes` (planning, then the batch), which alternates with the
/// service's removal and so runs after the removal's conntrack dump has walked the node's
/// conntrack table. A measurement, not a test:
/// `cargo test -p netcore --test nft_netlink -- --ignored --nocapture`.
#[test]
#[ignore]
fn incremental_batch_cost() {
    testkit::require_root!();
    let nss = Namespaces::new("nftnl-cost");
    let service = |i: u32| {
        vip(
            256 + i,
            Ipv4Addr::from(0x0a64_0000 + i).octets(),
            &[2 + (i % 200) as u8],
        )
    };
    const RUNS: usize = 21;
    for held in [1u32, 2400] {
        for (name, transport) in [
            ("libnftables", Transport::Libnftables),
            ("netlink", Transport::Netlink),
        ] {
            let ns = NetNs::create(&nss.name(&format!("{name}-{held}"))).unwrap();
            let mut lb = NftLb::new(ns.clone());
            lb.set_transport(transport);
            let base: Vec<_> = (0..held).map(service).collect();
            lb.apply(&base).unwrap();
            let extra = service(held);
            let add = [(extra.fwmark, Some(extra.clone()))];
            let make = lb.plan_changes(&add).unwrap().unwrap().make;
            let mut batch = Vec::new();
            for _ in 0..RUNS {
                let t = Instant::now();
                make.run_via(&ns, transport).unwrap();
                batch.push(t.elapsed());
                undo(&make).run_via(&ns, transport).unwrap();
            }
            let full = || base.clone();
            let mut driver = Vec::new();
            for _ in 0..RUNS {
                let t = Instant::now();
                lb.apply_changes(&add, &full).unwrap();
                driver.push(t.elapsed());
                lb.apply_changes(&[(extra.fwmark, None)], &full).unwrap();
            }
            eprintln!(
                "{held} services, {name}: batch median {:?}, apply_changes median {:?} \
                 ({RUNS} runs each)",
                median(batch),
                median(driver),
            );
            lb.teardown().unwrap();
        }
    }
}
