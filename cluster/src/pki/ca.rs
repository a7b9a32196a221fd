//! The cluster's root CA and what it signs. The root is ECDSA P-256 (as `swarm init` makes
//! it); its key lives only in the manager's store. Node certificates are issued from a
//! signing request made on the node, so a node's key never leaves it; the manager takes only
//! the request's public key and sets every field itself.

use std::net::IpAddr;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use serde::{Deserialize, Serialize};

use super::{MANAGER_NAME, PkiError, Role};

/// How long a root lives (docker: 20 years).
const ROOT_LIFETIME: Duration = Duration::from_secs(20 * 365 * 24 * 3600);
/// Node certificates by default (docker: 90 days, `--cert-expiry 2160h`).
pub const DEFAULT_CERT_EXPIRY: Duration = Duration::from_secs(90 * 24 * 3600);
/// The shortest lifetime a node certificate may be given. Docker's floor is an hour; a lab
/// that wants to watch renewals happen needs less, and agents renew well before the end.
pub const MIN_CERT_EXPIRY: Duration = Duration::from_secs(10);
/// Certificates are valid from a little before they are issued: clocks of guests booted a
/// moment ago may lag the manager's.
const BACKDATE: Duration = Duration::from_secs(5 * 60);

/// A root CA: its certificate, and its key (PKCS#8 PEM), which never leaves the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootCa {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A certificate the CA issued, and what the store keeps of it.
#[derive(Clone, Debug)]
pub struct Issued {
    pub cert_pem: String,
    /// Lowercase hex, as [`super::identity::Identity::serial`] reads it back.
    pub serial: String,
    pub not_after: chrono::DateTime<chrono::Utc>,
}

/// Who a certificate is for.
#[derive(Clone, Debug)]
pub struct Subject<'a> {
    /// The node's ID (or a client's name).
    pub name: &'a str,
    pub role: Role,
    pub cluster_id: &'a str,
}

impl RootCa {
    /// A new root for `cluster_id`. Each root's name differs (a random suffix), so that while
    /// a rotation trusts two roots, a certificate's issuer names exactly one of them.
    pub fn generate(cluster_id: &str) -> Result<RootCa, PkiError> {
        let (params, key) = root_params(cluster_id)?;
        Ok(RootCa {
            cert_pem: params.self_signed(&key)?.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// The root that replaces this one, and its certificate re-issued under this root: during
    /// the rotation a peer that still trusts only this root follows the new one from it.
    pub fn successor(&self, cluster_id: &str) -> Result<(RootCa, String), PkiError> {
        let (params, key) = root_params(cluster_id)?;
        let next = RootCa {
            cert_pem: params.self_signed(&key)?.pem(),
            key_pem: key.serialize_pem(),
        };
        let cross = params.signed_by(&key, &self.issuer()?)?.pem();
        Ok((next, cross))
    }

    pub fn cert_der(&self) -> Result<rustls::pki_types::CertificateDer<'static>, PkiError> {
        super::tls::cert_der(&self.cert_pem)
    }

    /// SHA-256 of the root's DER: what join tokens carry.
    pub fn digest(&self) -> Result<[u8; 32], PkiError> {
        Ok(super::digest(&self.cert_der()?))
    }

    fn issuer(&self) -> Result<Issuer<'static, KeyPair>, PkiError> {
        let key = KeyPair::from_pem(&self.key_pem).map_err(|e| PkiError::BadKey(e.to_string()))?;
        Ok(Issuer::from_ca_cert_pem(&self.cert_pem, key)?)
    }

    /// A node's (or client's) certificate for the public key of `csr_pem`, whatever else the
    /// request asks for.
    pub fn sign_request(
        &self,
        csr_pem: &str,
        subject: &Subject<'_>,
        lifetime: Duration,
    ) -> Result<Issued, PkiError> {
        let csr =
            CertificateSigningRequestParams::from_pem(csr_pem).map_err(PkiError::BadRequest)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(subject.name, Some(subject.role), subject.cluster_id);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        // Node certificates serve too in docker (managers accept connections with theirs).
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::ServerAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        self.issue(params, &csr.public_key, lifetime)
    }

    /// The manager's own serving certificate and key: named [`MANAGER_NAME`] and `localhost`,
    /// and valid for `addrs` (what the docker CLI checks when it dials an address).
    pub fn issue_manager(
        &self,
        cluster_id: &str,
        addrs: &[IpAddr],
        lifetime: Duration,
    ) -> Result<(Issued, String), PkiError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(MANAGER_NAME, Some(Role::Manager), cluster_id);
        params.subject_alt_names = vec![
            SanType::DnsName(MANAGER_NAME.try_into()?),
            SanType::DnsName("localhost".try_into()?),
        ];
        params
            .subject_alt_names
            .extend(addrs.iter().map(|a| SanType::IpAddress(*a)));
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let issued = self.issue(params, &key, lifetime)?;
        Ok((issued, key.serialize_pem()))
    }

    fn issue(
        &self,
        mut params: CertificateParams,
        public_key: &impl rcgen::PublicKeyData,
        lifetime: Duration,
    ) -> Result<Issued, PkiError> {
        let serial = random_serial();
        params.serial_number = Some(serial.clone());
        let not_after = validity(&mut params, lifetime);
        let cert = params.signed_by(public_key, &self.issuer()?)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            serial: hex::encode(serial.as_ref()),
            not_after,
        })
    }
}

/// A new node key (P-256, PKCS#8 PEM) and a signing request for it: made on the node, so the
/// key is never sent anywhere.
pub fn new_key_and_request() -> Result<(String, String), PkiError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    let csr = params.serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.pem()?))
}

fn root_params(cluster_id: &str) -> Result<(CertificateParams, KeyPair), PkiError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(
        &format!("swarm-ca-{}", &crate::ids::new_id()[..8]),
        None,
        cluster_id,
    );
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, ROOT_LIFETIME);
    params.serial_number = Some(random_serial());
    Ok((params, key))
}

fn dn(common_name: &str, role: Option<Role>, cluster_id: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    if let Some(role) = role {
        dn.push(DnType::OrganizationalUnitName, role.ou());
    }
    dn.push(DnType::OrganizationName, cluster_id);
    dn
}

/// Sets the validity window; returns its end.
fn validity(params: &mut CertificateParams, lifetime: Duration) -> chrono::DateTime<chrono::Utc> {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + lifetime;
    chrono::DateTime::from_timestamp(params.not_after.unix_timestamp(), 0).unwrap_or_default()
}

/// 16 random bytes with the top bit clear (a serial must be a positive integer).
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    // A leading zero byte would be dropped by DER and read back as a shorter serial.
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::identity::Identity;

    #[test]
    fn a_node_certificate_names_its_node_role_and_cluster_and_ignores_what_the_request_asks() {
        let ca = RootCa::generate("c1").unwrap();
        let (_key, csr) = new_key_and_request().unwrap();
        let issued = ca
            .sign_request(
                &csr,
                &Subject {
                    name: "node-a",
                    role: Role::Worker,
                    cluster_id: "c1",
                },
                Duration::from_secs(3600),
            )
            .unwrap();
        let id = Identity::from_pem(&issued.cert_pem).unwrap();
        assert_eq!(id.name, "node-a");
        assert_eq!(id.role, Role::Worker);
        assert_eq!(id.cluster_id, "c1");
        assert_eq!(id.serial, issued.serial);
        let left = id.not_after - chrono::Utc::now();
        assert!(left > chrono::Duration::seconds(3500) && left <= chrono::Duration::seconds(3600));
    }

    #[test]
    fn a_request_with_a_bad_signature_is_refused() {
        let ca = RootCa::generate("c1").unwrap();
        let (_key, csr) = new_key_and_request().unwrap();
        let subject = Subject {
            name: "n",
            role: Role::Worker,
            cluster_id: "c1",
        };
        assert!(matches!(
            ca.sign_request("not a request", &subject, DEFAULT_CERT_EXPIRY),
            Err(PkiError::BadRequest(_))
        ));
        // Flip a byte inside the request's body: its self-signature no longer holds.
        let der = rustls::pki_types::pem::PemObject::from_pem_slice(csr.as_bytes())
            .map(|d: rustls::pki_types::CertificateSigningRequestDer<'static>| d.as_ref().to_vec())
            .unwrap();
        let mut bad = der.clone();
        let at = bad.len() / 3;
        bad[at] ^= 0x01;
        let pem = pem_of("CERTIFICATE REQUEST", &bad);
        assert!(
            ca.sign_request(&pem, &subject, DEFAULT_CERT_EXPIRY)
                .is_err()
        );
    }

    fn pem_of(label: &str, der: &[u8]) -> String {
        pem::encode(&pem::Pem::new(label, der.to_vec()))
    }

    #[test]
    fn roots_have_distinct_names_and_digests() {
        let a = RootCa::generate("c1").unwrap();
        let b = RootCa::generate("c1").unwrap();
        assert_ne!(a.digest().unwrap(), b.digest().unwrap());
        let name = |r: &RootCa| {
            use x509_parser::prelude::FromDer;
            let der = r.cert_der().unwrap();
            let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&der).unwrap();
            cert.subject().to_string()
        };
        assert_ne!(name(&a), name(&b));
    }
}
