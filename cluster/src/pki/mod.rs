//! The cluster's trust, as Swarm builds it: a root CA whose key stays in the manager's store,
//! a certificate per node whose subject is the node's ID and role (`CN=<node id>,
//! OU=swarm-worker|swarm-manager, O=<cluster id>`), join tokens that pin the CA by digest and
//! carry a rotatable secret, and the rustls configurations built from them. Issuing is
//! rcgen's, TLS is rustls' (ring); nothing here is hand-written cryptography.
//!
//! - [`ca`]: the root CA, and what it signs (node, manager and client certificates, and the
//!   cross-signed root that carries a CA rotation);
//! - [`token`]: join tokens (`SWMTKN-1-<CA digest>-<secret>`);
//! - [`identity`]: who a peer's certificate says it is;
//! - [`tls`]: the server and client configurations, and the verifier a joining node uses to
//!   pin the CA from its token before it trusts anything.

/// The name every manager certificate carries and every agent asks for, whatever address
/// it dialled (a forwarded port, a unix socket, the underlay).
pub const MANAGER_NAME: &str = "swarm-manager";

pub mod ca;
pub mod identity;
pub mod tls;
pub mod token;
pub mod trust;

use std::fmt;

use serde::{Deserialize, Serialize};

/// What a certificate lets its holder do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A node that runs tasks: it reads its own plan and reports its own tasks, nothing else.
    Worker,
    /// A node that may also use the control API (docker's manager nodes).
    Manager,
    /// A remote client of the control API (`cluster env --tls`), not a node.
    Client,
}

impl Role {
    /// The organisational unit the certificate carries (docker's names for the two node
    /// roles).
    pub const fn ou(self) -> &'static str {
        match self {
            Role::Worker => "swarm-worker",
            Role::Manager => "swarm-manager",
            Role::Client => "swarm-client",
        }
    }

    pub fn from_ou(ou: &str) -> Option<Role> {
        [Role::Worker, Role::Manager, Role::Client]
            .into_iter()
            .find(|r| r.ou() == ou)
    }

    /// Whether the holder may use the control API (docker: "This node is not a swarm
    /// manager" otherwise).
    pub const fn may_use_api(self) -> bool {
        matches!(self, Role::Manager | Role::Client)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Worker => "worker",
            Role::Manager => "manager",
            Role::Client => "client",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("issuing a certificate: {0}")]
    Issue(#[from] rcgen::Error),
    #[error("the certificate signing request is not valid: {0}")]
    BadRequest(rcgen::Error),
    #[error("the certificate cannot be read: {0}")]
    BadCertificate(String),
    #[error("the key cannot be read: {0}")]
    BadKey(String),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("TLS client verification: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// The one crypto provider every configuration uses: ring, which russh already brings, so the
/// build needs no C toolchain beyond cc (aws-lc would). rustls deprecates it for lacking
/// post-quantum key exchange, which a lab's control channel does not need yet.
#[allow(deprecated)]
pub fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}

/// SHA-256 of a certificate's DER, the digest a join token pins.
pub fn digest(der: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(der).into()
}
