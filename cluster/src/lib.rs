//! cluster: the control plane. The manager keeps desired state in a durable store and serves
//! the Docker Engine API subset; agents fetch their node's plan and apply it through netcore.

pub mod agent;
pub mod client;
pub mod dispatch;
pub mod ids;
pub mod images;
pub mod ipam;
pub mod keys;
pub mod manager;
pub mod model;
pub mod names;
pub mod orchestrator;
pub mod paths;
pub mod plan;
pub mod policy;
pub mod protocol;
pub mod store;
pub mod tasklog;
pub mod wait;
