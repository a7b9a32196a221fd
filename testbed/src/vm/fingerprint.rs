//! Content hashes of host files, remembered by file identity (device, inode, size, mtime)
//! so that an unchanged 200 MB debug binary is not re-read on every `vm build`.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

pub struct Fingerprints {
    file: PathBuf,
    known: BTreeMap<String, String>,
    dirty: bool,
}

impl Fingerprints {
    pub fn load(cache: &Path) -> Self {
        let file = cache.join("fingerprints.json");
        let known = std::fs::read(&file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Fingerprints {
            file,
            known,
            dirty: false,
        }
    }

    /// sha256 (hex) of the file's bytes.
    pub fn get(&mut self, path: &Path) -> std::io::Result<String> {
        let path = std::fs::canonicalize(path)?;
        let m = std::fs::metadata(&path)?;
        let key = format!(
            "{}|{}|{}|{}|{}.{}",
            path.display(),
            m.dev(),
            m.ino(),
            m.size(),
            m.mtime(),
            m.mtime_nsec()
        );
        if let Some(h) = self.known.get(&key) {
            return Ok(h.clone());
        }
        let mut f = std::fs::File::open(&path)?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        let hex = hex::encode(h.finalize());
        // Forget older identities of the same path so the file does not grow forever.
        let prefix = format!("{}|", path.display());
        self.known.retain(|k, _| !k.starts_with(&prefix));
        self.known.insert(key, hex.clone());
        self.dirty = true;
        Ok(hex)
    }

    pub fn save(&self) {
        if !self.dirty {
            return;
        }
        if let Ok(bytes) = serde_json::to_vec(&self.known) {
            let tmp = self
                .file
                .with_extension(format!("tmp{}", std::process::id()));
            if std::fs::write(&tmp, bytes).is_ok() {
                let _ = std::fs::rename(tmp, &self.file);
            }
        }
    }
}
