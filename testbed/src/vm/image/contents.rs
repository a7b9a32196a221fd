//! What an image holds from the host: the kernel modules the guest loads (in three stages),
//! and the binaries packed with their shared libraries, each either in the initramfs or on
//! the shared volume.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{GUEST_BINARY, GuestImageError, IPROUTE2_IP, Result, io};

/// Modules the dataplane needs; their dependencies are resolved with modprobe. Missing ones
/// (built in, or absent from a custom kernel) are skipped. The agent starts once these are in.
pub(super) const MODULES: &[&str] = &[
    "veth",
    "bridge",
    // Bridged replies from a VIP's backend pass the network sandbox's conntrack, which
    // restores the VIP as their source (netcore::overlay).
    "br_netfilter",
    "vxlan",
    // Registry images' tasks: the container's root is overlayfs over the image's layers.
    "overlay",
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
    // The guest's state disk (its manager's store and log, its credentials) is ext4.
    "ext4",
];

/// IPsec ESP and the crypto it needs, and nft expressions our rulesets do not use (there for
/// anyone experimenting by hand). Nothing needs them while a node comes up, so they load
/// after the dataplane modules, off the path to a ready node (jitterentropy's self-test alone
/// is ~0.15 s of emulated CPU); `/run/swarmkit-modules-esp.done` says when they are in.
pub(super) const ESP_MODULES: &[&str] = &[
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
pub(super) const BOOT_MODULES: &[&str] = &["virtio_mmio", "virtio_net", "virtio_blk", "squashfs"];

/// Tools packed with their shared libraries: (host path candidates, guest path).
const TOOLS: &[(&[&str], &str)] = &[
    (&["/usr/sbin/dropbear"], "/usr/sbin/dropbear"),
    (&["/usr/sbin/nft", "/sbin/nft"], "/usr/sbin/nft"),
    (&["/usr/sbin/ipvsadm", "/sbin/ipvsadm"], "/usr/sbin/ipvsadm"),
    (&["/usr/bin/curl"], "/usr/bin/curl"),
    (&["/usr/bin/iperf3"], "/usr/bin/iperf3"),
    // The OCI runtime registry images' tasks run under (the agent finds it on PATH).
    (&["/usr/bin/crun"], "/usr/bin/crun"),
    // `--init` in a container: docker's docker-init is tini, static.
    (&["/usr/bin/tini-static"], "/usr/bin/tini-static"),
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
const BUSYBOX: &[&str] = &["/bin/busybox", "/usr/bin/busybox"];

/// One file packed from the host.
#[derive(Clone, Debug)]
pub(super) struct Packed {
    pub(super) guest: String,
    pub(super) host: PathBuf,
    /// On the shared read-only volume rather than in the initramfs.
    pub(super) on_volume: bool,
}

/// Everything packed from the host. Only what runs before the volume is mounted (busybox,
/// dropbear and their libraries) goes into the initramfs; the rest (swarmkit itself, the
/// tools and their libraries, ~45 MB) lives on the volume, because every initramfs byte is
/// copied by an emulated CPU at boot (three guests on two cores: 4 s to init with a 2 MB
/// initramfs, 6 s with a 50 MB one), while a volume is paged in only where it is read.
pub(super) fn host_files(swarmkit: &Path) -> Result<Vec<Packed>> {
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
    // The CAs a node's distribution trusts (Debian's ca-certificates): registry clients
    // cannot be built without a root store, even for a registry reached over plain HTTP.
    if let Some(ca) = first_existing(&[CA_BUNDLE]) {
        files.push(Packed {
            guest: CA_BUNDLE.into(),
            host: ca,
            on_volume: true,
        });
    }
    Ok(files)
}

const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

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
