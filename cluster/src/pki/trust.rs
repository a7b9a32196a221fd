//! What the store keeps of the cluster's trust: the root CA, the root it is replacing while a
//! `ca --rotate` is under way, and the two join tokens. One value in the store's Meta, so a
//! rotation or a new token is one transaction.

use serde::{Deserialize, Serialize};

use super::ca::RootCa;
use super::token::JoinToken;
use super::{PkiError, Role};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trust {
    pub root: RootCa,
    /// The root being replaced, and the new root's certificate signed by it: until every node
    /// holds a certificate of the new root, peers of either are accepted, and the manager's
    /// chain carries the cross-signed certificate so that a node trusting only the old root
    /// still verifies it.
    #[serde(default)]
    pub previous: Option<Previous>,
    pub worker_token: String,
    pub manager_token: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Previous {
    pub root: RootCa,
    pub cross_signed_pem: String,
}

impl Trust {
    pub fn generate(cluster_id: &str) -> Result<Trust, PkiError> {
        let root = RootCa::generate(cluster_id)?;
        let digest = root.digest()?;
        Ok(Trust {
            root,
            previous: None,
            worker_token: JoinToken::new(&digest).to_string(),
            manager_token: JoinToken::new(&digest).to_string(),
        })
    }

    pub fn token(&self, role: Role) -> &str {
        match role {
            Role::Manager => &self.manager_token,
            _ => &self.worker_token,
        }
    }

    /// The role `token` joins as, if it is one of this cluster's current tokens for its
    /// current root. A rotated token, or one of a rotated root, joins nothing.
    pub fn role_of(&self, token: &JoinToken) -> Option<Role> {
        let digest = self.root.digest().ok()?;
        if !token.pins(&digest) {
            return None;
        }
        [Role::Worker, Role::Manager].into_iter().find(|r| {
            self.token(*r)
                .parse::<JoinToken>()
                .is_ok_and(|t| t.secret_matches(token))
        })
    }

    /// A new secret for `role`'s token (`join-token --rotate`): the old one joins nothing more.
    pub fn rotate_token(&mut self, role: Role) -> Result<(), PkiError> {
        let token = JoinToken::new(&self.root.digest()?).to_string();
        match role {
            Role::Manager => self.manager_token = token,
            _ => self.worker_token = token,
        }
        Ok(())
    }

    /// Starts replacing the root (`ca --rotate`). Both tokens keep their secrets and pin the
    /// new root, as docker's do; a rotation begun while another is under way drops the oldest
    /// root, whose nodes then cannot reconnect until they join again.
    pub fn rotate_root(&mut self, cluster_id: &str) -> Result<(), PkiError> {
        let (next, cross) = self.root.successor(cluster_id)?;
        let digest = next.digest()?;
        let repin = |t: &str| -> String {
            match t.parse::<JoinToken>() {
                Ok(mut t) => {
                    t.ca_digest = JoinToken::new(&digest).ca_digest;
                    t.to_string()
                }
                Err(_) => JoinToken::new(&digest).to_string(),
            }
        };
        self.worker_token = repin(&self.worker_token);
        self.manager_token = repin(&self.manager_token);
        let old = std::mem::replace(&mut self.root, next);
        self.previous = Some(Previous {
            root: old,
            cross_signed_pem: cross,
        });
        Ok(())
    }

    /// Roots a peer's certificate may chain to.
    pub fn trusted(&self) -> Vec<&str> {
        let mut roots = vec![self.root.cert_pem.as_str()];
        if let Some(p) = &self.previous {
            roots.push(&p.root.cert_pem);
        }
        roots
    }

    /// Hex SHA-256 of the current root: what a node's certificate is checked against to see
    /// whether it must be reissued under a new root.
    pub fn root_id(&self) -> String {
        root_id_of(&self.root.cert_pem)
    }
}

/// Hex of the first 8 bytes of a root certificate's SHA-256 (empty if it does not parse):
/// the short name a plan answer gives the current root, which a node compares with its own.
pub fn root_id_of(root_pem: &str) -> String {
    super::tls::cert_der(root_pem)
        .map(|der| hex::encode(&super::digest(&der)[..8]))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_joins_as_its_role_until_rotated() {
        let mut t = Trust::generate("c").unwrap();
        let worker: JoinToken = t.worker_token.parse().unwrap();
        let manager: JoinToken = t.manager_token.parse().unwrap();
        assert_eq!(t.role_of(&worker), Some(Role::Worker));
        assert_eq!(t.role_of(&manager), Some(Role::Manager));
        t.rotate_token(Role::Worker).unwrap();
        assert_eq!(t.role_of(&worker), None);
        assert_eq!(t.role_of(&manager), Some(Role::Manager));
    }

    #[test]
    fn a_root_rotation_repins_the_tokens_and_trusts_both_roots_meanwhile() {
        let mut t = Trust::generate("c").unwrap();
        let before: JoinToken = t.worker_token.parse().unwrap();
        let old_root = t.root.cert_pem.clone();
        t.rotate_root("c").unwrap();
        let after: JoinToken = t.worker_token.parse().unwrap();
        assert_eq!(before.secret, after.secret);
        assert_ne!(before.ca_digest, after.ca_digest);
        assert_eq!(t.role_of(&before), None, "a token pinning the old root");
        assert_eq!(t.role_of(&after), Some(Role::Worker));
        assert_eq!(
            t.trusted(),
            vec![t.root.cert_pem.as_str(), old_root.as_str()]
        );
    }
}
