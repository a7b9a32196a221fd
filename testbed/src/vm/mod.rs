//! The machinery of whole-machine nodes (QEMU guests booted from a cached image, hosts from an
//! inventory), driven over SSH. Used by the qemu and ssh backends in crate::backend; nothing
//! here knows about the cluster's lifecycle.

pub mod cpio;
pub mod fingerprint;
pub mod host;
pub mod image;
pub mod inventory;
pub mod kernel;
pub mod progress;
pub mod qemu;

/// Orders "node2" before "node10".
pub fn natural(s: &str) -> (String, u64) {
    let digits: String = s.chars().rev().take_while(|c| c.is_ascii_digit()).collect();
    let n = digits
        .chars()
        .rev()
        .collect::<String>()
        .parse()
        .unwrap_or(0);
    (s[..s.len() - digits.len()].to_string(), n)
}
