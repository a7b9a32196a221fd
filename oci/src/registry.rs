//! Talking to registries, through oci-client (the distribution protocol is its job): which
//! registries may be reached over plain HTTP, whose CAs to trust, and docker's messages when a
//! pull cannot go on.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Once;

use oci_client::Client;
use oci_client::client::{
    Certificate, CertificateEncoding, ClientConfig, ClientProtocol, SizedStream,
};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;

use crate::{Credentials, ImageRef};

/// Where docker keeps per-registry CAs, `HOST:PORT/ca.crt`.
pub const DEFAULT_CERTS_DIR: &str = "/etc/docker/certs.d";
/// dockerd's configuration, read for its `insecure-registries`.
pub const DAEMON_JSON: &str = "/etc/docker/daemon.json";

/// How this node trusts registries: docker's `insecure-registries` (plain HTTP allowed) and
/// the directory of per-registry CAs (`/etc/docker/certs.d`).
#[derive(Clone, Debug, Default)]
pub struct RegistryOptions {
    pub insecure: Vec<String>,
    pub certs_dir: std::path::PathBuf,
}

/// Registries reached over plain HTTP (dockerd's `insecure-registries`), comma-separated.
pub const ENV_INSECURE_REGISTRIES: &str = "SWARMKIT_INSECURE_REGISTRIES";
/// A `certs.d`-shaped directory (`HOST:PORT/ca.crt`) of the CAs registries are trusted under.
pub const ENV_REGISTRY_CERTS: &str = "SWARMKIT_REGISTRY_CERTS";

impl RegistryOptions {
    /// From `SWARMKIT_INSECURE_REGISTRIES` (comma-separated) and `SWARMKIT_REGISTRY_CERTS`,
    /// defaulting to `/etc/docker/certs.d`, plus `/etc/docker/daemon.json`'s list.
    pub fn from_env() -> RegistryOptions {
        RegistryOptions::from_env_and(Path::new(DAEMON_JSON))
    }

    /// As [`RegistryOptions::from_env`], with dockerd's configuration read from `daemon_json`.
    pub fn from_env_and(daemon_json: &Path) -> RegistryOptions {
        let mut insecure: Vec<String> = std::env::var(ENV_INSECURE_REGISTRIES)
            .unwrap_or_default()
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        if let Ok(text) = std::fs::read_to_string(daemon_json) {
            match daemon_json_insecure(&text) {
                Ok(list) => insecure.extend(list),
                Err(e) => tracing::warn!("{}: {e}", daemon_json.display()),
            }
        }
        let certs_dir = std::env::var_os(ENV_REGISTRY_CERTS)
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CERTS_DIR));
        RegistryOptions {
            insecure,
            certs_dir,
        }
    }

    /// Whether `registry` (`HOST[:PORT]`) may be spoken to over plain HTTP or with an
    /// unverified certificate, as dockerd decides: named in the insecure list (exactly, or by
    /// a CIDR holding its IP), or on the loopback (`localhost`, 127.0.0.0/8, ::1).
    pub fn is_insecure(&self, registry: &str) -> bool {
        let host = host_of(registry);
        let ip: Option<IpAddr> = host.parse().ok();
        if host == "localhost" || ip.is_some_and(|ip| ip.is_loopback()) {
            return true;
        }
        self.insecure.iter().any(|entry| {
            let entry = strip_scheme(entry.trim()).trim_end_matches('/');
            if let Some((net, len)) = entry.split_once('/') {
                return match (ip, net.parse::<IpAddr>(), len.parse::<u8>()) {
                    (Some(ip), Ok(net), Ok(len)) => cidr_contains(net, len, ip),
                    _ => false,
                };
            }
            entry == registry
        })
    }

    /// The CAs to trust for `registry`: the `*.crt` files of `<certs_dir>/<registry>/`.
    pub fn ca_files(&self, registry: &str) -> Vec<PathBuf> {
        let dir = self.certs_dir.join(registry);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .filter_map(|e| Some(e.ok()?.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "crt"))
            .collect();
        files.sort();
        files
    }
}

/// `insecure-registries` of a `daemon.json`.
fn daemon_json_insecure(text: &str) -> Result<Vec<String>, String> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    Ok(v.get("insecure-registries")
        .and_then(|l| l.as_array())
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect())
}

fn strip_scheme(s: &str) -> &str {
    s.strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"))
        .unwrap_or(s)
}

/// `host:5000` → `host`, `[::1]:5000` → `::1`.
fn host_of(registry: &str) -> &str {
    if let Some(rest) = registry.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match registry.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) && !h.contains(':') => h,
        _ => registry,
    }
}

fn cidr_contains(net: IpAddr, len: u8, ip: IpAddr) -> bool {
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(i)) if len <= 32 => {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            u32::from(n) & mask == u32::from(i) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(i)) if len <= 128 => {
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            u128::from(n) & mask == u128::from(i) & mask
        }
        _ => false,
    }
}

/// Why a pull (or a digest lookup) failed, in docker's words where docker has them.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("{0}")]
    BadReference(String),
    #[error("No such image: {reference}")]
    NotFound { reference: String },
    #[error(
        "pull access denied for {reference}: unauthorized by registry {registry} ({detail}): {hint}"
    )]
    Unauthorized {
        reference: String,
        registry: String,
        detail: String,
        hint: String,
    },
    #[error("registry {registry} is unreachable: {cause} ({hint})")]
    Unreachable {
        registry: String,
        cause: String,
        hint: String,
    },
    #[error("no matching manifest for linux/amd64 in the manifest list entries of {reference}")]
    NoMatchingPlatform { reference: String },
    #[error("registry {registry}: {message}")]
    Registry { registry: String, message: String },
    #[error("{reference}: corrupt or unsupported content: {message}")]
    Corrupt { reference: String, message: String },
    #[error("unpacking layer {layer}: {cause}")]
    Unpack { layer: String, cause: String },
    #[error("image store: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Other(String),
}

/// Sets rustls's process-wide crypto provider to *ring* (once; a provider someone else
/// installed first is kept). reqwest built without a provider uses it.
pub fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // ring, as the rest of swarmkit's TLS (rustls 0.23.48 deprecates it only for lacking
        // post-quantum key exchange, which aws-lc would bring; no aws-lc here).
        #[allow(deprecated)]
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// One registry for one image: the client that reached it (HTTPS, or plain HTTP when
/// insecure and HTTPS did not answer) and the credentials to send.
pub(crate) struct Remote {
    pub image: ImageRef,
    pub reference: oci_client::Reference,
    client: Client,
    auth: RegistryAuth,
    has_credentials: bool,
    certs_dir: PathBuf,
}

impl Remote {
    /// Reaches `image`'s registry: over HTTPS trusting the system's roots and
    /// `<certs_dir>/<registry>/*.crt`; for an insecure registry, as dockerd does, HTTPS without
    /// verification and then plain HTTP.
    pub async fn connect(
        image: &ImageRef,
        credentials: Option<&Credentials>,
        opts: &RegistryOptions,
    ) -> Result<Remote, PullError> {
        install_crypto_provider();
        let reference = image.to_oci();
        let host = image.registry_host().to_string();
        let auth = match credentials {
            Some(c) if !c.username.is_empty() || !c.password.is_empty() => {
                RegistryAuth::Basic(c.username.clone(), c.password.clone())
            }
            _ => RegistryAuth::Anonymous,
        };
        let mut roots = Vec::new();
        for f in opts.ca_files(&image.registry) {
            let data = std::fs::read(&f).map_err(|e| PullError::Unreachable {
                registry: image.registry.clone(),
                cause: format!("reading CA {}: {e}", f.display()),
                hint: "fix or remove the file".into(),
            })?;
            roots.push(Certificate {
                encoding: CertificateEncoding::Pem,
                data,
            });
        }
        let insecure = opts.is_insecure(&image.registry);
        let mut attempts: Vec<(&str, ClientConfig)> = vec![(
            "https",
            ClientConfig {
                protocol: ClientProtocol::Https,
                extra_root_certificates: roots,
                accept_invalid_certificates: insecure,
                ..client_config()
            },
        )];
        if insecure {
            attempts.push((
                "http",
                ClientConfig {
                    protocol: ClientProtocol::HttpsExcept(vec![host.clone()]),
                    ..client_config()
                },
            ));
        }
        let mut failures = Vec::new();
        for (scheme, config) in attempts {
            let client = Client::try_from(config).map_err(|e| {
                PullError::Other(format!(
                    "building a registry client for {}: {}",
                    image.registry,
                    chain(&e)
                ))
            })?;
            let remote = Remote {
                image: image.clone(),
                reference: reference.clone(),
                client,
                auth: auth.clone(),
                has_credentials: credentials.is_some(),
                certs_dir: opts.certs_dir.clone(),
            };
            // `auth` is the `GET /v2/` probe of the distribution protocol: it answers (with a
            // challenge or not) when the registry is there, and fetches a token when needed.
            match remote
                .client
                .auth(&reference, &auth, oci_client::RegistryOperation::Pull)
                .await
            {
                Ok(_) => return Ok(remote),
                Err(OciDistributionError::RequestError(e)) => {
                    tracing::debug!("{scheme}://{host}/v2/: {}", chain(&e));
                    failures.push((scheme, chain(&e)));
                }
                Err(e) => return Err(remote.error(e)),
            }
        }
        let cause = failures
            .iter()
            .map(|(scheme, e)| format!("{scheme}://{host}/v2/: {e}"))
            .collect::<Vec<_>>()
            .join("; ");
        Err(PullError::Unreachable {
            registry: image.registry.clone(),
            hint: unreachable_hint(&image.registry, &cause, insecure, &opts.certs_dir),
            cause,
        })
    }

    /// The manifest `reference` names, unparsed, and its digest (verified).
    pub async fn manifest_raw(
        &self,
        reference: &oci_client::Reference,
    ) -> Result<(bytes::Bytes, String), PullError> {
        self.client
            .pull_manifest_raw(reference, &self.auth, MANIFEST_TYPES)
            .await
            .map_err(|e| self.error(e))
    }

    /// The digest the reference names now (a `HEAD` of its manifest).
    pub async fn digest(&self) -> Result<String, PullError> {
        self.client
            .fetch_manifest_digest(&self.reference, &self.auth)
            .await
            .map_err(|e| self.error(e))
    }

    /// A blob's bytes as they arrive (oci-client verifies them against the digest at the end).
    pub async fn blob(&self, desc: &OciDescriptor) -> Result<SizedStream, PullError> {
        self.client
            .pull_blob_stream(&self.reference, desc)
            .await
            .map_err(|e| self.error(e))
    }

    /// oci-client's error as docker words it.
    pub fn error(&self, e: OciDistributionError) -> PullError {
        let reference = self.image.to_string();
        let registry = self.image.registry.clone();
        let unauthorized = |detail: String| PullError::Unauthorized {
            reference: reference.clone(),
            registry: registry.clone(),
            detail,
            hint: if self.has_credentials {
                "the registry refused the credentials given".into()
            } else {
                "no credentials were given: `docker login` to it and pass --with-registry-auth"
                    .into()
            },
        };
        match e {
            OciDistributionError::UnauthorizedError { url } => {
                unauthorized(format!("401 for {url}"))
            }
            OciDistributionError::AuthenticationFailure(reason) => unauthorized(reason),
            OciDistributionError::RegistryError { envelope, url } => {
                let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
                let text = envelope
                    .errors
                    .iter()
                    .map(|e| e.message.clone())
                    .collect::<Vec<_>>()
                    .join("; ");
                if codes.iter().any(|c| {
                    matches!(
                        c,
                        OciErrorCode::ManifestUnknown
                            | OciErrorCode::NameUnknown
                            | OciErrorCode::NotFound
                            | OciErrorCode::BlobUnknown
                    )
                }) {
                    PullError::NotFound { reference }
                } else if codes
                    .iter()
                    .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
                {
                    unauthorized(format!("{text} ({url})"))
                } else {
                    PullError::Registry {
                        registry,
                        message: format!("{text} ({url})"),
                    }
                }
            }
            OciDistributionError::ServerError { code: 404, .. } => {
                PullError::NotFound { reference }
            }
            OciDistributionError::ServerError {
                code: code @ (401 | 403),
                url,
                message,
            } => unauthorized(format!("{code} for {url}: {}", message.trim())),
            OciDistributionError::ServerError { code, url, message } => PullError::Registry {
                registry,
                message: format!("{code} for {url}: {}", message.trim()),
            },
            OciDistributionError::RequestError(e) => {
                let cause = chain(&e);
                PullError::Unreachable {
                    hint: unreachable_hint(&registry, &cause, false, &self.certs_dir),
                    registry,
                    cause,
                }
            }
            OciDistributionError::ImageManifestNotFoundError(_) => {
                PullError::NoMatchingPlatform { reference }
            }
            e @ (OciDistributionError::DigestError(_)
            | OciDistributionError::ManifestParsingError(_)
            | OciDistributionError::VersionedParsingError(_)
            | OciDistributionError::UnsupportedMediaTypeError(_)
            | OciDistributionError::UnsupportedSchemaVersionError(_)
            | OciDistributionError::IncompatibleLayerMediaTypeError(_)
            | OciDistributionError::SpecViolationError(_)) => PullError::Corrupt {
                reference,
                message: chain(&e),
            },
            OciDistributionError::IoError(e) => PullError::Io(e),
            e => PullError::Registry {
                registry,
                message: chain(&e),
            },
        }
    }
}

const MANIFEST_TYPES: &[&str] = &[
    oci_client::manifest::IMAGE_MANIFEST_MEDIA_TYPE,
    oci_client::manifest::IMAGE_MANIFEST_LIST_MEDIA_TYPE,
    oci_client::manifest::OCI_IMAGE_MEDIA_TYPE,
    oci_client::manifest::OCI_IMAGE_INDEX_MEDIA_TYPE,
];

fn client_config() -> ClientConfig {
    ClientConfig {
        platform_resolver: Some(Box::new(oci_client::client::linux_amd64_resolver)),
        connect_timeout: Some(std::time::Duration::from_secs(15)),
        read_timeout: Some(std::time::Duration::from_secs(60)),
        ..ClientConfig::default()
    }
}

/// What to do about a registry that did not answer, from what went wrong.
fn unreachable_hint(registry: &str, cause: &str, insecure: bool, certs_dir: &Path) -> String {
    let lower = cause.to_lowercase();
    if lower.contains("certificate") || lower.contains("unknownissuer") {
        return format!(
            "the registry's TLS certificate is not trusted: put the CA that signed it in {}/{registry}/ca.crt (SWARMKIT_REGISTRY_CERTS names another directory), or add {registry} to the insecure registries",
            certs_dir.display()
        );
    }
    if !insecure
        && (lower.contains("corrupt message")
            || lower.contains("invalidcontenttype")
            || lower.contains("http response to https"))
    {
        return format!(
            "the registry seems to speak plain HTTP: add {registry} to the insecure registries (SWARMKIT_INSECURE_REGISTRIES, or \"insecure-registries\" in {DAEMON_JSON}) as with dockerd's --insecure-registry"
        );
    }
    if insecure {
        return format!("is the registry running at {registry}?");
    }
    format!(
        "is the registry running? for plain HTTP add {registry} to the insecure registries (SWARMKIT_INSECURE_REGISTRIES, or \"insecure-registries\" in {DAEMON_JSON}) as with dockerd's --insecure-registry"
    )
}

/// An error and its causes, `a: b: c`.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(c) = source {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        source = c.source();
    }
    s
}

/// The manifest digest `image` names now (`sha256:...`), for pinning at service create. For
/// a multi-platform image it is the index's digest, as docker pins it.
pub async fn resolve_digest(
    image: &str,
    credentials: Option<&Credentials>,
    opts: &RegistryOptions,
) -> Result<String, PullError> {
    let r = ImageRef::parse(image).map_err(PullError::BadReference)?;
    let remote = Remote::connect(&r, credentials, opts).await?;
    remote.digest().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(insecure: &[&str]) -> RegistryOptions {
        RegistryOptions {
            insecure: insecure.iter().map(|s| s.to_string()).collect(),
            certs_dir: PathBuf::new(),
        }
    }

    #[test]
    fn insecure_registries_as_dockerd_reads_them() {
        let o = opts(&["reg:5000", "10.1.0.0/16", "http://plain:80", "fd00::/8"]);
        assert!(o.is_insecure("reg:5000"));
        assert!(!o.is_insecure("reg:5001"));
        assert!(!o.is_insecure("reg"));
        assert!(o.is_insecure("10.1.2.3:5000"));
        assert!(!o.is_insecure("10.2.0.1:5000"));
        assert!(o.is_insecure("plain:80"));
        assert!(o.is_insecure("[fd00::1]:5000"));
        assert!(o.is_insecure("localhost:5000"));
        assert!(o.is_insecure("127.0.0.7:5000"));
        assert!(o.is_insecure("localhost"));
        assert!(!opts(&[]).is_insecure("192.0.2.1:5000"));
        assert!(!opts(&[]).is_insecure("docker.io"));
    }

    #[test]
    fn daemon_json_and_environment() {
        assert_eq!(
            daemon_json_insecure(
                r#"{"insecure-registries": ["a:1", "10.0.0.0/8"], "debug": true}"#
            )
            .unwrap(),
            vec!["a:1", "10.0.0.0/8"]
        );
        assert!(daemon_json_insecure("{}").unwrap().is_empty());
        assert!(daemon_json_insecure("{").is_err());
        let dir = std::env::temp_dir().join(format!("oci-daemon-json-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("daemon.json");
        std::fs::write(&file, r#"{"insecure-registries": ["b:2"]}"#).unwrap();
        // SAFETY: the only test of this crate that reads these variables.
        unsafe {
            std::env::set_var("SWARMKIT_INSECURE_REGISTRIES", "x:1, y:2");
            std::env::set_var("SWARMKIT_REGISTRY_CERTS", "/tmp/certs");
        }
        let o = RegistryOptions::from_env_and(&file);
        unsafe {
            std::env::remove_var("SWARMKIT_INSECURE_REGISTRIES");
            std::env::remove_var("SWARMKIT_REGISTRY_CERTS");
        }
        let none = RegistryOptions::from_env_and(&dir.join("missing.json"));
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(o.insecure, vec!["x:1", "y:2", "b:2"]);
        assert_eq!(o.certs_dir, PathBuf::from("/tmp/certs"));
        assert!(none.insecure.is_empty());
        assert_eq!(none.certs_dir, PathBuf::from(DEFAULT_CERTS_DIR));
    }

    #[test]
    fn hosts_of_registries() {
        assert_eq!(host_of("a:5000"), "a");
        assert_eq!(host_of("a"), "a");
        assert_eq!(host_of("[::1]:5000"), "::1");
        assert_eq!(host_of("::1"), "::1");
    }
}
