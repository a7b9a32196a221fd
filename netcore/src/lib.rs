//! netcore: the node-local dataplane. Everything here programs one node's kernel state
//! (inside network namespaces) declaratively: callers describe what should exist and each
//! module reconciles the kernel towards it, so applying twice is harmless.

pub mod dns;
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
