//! cluster: the control plane. The manager keeps desired state in a durable store and serves
//! the Docker Engine API subset; agents fetch their node's plan and apply it through netcore.
//! Machines to run it on (namespaces, QEMU guests, ssh hosts) are the `testbed` crate's, which
//! depends on this one; nothing here knows of it.
//!
//! What lives where, bottom up; a module imports only from the layers below it, and within a
//! layer only from the modules listed before it:
//!
//! - Foundations: `ids` (object IDs), `names` (the one validator of cluster, service and
//!   network names), `paths` (a cluster's files and kernel object names), `wait` (the one
//!   poll-until-deadline), `tasklog` (task output on the wire), `keys` (keyrings of encrypted
//!   networks), `sealed` (payloads encrypted at rest).
//! - Records: `model` (what the store keeps), `store` (the durable, transactional store).
//! - Deciding: `ipam` (subnets, VNIs, addresses), `policy` (restart and update policies read
//!   from a spec), `capabilities` (a task's capability set from its spec), `orchestrator`
//!   (services into tasks: scheduling, restarts, rolling updates, node loss), `plan` (what
//!   one node must make true), `dispatch` (every node's plan kept current from each commit,
//!   and what each agent has not received).
//! - The channel: `protocol` (what manager and agents say to each other), `client` (the HTTP
//!   client agents and the lifecycle use), `images` (the built-in images tasks run),
//!   `registry` (how this cluster reaches image registries: their settings' environment, and
//!   digest resolution from the namespace registries are reachable in), `raft` (managers
//!   replicating the store: its log, its state machine, the transport between managers).
//! - The two processes: `manager` (API, store, dispatcher, background loops) and `agent`
//!   (registration, plan poll, dataplane and tasks on its node). Neither imports the other:
//!   what passes between them is `protocol`'s and `plan`'s.
//!
//! In a module directory, the files never import their `mod.rs` (`dispatch`'s tests aside),
//! and import one another one way, as each `mod.rs` says. The `mod.rs` of `agent`, `images`
//! and `orchestrator` only declares, documents and re-exports; `manager`'s also routes and
//! serves, and `dispatch`'s is the dispatcher.

pub mod agent;
pub mod capabilities;
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
pub mod pki;
pub mod plan;
pub mod policy;
pub mod protocol;
pub mod raft;
pub mod registry;
pub mod sealed;
pub mod store;
pub mod tasklog;
pub mod wait;
