//! Where a guest kernel comes from: Debian's linux-image-amd64 (downloaded and unpacked into
//! the cache, never installed) or a kernel and module tree given on the command line; and the
//! pieces cut out of it: the uncompressed vmlinux and the module closure.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{GuestImageError, Result, io, run};

/// Where the kernel and its module tree come from.
pub struct KernelSource {
    pub vmlinuz: PathBuf,
    pub root: PathBuf,
    pub version: String,
}

/// Downloads (once) and unpacks Debian's current linux-image-amd64 into the cache.
pub fn debian_kernel(cache: &Path, refresh: bool) -> Result<KernelSource> {
    // Asking apt costs ~1.5 s; a kernel already unpacked is used unless a refresh is asked.
    if !refresh && let Some(src) = unpacked_kernel(cache) {
        return Ok(src);
    }
    let deps = run(Command::new("apt-cache").args(["depends", "linux-image-amd64"]))?;
    let pkg = String::from_utf8_lossy(&deps)
        .lines()
        .find_map(|l| l.trim().strip_prefix("Depends: ").map(str::to_string))
        .filter(|p| p.starts_with("linux-image-"))
        .ok_or_else(|| GuestImageError::Command {
            cmd: "apt-cache depends linux-image-amd64".into(),
            message: "no linux-image-* dependency (run apt-get update?)".into(),
        })?;
    let version = pkg.trim_start_matches("linux-image-").to_string();
    let unpacked = cache.join("kernel").join(&pkg);
    let done = unpacked.join(".unpacked");
    if !done.exists() {
        let debs = cache.join("debs");
        std::fs::create_dir_all(&debs).map_err(io(debs.display().to_string()))?;
        let find_deb = || -> Option<PathBuf> {
            std::fs::read_dir(&debs)
                .ok()?
                .filter_map(|e| e.ok())
                .find_map(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    (n.starts_with(&format!("{pkg}_")) && n.ends_with(".deb")).then(|| e.path())
                })
        };
        let deb = match find_deb() {
            Some(d) => d,
            None => {
                run(Command::new("apt-get")
                    .args(["download", &pkg])
                    .current_dir(&debs))?;
                find_deb().ok_or_else(|| GuestImageError::Command {
                    cmd: format!("apt-get download {pkg}"),
                    message: "no .deb appeared".into(),
                })?
            }
        };
        let _ = std::fs::remove_dir_all(&unpacked);
        std::fs::create_dir_all(&unpacked).map_err(io(unpacked.display().to_string()))?;
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
        run(Command::new("depmod")
            .arg("-b")
            .arg(&unpacked)
            .arg(&version))?;
        std::fs::write(&done, &pkg).map_err(io(done.display().to_string()))?;
    }
    Ok(KernelSource {
        vmlinuz: unpacked.join("boot").join(format!("vmlinuz-{version}")),
        root: unpacked,
        version,
    })
}

fn unpacked_kernel(cache: &Path) -> Option<KernelSource> {
    let mut pkgs: Vec<String> = std::fs::read_dir(cache.join("kernel"))
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join(".unpacked").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    pkgs.sort_by_key(|p| natural_key(p));
    let pkg = pkgs.pop()?;
    let version = pkg.trim_start_matches("linux-image-").to_string();
    let root = cache.join("kernel").join(&pkg);
    Some(KernelSource {
        vmlinuz: root.join("boot").join(format!("vmlinuz-{version}")),
        root,
        version,
    })
}

/// Orders "6.1.0-9" before "6.1.0-56".
fn natural_key(s: &str) -> Vec<u64> {
    s.split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse().ok())
        .collect()
}

pub fn custom_kernel(kernel: &Path, modules: &Path) -> Result<KernelSource> {
    let lm = modules.join("lib/modules");
    let (root, version) = if lm.is_dir() {
        let mut versions: Vec<String> = std::fs::read_dir(&lm)
            .map_err(io(lm.display().to_string()))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        versions.sort();
        match versions.as_slice() {
            [v] => (modules.to_path_buf(), v.clone()),
            _ => return Err(GuestImageError::ModulesLayout(modules.into())),
        }
    } else if modules.join("kernel").is_dir() || modules.join("modules.dep").is_file() {
        // DIR is lib/modules/VERSION: its root is three levels up.
        let version = modules
            .file_name()
            .map(|v| v.to_string_lossy().into_owned())
            .ok_or_else(|| GuestImageError::ModulesLayout(modules.into()))?;
        let root = modules
            .ancestors()
            .nth(3)
            .ok_or_else(|| GuestImageError::ModulesLayout(modules.into()))?;
        (root.to_path_buf(), version)
    } else {
        return Err(GuestImageError::ModulesLayout(modules.into()));
    };
    let dep = root.join("lib/modules").join(&version).join("modules.dep");
    if !dep.is_file() {
        return Err(GuestImageError::NoDepmod(dep));
    }
    Ok(KernelSource {
        vmlinuz: kernel.to_path_buf(),
        root,
        version,
    })
}

/// The uncompressed ELF kernel: as is when it already is one, else the xz stream inside a
/// bzImage (Debian compresses with xz).
pub fn extract_vmlinux(vmlinuz: &Path, dest: &Path) -> Result<()> {
    let bytes = std::fs::read(vmlinuz).map_err(io(vmlinuz.display().to_string()))?;
    if bytes.starts_with(b"\x7fELF") {
        return std::fs::write(dest, &bytes).map_err(io(dest.display().to_string()));
    }
    let magic = b"\xfd7zXZ\x00";
    let at = bytes
        .windows(magic.len())
        .position(|w| w == magic)
        .ok_or_else(|| GuestImageError::NoKernel(vmlinuz.into()))?;
    let out = std::fs::File::create(dest).map_err(io(dest.display().to_string()))?;
    let mut child = Command::new("xz")
        .args(["-dc", "--single-stream"])
        .stdin(Stdio::piped())
        .stdout(out)
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|_| GuestImageError::MissingTool("xz".into()))?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| GuestImageError::MissingTool("xz".into()))?;
    let tail = bytes[at..].to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&tail));
    let out = child.wait_with_output().map_err(io("xz"))?;
    let _ = writer.join();
    if !out.status.success() {
        return Err(GuestImageError::Command {
            cmd: "xz -dc".into(),
            message: String::from_utf8_lossy(&out.stderr).trim().into(),
        });
    }
    Ok(())
}

/// insmod paths (relative to lib/modules/VERSION) in load order, dependencies first.
pub fn module_closure(
    src: &KernelSource,
    wanted: &[&str],
    mut order: Vec<String>,
) -> Result<Vec<String>> {
    let base = src.root.join("lib/modules").join(&src.version);
    for m in wanted {
        let Ok(out) = run(Command::new("modprobe").arg("-d").arg(&src.root).args([
            "-S",
            &src.version,
            "--show-depends",
            m,
        ])) else {
            tracing::debug!("module {m} not in this kernel; skipped");
            continue;
        };
        for line in String::from_utf8_lossy(&out).lines() {
            let Some(path) = line.strip_prefix("insmod ") else {
                continue;
            };
            let path = path.split_whitespace().next().unwrap_or_default();
            if let Ok(rel) = Path::new(path).strip_prefix(&base) {
                let rel = rel.to_string_lossy().into_owned();
                if !order.contains(&rel) {
                    order.push(rel);
                }
            }
        }
    }
    Ok(order)
}

/// Whether this kernel loads unsigned modules. Only a kernel whose config says so (Debian's
/// does: signatures are checked but not enforced, and lockdown only comes with Secure Boot,
/// which a directly booted guest never has) gets its modules' signatures stripped; a custom
/// kernel without a config keeps them.
pub fn loads_unsigned_modules(src: &KernelSource) -> bool {
    let config = src
        .root
        .join("boot")
        .join(format!("config-{}", src.version));
    let Ok(text) = std::fs::read_to_string(config) else {
        return false;
    };
    let set = |key: &str| text.lines().any(|l| l == format!("{key}=y"));
    !set("CONFIG_MODULE_SIG_FORCE")
        && !set("CONFIG_LOCK_DOWN_KERNEL_FORCE_INTEGRITY")
        && !set("CONFIG_LOCK_DOWN_KERNEL_FORCE_CONFIDENTIALITY")
}

/// A module without its appended signature. Under TCG the guest spends ~15 ms of emulated
/// RSA and SHA-256 per signed module, ~0.8 s for the dataplane's closure (measured: 2.7 s ->
/// 1.8 s for the whole insmod pass on one guest).
pub fn strip_signature(module: &[u8]) -> &[u8] {
    const MAGIC: &[u8] = b"~Module signature appended~\n";
    // struct module_signature: 12 bytes, the signature's length big-endian in the last 4.
    const INFO: usize = 12;
    let Some(body) = module.strip_suffix(MAGIC) else {
        return module;
    };
    if body.len() < INFO {
        return module;
    }
    let info = &body[body.len() - INFO..];
    let sig_len = u32::from_be_bytes([info[8], info[9], info[10], info[11]]) as usize;
    match (body.len() - INFO).checked_sub(sig_len) {
        Some(end) => &module[..end],
        None => module,
    }
}

#[cfg(test)]
mod tests {
    use super::strip_signature;

    #[test]
    fn strips_an_appended_signature() {
        let mut m = b"\x7fELF module body".to_vec();
        let body = m.len();
        m.extend_from_slice(b"SIGNATURE");
        m.extend_from_slice(&[0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 9]);
        m.extend_from_slice(b"~Module signature appended~\n");
        assert_eq!(strip_signature(&m), &m[..body]);
    }

    #[test]
    fn leaves_unsigned_and_malformed_modules_alone() {
        assert_eq!(strip_signature(b"plain"), b"plain");
        let bogus = b"xx\0\0\0\xff~Module signature appended~\n";
        assert_eq!(strip_signature(bogus), bogus);
    }
}
