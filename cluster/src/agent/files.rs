//! A task's secrets and configs, put in its own mount namespace from the agent's memory: a
//! fresh tmpfs at /run (the node's /run, with the cluster's sockets, is not the task's
//! business), a read-only tmpfs at /run/secrets for the secrets, and each config file bound
//! read-only onto itself. Nothing touches a disk. Everything is prepared before the fork;
//! `install` runs between fork and exec and so makes only async-signal-safe syscalls.

use std::ffi::CString;

use nix::mount::{MsFlags, mount};

use crate::plan::{FILES_ROOT, SECRETS_DIR, TaskFile};

struct Prepared {
    path: CString,
    data: Vec<u8>,
    uid: u32,
    gid: u32,
    mode: u32,
    secret: bool,
}

pub struct TaskFiles {
    files: Vec<Prepared>,
    /// Directories to make, parents first.
    dirs: Vec<CString>,
    root: CString,
    secrets_dir: CString,
}

fn cstring(s: &str) -> std::io::Result<CString> {
    CString::new(s).map_err(std::io::Error::other)
}

impl TaskFiles {
    pub fn prepare(files: &[TaskFile]) -> std::io::Result<TaskFiles> {
        Self::prepare_at(files, std::path::Path::new("/"))
    }

    /// As [`prepare`](Self::prepare), with every path under `prefix` (made here, before the
    /// fork): a container's, whose runtime binds `<prefix>/run` into it.
    pub fn prepare_at(files: &[TaskFile], prefix: &std::path::Path) -> std::io::Result<TaskFiles> {
        let at = |p: &str| -> std::io::Result<CString> {
            cstring(&prefix.join(p.trim_start_matches('/')).to_string_lossy())
        };
        if !files.is_empty() && prefix != std::path::Path::new("/") {
            std::fs::create_dir_all(prefix.join(FILES_ROOT.trim_start_matches('/')))?;
        }
        let mut dirs: Vec<String> = Vec::new();
        for f in files {
            let mut at = String::new();
            let parts: Vec<&str> = f.path.split('/').filter(|p| !p.is_empty()).collect();
            for part in &parts[..parts.len().saturating_sub(1)] {
                at.push('/');
                at.push_str(part);
                if at.len() > FILES_ROOT.len() && at != SECRETS_DIR && !dirs.contains(&at) {
                    dirs.push(at.clone());
                }
            }
        }
        Ok(TaskFiles {
            files: files
                .iter()
                .map(|f| {
                    Ok(Prepared {
                        path: at(&f.path)?,
                        data: f.data.clone(),
                        uid: f.uid,
                        gid: f.gid,
                        mode: f.mode,
                        secret: f.secret,
                    })
                })
                .collect::<std::io::Result<_>>()?,
            dirs: dirs.iter().map(|d| at(d)).collect::<std::io::Result<_>>()?,
            root: at(FILES_ROOT)?,
            secrets_dir: at(SECRETS_DIR)?,
        })
    }

    /// In the task's own mount namespace, after fork: the tmpfs mounts and the files.
    pub fn install(&self) -> std::io::Result<()> {
        if self.files.is_empty() {
            return Ok(());
        }
        let tmpfs = |at: &CString| {
            mount(
                Some("tmpfs"),
                at.as_c_str(),
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                Some("mode=0755"),
            )
            .map_err(std::io::Error::from)
        };
        tmpfs(&self.root)?;
        let has_secrets = self.files.iter().any(|f| f.secret);
        if has_secrets {
            mkdir(&self.secrets_dir)?;
            tmpfs(&self.secrets_dir)?;
        }
        for d in &self.dirs {
            mkdir(d)?;
        }
        for f in &self.files {
            write(f)?;
        }
        if has_secrets {
            mount(
                None::<&str>,
                self.secrets_dir.as_c_str(),
                None::<&str>,
                MsFlags::MS_REMOUNT
                    | MsFlags::MS_RDONLY
                    | MsFlags::MS_NOSUID
                    | MsFlags::MS_NODEV
                    | MsFlags::MS_NOEXEC,
                None::<&str>,
            )
            .map_err(std::io::Error::from)?;
        }
        for f in self.files.iter().filter(|f| !f.secret) {
            mount(
                Some(f.path.as_c_str()),
                f.path.as_c_str(),
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(std::io::Error::from)?;
            mount(
                None::<&str>,
                f.path.as_c_str(),
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None::<&str>,
            )
            .map_err(std::io::Error::from)?;
        }
        Ok(())
    }
}

fn mkdir(path: &CString) -> std::io::Result<()> {
    // SAFETY: a valid C string; mkdir is async-signal-safe.
    if unsafe { libc::mkdir(path.as_ptr(), 0o755) } == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EEXIST) {
        Ok(())
    } else {
        Err(e)
    }
}

fn write(f: &Prepared) -> std::io::Result<()> {
    let flags = libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC | libc::O_CLOEXEC | libc::O_NOFOLLOW;
    // SAFETY: open, write, fchown, fchmod and close are async-signal-safe; the buffer was
    // allocated before the fork.
    unsafe {
        let fd = libc::open(f.path.as_ptr(), flags, 0o600);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut done = 0;
        while done < f.data.len() {
            let n = libc::write(fd, f.data[done..].as_ptr().cast(), f.data.len() - done);
            if n < 0 {
                let e = std::io::Error::last_os_error();
                libc::close(fd);
                return Err(e);
            }
            done += n as usize;
        }
        // The mode last: the file may be read-only to its owner.
        let ok = libc::fchown(fd, f.uid, f.gid) == 0 && libc::fchmod(fd, f.mode) == 0;
        let e = std::io::Error::last_os_error();
        libc::close(fd);
        if !ok {
            return Err(e);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_are_made_once_and_not_the_mounts() {
        let file = |path: &str| TaskFile {
            path: path.into(),
            data: b"x".to_vec(),
            uid: 0,
            gid: 0,
            mode: 0o444,
            secret: path.starts_with(SECRETS_DIR),
        };
        let p = TaskFiles::prepare(&[
            file("/run/secrets/a"),
            file("/run/secrets/sub/b"),
            file("/run/app/conf.d/x.conf"),
            file("/run/app/y.conf"),
        ])
        .unwrap();
        let dirs: Vec<&str> = p.dirs.iter().map(|d| d.to_str().unwrap()).collect();
        assert_eq!(dirs, ["/run/secrets/sub", "/run/app", "/run/app/conf.d"]);
    }
}
