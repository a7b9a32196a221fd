//! Join tokens, in docker's shape: `SWMTKN-1-<digest>-<secret>`. The digest (SHA-256 of the
//! root CA's certificate, base36, 50 characters) lets a joining node pin the CA before it
//! trusts anything the manager sends; the secret (128 random bits, base36, 25 characters)
//! proves it may join, as a worker or as a manager, and is replaced by `join-token --rotate`.

use std::fmt;

const PREFIX: &str = "SWMTKN";
const VERSION: &str = "1";
const DIGEST_LEN: usize = 50;
const SECRET_LEN: usize = crate::ids::ID_LEN;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinToken {
    /// The root CA's digest, base36.
    pub ca_digest: String,
    pub secret: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error(
        "invalid join token: expected SWMTKN-1-<50 characters>-<25 characters> (print one with swarmkit cluster join-token worker)"
    )]
    Malformed,
}

impl JoinToken {
    /// A new token for the root whose digest is `ca_digest`, with a fresh secret.
    pub fn new(ca_digest: &[u8; 32]) -> JoinToken {
        JoinToken {
            ca_digest: base36(ca_digest, DIGEST_LEN),
            secret: crate::ids::new_id(),
        }
    }

    /// Whether this token pins `digest`.
    pub fn pins(&self, digest: &[u8; 32]) -> bool {
        self.ca_digest == base36(digest, DIGEST_LEN)
    }

    /// Whether `other` carries this token's secret, compared in constant time.
    pub fn secret_matches(&self, other: &JoinToken) -> bool {
        let (a, b) = (self.secret.as_bytes(), other.secret.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl std::str::FromStr for JoinToken {
    type Err = TokenError;
    fn from_str(s: &str) -> Result<Self, TokenError> {
        let parts: Vec<&str> = s.trim().split('-').collect();
        let plain = |p: &str, len: usize| {
            p.len() == len
                && p.bytes()
                    .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
        };
        match parts.as_slice() {
            [PREFIX, VERSION, digest, secret]
                if plain(digest, DIGEST_LEN) && plain(secret, SECRET_LEN) =>
            {
                Ok(JoinToken {
                    ca_digest: digest.to_string(),
                    secret: secret.to_string(),
                })
            }
            _ => Err(TokenError::Malformed),
        }
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}-{VERSION}-{}-{}", self.ca_digest, self.secret)
    }
}

/// Big-endian `bytes` in base36, left-padded with zeros to `width` digits.
fn base36(bytes: &[u8], width: usize) -> String {
    let mut n = bytes.to_vec();
    let mut digits = Vec::new();
    while n.iter().any(|&b| b != 0) {
        let mut rem = 0u32;
        for b in n.iter_mut() {
            let cur = (rem << 8) | u32::from(*b);
            *b = (cur / 36) as u8;
            rem = cur % 36;
        }
        digits.push(char::from_digit(rem, 36).unwrap_or('0'));
    }
    while digits.len() < width {
        digits.push('0');
    }
    digits.iter().rev().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_prints_as_docker_s_and_reads_back() {
        let t = JoinToken::new(&[0xab; 32]);
        let s = t.to_string();
        assert!(s.starts_with("SWMTKN-1-"));
        assert_eq!(s.len(), "SWMTKN-1-".len() + 50 + 1 + 25);
        assert_eq!(s.parse::<JoinToken>().unwrap(), t);
        assert!(t.pins(&[0xab; 32]));
        assert!(!t.pins(&[0xac; 32]));
    }

    #[test]
    fn base36_is_exact() {
        assert_eq!(base36(&[0], 3), "000");
        assert_eq!(base36(&[1, 0], 1), "74"); // 256
        assert_eq!(base36(&[0xff; 32], 50).len(), 50);
    }

    #[test]
    fn malformed_tokens_are_refused() {
        for bad in [
            "",
            "SWMTKN-1-abc-def",
            "SWMTKN-2-00000000000000000000000000000000000000000000000000-0000000000000000000000000",
            "SWMTKN-1-0000000000000000000000000000000000000000000000000A-0000000000000000000000000",
        ] {
            assert_eq!(
                bad.parse::<JoinToken>(),
                Err(TokenError::Malformed),
                "{bad}"
            );
        }
    }

    #[test]
    fn secrets_are_compared_whole() {
        let a = JoinToken::new(&[1; 32]);
        let mut b = a.clone();
        assert!(a.secret_matches(&b));
        b.secret
            .replace_range(24..25, if a.secret.ends_with('0') { "1" } else { "0" });
        assert!(!a.secret_matches(&b));
    }
}
