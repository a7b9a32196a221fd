//! Booting cluster nodes as QEMU guests.
//!
//! QEMU runs in the host's root namespace, but its underlay NIC is a tap device that we open
//! *inside the cluster's underlay namespace* and hand to QEMU as an inherited fd: the tap lives
//! on the cluster's bridge, never in the root namespace, and vanishes when QEMU exits. Keeping
//! QEMU itself in the root namespace puts its user-mode NIC's SSH port forward
//! (`hostfwd=tcp:127.0.0.1:PORT-:22`, `restrict=on`) on the host's loopback, where the CLI and
//! the `__vmhost` daemon can reach it with ordinary sockets.
//!
//! One job per file: `cmdline` (how QEMU is invoked: binary, machine, CPU, memory, kernel
//! parameters), `tsc` (the host's TSC rate, which microvm guests are told), `accel` (KVM or
//! TCG, by a trial boot), `launch` (one node's guest booted, and booted again after a kill),
//! `bench` (bare boots, the floor a node's userspace starts from). A guest's record is
//! [`super::node`]; waiting until it answers, [`super::reach`].

mod accel;
mod bench;
mod cmdline;
mod launch;
mod tsc;

pub use accel::{ENV_ACCEL, detect_accel};
pub use bench::bare_boots;
pub use launch::{BootSpec, boot, spawn};

#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("qemu-system-x86_64 is not installed (Debian: apt-get install qemu-system-x86)")]
    NoQemu,
    #[error("creating tap {name} in the underlay namespace: {source}")]
    Tap {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    NetNs(#[from] netcore::netns::NetNsError),
    #[error(transparent)]
    Link(#[from] netcore::link::LinkError),
    #[error(
        "{hung} bare guest(s) had not powered off after {after:?}: the initrd's /init must power off"
    )]
    BareBootHung {
        hung: usize,
        after: std::time::Duration,
    },
    #[error("a bare guest's QEMU failed: {0}")]
    BareBootFailed(String),
}

type Result<T, E = QemuError> = std::result::Result<T, E>;

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> QemuError {
    let what = what.into();
    move |source| QemuError::Io { what, source }
}
