//! OCI images built offline for tests: an OCI image layout directory (`oci-layout`,
//! `index.json`, `blobs/sha256/…`) of gzip'd tar layers and a docker-style config, made from
//! bytes in memory or files of the host (busybox-static's `/bin/busybox`), and pushed to a
//! registry with skopeo.

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// Where Debian's busybox-static puts its binary.
pub const BUSYBOX: &str = "/bin/busybox";

/// One entry of a layer.
#[derive(Clone, Debug)]
enum Entry {
    Dir {
        path: String,
        mode: u32,
    },
    File {
        path: String,
        data: Vec<u8>,
        mode: u32,
        uid: u64,
        gid: u64,
    },
    Symlink {
        path: String,
        target: String,
    },
    Hardlink {
        path: String,
        target: String,
    },
}

/// A layer: its entries in order.
#[derive(Clone, Debug, Default)]
pub struct Layer {
    entries: Vec<Entry>,
}

/// Archives hold relative paths; a layer's builder takes them as the container sees them too.
fn in_archive(path: &str) -> String {
    path.trim_start_matches('/').to_string()
}

impl Layer {
    pub fn new() -> Layer {
        Layer::default()
    }

    pub fn dir(mut self, path: &str, mode: u32) -> Layer {
        self.entries.push(Entry::Dir {
            path: in_archive(path),
            mode,
        });
        self
    }

    /// A file owned by root.
    pub fn file(self, path: &str, data: impl Into<Vec<u8>>, mode: u32) -> Layer {
        self.file_owned(path, data, mode, 0, 0)
    }

    pub fn file_owned(
        mut self,
        path: &str,
        data: impl Into<Vec<u8>>,
        mode: u32,
        uid: u64,
        gid: u64,
    ) -> Layer {
        self.entries.push(Entry::File {
            path: in_archive(path),
            data: data.into(),
            mode,
            uid,
            gid,
        });
        self
    }

    /// A file with the content of `host` (its mode too).
    pub fn host_file(self, path: &str, host: &Path) -> Layer {
        use std::os::unix::fs::PermissionsExt;
        let data =
            std::fs::read(host).unwrap_or_else(|e| panic!("reading {}: {e}", host.display()));
        let mode = std::fs::metadata(host)
            .expect("metadata")
            .permissions()
            .mode()
            & 0o7777;
        self.file(path, data, mode)
    }

    pub fn symlink(mut self, path: &str, target: &str) -> Layer {
        self.entries.push(Entry::Symlink {
            path: in_archive(path),
            target: target.into(),
        });
        self
    }

    pub fn hardlink(mut self, path: &str, target: &str) -> Layer {
        self.entries.push(Entry::Hardlink {
            path: in_archive(path),
            target: in_archive(target),
        });
        self
    }

    /// Deletes `path` of a lower layer (`DIR/.wh.NAME`).
    pub fn whiteout(self, path: &str) -> Layer {
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        let wh = if dir.is_empty() {
            format!(".wh.{name}")
        } else {
            format!("{dir}/.wh.{name}")
        };
        self.file(&wh, Vec::new(), 0o644)
    }

    /// Hides everything lower layers have in `dir` (`DIR/.wh..wh..opq`).
    pub fn opaque(self, dir: &str) -> Layer {
        self.file(&format!("{dir}/.wh..wh..opq"), Vec::new(), 0o644)
    }

    /// A file of `size` bytes that do not compress, to make an image of a given size.
    pub fn padding(self, path: &str, size: usize) -> Layer {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut data = Vec::with_capacity(size + 8);
        while data.len() < size {
            // xorshift64*
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            data.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
        }
        data.truncate(size);
        self.file(path, data, 0o644)
    }

    /// `/bin/busybox` from the host (busybox-static) with `/bin/APPLET` symlinks to it, and
    /// the directories a container expects.
    pub fn busybox(applets: &[&str]) -> Layer {
        let mut l = Layer::new()
            .dir("bin", 0o755)
            .dir("etc", 0o755)
            .dir("tmp", 0o1777)
            .dir("proc", 0o555)
            .dir("sys", 0o555)
            .dir("dev", 0o755)
            .host_file("bin/busybox", Path::new(BUSYBOX));
        for a in applets {
            l = l.symlink(&format!("bin/{a}"), "busybox");
        }
        l
    }

    /// The uncompressed tar: fixed times, so the same layer always has the same digests.
    pub fn tar(&self) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for e in &self.entries {
            let mut h = tar::Header::new_gnu();
            h.set_mtime(1_700_000_000);
            h.set_uid(0);
            h.set_gid(0);
            let (path, data): (&str, &[u8]) = match e {
                Entry::Dir { path, mode } => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(*mode);
                    (path, &[])
                }
                Entry::File {
                    path,
                    data,
                    mode,
                    uid,
                    gid,
                } => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(*mode);
                    h.set_uid(*uid);
                    h.set_gid(*gid);
                    (path, data)
                }
                Entry::Symlink { path, target } | Entry::Hardlink { path, target } => {
                    h.set_entry_type(if matches!(e, Entry::Symlink { .. }) {
                        tar::EntryType::Symlink
                    } else {
                        tar::EntryType::Link
                    });
                    h.set_mode(0o777);
                    h.set_size(0);
                    b.append_link(&mut h, path, target).expect("tar link");
                    continue;
                }
            };
            h.set_size(data.len() as u64);
            b.append_data(&mut h, path, data).expect("tar entry");
        }
        b.into_inner().expect("tar")
    }
}

/// Docker's `Healthcheck` of an image config (durations in nanoseconds).
#[derive(Clone, Debug, Default)]
pub struct Healthcheck {
    pub test: Vec<String>,
    pub interval_ns: i64,
    pub timeout_ns: i64,
    pub start_period_ns: i64,
    pub retries: i64,
}

/// An image to write as an OCI layout: its layers, lowest first, and its config.
#[derive(Clone, Debug, Default)]
pub struct OciLayout {
    layers: Vec<Layer>,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    env: Vec<String>,
    working_dir: String,
    user: String,
    stop_signal: Option<String>,
    exposed_ports: Vec<String>,
    healthcheck: Option<Healthcheck>,
    /// GOARCH of the config (`amd64` unless told).
    arch: Option<String>,
}

/// A layout written: where, and the digests a registry will serve it under.
#[derive(Clone, Debug)]
pub struct Built {
    pub dir: PathBuf,
    pub tag: String,
    pub manifest_digest: String,
    pub config_digest: String,
    /// Per layer: (compressed blob digest, DiffID).
    pub layers: Vec<(String, String)>,
    /// Bytes of compressed layers.
    pub size: u64,
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

impl OciLayout {
    pub fn new() -> OciLayout {
        OciLayout {
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            ..OciLayout::default()
        }
    }

    pub fn layer(mut self, l: Layer) -> OciLayout {
        self.layers.push(l);
        self
    }
    pub fn entrypoint(mut self, v: &[&str]) -> OciLayout {
        self.entrypoint = strings(v);
        self
    }
    pub fn cmd(mut self, v: &[&str]) -> OciLayout {
        self.cmd = strings(v);
        self
    }
    pub fn env(mut self, v: &[&str]) -> OciLayout {
        self.env.extend(strings(v));
        self
    }
    pub fn workdir(mut self, d: &str) -> OciLayout {
        self.working_dir = d.into();
        self
    }
    pub fn user(mut self, u: &str) -> OciLayout {
        self.user = u.into();
        self
    }
    pub fn stop_signal(mut self, s: &str) -> OciLayout {
        self.stop_signal = Some(s.into());
        self
    }
    pub fn expose(mut self, port: &str) -> OciLayout {
        self.exposed_ports.push(port.into());
        self
    }
    pub fn healthcheck(mut self, h: Healthcheck) -> OciLayout {
        self.healthcheck = Some(h);
        self
    }
    /// The config's architecture (`amd64`, `arm64`, …).
    pub fn arch(mut self, arch: &str) -> OciLayout {
        self.arch = Some(arch.into());
        self
    }

    /// The config blob: OCI's fields, docker's `Healthcheck` besides.
    fn config_json(&self, diff_ids: &[String]) -> Vec<u8> {
        let mut config = serde_json::json!({
            "Env": self.env,
            "Entrypoint": self.entrypoint,
            "Cmd": self.cmd,
            "WorkingDir": self.working_dir,
            "User": self.user,
            "ExposedPorts": self.exposed_ports.iter().map(|p| (p.clone(), serde_json::json!({}))).collect::<serde_json::Map<_, _>>(),
        });
        if let Some(s) = &self.stop_signal {
            config["StopSignal"] = s.clone().into();
        }
        if let Some(h) = &self.healthcheck {
            config["Healthcheck"] = serde_json::json!({
                "Test": h.test, "Interval": h.interval_ns, "Timeout": h.timeout_ns,
                "StartPeriod": h.start_period_ns, "Retries": h.retries,
            });
        }
        serde_json::to_vec(&serde_json::json!({
            "architecture": self.arch.as_deref().unwrap_or("amd64"),
            "os": "linux",
            "created": "2024-01-01T00:00:00Z",
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }))
        .expect("config JSON")
    }

    /// Writes the layout into `dir` (created) with the image tagged `tag` in `index.json`.
    pub fn write(&self, dir: &Path, tag: &str) -> Built {
        use std::io::Write;
        let blobs = dir.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).expect("layout dir");
        let put = |data: &[u8]| -> String {
            let d = sha256(data);
            std::fs::write(blobs.join(&d["sha256:".len()..]), data).expect("blob");
            d
        };
        let mut layers = Vec::new();
        let mut descs = Vec::new();
        let mut size = 0u64;
        for l in &self.layers {
            let tar = l.tar();
            let diff_id = sha256(&tar);
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(&tar).expect("gzip");
            let gz = gz.finish().expect("gzip");
            size += gz.len() as u64;
            let digest = put(&gz);
            descs.push(serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": digest, "size": gz.len(),
            }));
            layers.push((digest, diff_id));
        }
        let diff_ids: Vec<String> = layers.iter().map(|(_, d)| d.clone()).collect();
        let config = self.config_json(&diff_ids);
        let config_digest = put(&config);
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest, "size": config.len(),
            },
            "layers": descs,
        }))
        .expect("manifest JSON");
        let manifest_digest = put(&manifest);
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
            .expect("oci-layout");
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest, "size": manifest.len(),
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }],
        });
        std::fs::write(dir.join("index.json"), index.to_string()).expect("index.json");
        Built {
            dir: dir.to_path_buf(),
            tag: tag.into(),
            manifest_digest,
            config_digest,
            layers,
            size,
        }
    }
}

/// A multi-platform image: one OCI layout in `dir` whose tag names an image index of
/// `images`, each listed for `linux/<its arch>`. The result's `manifest_digest` is the
/// index's (what docker pins), `layers` and `config_digest` those of the first image.
pub fn write_index(dir: &Path, tag: &str, images: &[OciLayout]) -> Built {
    let built: Vec<(Built, &OciLayout)> = images
        .iter()
        .enumerate()
        .map(|(i, l)| (l.write(dir, &format!("{tag}-{i}")), l))
        .collect();
    let manifests: Vec<serde_json::Value> = built
        .iter()
        .map(|(b, l)| {
            let size = std::fs::metadata(
                dir.join("blobs/sha256")
                    .join(&b.manifest_digest["sha256:".len()..]),
            )
            .expect("manifest blob")
            .len();
            serde_json::json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": b.manifest_digest, "size": size,
                "platform": {"architecture": l.arch.as_deref().unwrap_or("amd64"), "os": "linux"},
            })
        })
        .collect();
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    }))
    .expect("index JSON");
    let digest = sha256(&index);
    std::fs::write(
        dir.join("blobs/sha256").join(&digest["sha256:".len()..]),
        &index,
    )
    .expect("index blob");
    let top = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": digest, "size": index.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    });
    std::fs::write(dir.join("index.json"), top.to_string()).expect("index.json");
    let first = &built.first().expect("at least one image").0;
    Built {
        dir: dir.to_path_buf(),
        tag: tag.into(),
        manifest_digest: digest,
        ..first.clone()
    }
}

/// How [`push_with`] reaches the registry.
#[derive(Clone, Debug, Default)]
pub struct PushOptions {
    /// Verify the registry's certificate (and use HTTPS); false for plain HTTP.
    pub tls_verify: bool,
    /// `user:pass`.
    pub creds: Option<String>,
    /// A directory with the registry's `ca.crt` (skopeo's `--dest-cert-dir`).
    pub cert_dir: Option<PathBuf>,
    /// The network namespace the registry is reached from (`ip netns exec`).
    pub netns: Option<String>,
}

/// `timeout SECS` ahead of a tool, inside `netns` when given.
fn bounded(secs: &str, netns: Option<&str>) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "timeout", secs]);
            c
        }
        None => {
            let mut c = Command::new("timeout");
            c.arg(secs);
            c
        }
    }
}

/// `skopeo copy oci:DIR:TAG docker://DEST` (DEST is `HOST:PORT/repo:tag`).
pub fn push(layout: &Built, dest: &str, tls_verify: bool) {
    push_with(
        layout,
        dest,
        &PushOptions {
            tls_verify,
            ..PushOptions::default()
        },
    )
}

pub fn push_with(layout: &Built, dest: &str, opts: &PushOptions) {
    let mut cmd = bounded("120", opts.netns.as_deref());
    // Every platform of an index, as they are in the layout.
    cmd.args(["skopeo", "copy", "--quiet", "--multi-arch=all"])
        .arg(format!("--dest-tls-verify={}", opts.tls_verify));
    if let Some(c) = &opts.creds {
        cmd.arg("--dest-creds").arg(c);
    }
    if let Some(d) = &opts.cert_dir {
        cmd.arg("--dest-cert-dir").arg(d);
    }
    cmd.arg(format!("oci:{}:{}", layout.dir.display(), layout.tag))
        .arg(format!("docker://{dest}"));
    crate::Run::from(cmd.output().expect("skopeo (apt-get install skopeo)")).ok();
}

/// `skopeo inspect` of an image in a registry: its JSON (`Digest`, `Layers`, …).
pub fn inspect(image: &str, tls_verify: bool, creds: Option<&str>) -> serde_json::Value {
    inspect_from(None, image, tls_verify, creds)
}

/// [`inspect`] from inside network namespace `netns`.
pub fn inspect_from(
    netns: Option<&str>,
    image: &str,
    tls_verify: bool,
    creds: Option<&str>,
) -> serde_json::Value {
    let mut cmd = bounded("60", netns);
    cmd.args(["skopeo", "inspect"])
        .arg(format!("--tls-verify={tls_verify}"));
    if let Some(c) = creds {
        cmd.arg("--creds").arg(c);
    }
    cmd.arg(format!("docker://{image}"));
    let r = crate::Run::from(cmd.output().expect("skopeo")).ok();
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("skopeo inspect: {e}: {}", r.stdout))
}
