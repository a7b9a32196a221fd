//! The machinery of whole-machine nodes (QEMU guests booted from a cached image, hosts from an
//! inventory), driven over SSH. Used by the qemu and ssh backends in crate::backend; nothing
//! here knows about the cluster's lifecycle.
//!
//! What lives where, from the top down (a module imports only those below it):
//! - [`host`]: the `__vmhost` daemon, one SSH session per node, starting its agent;
//! - [`qemu`]: booting guests (command line, accelerator, launch, bare-boot bench);
//!   [`inventory`]: the ssh backend's hosts; [`reach`]: waiting until a node answers;
//! - [`node`]: a node's record in the run directory; [`image`]: the guest image (kernel,
//!   initramfs, volume), built from [`cpio`] archives and hashed through [`fingerprint`];
//! - [`progress`]: the per-node progress bars of `cluster up`, on its own.

pub mod cpio;
pub mod fingerprint;
pub mod host;
pub mod image;
pub mod inventory;
pub mod node;
pub mod progress;
pub mod qemu;
pub mod reach;
pub mod relay;
