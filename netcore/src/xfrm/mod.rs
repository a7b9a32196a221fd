//! IPsec for encrypted overlay networks, programmed over xfrm netlink as Swarm does it.
//!
//! The VXLAN packets of an encrypted network travel in ESP transport mode with
//! `rfc4106(gcm(aes))` (16-byte key + 4-byte salt, 64-bit ICV). Per network and node pair:
//! - one inbound SA per key of the network's keyring (a node receives with every key), and
//!   one outbound SA with the primary key; each has its own SPI, derived from the network,
//!   both ends and the key's tag, so both ends compute the same SPI without talking;
//! - one outbound policy selecting UDP to the data port carrying this network's mark.
//!
//! The mark is set in the node namespace by an nftables `route` chain on output on the VXLAN
//! packets of the network's VNI (the inner packet's mark does not survive encapsulation across
//! namespaces), and the same table drops VXLAN packets for an encrypted VNI that arrive
//! without having gone through ESP (`meta secpath missing`): that needs nothing beyond
//! nftables, unlike the xt_u32 match Swarm relies on.
//!
//! Key material never appears in errors or logs: `Key`'s Debug prints its tag only and kernel
//! errors are reduced to their errno.
//!
//! - `plan`: keys, specs, owners, SPIs, and the state a spec wants, computed without the
//!   kernel;
//! - `kernel`: [`Ipsec`], which reconciles that state over xfrm netlink, and [`XfrmError`];
//! - `probe`: whether the kernel has ESP and AES-GCM at all.
//!
//! Everything public is re-exported here; the files name each other one way (`probe` ->
//! `kernel` -> `plan`), never this module.

mod kernel;
mod plan;
mod probe;

pub use kernel::{Ipsec, XfrmError};
pub use plan::{
    AEAD_ALG, ENCRYPTED_MTU, IpsecSpec, KEY_LEN, Key, NFT_TABLE, NetworkIpsec, Owner, Policy, Sa,
    mark_of, reqid_of, shared_reqid, spi, table_text,
};
pub use probe::probe;
