//! The TLS side of the manager's listeners: the cluster's trust made on first start, the
//! manager's own certificate, and the server configurations that present it (replaced when it
//! is renewed or the root rotates). Nothing here knows the manager's shared state, so that
//! state can hold these.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use rustls::{ClientConfig, ServerConfig};
use tokio::sync::watch;

use super::error::{ApiError, ApiResult};
use super::listen::TlsConfig;
use crate::pki::PkiError;
use crate::pki::identity::{renew_at, validity_of};
use crate::pki::tls::{ClientAuth, client_config, server_config};
use crate::pki::trust::Trust;
use crate::store::State as StoreState;

/// The configurations the manager's TLS listeners present, replaced when its certificate is
/// renewed or the root rotates.
pub struct Listeners {
    /// The agents' listeners: a certificate is optional (a node joining has none yet).
    agents: watch::Sender<Arc<ServerConfig>>,
    /// The remote clients' listener: no certificate, no connection.
    clients: watch::Sender<Arc<ServerConfig>>,
    /// What this manager dials the other managers with (the same certificate, as a client).
    managers: watch::Sender<Arc<ClientConfig>>,
    /// When the manager's own certificate should be renewed.
    pub(super) renew_at: std::sync::Mutex<chrono::DateTime<Utc>>,
    /// `Trust::root_id` of the root these present, which every plan answer names: read
    /// here, not hashed again at every poll.
    root_id: std::sync::RwLock<Arc<str>>,
}

impl Listeners {
    pub fn new(trust: &Trust, cluster_id: &str) -> Result<Listeners, PkiError> {
        let (agents, clients, managers, at) = configs(trust, cluster_id)?;
        Ok(Listeners {
            agents: watch::channel(Arc::new(agents)).0,
            clients: watch::channel(Arc::new(clients)).0,
            managers: watch::channel(Arc::new(managers)).0,
            renew_at: std::sync::Mutex::new(at),
            root_id: std::sync::RwLock::new(trust.root_id().into()),
        })
    }

    pub fn agents(&self) -> TlsConfig {
        self.agents.subscribe()
    }

    pub fn clients(&self) -> TlsConfig {
        self.clients.subscribe()
    }

    pub fn managers(&self) -> watch::Receiver<Arc<ClientConfig>> {
        self.managers.subscribe()
    }

    /// New configurations from `trust` (a rotated root, or the manager's certificate due).
    pub(super) fn refresh(&self, trust: &Trust, cluster_id: &str) -> Result<(), PkiError> {
        let (agents, clients, managers, at) = configs(trust, cluster_id)?;
        self.agents.send_replace(Arc::new(agents));
        self.clients.send_replace(Arc::new(clients));
        self.managers.send_replace(Arc::new(managers));
        *self.renew_at.lock().unwrap_or_else(|e| e.into_inner()) = at;
        *self.root_id.write().unwrap_or_else(|e| e.into_inner()) = trust.root_id().into();
        Ok(())
    }

    pub(super) fn root_id(&self) -> Arc<str> {
        self.root_id
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// The manager's certificate, issued anew at each start and renewal under the current root,
/// the two server configurations that present it, and the client configuration other
/// managers know this one by.
fn configs(
    trust: &Trust,
    cluster_id: &str,
) -> Result<
    (
        ServerConfig,
        ServerConfig,
        ClientConfig,
        chrono::DateTime<Utc>,
    ),
    PkiError,
> {
    // Remote clients dial loopback; agents ask for pki::MANAGER_NAME whatever they dial.
    let addrs = [IpAddr::V4(Ipv4Addr::LOCALHOST)];
    let (issued, key) = trust
        .root
        .issue_manager(cluster_id, &addrs, MANAGER_CERT_LIFE)?;
    // A node pins the root from its token, so the chain carries the root; during a rotation,
    // the new root signed by the old lets nodes that still trust only the old one follow.
    let mut chain = issued.cert_pem.clone();
    if let Some(p) = &trust.previous {
        chain.push_str(&p.cross_signed_pem);
    }
    chain.push_str(&trust.root.cert_pem);
    let trusted = trust.trusted();
    let agents = server_config(&trusted, &chain, &key, ClientAuth::Optional)?;
    let clients = server_config(&trusted, &chain, &key, ClientAuth::Required)?;
    let managers = client_config(&trusted, Some((&chain, &key)))?;
    let (from, until) = validity_of(&issued.cert_pem)?;
    Ok((agents, clients, managers, renew_at(from, until)))
}

/// The manager's own certificate lives a week and is renewed well before, whatever the
/// nodes' lifetime is set to.
const MANAGER_CERT_LIFE: Duration = Duration::from_secs(7 * 24 * 3600);

/// Makes the root CA and join tokens on a cluster's first start.
pub fn ensure_trust(s: &mut StoreState) -> ApiResult<()> {
    if s.meta.trust.is_none() {
        let mut meta = s.meta.clone();
        meta.trust = Some(Trust::generate(&meta.cluster_id).map_err(pki_error)?);
        s.put_meta(meta);
    }
    Ok(())
}

pub(super) fn pki_error(e: PkiError) -> ApiError {
    match e {
        PkiError::BadRequest(_) | PkiError::BadCertificate(_) | PkiError::BadKey(_) => {
            ApiError::BadRequest(e.to_string())
        }
        e => ApiError::Internal(e.to_string()),
    }
}

pub(super) fn no_trust() -> ApiError {
    ApiError::Internal("the cluster has no CA yet: restart the manager".into())
}

/// A loopback port free now, for the clients' TLS listener (kept in the store from then on).
pub fn free_loopback_port() -> ApiResult<u16> {
    std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| ApiError::Internal(format!("finding a free loopback port: {e}")))
}
