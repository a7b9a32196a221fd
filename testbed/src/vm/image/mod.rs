//! Guest images: an uncompressed kernel (booted directly through its PVH entry) plus an
//! initramfs with busybox, dropbear, the module closure the dataplane needs, the tools the
//! walkthroughs call and the swarmkit binary itself. Images are cached by a hash of every
//! input, so a rebuild with nothing changed only hashes (and most hashes come from the
//! fingerprint cache, keyed by file identity).
//!
//! This file says what an image is, and reads a prebuilt one. One job per file below it,
//! each using this one and never the other way round: `build` (hashing the inputs, the
//! cache), `kernel` (where the kernel and its modules come from), `contents` (what is packed
//! from the host), `pack` (writing the initramfs and the volume).

mod build;
mod contents;
mod kernel;
mod pack;

pub use build::build;
pub(crate) use pack::stripped;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

pub const CACHE_ROOT: &str = "/var/cache/swarmkit";
/// Where the agent binary lives inside a node built from our image.
pub const GUEST_BINARY: &str = "/usr/bin/swarmkit";

/// Where the guest mounts the image's read-only volume; its files are linked into place
/// from the initramfs.
pub const VOLUME_MOUNT: &str = "/sk";
/// Where a guest has iproute2's `ip`.
pub const IPROUTE2_IP: &str = "/usr/lib/iproute2/ip";

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
        "{0} is not installed; install it (Debian: apt-get install busybox-static dropbear-bin nftables ipvsadm conntrack iproute2 curl kmod squashfs-tools crun tini)"
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

pub fn default_cache() -> PathBuf {
    PathBuf::from(CACHE_ROOT)
}
