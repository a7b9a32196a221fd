//! Writing an image: the initramfs (an uncompressed newc archive with busybox, dropbear, the
//! init scripts, the module closure and links into the volume) and the volume (a squashfs
//! with everything else).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::contents::{BOOT_MODULES, ESP_MODULES, MODULES, Packed};
use super::kernel::{KernelSource, loads_unsigned_modules, module_closure, strip_signature};
use super::{GUEST_BINARY, GuestImageError, Result, VOLUME_MOUNT, io, run};
use crate::vm::cpio::CpioWriter;

pub(super) const RCS: &str = include_str!("../guest/rcS");
pub(super) const RC_NODE: &str = include_str!("../guest/rc.node");
pub(super) const INITTAB: &str = include_str!("../guest/inittab");

/// Writes initramfs.img: an uncompressed newc archive.
pub(super) fn pack(src: &KernelSource, files: &[Packed], dir: &Path) -> Result<()> {
    let boot = module_closure(src, BOOT_MODULES, Vec::new())?;
    let dataplane = module_closure(src, MODULES, boot.clone())?;
    let modules = module_closure(src, ESP_MODULES, dataplane.clone())?;
    let rest: Vec<String> = dataplane[boot.len()..].to_vec();
    let esp: Vec<String> = modules[dataplane.len()..].to_vec();
    // depmod the subset so that the guest's modprobe (kernel autoload) resolves only what
    // is actually packed.
    let stage = dir.join("stage");
    let mbase = src.root.join("lib/modules").join(&src.version);
    let sbase = stage.join("lib/modules").join(&src.version);
    let unsigned = loads_unsigned_modules(src);
    for rel in &modules {
        let to = sbase.join(rel);
        if let Some(p) = to.parent() {
            std::fs::create_dir_all(p).map_err(io(p.display().to_string()))?;
        }
        let data = std::fs::read(mbase.join(rel)).map_err(io(rel.clone()))?;
        let data = if unsigned {
            strip_signature(&data)
        } else {
            &data
        };
        std::fs::write(&to, data).map_err(io(rel.clone()))?;
    }
    for f in [
        "modules.builtin",
        "modules.builtin.modinfo",
        "modules.order",
    ] {
        let _ = std::fs::copy(mbase.join(f), sbase.join(f));
    }
    run(Command::new("depmod")
        .arg("-b")
        .arg(&stage)
        .arg(&src.version))?;

    let busybox = files
        .iter()
        .find(|p| p.guest == "/bin/busybox")
        .map(|p| p.host.clone())
        .ok_or_else(|| GuestImageError::MissingTool("busybox".into()))?;
    let list = run(Command::new(&busybox).arg("--list-full"))?;
    let applets: Vec<String> = String::from_utf8_lossy(&list)
        .lines()
        .map(|l| l.trim().trim_start_matches('/').to_string())
        .filter(|l| !l.is_empty() && l != "bin/busybox")
        .collect();

    // Uncompressed on purpose: under TCG the guest inflates gzip at ~20 MB/s, which costs
    // ~3 s of boot; an uncompressed archive is only copied (measured 6.9 s -> 4.0 s).
    let out = std::fs::File::create(dir.join("initramfs.img")).map_err(io("initramfs.img"))?;
    let mut w = CpioWriter::new(std::io::BufWriter::with_capacity(1 << 20, out));
    let e = io("writing the initramfs");
    let r: std::io::Result<()> = (|| {
        for d in [
            "dev",
            "proc",
            "sys",
            "run",
            "tmp",
            "var/log",
            "etc/dropbear",
            "mnt",
        ] {
            w.dir(d, 0o755)?;
        }
        w.dir("root", 0o700)?;
        w.dir("root/.ssh", 0o700)?;
        w.symlink("init", "bin/busybox")?;
        // What `busybox --install -s` would make at boot, made here: under TCG that one
        // command costs the guest a tenth of a second. Packed tools win over applets.
        for applet in &applets {
            let guest = format!("/{applet}");
            if !files.iter().any(|p| p.guest == guest) {
                w.symlink(applet, "/bin/busybox")?;
            }
        }
        w.file("etc/init.d/rcS", 0o755, RCS.as_bytes())?;
        w.file("etc/init.d/rc.node", 0o755, RC_NODE.as_bytes())?;
        w.file("etc/inittab", 0o644, INITTAB.as_bytes())?;
        w.file("etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\n")?;
        w.file("etc/group", 0o644, b"root:x:0:\n")?;
        w.file("etc/shells", 0o644, b"/bin/sh\n")?;
        w.file("etc/nsswitch.conf", 0o644, b"hosts: files dns\n")?;
        w.file("etc/hosts", 0o644, b"127.0.0.1 localhost\n")?;
        for (name, list) in [
            ("modules.boot", &boot),
            ("modules.load", &rest),
            ("modules.esp", &esp),
        ] {
            let mut text = list.join("\n");
            text.push('\n');
            w.file(&format!("etc/swarmkit/{name}"), 0o644, text.as_bytes())?;
        }
        for entry in walk(&sbase)? {
            let rel = entry.strip_prefix(&stage).unwrap_or(&entry);
            w.file(&rel.to_string_lossy(), 0o644, &std::fs::read(&entry)?)?;
        }
        for p in files {
            if p.on_volume {
                w.symlink(&p.guest, &format!("{VOLUME_MOUNT}{}", p.guest))?;
            } else {
                w.file(&p.guest, 0o755, &std::fs::read(&p.host)?)?;
            }
        }
        let inner = w.finish()?;
        inner.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        Ok(())
    })();
    r.map_err(e)?;
    let _ = std::fs::remove_dir_all(&stage);
    pack_volume(files, dir)
}

/// Writes volume.squashfs: the files the initramfs links to, uncompressed (an emulated CPU
/// would spend more time inflating blocks than the virtio disk spends reading them).
fn pack_volume(files: &[Packed], dir: &Path) -> Result<()> {
    let stage = dir.join("volume");
    for p in files.iter().filter(|p| p.on_volume) {
        let to = stage.join(p.guest.trim_start_matches('/'));
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent.display().to_string()))?;
        }
        let data = if p.guest == GUEST_BINARY {
            stripped(&p.host)
        } else {
            std::fs::read(&p.host)
        }
        .map_err(io(p.host.display().to_string()))?;
        std::fs::write(&to, data).map_err(io(to.display().to_string()))?;
        std::fs::set_permissions(&to, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .map_err(io(to.display().to_string()))?;
    }
    let out = dir.join("volume.squashfs");
    let mut cmd = Command::new("mksquashfs");
    cmd.arg(&stage)
        .arg(&out)
        .args([
            "-noappend",
            "-all-root",
            "-no-xattrs",
            "-quiet",
            "-no-progress",
        ])
        .args(["-noI", "-noD", "-noF", "-noX"])
        .stdout(Stdio::null());
    match run(&mut cmd) {
        Err(GuestImageError::Command { message, .. }) if message.contains("No such file") => {
            return Err(GuestImageError::MissingTool("mksquashfs".into()));
        }
        r => r?,
    };
    let _ = std::fs::remove_dir_all(&stage);
    Ok(())
}

/// The binary without debug info (a debug build is ~10x larger, and every byte is
/// decompressed by an emulated CPU at boot).
pub(crate) fn stripped(bin: &Path) -> std::io::Result<Vec<u8>> {
    // One file per call: the host daemon strips for several nodes at once, and a shared
    // name once let one call read another's half-written output (an empty binary).
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = std::env::temp_dir().join(format!("swarmkit-strip-{}-{n}", std::process::id()));
    let st = Command::new("strip")
        .arg("-s")
        .arg("-o")
        .arg(&tmp)
        .arg(bin)
        .status();
    let data = match st {
        Ok(s) if s.success() => std::fs::read(&tmp),
        _ => std::fs::read(bin),
    };
    let _ = std::fs::remove_file(&tmp);
    data
}

fn walk(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}
