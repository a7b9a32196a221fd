//! Talking to registries. (Skeleton: the oci helper fills this in.)

use crate::Credentials;

/// How this node trusts registries: docker's `insecure-registries` (plain HTTP allowed) and
/// the directory of per-registry CAs (`/etc/docker/certs.d`).
#[derive(Clone, Debug, Default)]
pub struct RegistryOptions {
    pub insecure: Vec<String>,
    pub certs_dir: std::path::PathBuf,
}

impl RegistryOptions {
    /// From `SWARMKIT_INSECURE_REGISTRIES` (comma-separated) and `SWARMKIT_REGISTRY_CERTS`,
    /// defaulting to `/etc/docker/certs.d`, plus `/etc/docker/daemon.json`'s list.
    pub fn from_env() -> RegistryOptions {
        RegistryOptions::default()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("{0}")]
    Other(String),
}

/// The manifest digest `image` names now (`sha256:...`), for pinning at service create.
pub async fn resolve_digest(
    _image: &str,
    _credentials: Option<&Credentials>,
    _opts: &RegistryOptions,
) -> Result<String, PullError> {
    Err(PullError::Other("not yet".into()))
}
