//! A writer for the "newc" cpio format, the only one the kernel unpacks as an initramfs.
//! Entries are written with fixed owner (root) and mtime 0, so the same inputs always give
//! the same bytes and the image hash stays meaningful.

use std::collections::BTreeSet;
use std::io::{self, Write};

pub struct CpioWriter<W: Write> {
    out: W,
    ino: u32,
    written: u64,
    dirs: BTreeSet<String>,
}

const TRAILER: &str = "TRAILER!!!";

impl<W: Write> CpioWriter<W> {
    pub fn new(out: W) -> Self {
        CpioWriter {
            out,
            ino: 1,
            written: 0,
            dirs: BTreeSet::new(),
        }
    }

    fn header(&mut self, name: &str, mode: u32, size: u64) -> io::Result<()> {
        if size > u64::from(u32::MAX) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name} is too large for a cpio archive"),
            ));
        }
        let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
        let hdr = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino,
            mode,
            0,
            0,
            nlink,
            0,
            size,
            0,
            0,
            0,
            0,
            name.len() + 1,
            0
        );
        self.ino += 1;
        self.put(hdr.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()
    }

    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.out.write_all(b)?;
        self.written += b.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let n = (4 - (self.written % 4) as usize) % 4;
        self.put(&[0u8; 3][..n])
    }

    /// Creates every missing parent directory of `path` (mode 0755).
    fn parents(&mut self, path: &str) -> io::Result<()> {
        let mut acc = String::new();
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        for p in &parts[..parts.len().saturating_sub(1)] {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(p);
            if self.dirs.insert(acc.clone()) {
                let name = acc.clone();
                self.header(&name, 0o040755, 0)?;
            }
        }
        Ok(())
    }

    pub fn dir(&mut self, path: &str, perm: u32) -> io::Result<()> {
        let path = path.trim_start_matches('/');
        self.parents(path)?;
        if self.dirs.insert(path.to_string()) {
            self.header(path, 0o040000 | perm, 0)?;
        }
        Ok(())
    }

    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        let path = path.trim_start_matches('/');
        self.parents(path)?;
        self.header(path, 0o100000 | perm, data.len() as u64)?;
        self.put(data)?;
        self.pad()
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        let path = path.trim_start_matches('/');
        self.parents(path)?;
        self.header(path, 0o120777, target.len() as u64)?;
        self.put(target.as_bytes())?;
        self.pad()
    }

    pub fn finish(mut self) -> io::Result<W> {
        self.header(TRAILER, 0, 0)?;
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_aligned_and_parents_created() {
        let mut w = CpioWriter::new(Vec::new());
        w.file("/a/b/c.txt", 0o644, b"hello").unwrap();
        w.symlink("/init", "bin/busybox").unwrap();
        let out = w.finish().unwrap();
        assert_eq!(out.len() % 4, 0);
        let s = String::from_utf8_lossy(&out);
        assert!(s.starts_with("070701"));
        let a = s.find("a\0").unwrap();
        let ab = s.find("a/b\0").unwrap();
        let f = s.find("a/b/c.txt\0").unwrap();
        assert!(a < ab && ab < f);
        assert!(s.contains("TRAILER!!!"));
    }

    #[test]
    fn same_input_same_bytes() {
        let build = || {
            let mut w = CpioWriter::new(Vec::new());
            w.file("x", 0o600, b"k").unwrap();
            w.finish().unwrap()
        };
        assert_eq!(build(), build());
    }
}
