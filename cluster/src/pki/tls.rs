//! The rustls configurations of the control channel. Servers (the manager) present a chain
//! that ends in the current root, so that a joining node can pin it from its token; during a
//! CA rotation the chain carries the new root cross-signed by the old one, so that peers still
//! trusting only the old root follow it. Clients (agents, `cluster env --tls`) name
//! [`super::MANAGER_NAME`] whatever address they dialled.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use super::token::JoinToken;
use super::{PkiError, provider};

/// The first certificate of a PEM bundle.
pub fn cert_der(pem: &str) -> Result<CertificateDer<'static>, PkiError> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| PkiError::BadCertificate(e.to_string()))
}

/// Every certificate of a PEM bundle (a chain, leaf first).
pub fn certs_der(pem: &str) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::BadCertificate(e.to_string()))?;
    if certs.is_empty() {
        return Err(PkiError::BadCertificate("no certificate in it".into()));
    }
    Ok(certs)
}

pub fn key_der(pem: &str) -> Result<PrivateKeyDer<'static>, PkiError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| PkiError::BadKey(e.to_string()))
}

fn roots(trusted: &[&str]) -> Result<Arc<RootCertStore>, PkiError> {
    let mut store = RootCertStore::empty();
    for pem in trusted {
        store.add(cert_der(pem)?)?;
    }
    Ok(Arc::new(store))
}

/// Whether a server asks its peers for a certificate it then requires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// Verified when presented; absent only for what needs no identity (a node joining with
    /// its token). Every route checks the identity it needs.
    Optional,
    /// No certificate, no connection (the control API's TCP listener).
    Required,
}

/// A server that presents `chain_pem` (leaf first) with `key_pem`, and verifies peers'
/// certificates against `trusted` roots.
pub fn server_config(
    trusted: &[&str],
    chain_pem: &str,
    key_pem: &str,
    auth: ClientAuth,
) -> Result<ServerConfig, PkiError> {
    let builder =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots(trusted)?, provider());
    let verifier = match auth {
        ClientAuth::Optional => builder.allow_unauthenticated().build()?,
        ClientAuth::Required => builder.build()?,
    };
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs_der(chain_pem)?, key_der(key_pem)?)?;
    // The docker CLI speaks HTTP/1.1 only; so do agents.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A client that trusts `trusted` roots and proves itself with `identity` (its chain and key)
/// when given.
pub fn client_config(
    trusted: &[&str],
    identity: Option<(&str, &str)>,
) -> Result<ClientConfig, PkiError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(trusted)?);
    Ok(match identity {
        Some((chain, key)) => builder.with_client_auth_cert(certs_der(chain)?, key_der(key)?)?,
        None => builder.with_no_client_auth(),
    })
}

/// The configuration a node joins with: it trusts nothing yet but its token, so it accepts
/// the manager only if the chain the manager sends contains a root whose digest the token
/// pins, and the manager's certificate verifies against that root.
pub fn joining_config(token: &JoinToken) -> Result<ClientConfig, PkiError> {
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedRoot {
            token: token.clone(),
        }))
        .with_no_client_auth())
}

/// The server name every client asks for.
pub fn manager_name() -> ServerName<'static> {
    ServerName::try_from(super::MANAGER_NAME).expect("a valid DNS name")
}

#[derive(Debug)]
struct PinnedRoot {
    token: JoinToken,
}

impl PinnedRoot {
    fn inner(&self) -> Arc<rustls::crypto::CryptoProvider> {
        provider()
    }
}

impl ServerCertVerifier for PinnedRoot {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let pinned = intermediates
            .iter()
            .find(|c| self.token.pins(&super::digest(c)))
            .ok_or_else(|| {
                rustls::Error::General(
                    "the manager's certificate chain holds no root this join token pins (a token of another cluster, or of a root since rotated?)".into(),
                )
            })?;
        let mut store = RootCertStore::empty();
        store.add(pinned.clone().into_owned())?;
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(store),
            self.inner(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        verifier.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.inner().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.inner().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::pki::Role;
    use crate::pki::ca::{RootCa, Subject, new_key_and_request};

    /// Runs one TLS handshake in memory between `client` and `server`; returns the
    /// certificates the server saw from the client, or the first error.
    fn handshake(
        client: ClientConfig,
        server: ServerConfig,
    ) -> Result<Option<Vec<CertificateDer<'static>>>, rustls::Error> {
        let mut c = rustls::ClientConnection::new(Arc::new(client), manager_name())?;
        let mut s = rustls::ServerConnection::new(Arc::new(server))?;
        for _ in 0..10 {
            let mut buf = Vec::new();
            c.write_tls(&mut buf)
                .map_err(|e| rustls::Error::General(e.to_string()))?;
            let mut rd = &buf[..];
            while !rd.is_empty() {
                s.read_tls(&mut rd)
                    .map_err(|e| rustls::Error::General(e.to_string()))?;
                s.process_new_packets()?;
            }
            let mut buf = Vec::new();
            s.write_tls(&mut buf)
                .map_err(|e| rustls::Error::General(e.to_string()))?;
            let mut rd = &buf[..];
            while !rd.is_empty() {
                c.read_tls(&mut rd)
                    .map_err(|e| rustls::Error::General(e.to_string()))?;
                c.process_new_packets()?;
            }
            if !c.is_handshaking() && !s.is_handshaking() {
                return Ok(s
                    .peer_certificates()
                    .map(|cs| cs.iter().map(|c| c.clone().into_owned()).collect()));
            }
        }
        Err(rustls::Error::General("handshake did not finish".into()))
    }

    struct Setup {
        ca: RootCa,
        chain: String,
        key: String,
    }

    fn setup() -> Setup {
        let ca = RootCa::generate("c").unwrap();
        let (issued, key) = ca
            .issue_manager(
                "c",
                &["127.0.0.1".parse().unwrap()],
                Duration::from_secs(3600),
            )
            .unwrap();
        let chain = format!("{}{}", issued.cert_pem, ca.cert_pem);
        Setup { ca, chain, key }
    }

    fn node_cert(ca: &RootCa, name: &str) -> (String, String) {
        let (key, csr) = new_key_and_request().unwrap();
        let issued = ca
            .sign_request(
                &csr,
                &Subject {
                    name,
                    role: Role::Worker,
                    cluster_id: "c",
                },
                Duration::from_secs(3600),
            )
            .unwrap();
        (issued.cert_pem, key)
    }

    #[test]
    fn a_joining_node_accepts_only_the_root_its_token_pins() {
        let s = setup();
        let server =
            || server_config(&[&s.ca.cert_pem], &s.chain, &s.key, ClientAuth::Optional).unwrap();
        let good = JoinToken::new(&s.ca.digest().unwrap());
        assert!(handshake(joining_config(&good).unwrap(), server()).is_ok());
        let other = JoinToken::new(&RootCa::generate("x").unwrap().digest().unwrap());
        assert!(handshake(joining_config(&other).unwrap(), server()).is_err());
    }

    #[test]
    fn a_required_client_certificate_must_come_from_the_cluster_root() {
        let s = setup();
        let server =
            || server_config(&[&s.ca.cert_pem], &s.chain, &s.key, ClientAuth::Required).unwrap();
        let (cert, key) = node_cert(&s.ca, "n1");
        let seen = handshake(
            client_config(&[&s.ca.cert_pem], Some((&cert, &key))).unwrap(),
            server(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            crate::pki::identity::Identity::from_der(&seen[0])
                .unwrap()
                .name,
            "n1"
        );
        // No certificate, or one from another root: no connection.
        assert!(handshake(client_config(&[&s.ca.cert_pem], None).unwrap(), server()).is_err());
        let stranger = RootCa::generate("c").unwrap();
        let (cert, key) = node_cert(&stranger, "n1");
        assert!(
            handshake(
                client_config(&[&s.ca.cert_pem], Some((&cert, &key))).unwrap(),
                server()
            )
            .is_err()
        );
    }

    #[test]
    fn during_a_rotation_peers_of_either_root_connect() {
        let old = RootCa::generate("c").unwrap();
        let (new, cross) = old.successor("c").unwrap();
        let (issued, key) = new
            .issue_manager("c", &[], Duration::from_secs(3600))
            .unwrap();
        let chain = format!("{}{}{}", issued.cert_pem, cross, new.cert_pem);
        let server = || {
            server_config(
                &[&old.cert_pem, &new.cert_pem],
                &chain,
                &key,
                ClientAuth::Required,
            )
            .unwrap()
        };
        // A node that still trusts only the old root, with its old certificate.
        let (cert, k) = node_cert(&old, "a");
        assert!(
            handshake(
                client_config(&[&old.cert_pem], Some((&cert, &k))).unwrap(),
                server()
            )
            .is_ok()
        );
        // One that already moved.
        let (cert, k) = node_cert(&new, "b");
        assert!(
            handshake(
                client_config(&[&new.cert_pem], Some((&cert, &k))).unwrap(),
                server()
            )
            .is_ok()
        );
    }
}
