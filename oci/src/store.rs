//! A node's image store, content-addressed as containerd's is:
//!
//! - `blobs/sha256/<hex>`: manifests, configs and compressed layers, each written to a
//!   temporary file while its digest is checked and then renamed into place;
//! - `layers/<diffid hex>/`: a layer unpacked (whiteouts in overlayfs's form) into a
//!   temporary directory and renamed into place, so pulls of one image running at once (the
//!   tasks of one service on a node) are safe: the second finds the work done;
//! - `images/<digest hex>.json`: an image's config, layers and size, by the digest its
//!   reference resolved to (an index's digest for a multi-platform image, as docker pins it;
//!   the platform manifest's digest names it too);
//! - `refs/<registry>/<repository>/<tag>`: the digest a tag named at its last pull.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use futures::StreamExt;
use oci_client::manifest::{OciDescriptor, OciManifest};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::registry::Remote;
use crate::{Credentials, ImageRef, PullError, RegistryOptions};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Healthcheck {
    /// Docker's form: `["CMD", ...]`, `["CMD-SHELL", "..."]` or `["NONE"]`.
    pub test: Vec<String>,
    pub interval_ns: i64,
    pub timeout_ns: i64,
    pub start_period_ns: i64,
    pub retries: i64,
}

/// What the image's config says a container runs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
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

impl ImageConfig {
    /// From an image config blob (OCI's, or docker's with its `Healthcheck`).
    pub fn from_json(raw: &[u8]) -> Result<(ImageConfig, Vec<String>), String> {
        let oci = oci_spec::image::ImageConfiguration::from_reader(raw)
            .map_err(|e| format!("not an image config: {e}"))?;
        let diff_ids = oci.rootfs().diff_ids().clone();
        let mut config = ImageConfig::default();
        if let Some(c) = oci.config() {
            config.entrypoint = c.entrypoint().clone().unwrap_or_default();
            config.cmd = c.cmd().clone().unwrap_or_default();
            config.env = c.env().clone().unwrap_or_default();
            config.working_dir = c.working_dir().clone().unwrap_or_default();
            config.user = c.user().clone().unwrap_or_default();
            config.stop_signal = c.stop_signal().clone().filter(|s| !s.is_empty());
            let mut ports = c.exposed_ports().clone().unwrap_or_default();
            ports.sort();
            config.exposed_ports = ports;
        }
        // Docker's `Healthcheck`, which OCI's config has no field for.
        #[derive(Deserialize)]
        struct Raw {
            config: Option<RawConfig>,
        }
        #[derive(Deserialize)]
        struct RawConfig {
            #[serde(rename = "Healthcheck")]
            healthcheck: Option<RawHealthcheck>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct RawHealthcheck {
            #[serde(default)]
            test: Option<Vec<String>>,
            #[serde(default)]
            interval: i64,
            #[serde(default)]
            timeout: i64,
            #[serde(default)]
            start_period: i64,
            #[serde(default)]
            retries: i64,
        }
        let raw: Raw =
            serde_json::from_slice(raw).map_err(|e| format!("image config Healthcheck: {e}"))?;
        config.healthcheck = raw.config.and_then(|c| c.healthcheck).map(|h| Healthcheck {
            test: h.test.unwrap_or_default(),
            interval_ns: h.interval,
            timeout_ns: h.timeout,
            start_period_ns: h.start_period,
            retries: h.retries,
        });
        Ok((config, diff_ids))
    }
}

#[derive(Clone, Debug)]
pub struct Image {
    /// The manifest's digest (`sha256:...`): the one its reference resolved to, so an index's
    /// for a multi-platform image, as docker pins it.
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

/// What `images/<hex>.json` holds.
#[derive(Serialize, Deserialize)]
struct Record {
    digest: String,
    /// The platform image manifest's digest (the same as `digest` without an index).
    manifest: String,
    config_digest: String,
    config: ImageConfig,
    /// DiffIDs, lowest first; each is unpacked in `layers/<hex>`.
    diff_ids: Vec<String>,
    size: u64,
}

pub struct Store {
    root: PathBuf,
}

static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

fn hex_of(digest: &str) -> Result<&str, String> {
    match digest.split_once(':') {
        Some(("sha256", h)) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => Ok(h),
        _ => Err(format!("{digest}: not a sha256 digest")),
    }
}

impl Store {
    pub fn open(root: &Path) -> std::io::Result<Store> {
        for d in ["blobs/sha256", "layers", "images", "refs", "tmp"] {
            std::fs::create_dir_all(root.join(d))?;
        }
        // What a crash left half-written. Only old entries: another process may be pulling
        // into this store now.
        let stale = std::time::Duration::from_secs(3600);
        for e in std::fs::read_dir(root.join("tmp"))?.flatten() {
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > stale));
            if old {
                let p = e.path();
                let _ = std::fs::remove_dir_all(&p).or_else(|_| std::fs::remove_file(&p));
            }
        }
        Ok(Store {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where blob `digest` is (whether or not it is there yet).
    pub fn blob_path(&self, digest: &str) -> Option<PathBuf> {
        let h = hex_of(digest).ok()?;
        Some(self.root.join("blobs/sha256").join(h))
    }

    fn layer_dir(&self, diff_id: &str) -> Option<PathBuf> {
        Some(self.root.join("layers").join(hex_of(diff_id).ok()?))
    }

    fn tag_path(&self, r: &ImageRef) -> Option<PathBuf> {
        let tag = r.tag.as_deref()?;
        Some(
            self.root
                .join("refs")
                .join(&r.registry)
                .join(&r.repository)
                .join(tag),
        )
    }

    /// A fresh name under `tmp/` (on the store's filesystem, so a rename is atomic).
    fn temp_path(&self, what: &str) -> PathBuf {
        let n = TEMP_SEQ.fetch_add(1, Ordering::Relaxed);
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        self.root
            .join("tmp")
            .join(format!("{what}-{}-{n}-{t}", std::process::id()))
    }

    /// Writes `data` to `path` atomically (temporary file, fsync, rename).
    fn write_atomic(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        use std::io::Write;
        let tmp = self.temp_path("write");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        drop(f);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::rename(&tmp, path)
    }

    /// The image `reference` names if it is stored (a digest in it must match).
    pub fn get(&self, reference: &str) -> Option<Image> {
        let r = ImageRef::parse(reference).ok()?;
        let digest = match &r.digest {
            Some(d) => d.clone(),
            None => std::fs::read_to_string(self.tag_path(&r)?)
                .ok()?
                .trim()
                .to_string(),
        };
        self.image_by_digest(&digest)
    }

    /// The stored image of manifest (or index) `digest`, with every layer unpacked.
    pub fn image_by_digest(&self, digest: &str) -> Option<Image> {
        let h = hex_of(digest).ok()?;
        let text = std::fs::read(self.root.join("images").join(format!("{h}.json"))).ok()?;
        let rec: Record = serde_json::from_slice(&text).ok()?;
        let layers: Option<Vec<PathBuf>> = rec.diff_ids.iter().map(|d| self.layer_dir(d)).collect();
        let layers = layers?;
        if !layers.iter().all(|l| l.is_dir()) {
            return None;
        }
        Some(Image {
            digest: digest.to_string(),
            config: rec.config,
            layers,
            size: rec.size,
        })
    }

    pub async fn pull(
        &self,
        reference: &str,
        credentials: Option<&Credentials>,
        opts: &RegistryOptions,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<Image, PullError> {
        let r = ImageRef::parse(reference).map_err(PullError::BadReference)?;
        // Content named by digest cannot change: no need to ask the registry.
        if let Some(d) = &r.digest
            && let Some(img) = self.image_by_digest(d)
        {
            self.record_tag(&r, d)?;
            return Ok(img);
        }
        let remote = Remote::connect(&r, credentials, opts).await?;
        let corrupt = |message: String| PullError::Corrupt {
            reference: r.to_string(),
            message,
        };

        let (top_raw, top_digest) = remote.manifest_raw(&remote.reference).await?;
        let top: OciManifest =
            serde_json::from_slice(&top_raw).map_err(|e| corrupt(format!("manifest: {e}")))?;
        if let Some(img) = self.image_by_digest(&top_digest) {
            self.record_tag(&r, &top_digest)?;
            return Ok(img);
        }
        self.put_blob(&top_digest, &top_raw)?;
        let (manifest, manifest_digest) = match top {
            OciManifest::Image(m) => (m, top_digest.clone()),
            OciManifest::ImageIndex(index) => {
                let digest = oci_client::client::linux_amd64_resolver(&index.manifests)
                    .ok_or_else(|| PullError::NoMatchingPlatform {
                        reference: r.to_string(),
                    })?;
                let (raw, digest) = remote
                    .manifest_raw(&remote.reference.clone_with_digest(digest))
                    .await?;
                self.put_blob(&digest, &raw)?;
                match serde_json::from_slice(&raw)
                    .map_err(|e| corrupt(format!("manifest {digest}: {e}")))?
                {
                    OciManifest::Image(m) => (m, digest),
                    OciManifest::ImageIndex(_) => {
                        return Err(corrupt(format!("{digest}: an index inside an index")));
                    }
                }
            }
        };

        let config_path = self
            .fetch_blob(&remote, &manifest.config, &mut |_| {})
            .await?;
        let config_raw = std::fs::read(&config_path)?;
        let (config, diff_ids) = ImageConfig::from_json(&config_raw).map_err(corrupt)?;
        if diff_ids.len() != manifest.layers.len() {
            return Err(corrupt(format!(
                "the manifest has {} layers, the config {} diff_ids",
                manifest.layers.len(),
                diff_ids.len()
            )));
        }

        let total: u64 = manifest.layers.iter().map(|l| l.size.max(0) as u64).sum();
        let mut done = 0u64;
        progress(Progress { done, total });
        for (layer, diff_id) in manifest.layers.iter().zip(&diff_ids) {
            let dir = self
                .layer_dir(diff_id)
                .ok_or_else(|| corrupt(format!("layer diff_id {diff_id}")))?;
            if dir.is_dir() {
                done += layer.size.max(0) as u64;
                progress(Progress { done, total });
                continue;
            }
            let base = done;
            let blob = self
                .fetch_blob(&remote, layer, &mut |n| {
                    progress(Progress {
                        done: base + n,
                        total,
                    })
                })
                .await?;
            done = base + layer.size.max(0) as u64;
            self.unpack(&blob, diff_id, &dir).await?;
            progress(Progress { done, total });
        }

        let rec = Record {
            digest: top_digest.clone(),
            manifest: manifest_digest.clone(),
            config_digest: manifest.config.digest.clone(),
            config,
            diff_ids,
            size: total,
        };
        let json = serde_json::to_vec_pretty(&rec).expect("record serialises");
        for d in [&manifest_digest, &top_digest] {
            let h = hex_of(d).map_err(corrupt)?;
            self.write_atomic(&self.root.join("images").join(format!("{h}.json")), &json)?;
        }
        self.record_tag(&r, &top_digest)?;
        self.image_by_digest(&top_digest)
            .ok_or_else(|| PullError::Other(format!("{r}: stored, but not found after")))
    }

    /// Points `r`'s tag (if it has one) at `digest`: the last pull wins.
    fn record_tag(&self, r: &ImageRef, digest: &str) -> Result<(), PullError> {
        if let Some(p) = self.tag_path(r) {
            self.write_atomic(&p, digest.as_bytes())?;
        }
        Ok(())
    }

    /// Stores `data` as blob `digest` after checking it is.
    fn put_blob(&self, digest: &str, data: &[u8]) -> Result<PathBuf, PullError> {
        let path = self.blob_path(digest).ok_or_else(|| PullError::Corrupt {
            reference: digest.into(),
            message: "not a sha256 digest".into(),
        })?;
        let actual = format!("sha256:{}", hex::encode(Sha256::digest(data)));
        if actual != digest {
            return Err(PullError::Corrupt {
                reference: digest.into(),
                message: format!("content has digest {actual}"),
            });
        }
        if !path.exists() {
            self.write_atomic(&path, data)?;
        }
        Ok(path)
    }

    /// Blob `desc`, from the store or fetched (its digest checked while it is written, then
    /// renamed into place); `fetched` hears of the bytes so far.
    async fn fetch_blob(
        &self,
        remote: &Remote,
        desc: &OciDescriptor,
        fetched: &mut (dyn FnMut(u64) + Send),
    ) -> Result<PathBuf, PullError> {
        let path = self
            .blob_path(&desc.digest)
            .ok_or_else(|| PullError::Corrupt {
                reference: remote.image.to_string(),
                message: format!("blob digest {}", desc.digest),
            })?;
        if path.exists() {
            return Ok(path);
        }
        let tmp = self.temp_path("blob");
        let result = async {
            let mut stream = remote.blob(desc).await?;
            let mut file = tokio::fs::File::create(&tmp).await?;
            let mut hasher = Sha256::new();
            let (mut n, mut told) = (0u64, 0u64);
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| PullError::Unreachable {
                    registry: remote.image.registry.clone(),
                    cause: format!("fetching {}: {e}", desc.digest),
                    hint:
                        "the registry went away during the pull, or sent other content; pull again"
                            .into(),
                })?;
                hasher.update(&chunk);
                file.write_all(&chunk).await?;
                n += chunk.len() as u64;
                if n - told >= 256 * 1024 {
                    fetched(n);
                    told = n;
                }
            }
            file.sync_all().await?;
            let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
            if actual != desc.digest {
                return Err(PullError::Corrupt {
                    reference: remote.image.to_string(),
                    message: format!("blob {} arrived as {actual}", desc.digest),
                });
            }
            fetched(n);
            std::fs::rename(&tmp, &path)?;
            Ok(path.clone())
        }
        .await;
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    /// Unpacks `blob` into `dir` (`layers/<diffid hex>`) through a temporary directory,
    /// checking the uncompressed content against `diff_id`.
    async fn unpack(&self, blob: &Path, diff_id: &str, dir: &Path) -> Result<(), PullError> {
        let tmp = self.temp_path("layer");
        let (blob, diff_id, dir) = (blob.to_path_buf(), diff_id.to_string(), dir.to_path_buf());
        let layer = diff_id.clone();
        let unpack_err = move |cause: String| PullError::Unpack {
            layer: layer.clone(),
            cause,
        };
        let err = unpack_err.clone();
        tokio::task::spawn_blocking(move || {
            let result = (|| {
                std::fs::create_dir(&tmp).map_err(|e| err(format!("{}: {e}", tmp.display())))?;
                let f = std::fs::File::open(&blob)
                    .map_err(|e| err(format!("{}: {e}", blob.display())))?;
                let actual =
                    crate::unpack::unpack_layer(f, &tmp).map_err(|e| err(e.to_string()))?;
                if actual != diff_id {
                    return Err(err(format!(
                        "its content has digest {actual}, not its diff_id"
                    )));
                }
                // The files reach the disk before the rename makes the layer visible.
                let d = std::fs::File::open(&tmp).map_err(|e| err(e.to_string()))?;
                // SAFETY: a valid open file descriptor.
                if unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&d)) } != 0 {
                    return Err(err(format!("syncfs: {}", std::io::Error::last_os_error())));
                }
                match std::fs::rename(&tmp, &dir) {
                    Ok(()) => Ok(()),
                    // Another pull of the same layer finished first: its copy is as good.
                    Err(_) if dir.is_dir() => {
                        let _ = std::fs::remove_dir_all(&tmp);
                        Ok(())
                    }
                    Err(e) => Err(err(format!("{}: {e}", dir.display()))),
                }
            })();
            if result.is_err() {
                let _ = std::fs::remove_dir_all(&tmp);
            }
            result
        })
        .await
        .map_err(|e| unpack_err(format!("the unpacking thread failed: {e}")))?
    }

    /// The images stored, by digest, with the tags that name them now.
    pub fn list(&self) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        if let Ok(dir) = std::fs::read_dir(self.root.join("images")) {
            for e in dir.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(h) = name.strip_suffix(".json") {
                    out.entry(format!("sha256:{h}")).or_default();
                }
            }
        }
        let refs = self.root.join("refs");
        let mut stack = vec![refs.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if let (Ok(digest), Ok(rel)) =
                    (std::fs::read_to_string(&p), p.strip_prefix(&refs))
                {
                    let rel = rel.to_string_lossy();
                    if let Some((name, tag)) = rel.rsplit_once('/') {
                        out.entry(digest.trim().to_string())
                            .or_default()
                            .push(format!("{name}:{tag}"));
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_config_from_docker_json() {
        let raw = br#"{
            "architecture": "amd64", "os": "linux",
            "config": {
                "Entrypoint": ["/entry.sh"], "Cmd": ["serve", "--port", "80"],
                "Env": ["PATH=/bin", "A=b"], "WorkingDir": "/srv", "User": "1000:1000",
                "StopSignal": "SIGQUIT", "ExposedPorts": {"443/tcp": {}, "80/tcp": {}},
                "Healthcheck": {"Test": ["CMD-SHELL", "wget -q -O- localhost"],
                    "Interval": 5000000000, "Timeout": 2000000000, "StartPeriod": 1000000000,
                    "Retries": 3}
            },
            "rootfs": {"type": "layers", "diff_ids": ["sha256:aa", "sha256:bb"]}
        }"#;
        let (c, diff_ids) = ImageConfig::from_json(raw).unwrap();
        assert_eq!(diff_ids, vec!["sha256:aa", "sha256:bb"]);
        assert_eq!(c.entrypoint, vec!["/entry.sh"]);
        assert_eq!(c.cmd, vec!["serve", "--port", "80"]);
        assert_eq!(c.env, vec!["PATH=/bin", "A=b"]);
        assert_eq!(c.working_dir, "/srv");
        assert_eq!(c.user, "1000:1000");
        assert_eq!(c.stop_signal.as_deref(), Some("SIGQUIT"));
        assert_eq!(c.exposed_ports, vec!["443/tcp", "80/tcp"]);
        let h = c.healthcheck.unwrap();
        assert_eq!(h.test, vec!["CMD-SHELL", "wget -q -O- localhost"]);
        assert_eq!(
            (h.interval_ns, h.timeout_ns, h.start_period_ns, h.retries),
            (5_000_000_000, 2_000_000_000, 1_000_000_000, 3)
        );

        let (c, _) = ImageConfig::from_json(
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#,
        )
        .unwrap();
        assert_eq!(c, ImageConfig::default());
        assert!(ImageConfig::from_json(b"[]").is_err());
    }
}
