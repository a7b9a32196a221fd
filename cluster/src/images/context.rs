//! Who a built-in image's server is: the task it runs as, which the agent passes in the
//! task's environment under these names.

/// The task's 25-character ID.
pub const ENV_TASK_ID: &str = "SWARMKIT_TASK_ID";
/// The task's name, `SERVICE.SLOT.ID`.
pub const ENV_TASK_NAME: &str = "SWARMKIT_TASK_NAME";
/// The task's addresses as CIDRs, comma-separated.
pub const ENV_TASK_ADDRS: &str = "SWARMKIT_TASK_ADDRS";

/// Who the server is, as the agent describes the task.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TaskContext {
    /// 25-character task id.
    pub id: String,
    /// e.g. `search.1.<id>`.
    pub name: String,
    /// CIDRs, e.g. `10.0.0.7/24`.
    pub addrs: Vec<String>,
    pub hostname: String,
}

impl TaskContext {
    /// From the task's environment (see `ENV_TASK_ID`) and the UTS hostname.
    pub fn from_env() -> TaskContext {
        let var = |k| std::env::var(k).unwrap_or_default();
        let addrs = var(ENV_TASK_ADDRS)
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_string)
            .collect();
        let hostname = nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default();
        TaskContext {
            id: var(ENV_TASK_ID),
            name: var(ENV_TASK_NAME),
            addrs,
            hostname,
        }
    }
}
