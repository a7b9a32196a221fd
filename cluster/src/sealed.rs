//! Payloads the store keeps encrypted at rest (secrets and configs): AES-256-GCM (ring, as the
//! TLS stack already uses) under a key kept beside the store, owner-only in the owner-only
//! state directory. What that buys, said plainly: a copy of the store file alone (a backup, a
//! disk image, `store.redb` mailed around) does not give the secrets away; root on the
//! manager's machine, who can read the key, can. Docker's unlocked swarms are the same.

use std::path::{Path, PathBuf};

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("the store's key {path}: {message}")]
    Key { path: PathBuf, message: String },
    #[error(
        "a sealed payload of {id} does not open: the store's key is not the one it was sealed with, or it was altered"
    )]
    Open { id: String },
    #[error("the system's random source failed")]
    Random,
}

pub struct Sealer {
    key: LessSafeKey,
    random: SystemRandom,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(..)")
    }
}

impl Sealer {
    /// The key at `path`, made (32 random bytes, 0600) if there is none yet.
    pub fn load_or_create(path: &Path) -> Result<Sealer, SealError> {
        let bad = |message: String| SealError::Key {
            path: path.to_path_buf(),
            message,
        };
        let random = SystemRandom::new();
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut b = vec![0u8; 32];
                random.fill(&mut b).map_err(|_| SealError::Random)?;
                write_private(path, &b).map_err(|e| bad(e.to_string()))?;
                b
            }
            Err(e) => return Err(bad(e.to_string())),
        };
        let key = UnboundKey::new(&AES_256_GCM, &bytes)
            .map_err(|_| bad(format!("holds {} bytes, not a 32-byte key", bytes.len())))?;
        Ok(Sealer {
            key: LessSafeKey::new(key),
            random,
        })
    }

    /// Keeps `bytes`, another replica's key, at `path` (0600) for a store about to open there.
    pub fn install(path: &Path, bytes: &[u8]) -> Result<(), SealError> {
        let bad = |message: String| SealError::Key {
            path: path.to_path_buf(),
            message,
        };
        if bytes.len() != 32 {
            return Err(bad(format!(
                "{} bytes given, not a 32-byte key",
                bytes.len()
            )));
        }
        write_private(path, bytes).map_err(|e| bad(e.to_string()))
    }

    /// `data` sealed for the object `id` (bound to it: a sealed payload moved to another
    /// object does not open), as hex of nonce and ciphertext.
    pub fn seal(&self, id: &str, data: &[u8]) -> Result<String, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.random
            .fill(&mut nonce)
            .map_err(|_| SealError::Random)?;
        let mut out = data.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(id.as_bytes()),
                &mut out,
            )
            .map_err(|_| SealError::Random)?;
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&out);
        Ok(hex::encode(sealed))
    }

    pub fn open(&self, id: &str, sealed: &str) -> Result<Vec<u8>, SealError> {
        let refused = || SealError::Open { id: id.to_string() };
        let bytes = hex::decode(sealed).map_err(|_| refused())?;
        if bytes.len() < NONCE_LEN {
            return Err(refused());
        }
        let (nonce, body) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| refused())?;
        let mut body = body.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(id.as_bytes()), &mut body)
            .map_err(|_| refused())?;
        Ok(plain.to_vec())
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_opens_only_for_its_object_and_key() {
        let dir = std::env::temp_dir().join(format!("sk-seal-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("store.key");
        let _ = std::fs::remove_file(&path);
        let s = Sealer::load_or_create(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let sealed = s.seal("a", b"hunter2").unwrap();
        assert!(!sealed.contains(&hex::encode(b"hunter2")));
        assert_eq!(s.open("a", &sealed).unwrap(), b"hunter2");
        assert!(s.open("b", &sealed).is_err(), "bound to its object");
        // The same key file again opens it; another key does not.
        let again = Sealer::load_or_create(&path).unwrap();
        assert_eq!(again.open("a", &sealed).unwrap(), b"hunter2");
        let other = Sealer::load_or_create(&dir.join("other.key")).unwrap();
        assert!(other.open("a", &sealed).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
