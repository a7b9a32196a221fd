//! The node's credentials: the key it made (which never leaves the node), the certificate the
//! manager issued for it, and the cluster's root it trusts. Kept owner-only across agent
//! restarts, so a restarted agent is the same node without joining again.

use std::path::{Path, PathBuf};

use crate::paths::{create_private_dir, write_atomically};
use crate::pki::identity::{Identity, renew_at, validity_of};
use crate::pki::tls::client_config;
use crate::pki::{PkiError, trust::root_id_of};
use crate::protocol::Issued;

/// docker's file names, as in a DOCKER_CERT_PATH.
const KEY: &str = "key.pem";
const CERT: &str = "cert.pem";
const ROOT: &str = "ca.pem";

#[derive(Clone, Debug)]
pub struct Credentials {
    pub key_pem: String,
    pub cert_pem: String,
    pub root_pem: String,
}

impl Credentials {
    pub fn from_issued(key_pem: String, issued: &Issued) -> Credentials {
        Credentials {
            key_pem,
            cert_pem: issued.cert_pem.clone(),
            root_pem: issued.root_pem.clone(),
        }
    }

    /// What `dir` holds, if it holds all three and they parse.
    pub fn load(dir: &Path) -> Option<Credentials> {
        let read = |name| std::fs::read_to_string(dir.join(name)).ok();
        let c = Credentials {
            key_pem: read(KEY)?,
            cert_pem: read(CERT)?,
            root_pem: read(ROOT)?,
        };
        match c.identity() {
            Ok(_) => Some(c),
            Err(e) => {
                tracing::warn!("the credentials in {} do not parse: {e}", dir.display());
                None
            }
        }
    }

    /// Writes all three, each atomically and owner-only, the certificate last: a crash in
    /// between leaves a key that does not match the certificate, which the TLS handshake
    /// refuses and the agent answers by joining again.
    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        create_private_dir(dir)?;
        write_atomically(&dir.join(KEY), self.key_pem.as_bytes())?;
        write_atomically(&dir.join(ROOT), self.root_pem.as_bytes())?;
        write_atomically(&dir.join(CERT), self.cert_pem.as_bytes())
    }

    pub fn identity(&self) -> Result<Identity, PkiError> {
        Identity::from_pem(&self.cert_pem)
    }

    pub fn expired(&self) -> bool {
        self.identity()
            .map(|id| id.not_after <= chrono::Utc::now())
            .unwrap_or(true)
    }

    /// When to ask for a new certificate (docker's window: half to four fifths of its life).
    pub fn renew_at(&self) -> chrono::DateTime<chrono::Utc> {
        match validity_of(&self.cert_pem) {
            Ok((from, until)) => renew_at(from, until),
            Err(_) => chrono::Utc::now(),
        }
    }

    /// The short name of the root this node trusts (see `Trust::root_id`).
    pub fn root_id(&self) -> String {
        root_id_of(&self.root_pem)
    }

    /// Mutual TLS to the manager: its certificate must chain to our root, ours is presented.
    pub fn tls(&self) -> Result<rustls::ClientConfig, PkiError> {
        client_config(&[&self.root_pem], Some((&self.cert_pem, &self.key_pem)))
    }
}

/// Where a node's credentials live on the machine its agent runs on.
pub fn dir(paths: &crate::paths::ClusterPaths, hostname: &str) -> PathBuf {
    paths.node_credentials(hostname)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::Role;
    use crate::pki::ca::{RootCa, Subject, new_key_and_request};

    #[test]
    fn credentials_survive_a_save_and_load_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let ca = RootCa::generate("c").unwrap();
        let (key, csr) = new_key_and_request().unwrap();
        let subject = Subject {
            name: "n1",
            role: Role::Worker,
            cluster_id: "c",
        };
        let cert = ca
            .sign_request(&csr, &subject, std::time::Duration::from_secs(3600))
            .unwrap();
        let c = Credentials {
            key_pem: key,
            cert_pem: cert.cert_pem,
            root_pem: ca.cert_pem.clone(),
        };
        let dir = std::env::temp_dir().join(format!("swarmkit-creds-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        c.save(&dir).unwrap();
        let back = Credentials::load(&dir).expect("loads");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let modes = (mode(&dir), mode(&dir.join(KEY)));
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(back.identity().unwrap().name, "n1");
        assert!(!back.expired());
        assert_eq!(back.root_id(), root_id_of(&ca.cert_pem));
        assert_eq!(modes, (0o700, 0o600));
    }
}
