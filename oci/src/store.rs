//! A node's image store. (Skeleton: the oci helper fills this in.)

use std::path::{Path, PathBuf};

use crate::{Credentials, PullError, RegistryOptions};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Healthcheck {
    /// Docker's form: `["CMD", ...]`, `["CMD-SHELL", "..."]` or `["NONE"]`.
    pub test: Vec<String>,
    pub interval_ns: i64,
    pub timeout_ns: i64,
    pub start_period_ns: i64,
    pub retries: i64,
}

/// What the image's config says a container runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
    pub stop_signal: Option<String>,
    /// `80/tcp` form.
    pub exposed_ports: Vec<String>,
    pub healthcheck: Option<Healthcheck>,
}

#[derive(Clone, Debug)]
pub struct Image {
    /// The manifest's digest (`sha256:...`).
    pub digest: String,
    pub config: ImageConfig,
    /// Unpacked layer directories, lowest first.
    pub layers: Vec<PathBuf>,
    /// Bytes of compressed layers.
    pub size: u64,
}

/// How far a pull is: bytes of layers fetched of the total.
#[derive(Clone, Copy, Debug, Default)]
pub struct Progress {
    pub done: u64,
    pub total: u64,
}

pub struct Store {
    root: PathBuf,
}

impl Store {
    pub fn open(root: &Path) -> std::io::Result<Store> {
        Ok(Store {
            root: root.to_path_buf(),
        })
    }

    /// The image `reference` names if it is stored (a digest in it must match).
    pub fn get(&self, _reference: &str) -> Option<Image> {
        let _ = &self.root;
        None
    }

    pub async fn pull(
        &self,
        _reference: &str,
        _credentials: Option<&Credentials>,
        _opts: &RegistryOptions,
        _progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<Image, PullError> {
        Err(PullError::Other("not yet".into()))
    }
}
