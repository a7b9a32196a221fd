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
    /// Its healthcheck failed `retries` times in a row.
    Unhealthy {
        id: String,
        why: String,
    },
}
