//! Layer tarballs unpacked for overlayfs: whiteouts become what overlayfs reads (`.wh.NAME`
//! a 0:0 character device NAME; `.wh..wh..opq` the `trusted.overlay.opaque=y` xattr on its
//! directory), ownership, modes, times, links and devices kept, and no path may leave the
//! layer's directory: `..` is refused, and symlinks already unpacked are never followed
//! (a symlink's target, absolute or not, is only content).

use std::ffi::CString;
use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";
/// The xattr overlayfs reads for a directory that hides the lower layers' contents.
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// Unpacks the layer `blob` (gzip or plain tar, told apart by their first bytes) into `dest`
/// (which must exist and be empty), and returns the digest of the uncompressed tar: the
/// layer's DiffID.
pub fn unpack_layer(blob: impl Read, dest: &Path) -> io::Result<String> {
    let mut reader = BufReader::with_capacity(256 * 1024, blob);
    let head = reader.fill_buf()?;
    let tar: Box<dyn Read> = if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::MultiGzDecoder::new(reader))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "zstd-compressed layers are not supported (push the image with gzip layers)",
        ));
    } else {
        Box::new(reader)
    };
    let mut hashing = HashingReader {
        inner: tar,
        hasher: Sha256::new(),
    };
    unpack_tar(&mut hashing, dest)?;
    // The end-of-archive blocks (and any padding) are part of the DiffID.
    io::copy(&mut hashing, &mut io::sink())?;
    Ok(format!("sha256:{}", hex::encode(hashing.hasher.finalize())))
}

struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// `path` of a tar entry as a relative path of normal components, or an error when it would
/// leave the layer (`..`).
pub fn entry_path(path: &Path) -> io::Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(invalid(format!(
                    "{}: path escapes the layer root",
                    path.display()
                )));
            }
        }
    }
    Ok(out)
}

/// Makes the parent directories of `rel` under `root`, refusing to go through anything that
/// is not a real directory (a symlink unpacked earlier is never followed).
fn make_parents(root: &Path, rel: &Path) -> io::Result<PathBuf> {
    let mut dir = root.to_path_buf();
    if let Some(parent) = rel.parent() {
        for c in parent.components() {
            dir.push(c);
            match fs::symlink_metadata(&dir) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(invalid(format!(
                        "{}: a parent is not a directory (symlinks are not followed while unpacking)",
                        rel.display()
                    )));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::DirBuilder::new().mode(0o755).create(&dir)?;
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(root.join(rel))
}

/// Removes what is at `path` (without following it), unless both it and the new entry are
/// directories.
fn clear(path: &Path, new_is_dir: bool) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() && new_is_dir => Ok(()),
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| invalid(format!("{}: NUL in path", p.display())))
}

/// `lsetxattr`: on the link itself, never its target.
pub fn set_xattr(path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let p = cstr(path)?;
    let n = CString::new(name).map_err(|_| invalid(format!("xattr {name:?}")))?;
    // SAFETY: valid NUL-terminated strings and a buffer of the given length.
    let r = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn mknod(path: &Path, kind: libc::mode_t, perm: u32, major: u32, minor: u32) -> io::Result<()> {
    let p = cstr(path)?;
    // SAFETY: a valid NUL-terminated path.
    let r = unsafe {
        libc::mknod(
            p.as_ptr(),
            kind | (perm & 0o7777),
            libc::makedev(major, minor),
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sets the modification time of `path` without following a symlink.
fn set_mtime(path: &Path, secs: u64) -> io::Result<()> {
    let p = cstr(path)?;
    let t = libc::timespec {
        tv_sec: secs as libc::time_t,
        tv_nsec: 0,
    };
    let times = [t, t];
    // SAFETY: a valid path and two timespecs.
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            p.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The overlayfs whiteout for `path`: a character device 0:0.
pub fn make_whiteout(path: &Path) -> io::Result<()> {
    clear(path, false)?;
    mknod(path, libc::S_IFCHR, 0, 0, 0)
}

/// Unpacks the entries of a (uncompressed) tar into `root`.
pub fn unpack_tar(tar: impl Read, root: &Path) -> io::Result<()> {
    let mut archive = tar::Archive::new(tar);
    let mut dirs: Vec<(PathBuf, u64)> = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let header = entry.header().clone();
        let kind = header.entry_type();
        if matches!(
            kind,
            tar::EntryType::XGlobalHeader
                | tar::EntryType::XHeader
                | tar::EntryType::GNULongName
                | tar::EntryType::GNULongLink
        ) {
            continue;
        }
        let raw = entry.path()?.into_owned();
        let rel = entry_path(&raw)?;
        if rel.as_os_str().is_empty() {
            continue; // "./" itself
        }
        let name = rel
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let (uid, gid) = (header.uid()? as u32, header.gid()? as u32);
        let mode = header.mode()? & 0o7777;
        let mtime = header.mtime().unwrap_or(0);

        if name == OPAQUE_WHITEOUT {
            let dir = make_parents(root, &rel)?;
            let dir = dir.parent().expect("an entry has a parent");
            set_xattr(dir, OPAQUE_XATTR, b"y")?;
            continue;
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
            if hidden.is_empty() || hidden == "." || hidden == ".." {
                return Err(invalid(format!("{}: a whiteout of nothing", raw.display())));
            }
            let path = make_parents(root, &rel.with_file_name(hidden))?;
            make_whiteout(&path)?;
            std::os::unix::fs::lchown(&path, Some(uid), Some(gid))?;
            continue;
        }

        let path = make_parents(root, &rel)?;
        match kind {
            tar::EntryType::Directory => {
                clear(&path, true)?;
                if !path.exists() {
                    fs::DirBuilder::new().mode(0o755).create(&path)?;
                }
                std::os::unix::fs::lchown(&path, Some(uid), Some(gid))?;
                fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
                apply_xattrs(&mut entry, &path)?;
                dirs.push((path, mtime));
                continue;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                clear(&path, false)?;
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&path)?;
                io::copy(&mut entry, &mut f)?;
            }
            tar::EntryType::Symlink => {
                let target = entry.link_name()?.ok_or_else(|| {
                    invalid(format!("{}: symlink without a target", raw.display()))
                })?;
                clear(&path, false)?;
                std::os::unix::fs::symlink(&*target, &path)?;
            }
            tar::EntryType::Link => {
                let target = entry.link_name()?.ok_or_else(|| {
                    invalid(format!("{}: hard link without a target", raw.display()))
                })?;
                let target_rel = entry_path(&target)?;
                let source = make_parents(root, &target_rel)?;
                if fs::symlink_metadata(&source).is_err() {
                    return Err(invalid(format!(
                        "{}: hard link to {}, which is not in the layer",
                        raw.display(),
                        target.display()
                    )));
                }
                clear(&path, false)?;
                // link(2) does not follow a symlink named as its source.
                fs::hard_link(&source, &path)?;
                continue; // the link shares its source's owner, mode and times
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                clear(&path, false)?;
                let (major, minor) = (
                    header.device_major()?.unwrap_or(0),
                    header.device_minor()?.unwrap_or(0),
                );
                let t = match kind {
                    tar::EntryType::Char => libc::S_IFCHR,
                    tar::EntryType::Block => libc::S_IFBLK,
                    _ => libc::S_IFIFO,
                };
                mknod(&path, t, mode, major, minor)?;
            }
            other => {
                tracing::debug!("{}: skipping tar entry of type {other:?}", raw.display());
                continue;
            }
        }
        std::os::unix::fs::lchown(&path, Some(uid), Some(gid))?;
        if kind != tar::EntryType::Symlink {
            // After chown, which clears set-id bits.
            fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
        }
        apply_xattrs(&mut entry, &path)?;
        set_mtime(&path, mtime)?;
    }
    // Directories last: unpacking into them changed their times.
    for (dir, mtime) in dirs.iter().rev() {
        set_mtime(dir, *mtime)?;
    }
    Ok(())
}

/// PAX `SCHILY.xattr.*` records (file capabilities, say) set on the unpacked file.
fn apply_xattrs<R: Read>(entry: &mut tar::Entry<'_, R>, path: &Path) -> io::Result<()> {
    let Some(exts) = entry.pax_extensions()? else {
        return Ok(());
    };
    for ext in exts {
        let ext = ext?;
        if let Ok(key) = ext.key()
            && let Some(name) = key.strip_prefix("SCHILY.xattr.")
            && let Err(e) = set_xattr(path, name, ext.value_bytes())
        {
            tracing::debug!("{}: xattr {name}: {e}", path.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("oci-unpack-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn header(path: &str, kind: tar::EntryType, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(if kind == tar::EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_000_000);
        // Written raw: `set_path` itself refuses `..`, and these tests need tars that have it.
        let name = &mut h.as_old_mut().name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_cksum();
        h
    }

    fn tar_of(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, data, link) in entries {
            let mut h = header(path, *kind, data.len() as u64);
            if let Some(l) = link {
                h.set_link_name(l).unwrap();
                h.set_cksum();
            }
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    use tar::EntryType::{Directory as D, Link as L, Regular as F, Symlink as S};

    #[test]
    fn whiteouts_become_overlayfs_ones() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: mknod and trusted.* xattrs need root");
            return;
        }
        let root = tempdir("wh");
        let t = tar_of(&[
            ("etc/", D, b"", None),
            ("etc/.wh.gone", F, b"", None),
            ("opaque/", D, b"", None),
            ("opaque/.wh..wh..opq", F, b"", None),
            ("opaque/kept", F, b"x", None),
            ("deep/er/.wh.x", F, b"", None),
        ]);
        let diff_id = unpack_layer(&t[..], &root).unwrap();
        assert_eq!(
            diff_id,
            format!("sha256:{}", hex::encode(Sha256::digest(&t)))
        );
        let m = fs::symlink_metadata(root.join("etc/gone")).unwrap();
        assert!(m.file_type().is_char_device());
        assert_eq!(m.rdev(), 0);
        assert!(!root.join("etc/.wh.gone").exists());
        assert!(
            fs::symlink_metadata(root.join("deep/er/x"))
                .unwrap()
                .file_type()
                .is_char_device()
        );
        let mut buf = [0u8; 8];
        let p = cstr(&root.join("opaque")).unwrap();
        let n = CString::new(OPAQUE_XATTR).unwrap();
        // SAFETY: valid strings and buffer.
        let len = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), 8) };
        assert_eq!(&buf[..len.max(0) as usize], b"y");
        assert!(!root.join("opaque/.wh..wh..opq").exists());
        assert_eq!(fs::read(root.join("opaque/kept")).unwrap(), b"x");
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn files_links_modes_and_gzip() {
        let root = tempdir("files");
        let mut t = tar_of(&[
            ("bin/", D, b"", None),
            ("bin/busybox", F, b"#!elf", None),
            ("bin/sh", S, b"", Some("busybox")),
            ("bin/abs", S, b"", Some("/etc/shadow")),
            ("bin/hard", L, b"", Some("bin/busybox")),
        ]);
        // A mode and owner of its own for one file.
        let mut b = tar::Builder::new(Vec::new());
        let mut h = header("run.sh", F, 3);
        h.set_mode(0o4755);
        h.set_uid(1000);
        h.set_gid(1001);
        h.set_cksum();
        b.append(&h, &b"#!x"[..]).unwrap();
        let t2 = b.into_inner().unwrap();
        t.truncate(t.len() - 1024); // drop the end-of-archive blocks to concatenate
        t.extend_from_slice(&t2);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        io::Write::write_all(&mut gz, &t).unwrap();
        let gz = gz.finish().unwrap();
        let diff_id = unpack_layer(&gz[..], &root).unwrap();
        assert_eq!(
            diff_id,
            format!("sha256:{}", hex::encode(Sha256::digest(&t)))
        );
        assert_eq!(
            fs::read_link(root.join("bin/sh")).unwrap(),
            Path::new("busybox")
        );
        assert_eq!(
            fs::read_link(root.join("bin/abs")).unwrap(),
            Path::new("/etc/shadow")
        );
        let a = fs::metadata(root.join("bin/busybox")).unwrap();
        let b = fs::metadata(root.join("bin/hard")).unwrap();
        assert_eq!(a.ino(), b.ino());
        let m = fs::metadata(root.join("run.sh")).unwrap();
        assert_eq!(m.mtime(), 1_000_000);
        if nix::unistd::Uid::effective().is_root() {
            assert_eq!((m.uid(), m.gid()), (1000, 1001));
            assert_eq!(m.mode() & 0o7777, 0o4755);
        }
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn paths_escaping_the_root_are_refused() {
        let base = tempdir("escape");
        for (name, t) in [
            ("dotdot", tar_of(&[("../evil", F, b"x", None)])),
            ("inner dotdot", tar_of(&[("a/../../evil", F, b"x", None)])),
            (
                "hard link out",
                tar_of(&[("h", L, b"", Some("../../etc/passwd"))]),
            ),
            (
                "through a symlink",
                tar_of(&[("out", S, b"", Some("/tmp")), ("out/evil", F, b"x", None)]),
            ),
            (
                "through a relative symlink",
                tar_of(&[("up", S, b"", Some("..")), ("up/evil", F, b"x", None)]),
            ),
        ] {
            let root = base.join(name.replace(' ', "-"));
            fs::create_dir_all(&root).unwrap();
            let e = unpack_layer(&t[..], &root).expect_err(name);
            assert!(
                e.to_string().contains("escapes") || e.to_string().contains("not followed"),
                "{name}: {e}"
            );
            assert!(
                !base.join("evil").exists() && !Path::new("/tmp/evil").exists(),
                "{name}"
            );
        }
        // An absolute path is taken as relative to the layer.
        let root = base.join("abs");
        fs::create_dir_all(&root).unwrap();
        unpack_layer(&tar_of(&[("/etc/x", F, b"x", None)])[..], &root).unwrap();
        assert!(root.join("etc/x").is_file());
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn entry_paths() {
        assert_eq!(entry_path(Path::new("./a/b")).unwrap(), Path::new("a/b"));
        assert_eq!(entry_path(Path::new("/a")).unwrap(), Path::new("a"));
        assert!(entry_path(Path::new("a/../b")).is_err());
    }
}
