//! The machinery of whole-machine nodes (QEMU guests booted from a cached image, hosts from an
//! inventory), driven over SSH. Used by the qemu and ssh backends in crate::backend; nothing
//! here knows about the cluster's lifecycle.
//!
//! Which way the imports run: [`host`] (the `__vmhost` daemon) -> [`reach`] (waiting for a
//! node) and [`qemu`] (booting guests) and [`inventory`] (hosts) -> [`node`] (a node's record);
//! [`qemu`] and [`host`] -> [`image`] (the guest image) -> [`cpio`], [`fingerprint`].
//! [`progress`] stands alone.

pub mod cpio;
pub mod fingerprint;
pub mod host;
pub mod image;
pub mod inventory;
pub mod node;
pub mod progress;
pub mod qemu;
pub mod reach;
