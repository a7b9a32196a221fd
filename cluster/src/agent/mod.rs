//! The agent: one per node. It registers with the manager, long-polls its node's plan, makes
//! the node's kernel state and task processes match it through netcore, and reports back
//! what it observed. Every step is a reconcile, so a missed event is repaired by the next plan.
//!
//! `run` (its life: start-up, the plan poll, the loop) drives `node` (applying a plan in
//! order), which drives `dataplane` (kernel state of networks and the mesh, from what `derive`
//! computes from the plan) and `tasks` (task processes, through `process` with `files`,
//! `adopt`, `health` and `logs`; `process` puts each in its own `cgroup`). `config` reads the
//! environment. Imports run down that list, never back. `init` is not the agent's: it is what
//! a task with `--init` runs under (`swarmkit __init`).

mod adopt;
mod cgroup;
mod config;
mod credentials;
mod dataplane;
mod derive;
mod event;
mod exec;
mod files;
mod health;
mod images;
mod init;
mod logs;
mod node;
mod process;
mod replica;
mod run;
mod spawner;
mod tasks;

pub use cgroup::remove_cluster as remove_cluster_cgroups;
pub use config::{
    ENV_LB, ENV_MANAGER_TCP, ENV_MESH, ENV_NODE_ADDR, ENV_NODE_NS, ENV_RESOLV_CONF, NodeNs,
};
pub use init::run as run_init;
pub use process::write_files;
pub use run::{ENV_JOIN_TOKEN, run};
pub use spawner::serve as run_spawner;
