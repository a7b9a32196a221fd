//! OCI images on a node, as dockerd and containerd handle them for a Swarm task.
//!
//! - `reference`: image references as docker reads them (Docker Hub defaults, tags, digests).
//! - `auth`: registry credentials the docker way: `~/.docker/config.json`, and the base64url
//!   `X-Registry-Auth` that `--with-registry-auth` sends with a service.
//! - `registry`: talking to a registry (oci-client): trust from
//!   `/etc/docker/certs.d/HOST:PORT/ca.crt`, plain HTTP only for registries named insecure,
//!   digest resolution for pinning at service create.
//! - `store`: a node's content-addressed store: blobs by digest, layers unpacked once (with
//!   whiteouts in overlayfs's form), images by manifest digest; pulls are atomic and resumable.
//! - `bundle`: a task's OCI runtime bundle (`config.json` through oci-spec) over the image's
//!   layers.
//! - `runtime`: running a bundle under crun.

mod auth;
pub mod bundle;
mod reference;
mod registry;
pub mod runtime;
mod store;
mod unpack;

pub use auth::{
    Credentials, decode_registry_auth, docker_config_credentials, encode_registry_auth,
};
pub use reference::ImageRef;
pub use registry::{
    ENV_INSECURE_REGISTRIES, ENV_REGISTRY_CERTS, PullError, RegistryOptions, resolve_digest,
};
pub use store::{Healthcheck, Image, ImageConfig, Progress, Store};
