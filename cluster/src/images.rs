//! Built-in images, served by the swarmkit binary itself so walkthroughs need no registry.
//! (Stub; implementation pending.)

pub const BUILTIN: &[&str] = &["drupal", "postgres", "elasticsearch", "whoami"];

/// Runs the built-in image's server in the current (task) namespaces until killed. The task's
/// identity comes from the environment the agent sets: SWARMKIT_TASK_ID, SWARMKIT_TASK_NAME,
/// SWARMKIT_TASK_ADDRS (comma-separated CIDRs) and the UTS hostname.
pub async fn run(_image: &str) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
