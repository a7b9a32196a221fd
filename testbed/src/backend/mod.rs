//! The node backends, one file each, every one an implementation of [`crate::NodeBackend`];
//! [`machine`] is what the backends whose nodes are whole machines reached over SSH share.

pub mod machine;
pub mod netns;
pub mod qemu;
pub mod ssh;
