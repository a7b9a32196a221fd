//! Built-in images, served by the swarmkit binary itself so walkthroughs need no registry: the
//! agent starts `swarmkit __image <image>` inside a task's namespaces and these servers answer
//! the way the real images do in the tutorials (drupal's install redirect, elasticsearch 2's
//! banner, a postgres port, traefik/whoami's echo).
//!
//! `reference` reads image names (which built-in a reference means, docker's display form);
//! `server` runs one: the accept loop, postgres's handshake and the HTTP side over `http`'s
//! wire format, answering with what `replies` makes of a request and the task's `context`.
//! Imports run server -> replies -> http, context, reference.

mod context;
mod http;
mod reference;
mod replies;
mod server;

pub use context::{ENV_TASK_ADDRS, ENV_TASK_ID, ENV_TASK_NAME, TaskContext};
pub use reference::{BUILTIN, Builtin, canonical, resolve, unknown_image_error};
pub use replies::{es_cluster_uuid, es_node_name, es_node_name_for};
pub use server::{ImageError, run, serve_on, serve_until};
