//! Whether this kernel can carry encrypted overlays, asked of the kernel itself: a throwaway
//! ESP state is really added (and deleted), and what fails tells what is missing.

use std::io;
use std::net::Ipv4Addr;

use netlink_packet_xfrm::{IPPROTO_ESP, XFRM_MODE_TRANSPORT};

use super::kernel::{Result, XfrmError, connect, ip};
use super::plan::{AEAD_ALG, ICV_BITS, KEY_LEN};
use crate::netns::NetNs;

/// Whether this kernel can carry encrypted overlays, found by really adding (and deleting) a
/// throwaway ESP state with the AEAD we use, in `ns`. `Unsupported` names what is missing.
pub async fn probe(ns: &NetNs) -> Result<()> {
    let handle = connect(ns)?;
    let lo = ip(Ipv4Addr::LOCALHOST);
    let spi = 0x5c00_0000 | (rand::random::<u32>() & 0xff_ffff);
    let attempt = |alg: Option<&str>| {
        let req = handle
            .state()
            .add(lo, lo)
            .protocol(IPPROTO_ESP)
            .spi(spi)
            .mode(XFRM_MODE_TRANSPORT);
        let key: Vec<u8> = (0..KEY_LEN as u8).collect();
        let req = match alg {
            None => req.encryption_aead(AEAD_ALG, &key, ICV_BITS),
            // AES-CBC with HMAC-SHA1: what CONFIG_INET_ESP itself selects, so it tells ESP's
            // absence apart from GCM's.
            Some(enc) => match req.encryption(enc, &key[..16].to_vec()) {
                Ok(r) => r.authentication_trunc("hmac(sha1)", &key, 96),
                Err(e) => Err(e),
            },
        };
        async move {
            match req {
                Ok(r) => r.execute().await,
                Err(e) => Err(e),
            }
        }
    };
    let errno = |e: &xfrmnetlink::Error| match e {
        xfrmnetlink::Error::NetlinkError(m) => m.to_io().raw_os_error(),
        _ => None,
    };
    let cleanup = || async {
        let _ = handle
            .state()
            .delete(lo, lo)
            .protocol(IPPROTO_ESP)
            .spi(spi)
            .execute()
            .await;
    };
    let gcm = match attempt(None).await {
        Ok(()) => {
            cleanup().await;
            return Ok(());
        }
        Err(e) => errno(&e),
    };
    let mut missing = Vec::new();
    match gcm {
        Some(libc::EPROTONOSUPPORT) => {
            missing.push("IPsec ESP (CONFIG_INET_ESP, module esp4)".into());
        }
        // "Requested AEAD algorithm not found": no GCM; whether ESP is there is asked apart.
        Some(libc::ENOSYS) => {
            missing.push(format!(
                "AES-GCM for ESP ({AEAD_ALG}: CONFIG_CRYPTO_GCM, modules gcm and ghash_generic)"
            ));
            match attempt(Some("cbc(aes)")).await {
                Ok(()) => cleanup().await,
                Err(e) if errno(&e) == Some(libc::EPROTONOSUPPORT) => {
                    missing.push("IPsec ESP (CONFIG_INET_ESP, module esp4)".into());
                }
                Err(_) => {}
            }
        }
        // "Kernel was unable to initialize cryptographic operations": GCM is known but cannot be
        // instantiated, in practice because ESP's IV generator finds no seeded stdrng.
        other => missing.push(format!(
            "a working AES-GCM transform (the kernel refused it{}; usually the crypto RNG is \
             missing: drbg with hmac(sha512), modules drbg and sha512_generic)",
            other
                .map(|e| format!(": {}", io::Error::from_raw_os_error(e)))
                .unwrap_or_default()
        )),
    }
    Err(XfrmError::Unsupported { missing })
}
