//! What a task's watchers (its process's exit, its readiness, its healthcheck) tell the
//! agent's loop, which owns the tasks.

pub enum Event {
    Exited {
        id: String,
        code: Option<i32>,
    },
    Ready {
        id: String,
    },
    NotReady {
        id: String,
        err: String,
    },
    /// The node's pull of `image` ended.
    Pulled {
        image: String,
        result: Result<std::sync::Arc<oci::Image>, String>,
    },
    /// A `docker exec` session wants its command: made in the task by the loop that owns the
    /// tasks, or why not.
    Exec {
        task_id: String,
        argv: Vec<String>,
        env: Vec<String>,
        reply: tokio::sync::oneshot::Sender<Result<tokio::process::Command, String>>,
    },
    /// Its healthcheck failed `retries` times in a row.
    Unhealthy {
        id: String,
        why: String,
    },
}
