//! Who a certificate says its holder is. The manager reads this from the certificate a peer
//! proved it holds in the TLS handshake, never from anything the peer sends later (a URL, a
//! body): a node is its certificate's common name.

use x509_parser::prelude::{FromDer, X509Certificate};

use super::{PkiError, Role};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The node ID (or a client's name).
    pub name: String,
    pub role: Role,
    pub cluster_id: String,
    /// Lowercase hex of the serial, as the CA issued it.
    pub serial: String,
    pub not_after: chrono::DateTime<chrono::Utc>,
}

impl Identity {
    pub fn from_der(der: &[u8]) -> Result<Identity, PkiError> {
        let (_, cert) =
            X509Certificate::from_der(der).map_err(|e| PkiError::BadCertificate(e.to_string()))?;
        let subject = cert.subject();
        let first = |mut it: Box<dyn Iterator<Item = &_> + '_>| -> Option<String> {
            it.next()
                .and_then(|a: &x509_parser::x509::AttributeTypeAndValue<'_>| a.as_str().ok())
                .map(str::to_string)
        };
        let name = first(Box::new(subject.iter_common_name()))
            .ok_or_else(|| PkiError::BadCertificate("no common name".into()))?;
        let cluster_id = first(Box::new(subject.iter_organization())).unwrap_or_default();
        // A root has no role; only a leaf's unit says what it may do.
        let role = first(Box::new(subject.iter_organizational_unit()))
            .and_then(|ou| Role::from_ou(&ou))
            .ok_or_else(|| PkiError::BadCertificate(format!("{name} carries no swarm role")))?;
        let not_after = chrono::DateTime::from_timestamp(cert.validity().not_after.timestamp(), 0)
            .unwrap_or_default();
        Ok(Identity {
            name,
            role,
            cluster_id,
            serial: hex::encode(cert.raw_serial()),
            not_after,
        })
    }

    pub fn from_pem(pem: &str) -> Result<Identity, PkiError> {
        Identity::from_der(&super::tls::cert_der(pem)?)
    }
}

/// When a certificate issued at `not_before` and ending at `not_after` should be renewed: at
/// a random point between half and four fifths of its life (docker's window), so that nodes
/// issued together do not all renew at once.
pub fn renew_at(
    not_before: chrono::DateTime<chrono::Utc>,
    not_after: chrono::DateTime<chrono::Utc>,
) -> chrono::DateTime<chrono::Utc> {
    let life = (not_after - not_before).num_milliseconds().max(0);
    let fraction = 0.5 + 0.3 * rand::random::<f64>();
    not_before + chrono::Duration::milliseconds((life as f64 * fraction) as i64)
}

/// A certificate's validity window, read from its PEM.
pub fn validity_of(
    pem: &str,
) -> Result<(chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>), PkiError> {
    let der = super::tls::cert_der(pem)?;
    let (_, cert) =
        X509Certificate::from_der(&der).map_err(|e| PkiError::BadCertificate(e.to_string()))?;
    let at = |t: x509_parser::time::ASN1Time| {
        chrono::DateTime::from_timestamp(t.timestamp(), 0).unwrap_or_default()
    };
    Ok((
        at(cert.validity().not_before),
        at(cert.validity().not_after),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_falls_between_half_and_four_fifths_of_the_life() {
        let start = chrono::Utc::now();
        let end = start + chrono::Duration::seconds(1000);
        for _ in 0..100 {
            let at = renew_at(start, end);
            assert!(at >= start + chrono::Duration::seconds(500));
            assert!(at <= start + chrono::Duration::seconds(800));
        }
    }

    #[test]
    fn a_root_is_no_identity() {
        let ca = super::super::ca::RootCa::generate("c").unwrap();
        assert!(matches!(
            Identity::from_pem(&ca.cert_pem),
            Err(PkiError::BadCertificate(_))
        ));
    }
}
