//! Guest images: an uncompressed kernel (booted directly through its PVH entry) plus an
//! initramfs with busybox, dropbear, the module closure the dataplane needs, the tools the
//! walkthroughs call and the swarmkit binary itself. Images are cached by a hash of every
//! input, so a rebuild with nothing changed only hashes (and most hashes come from the
//! fingerprint cache, keyed by file identity).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::cpio::CpioWriter;
use super::fingerprint::Fingerprints;
use super::kernel::{
    KernelSource, custom_kernel, debian_kernel, extract_vmlinux, loads_unsigned_modules,
    module_closure, strip_signature,
};

pub const CACHE_ROOT: &str = "/var/cache/swarmkit";
/// Bumped whenever the layout of an image changes in a way the inputs do not show.
const FORMAT: &str = "swarmkit-image-v3";

const RCS: &str = include_str!("guest/rcS");
const RC_NODE: &str = include_str!("guest/rc.node");
const INITTAB: &str = include_str!("guest/inittab");

/// Modules the dataplane needs; their dependencies are resolved with modprobe. Missing ones
/// (built in, or absent from a custom kernel) are skipped. The agent starts once these are in.
pub const MODULES: &[&str] = &[
    "veth",
    "bridge",
    // Bridged replies from a VIP's backend pass the network sandbox's conntrack, which
    // restores the VIP as their source (netcore::overlay).
    "br_netfilter",
    "vxlan",
    "nf_conntrack",
    "nf_nat",
    "nf_tables",
    "nft_chain_nat",
    "nft_nat",
    "nft_masq",
    "nft_numgen",
    "nft_ct",
    "nft_fib_ipv4",
    "nft_fib_inet",
    "nft_reject_ipv4",
    "nft_reject_inet",
    "ip_vs",
    "ip_vs_rr",
    "ip_vs_wrr",
    "ip_vs_sh",
    "ip_vs_wlc",
    "ip_vs_lc",
    // ctnetlink: how `conntrack -L` (and so `swarmkit trace`) reads the connection table.
    "nf_conntrack_netlink",
];

/// IPsec ESP and the crypto it needs, and nft expressions our rulesets do not use (there for
/// anyone experimenting by hand). Nothing needs them while a node comes up, so they load
/// after the dataplane modules, off the path to a ready node (jitterentropy's self-test alone
/// is ~0.15 s of emulated CPU); `/run/swarmkit-modules-esp.done` says when they are in.
pub const ESP_MODULES: &[&str] = &[
    "nft_redir",
    "nft_hash",
    "nft_socket",
    "nft_limit",
    "nft_objref",
    "xfrm_user",
    "af_key",
    "esp4",
    "gcm",
    "ghash_generic",
    "ctr",
    "seqiv",
    "echainiv",
    "aesni_intel",
    "authenc",
    // drbg seeds itself from jitterentropy when it loads: the RNG must be there first.
    "jitterentropy_rng",
    // The default stdrng is drbg's hmac(sha512) one; without sha512 every AEAD state (ESP's
    // IV generator asks stdrng) fails with "unable to initialize cryptographic operations".
    "sha512_generic",
    "drbg",
];

/// Loaded before the network is configured and the volume mounted; everything else loads in the background while
/// dropbear starts (the agent waits for it).
pub const BOOT_MODULES: &[&str] = &["virtio_mmio", "virtio_net", "virtio_blk", "squashfs"];

/// Tools packed with their shared libraries: (host path candidates, guest path).
const TOOLS: &[(&[&str], &str)] = &[
    (&["/usr/sbin/dropbear"], "/usr/sbin/dropbear"),
    (&["/usr/sbin/nft", "/sbin/nft"], "/usr/sbin/nft"),
    (&["/usr/sbin/ipvsadm", "/sbin/ipvsadm"], "/usr/sbin/ipvsadm"),
    (&["/usr/bin/curl"], "/usr/bin/curl"),
    (&["/usr/bin/iperf3"], "/usr/bin/iperf3"),
    // `swarmkit trace` reads conntrack entries and the VXLAN FDB with the usual tools, on
    // guests as on namespace nodes.
    (
        &["/usr/sbin/conntrack", "/sbin/conntrack"],
        "/usr/sbin/conntrack",
    ),
    (&["/usr/sbin/bridge", "/sbin/bridge"], "/usr/sbin/bridge"),
    // iproute2's own `ip`, to observe xfrm state in tests (busybox's applet has no xfrm);
    // off PATH so the init scripts keep busybox's.
    (&["/usr/bin/ip", "/bin/ip", "/sbin/ip"], IPROUTE2_IP),
];
/// Where a guest has iproute2's `ip`.
pub const IPROUTE2_IP: &str = "/usr/lib/iproute2/ip";
const BUSYBOX: &[&str] = &["/bin/busybox", "/usr/bin/busybox"];

/// Why a guest image (kernel, initramfs, volume for the qemu backend) could not be built or
/// read; not to be confused with `cluster::images`, the built-in app images tasks run.
#[derive(Debug, thiserror::Error)]
pub enum GuestImageError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{cmd}` failed: {message}")]
    Command { cmd: String, message: String },
    #[error(
        "{0} is not installed; install it (Debian: apt-get install busybox-static dropbear-bin nftables ipvsadm conntrack iproute2 curl kmod squashfs-tools)"
    )]
    MissingTool(String),
    #[error("{0} holds no xz-compressed kernel and is not an ELF vmlinux")]
    NoKernel(PathBuf),
    #[error(
        "cannot tell the kernel version of modules directory {0}: give ROOT (with lib/modules/VERSION) or lib/modules/VERSION itself"
    )]
    ModulesLayout(PathBuf),
    #[error("{0} has no modules.dep: run depmod -b ROOT VERSION on it first")]
    NoDepmod(PathBuf),
    #[error(
        "--kernel and --modules go together: give both, or neither to use Debian's linux-image-amd64"
    )]
    HalfCustom,
    #[error("image metadata {path}: {source}")]
    Meta {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

type Result<T, E = GuestImageError> = std::result::Result<T, E>;

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> GuestImageError {
    let what = what.into();
    move |source| GuestImageError::Io { what, source }
}

#[derive(Clone, Debug, Default)]
pub struct BuildOptions {
    pub kernel: Option<PathBuf>,
    pub modules: Option<PathBuf>,
    /// Also place vmlinux and initramfs.img here.
    pub out: Option<PathBuf>,
    /// The swarmkit binary to pack (default: the running executable).
    pub swarmkit: Option<PathBuf>,
    pub cache: Option<PathBuf>,
    /// Ask apt for the newest linux-image-amd64 even when one is already unpacked.
    pub refresh_kernel: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Image {
    pub hash: String,
    pub kernel_version: String,
    pub vmlinux: PathBuf,
    pub initramfs: PathBuf,
    /// A read-only squashfs the guest mounts at [`VOLUME_MOUNT`], shared by every guest.
    #[serde(default)]
    pub volume: Option<PathBuf>,
    /// sha256 of the packed swarmkit binary, so the SSH layer can tell whether the guest
    /// already runs this build.
    pub swarmkit_sha256: String,
    #[serde(default)]
    pub cached: bool,
    /// The QEMU machine the image boots on.
    #[serde(default)]
    pub machine: Machine,
    /// Extra kernel parameters (a foreign image, e.g. NixOS's `init=/nix/store/...`).
    #[serde(default)]
    pub append: String,
}

/// Which QEMU machine boots an image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Machine {
    /// The PC (i440FX, PCI devices): what any distribution kernel and initrd expects.
    #[default]
    Pc,
    /// QEMU's microvm (virtio-mmio devices, minimal ACPI, no PCI or legacy probing): our own
    /// images, whose initramfs loads virtio_mmio. Under TCG the kernel reaches init ~1 s
    /// sooner than on a PC (three guests on two cores: 4.1 s -> 3.2 s).
    Microvm,
}

/// A prebuilt image from a directory with `kernel`, `initrd` and optionally `cmdline` (extra
/// kernel parameters): how the Nix flake hands NixOS guests to the qemu backend. The guest
/// must follow the same contract as ours (see vms/README.md).
pub const ENV_IMAGE_DIR: &str = "SWARMKIT_VM_IMAGE";

pub fn from_dir(dir: &Path) -> Result<Image> {
    let need = |name: &str| {
        let p = dir.join(name);
        if p.exists() {
            Ok(p)
        } else {
            Err(GuestImageError::Io {
                what: p.display().to_string(),
                source: std::io::ErrorKind::NotFound.into(),
            })
        }
    };
    Ok(Image {
        hash: format!("dir:{}", dir.display()),
        kernel_version: String::new(),
        vmlinux: need("kernel")?,
        initramfs: need("initrd")?,
        volume: None,
        machine: Machine::Pc,
        swarmkit_sha256: String::new(),
        cached: true,
        append: std::fs::read_to_string(dir.join("cmdline"))
            .unwrap_or_default()
            .trim()
            .to_string(),
    })
}

pub(crate) fn run(cmd: &mut Command) -> Result<Vec<u8>> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| GuestImageError::Command {
            cmd: shown.clone(),
            message: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(GuestImageError::Command {
            cmd: shown,
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out.stdout)
}

/// Shared libraries of a dynamically linked binary, as ldd resolves them on this host.
fn libraries(bin: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd").arg(bin).output().map_err(io("ldd"))?;
    // ldd fails on static binaries ("not a dynamic executable"): they need nothing.
    if !out.status.success() {
        return Ok(Vec::new());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let p = match l.split_once("=>") {
                Some((_, r)) => r.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            p.starts_with('/').then(|| PathBuf::from(p))
        })
        .collect())
}

fn first_existing(candidates: &[&str]) -> Option<PathBuf> {
    candidates.iter().map(PathBuf::from).find(|p| p.is_file())
}

/// One file packed from the host.
#[derive(Clone, Debug)]
struct Packed {
    guest: String,
    host: PathBuf,
    /// On the shared read-only volume rather than in the initramfs.
    on_volume: bool,
}

/// Where the agent binary lives inside a node built from our image.
pub const GUEST_BINARY: &str = "/usr/bin/swarmkit";

/// Where the guest mounts the image's read-only volume; its files are linked into place
/// from the initramfs.
pub const VOLUME_MOUNT: &str = "/sk";

/// Everything packed from the host. Only what runs before the volume is mounted (busybox,
/// dropbear and their libraries) goes into the initramfs; the rest (swarmkit itself, the
/// tools and their libraries, ~45 MB) lives on the volume, because every initramfs byte is
/// copied by an emulated CPU at boot (three guests on two cores: 4 s to init with a 2 MB
/// initramfs, 6 s with a 50 MB one), while a volume is paged in only where it is read.
fn host_files(swarmkit: &Path) -> Result<Vec<Packed>> {
    let busybox =
        first_existing(BUSYBOX).ok_or_else(|| GuestImageError::MissingTool("busybox".into()))?;
    let mut files = vec![Packed {
        guest: "/bin/busybox".into(),
        host: busybox,
        on_volume: false,
    }];
    let mut bins: Vec<(String, PathBuf, bool)> = vec![(GUEST_BINARY.into(), swarmkit.into(), true)];
    for (candidates, guest) in TOOLS {
        let host = first_existing(candidates)
            .ok_or_else(|| GuestImageError::MissingTool(candidates[0].to_string()))?;
        bins.push((guest.to_string(), host, *guest != "/usr/sbin/dropbear"));
    }
    // Boot-time binaries first, so that a library they share with the rest stays in the
    // initramfs.
    bins.sort_by_key(|(_, _, on_volume)| *on_volume);
    for (guest, host, on_volume) in bins {
        for lib in libraries(&host)? {
            let g = lib.to_string_lossy().into_owned();
            if !files.iter().any(|f| f.guest == g) {
                files.push(Packed {
                    guest: g,
                    host: lib,
                    on_volume,
                });
            }
        }
        files.push(Packed {
            guest,
            host,
            on_volume,
        });
    }
    Ok(files)
}

pub fn default_cache() -> PathBuf {
    PathBuf::from(CACHE_ROOT)
}

/// Builds the image, or returns the cached one when no input changed.
pub fn build(opts: &BuildOptions) -> Result<Image> {
    let cache = opts.cache.clone().unwrap_or_else(default_cache);
    std::fs::create_dir_all(&cache).map_err(io(cache.display().to_string()))?;
    let src = match (&opts.kernel, &opts.modules) {
        (None, None) => debian_kernel(&cache, opts.refresh_kernel)?,
        (Some(k), Some(m)) => custom_kernel(k, m)?,
        _ => return Err(GuestImageError::HalfCustom),
    };
    let swarmkit = match &opts.swarmkit {
        Some(p) => p.clone(),
        None => std::env::current_exe().map_err(io("finding the swarmkit binary"))?,
    };
    let files = host_files(&swarmkit)?;

    let mut fp = Fingerprints::load(&cache);
    let mut h = Sha256::new();
    h.update(FORMAT);
    h.update(RCS);
    h.update(RC_NODE);
    h.update(INITTAB);
    h.update(&src.version);
    h.update(
        fp.get(&src.vmlinuz)
            .map_err(io(src.vmlinuz.display().to_string()))?,
    );
    h.update(
        fp.get(
            &src.root
                .join("lib/modules")
                .join(&src.version)
                .join("modules.dep"),
        )
        .map_err(io("modules.dep"))?,
    );
    for m in BOOT_MODULES.iter().chain(MODULES).chain(ESP_MODULES) {
        h.update(m);
        h.update([0]);
    }
    let mut swarmkit_sha256 = String::new();
    for p in &files {
        let f = fp.get(&p.host).map_err(io(p.host.display().to_string()))?;
        if p.guest == GUEST_BINARY {
            swarmkit_sha256 = f.clone();
        }
        h.update(&p.guest);
        h.update([u8::from(p.on_volume)]);
        h.update(f);
    }
    fp.save();
    let hash = hex::encode(h.finalize())[..16].to_string();

    let dir = cache.join("images").join(&hash);
    let meta = dir.join("image.json");
    let image = if let Ok(bytes) = std::fs::read(&meta) {
        let mut img: Image =
            serde_json::from_slice(&bytes).map_err(|source| GuestImageError::Meta {
                path: meta.clone(),
                source,
            })?;
        img.cached = true;
        img
    } else {
        let tmp = cache
            .join("images")
            .join(format!(".{hash}.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(io(tmp.display().to_string()))?;
        extract_vmlinux(&src.vmlinuz, &tmp.join("vmlinux"))?;
        pack(&src, &files, &tmp)?;
        let img = Image {
            hash: hash.clone(),
            kernel_version: src.version.clone(),
            vmlinux: dir.join("vmlinux"),
            initramfs: dir.join("initramfs.img"),
            volume: Some(dir.join("volume.squashfs")),
            machine: Machine::Microvm,
            swarmkit_sha256,
            cached: false,
            append: String::new(),
        };
        let json = serde_json::to_vec_pretty(&img).map_err(|source| GuestImageError::Meta {
            path: meta.clone(),
            source,
        })?;
        std::fs::write(tmp.join("image.json"), json).map_err(io("image.json"))?;
        // A concurrent build of the same inputs may have won; its result is identical.
        if std::fs::rename(&tmp, &dir).is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        prune(&cache.join("images"), KEEP_IMAGES);
        img
    };
    if let Some(out) = &opts.out {
        std::fs::create_dir_all(out).map_err(io(out.display().to_string()))?;
        let mut outputs = vec![
            (&image.vmlinux, "vmlinux"),
            (&image.initramfs, "initramfs.img"),
        ];
        if let Some(v) = &image.volume {
            outputs.push((v, "volume.squashfs"));
        }
        for (from, name) in outputs {
            let to = out.join(name);
            let _ = std::fs::remove_file(&to);
            if std::fs::hard_link(from, &to).is_err() {
                std::fs::copy(from, &to).map_err(io(to.display().to_string()))?;
            }
        }
    }
    Ok(image)
}

/// Every rebuilt binary makes a new ~115 MB image; keep only the most recent few. Images in
/// use by running guests are safe: QEMU reads kernel and initrd only when it starts, and
/// keeps the volume open, so a removed volume lives on until its last guest stops.
const KEEP_IMAGES: usize = 3;

fn prune(images: &Path, keep: usize) {
    let Ok(dir) = std::fs::read_dir(images) else {
        return;
    };
    let mut all: Vec<(std::time::SystemTime, PathBuf)> = dir
        .filter_map(|e| e.ok())
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    all.sort_by_key(|(modified, _)| std::cmp::Reverse(*modified));
    for (_, old) in all.into_iter().skip(keep) {
        let _ = std::fs::remove_dir_all(old);
    }
}

/// Writes initramfs.img: an uncompressed newc archive.
fn pack(src: &KernelSource, files: &[Packed], dir: &Path) -> Result<()> {
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
