//! Building an image: every input hashed (kernel, module list, packed files, init scripts,
//! the layout's version), the image packed only when the cache has no image of that hash,
//! and the cache kept to the last few images.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::contents::{BOOT_MODULES, ESP_MODULES, MODULES, host_files};
use super::kernel::{custom_kernel, debian_kernel, extract_vmlinux};
use super::pack::{INITTAB, RC_NODE, RCS, pack};
use super::{
    BuildOptions, GUEST_BINARY, GuestImageError, Image, Machine, Result, default_cache, io,
};
use crate::vm::fingerprint::Fingerprints;

/// Bumped whenever the layout of an image changes in a way the inputs do not show.
const FORMAT: &str = "swarmkit-image-v3";

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
