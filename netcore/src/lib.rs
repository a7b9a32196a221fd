//! netcore: the node-local dataplane. Everything here programs one node's kernel state
//! (inside network namespaces) declaratively: callers describe what should exist and each
//! module reconciles the kernel towards it, so applying twice is harmless.
//!
//! # What lives where
//!
//! - `netns`: named network namespaces, and running code inside one.
//! - `link` (`link/neigh.rs`: neighbour and FDB messages): a typed layer over rtnetlink.
//! - `nft`: the nft runner: one transaction inside a namespace through libnftables
//!   (`nft/libnft.rs`) or the `nft` binary; the batch builder (`nft/batch.rs`) and rule
//!   shorthands (`nft/expr.rs`) the tables below are written with.
//! - `journal`: what was changed in a namespace the cluster does not own, noted before each
//!   change.
//! - `underlay`: the switch and links that join nodes.
//! - `lb`: service load balancing behind one trait (`lb/api.rs`), with an IPVS driver
//!   (`lb/ipvs.rs`, messages in `lb/ipvs_msg.rs`, socket in `lb/genl.rs`) and an nftables one
//!   (`lb/nft/`: the driver, and its table in `rules.rs`); `lb/mod.rs` is the factory.
//! - `xfrm`: IPsec for encrypted overlays: the plan (`xfrm/plan.rs`, pure), applying it over
//!   xfrm netlink (`xfrm/kernel.rs`), and the kernel's capabilities (`xfrm/probe.rs`).
//! - `dns`: the embedded resolver, one view per task.
//! - `overlay`: a network's sandbox, bridge and VXLAN device on a node, and its peers.
//! - `ingress`: the node half of the routing mesh; `hostport`: host-mode published ports.
//! - `undo`: teardown of what the journal lists, by a process that did not make it.
//!
//! # Which way the imports run
//!
//! Each module names only modules on a lower line; nothing names one on its own line or
//! above, so there is no circle:
//!
//! ```text
//! undo                                   journal, nft, xfrm
//! overlay  ingress  hostport             lb, link, nft, journal
//! lb  xfrm  underlay  dns                nft, journal, link
//! nft  link  journal                     netns
//! netns                                  (nothing)
//! ```
//!
//! Inside a directory module the files name each other one way too, and never the
//! `mod.rs` that declares them (a facade or a factory, which names them): the nft runner
//! sends what `batch` builds, the lb drivers share `api` and `hairpin`, and `xfrm/probe`
//! uses `kernel`, which applies `plan`. A namespace keeps what the layers above attach to
//! it (the runner's libnftables context) by type, so `netns` names none of them.

pub mod dns;
pub mod gateway;
pub mod hostport;
pub mod ingress;
pub mod journal;
pub mod lb;
pub mod link;
pub mod netns;
pub mod nft;
pub mod overlay;
pub mod underlay;
pub mod undo;
pub mod xfrm;
