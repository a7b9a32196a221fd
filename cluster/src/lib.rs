//! cluster: the control plane. The manager keeps desired state in a durable store and serves
//! the Docker Engine API subset; agents fetch their node's plan and apply it through netcore.

pub mod ids;
pub mod images;
pub mod lifecycle;
pub mod model;
pub mod paths;
pub mod store;
pub mod ipam;
pub mod orchestrator;
pub mod plan;
pub mod manager;
pub mod protocol;
pub mod client;
pub mod agent;
