//! Nodes that are whole machines: QEMU guests booted from a cached image, driven over SSH.

pub mod cpio;
pub mod fingerprint;
pub mod image;
