//! Pulls from a real registry (Debian's docker-registry) of images built offline and pushed
//! with skopeo: digests as skopeo sees them, configs and unpacked layers (overlayfs
//! whiteouts), the cache serving without the registry, and docker's failures: unknown tags,
//! auth, TLS trust and plain HTTP.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Instant;

use oci::{Credentials, PullError, RegistryOptions, Store, resolve_digest};
use testkit::image::{Built, Healthcheck, Layer, OciLayout};
use testkit::registry::{Registry, needs_registry};

struct TempDir(PathBuf);
impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("oci-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Options that trust nothing extra and treat nothing but the loopback as insecure.
fn opts(certs_dir: &Path) -> RegistryOptions {
    RegistryOptions {
        insecure: Vec::new(),
        certs_dir: certs_dir.to_path_buf(),
    }
}

/// A busybox image of two layers: the second deletes a file of the first (whiteout) and
/// hides a directory's lower content (opaque).
fn busybox_image(dir: &Path, padding: usize) -> Built {
    let base = Layer::busybox(&["sh", "ls", "cat", "echo", "sleep", "wget"])
        .file(
            "entrypoint.sh",
            "#!/bin/sh\necho hello from $0\nexec \"$@\"\n",
            0o755,
        )
        .file("etc/removed", "gone in layer 2", 0o644)
        .dir("data", 0o755)
        .file("data/lower", "hidden by the opaque dir", 0o644)
        .hardlink("bin/bb-hard", "bin/busybox")
        .file_owned("home/app/owned", "mine", 0o4750, 1000, 1001)
        .padding("padding.bin", padding);
    let top = Layer::new()
        .whiteout("etc/removed")
        .dir("data", 0o755)
        .opaque("data")
        .file("data/upper", "from layer 2", 0o644);
    OciLayout::new()
        .layer(base)
        .layer(top)
        .entrypoint(&["/entrypoint.sh"])
        .cmd(&["sleep", "1000"])
        .env(&["GREETING=hi"])
        .workdir("/data")
        .user("1000:1001")
        .stop_signal("SIGQUIT")
        .expose("8080/tcp")
        .expose("53/udp")
        .healthcheck(Healthcheck {
            test: vec!["CMD-SHELL".into(), "cat /data/upper".into()],
            interval_ns: 2_000_000_000,
            timeout_ns: 1_000_000_000,
            start_period_ns: 0,
            retries: 3,
        })
        .write(dir, "v1")
}

fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    let mut buf = [0u8; 64];
    // SAFETY: valid NUL-terminated strings and a buffer of the given length.
    let len = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), 64) };
    (len >= 0).then(|| buf[..len as usize].to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_from_a_local_registry_then_from_the_cache() {
    testkit::skip_unless!(needs_registry());
    let tmp = TempDir::new("local");
    let built = busybox_image(&tmp.0.join("layout"), 10 << 20);
    let mut reg = Registry::start_local();
    reg.push(&built, "test/app:v1");
    let image = reg.image("test/app:v1");
    let o = opts(&tmp.0.join("no-certs"));

    // The digest, as skopeo sees it (and as the layout has it: pushing keeps the manifest).
    let digest = resolve_digest(&image, None, &o).await.unwrap();
    let inspected = testkit::image::inspect(&image, false, None);
    assert_eq!(inspected["Digest"], digest.as_str());
    assert_eq!(digest, built.manifest_digest);

    // A first pull.
    let store = Store::open(&tmp.0.join("store")).unwrap();
    let seen = Mutex::new(Vec::new());
    let t = Instant::now();
    let img = store
        .pull(&image, None, &o, &|p| seen.lock().unwrap().push(p))
        .await
        .unwrap();
    let first = t.elapsed();
    assert_eq!(img.digest, digest);
    assert_eq!(img.size, built.size);
    let seen = seen.into_inner().unwrap();
    let last = seen.last().expect("progress reported");
    assert_eq!((last.done, last.total), (built.size, built.size));
    assert!(
        seen.len() > 3,
        "progress while the 10 MB layer arrives: {seen:?}"
    );
    assert!(seen.windows(2).all(|w| w[0].done <= w[1].done));

    let c = &img.config;
    assert_eq!(c.entrypoint, vec!["/entrypoint.sh"]);
    assert_eq!(c.cmd, vec!["sleep", "1000"]);
    assert!(c.env.contains(&"GREETING=hi".to_string()), "{:?}", c.env);
    assert_eq!(c.working_dir, "/data");
    assert_eq!(c.user, "1000:1001");
    assert_eq!(c.stop_signal.as_deref(), Some("SIGQUIT"));
    assert_eq!(c.exposed_ports, vec!["53/udp", "8080/tcp"]);
    let h = c.healthcheck.as_ref().expect("healthcheck");
    assert_eq!(h.test, vec!["CMD-SHELL", "cat /data/upper"]);
    assert_eq!(
        (h.interval_ns, h.timeout_ns, h.retries),
        (2_000_000_000, 1_000_000_000, 3)
    );

    // The layers, unpacked.
    assert_eq!(img.layers.len(), 2);
    let (lower, upper) = (&img.layers[0], &img.layers[1]);
    assert_eq!(
        std::fs::read(lower.join("bin/busybox")).unwrap(),
        std::fs::read(testkit::image::BUSYBOX).unwrap()
    );
    assert_eq!(
        std::fs::read_link(lower.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    assert_eq!(
        std::fs::metadata(lower.join("bin/busybox")).unwrap().ino(),
        std::fs::metadata(lower.join("bin/bb-hard")).unwrap().ino()
    );
    let owned = std::fs::metadata(lower.join("home/app/owned")).unwrap();
    assert_eq!(
        (owned.uid(), owned.gid(), owned.mode() & 0o7777),
        (1000, 1001, 0o4750)
    );
    assert_eq!(
        std::fs::metadata(lower.join("entrypoint.sh"))
            .unwrap()
            .mode()
            & 0o777,
        0o755
    );
    assert_eq!(
        std::fs::read(lower.join("etc/removed")).unwrap(),
        b"gone in layer 2"
    );
    let wh = std::fs::symlink_metadata(upper.join("etc/removed")).unwrap();
    assert!(
        wh.file_type().is_char_device(),
        "a whiteout is a char device"
    );
    assert_eq!(wh.rdev(), 0, "a whiteout is 0:0");
    assert!(!upper.join("etc/.wh.removed").exists());
    assert_eq!(
        xattr(&upper.join("data"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert!(!upper.join("data/.wh..wh..opq").exists());
    assert_eq!(xattr(&lower.join("data"), "trusted.overlay.opaque"), None);

    // An unknown tag, in docker's words.
    let e = store
        .pull(&reg.image("test/app:nope"), None, &o, &|_| {})
        .await
        .unwrap_err();
    assert!(matches!(e, PullError::NotFound { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        format!("No such image: {}", reg.image("test/app:nope"))
    );
    let e = resolve_digest(&reg.image("test/other:v1"), None, &o)
        .await
        .unwrap_err();
    assert!(e.to_string().starts_with("No such image"), "{e}");

    // Pulling again asks the registry only for the tag's digest.
    let t = Instant::now();
    let again = store.pull(&image, None, &o, &|_| {}).await.unwrap();
    let cached_by_tag = t.elapsed();
    assert_eq!(again.layers, img.layers);

    // Without the registry, the store still has it: by tag, by digest, and a pull by digest.
    reg.stop();
    let by_tag = store.get(&image).expect("get by tag");
    assert_eq!(by_tag.digest, digest);
    let pinned = format!("{image}@{digest}");
    assert_eq!(
        store.get(&pinned).expect("get by digest").layers,
        img.layers
    );
    let t = Instant::now();
    let cached = store.pull(&pinned, None, &o, &|_| {}).await.unwrap();
    let cached_by_digest = t.elapsed();
    assert_eq!(cached.config, img.config);
    assert!(store.get(&reg.image("test/app:nope")).is_none());
    let wrong = format!("{image}@sha256:{}", "0".repeat(64));
    assert!(
        store.get(&wrong).is_none(),
        "a digest in the reference must match"
    );
    let e = store.pull(&image, None, &o, &|_| {}).await.unwrap_err();
    assert!(matches!(e, PullError::Unreachable { .. }), "{e:?}");
    assert!(e.to_string().contains("is the registry running"), "{e}");
    eprintln!("registry stopped: {e}");
    eprintln!(
        "pull of a {:.1} MB image: first {first:?}, again by tag {cached_by_tag:?}, by digest without the registry {cached_by_digest:?}",
        built.size as f64 / 1e6
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pulls_of_one_image_share_the_work() {
    testkit::skip_unless!(needs_registry());
    let tmp = TempDir::new("concurrent");
    let built = busybox_image(&tmp.0.join("layout"), 2 << 20);
    let reg = Registry::start_local();
    reg.push(&built, "svc/web:1");
    let image = reg.image("svc/web:1");
    let o = opts(&tmp.0.join("no-certs"));
    let store = Store::open(&tmp.0.join("store")).unwrap();
    let (a, b, c) = tokio::join!(
        store.pull(&image, None, &o, &|_| {}),
        store.pull(&image, None, &o, &|_| {}),
        store.pull(&image, None, &o, &|_| {}),
    );
    let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
    assert_eq!(a.layers, b.layers);
    assert_eq!(a.layers, c.layers);
    assert!(a.layers[0].join("bin/busybox").is_file());
    let tmp_left = std::fs::read_dir(tmp.0.join("store/tmp")).unwrap().count();
    assert_eq!(tmp_left, 0, "no temporary files or directories left");
    let layers = std::fs::read_dir(tmp.0.join("store/layers"))
        .unwrap()
        .count();
    assert_eq!(layers, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_with_auth_wants_credentials() {
    testkit::skip_unless!(needs_registry());
    let tmp = TempDir::new("auth");
    let built = busybox_image(&tmp.0.join("layout"), 0);
    let reg = Registry::builder().htpasswd("alice", "s3cret").start();
    reg.push(&built, "private/app:1");
    let image = reg.image("private/app:1");
    let o = opts(&tmp.0.join("no-certs"));

    let e = resolve_digest(&image, None, &o).await.unwrap_err();
    assert!(matches!(e, PullError::Unauthorized { .. }), "{e:?}");
    let msg = e.to_string();
    eprintln!("anonymous: {msg}");
    assert!(
        msg.starts_with(&format!("pull access denied for {image}")),
        "{msg}"
    );
    assert!(msg.contains("--with-registry-auth"), "{msg}");

    let creds = |p: &str| Credentials {
        username: "alice".into(),
        password: p.into(),
        server: reg.host(),
    };
    let e = resolve_digest(&image, Some(&creds("wrong")), &o)
        .await
        .unwrap_err();
    assert!(matches!(e, PullError::Unauthorized { .. }), "{e:?}");
    eprintln!("wrong password: {e}");
    assert!(e.to_string().contains("refused the credentials"), "{e}");

    let good = creds("s3cret");
    let digest = resolve_digest(&image, Some(&good), &o).await.unwrap();
    assert_eq!(digest, built.manifest_digest);
    let store = Store::open(&tmp.0.join("store")).unwrap();
    let e = store.pull(&image, None, &o, &|_| {}).await.unwrap_err();
    assert!(matches!(e, PullError::Unauthorized { .. }), "{e:?}");
    // Credentials as they travel with a service (X-Registry-Auth) work the same.
    let header = oci::encode_registry_auth(&good);
    let decoded = oci::decode_registry_auth(&header).unwrap();
    let img = store
        .pull(&image, Some(&decoded), &o, &|_| {})
        .await
        .unwrap();
    assert_eq!(img.digest, digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_platform_image_is_pinned_by_its_index_and_pulled_for_amd64() {
    testkit::skip_unless!(needs_registry());
    let tmp = TempDir::new("index");
    let image_for = |arch: &str| {
        OciLayout::new()
            .arch(arch)
            .layer(Layer::busybox(&["sh"]).file("arch", arch, 0o644))
            .cmd(&["cat", "/arch"])
    };
    let built = testkit::image::write_index(
        &tmp.0.join("layout"),
        "multi",
        &[image_for("arm64"), image_for("amd64")],
    );
    let reg = Registry::start_local();
    reg.push(&built, "multi/app:1");
    let image = reg.image("multi/app:1");
    let o = opts(&tmp.0.join("no-certs"));

    let digest = resolve_digest(&image, None, &o).await.unwrap();
    assert_eq!(
        digest, built.manifest_digest,
        "the index's digest, as docker pins it"
    );
    let store = Store::open(&tmp.0.join("store")).unwrap();
    let img = store.pull(&image, None, &o, &|_| {}).await.unwrap();
    assert_eq!(img.digest, digest);
    assert_eq!(std::fs::read(img.layers[0].join("arch")).unwrap(), b"amd64");
    let pinned = format!("{image}@{digest}");
    assert_eq!(store.get(&pinned).unwrap().layers, img.layers);
}

/// A namespace reached from the host over a veth pair, so registries in it are not on the
/// loopback (which dockerd, and so oci, always allow plain HTTP to).
fn remote_namespace(ns: &testkit::netns::Namespaces) -> (String, std::net::IpAddr) {
    let name = ns.create("reg");
    let n = std::process::id() % 250;
    let (host_if, ns_if) = (
        format!("skoh{}", std::process::id()),
        format!("skon{}", std::process::id()),
    );
    let ip = |args: &[&str]| {
        let out = Command::new("ip").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ip(&[
        "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if, "netns", &name,
    ]);
    ip(&["addr", "add", &format!("10.213.{n}.1/24"), "dev", &host_if]);
    ip(&["link", "set", &host_if, "up"]);
    ip(&[
        "-n",
        &name,
        "addr",
        "add",
        &format!("10.213.{n}.2/24"),
        "dev",
        &ns_if,
    ]);
    ip(&["-n", &name, "link", "set", &ns_if, "up"]);
    (name, format!("10.213.{n}.2").parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_trust_and_plain_http_off_the_loopback() {
    testkit::skip_unless!(needs_registry());
    let tmp = TempDir::new("tls");
    let built = busybox_image(&tmp.0.join("layout"), 0);
    let namespaces = testkit::netns::Namespaces::new("ocireg");
    let (ns, ip) = remote_namespace(&namespaces);

    // TLS from a throwaway CA: trusted through certs.d, refused without it.
    let tls = Registry::builder()
        .netns(&ns)
        .addr((ip, 5443).into())
        .tls()
        .start();
    tls.push(&built, "app:1");
    let image = tls.image("app:1");
    let digest = resolve_digest(&image, None, &opts(&tls.certs_dir()))
        .await
        .unwrap();
    assert_eq!(digest, built.manifest_digest);
    let store = Store::open(&tmp.0.join("store")).unwrap();
    let img = store
        .pull(&image, None, &opts(&tls.certs_dir()), &|_| {})
        .await
        .unwrap();
    assert_eq!(img.digest, digest);
    let e = resolve_digest(&image, None, &opts(&tmp.0.join("no-certs")))
        .await
        .unwrap_err();
    assert!(matches!(e, PullError::Unreachable { .. }), "{e:?}");
    let msg = e.to_string();
    eprintln!("TLS without the CA: {msg}");
    assert!(
        msg.contains("certificate") && msg.contains(&format!("{}/ca.crt", tls.host())),
        "{msg}"
    );

    // Plain HTTP: refused unless the registry is named insecure (exactly, or by CIDR).
    let plain = Registry::builder()
        .netns(&ns)
        .addr((ip, 5000).into())
        .start();
    plain.push(&built, "app:1");
    let image = plain.image("app:1");
    let e = resolve_digest(&image, None, &opts(&tmp.0.join("no-certs")))
        .await
        .unwrap_err();
    assert!(matches!(e, PullError::Unreachable { .. }), "{e:?}");
    let msg = e.to_string();
    eprintln!("plain HTTP, not insecure: {msg}");
    assert!(
        msg.contains("insecure registries") && msg.contains(&plain.host()),
        "{msg}"
    );
    for entry in [plain.host(), format!("{ip}/24").replace(".2/24", ".0/24")] {
        let o = RegistryOptions {
            insecure: vec![entry.clone()],
            certs_dir: tmp.0.join("no-certs"),
        };
        let d = resolve_digest(&image, None, &o)
            .await
            .unwrap_or_else(|e| panic!("{entry}: {e}"));
        assert_eq!(d, built.manifest_digest);
    }
}

#[tokio::test]
async fn bad_references_and_dead_registries_fail_clearly() {
    let o = opts(Path::new("/nonexistent"));
    let e = resolve_digest("Bad Ref", None, &o).await.unwrap_err();
    assert!(matches!(e, PullError::BadReference(_)), "{e:?}");
    assert!(e.to_string().contains("\"Bad Ref\""), "{e}");
    // Nothing listens on port 1 of the loopback.
    let e = resolve_digest("127.0.0.1:1/x:1", None, &o)
        .await
        .unwrap_err();
    assert!(matches!(e, PullError::Unreachable { .. }), "{e:?}");
    assert!(
        e.to_string().contains("127.0.0.1:1") && e.to_string().contains("is the registry running"),
        "{e}"
    );
}
