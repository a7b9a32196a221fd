//! A VIP balanced in a network sandbox may pick the very task that connected. The packet
//! must then go back out the task's own bridge port (hairpin) with another source, or the
//! task would see a SYN from itself and drop it. Both drivers keep the set of VIP backends
//! as `source . destination` pairs and masquerade a packet that matches one.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use nftables::schema::{SetType, SetTypeValue};
use nftables::stmt::Statement;

use super::api::{Frontend, ServiceMap, VirtualService};
use crate::nft::NftBatch;
use crate::nft::expr::{concat, eq, payload, set_ref};
use crate::nft::ops::{Key, KeyPart};

const SET: &str = "hairpin";

/// The set, and its rule in the table's `postrouting` nat chain (which must exist).
pub fn skeleton(b: &mut NftBatch) {
    b.add_set(
        SET,
        SetTypeValue::Concatenated(vec![SetType::Ipv4Addr, SetType::Ipv4Addr].into()),
    );
    b.add_rule(
        "postrouting",
        vec![
            eq(
                concat(vec![payload("ip", "saddr"), payload("ip", "daddr")]),
                set_ref(SET),
            ),
            Statement::Masquerade(None),
        ],
    );
}

fn backends(services: &ServiceMap) -> BTreeSet<Ipv4Addr> {
    services
        .values()
        .filter(|s| matches!(s.frontend, Frontend::Vip(_)))
        .flat_map(|s| s.backends.iter().copied())
        .collect()
}

fn pair(addr: Ipv4Addr) -> Key {
    Key(vec![KeyPart::Addr(addr), KeyPart::Addr(addr)])
}

/// Elements for backends that left first, then for those that came.
pub fn diff(b: &mut NftBatch, old: &ServiceMap, new: &ServiceMap) {
    let (before, after) = (backends(old), backends(new));
    removed(b, &before, &after);
    added(b, &before, &after);
}

/// How many VIP services list each backend: a backend's pair stays while any does.
pub type Refs = std::collections::HashMap<Ipv4Addr, u32>;
/// What a partial change does to `Refs`.
pub type RefChanges = std::collections::BTreeMap<Ipv4Addr, i64>;

pub fn refs(services: &ServiceMap) -> Refs {
    let mut refs = Refs::new();
    for s in services
        .values()
        .filter(|s| matches!(s.frontend, Frontend::Vip(_)))
    {
        for b in &s.backends {
            *refs.entry(*b).or_insert(0) += 1;
        }
    }
    refs
}

/// Counts `svc`'s backends in (`by` 1) or out (`by` -1).
pub fn count(changes: &mut RefChanges, svc: &VirtualService, by: i64) {
    if matches!(svc.frontend, Frontend::Vip(_)) {
        for b in &svc.backends {
            *changes.entry(*b).or_insert(0) += by;
        }
    }
}

/// For a partial change: elements for backends no service listed before (into
/// `added_to`) and that none lists after (into `removed_to`).
pub fn split_counted(
    added_to: &mut NftBatch,
    removed_to: &mut NftBatch,
    refs: &Refs,
    changes: &RefChanges,
) {
    for (addr, by) in changes {
        let before = i64::from(refs.get(addr).copied().unwrap_or(0));
        match (before > 0, before + by > 0) {
            (false, true) => added_to.add_element(SET, pair(*addr), None),
            (true, false) => removed_to.delete_element(SET, pair(*addr)),
            _ => {}
        }
    }
}

/// `refs` once `changes` are applied.
pub fn settle(refs: &mut Refs, changes: &RefChanges) {
    for (addr, by) in changes {
        let n = i64::from(refs.get(addr).copied().unwrap_or(0)) + by;
        if n > 0 {
            refs.insert(*addr, n as u32);
        } else {
            refs.remove(addr);
        }
    }
}

/// Elements for backends that came (into `added`) and that left (into `removed`).
pub fn split(
    added_to: &mut NftBatch,
    removed_to: &mut NftBatch,
    old: &ServiceMap,
    new: &ServiceMap,
) {
    let (before, after) = (backends(old), backends(new));
    added(added_to, &before, &after);
    removed(removed_to, &before, &after);
}

fn added(b: &mut NftBatch, before: &BTreeSet<Ipv4Addr>, after: &BTreeSet<Ipv4Addr>) {
    for came in after.difference(before) {
        b.add_element(SET, pair(*came), None);
    }
}

fn removed(b: &mut NftBatch, before: &BTreeSet<Ipv4Addr>, after: &BTreeSet<Ipv4Addr>) {
    for gone in before.difference(after) {
        b.delete_element(SET, pair(*gone));
    }
}
