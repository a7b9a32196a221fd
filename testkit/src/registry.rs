//! A real registry for tests: Debian's `docker-registry` (distribution 2.x) serving from a
//! fresh temporary directory, optionally inside a network namespace, behind htpasswd auth, or
//! with TLS from a throwaway CA. [`Registry::start`] returns once `GET /v2/` answers; dropping
//! the guard kills the process and removes its directories (on a failed test too).

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian's docker-registry package puts the binary.
pub const DOCKER_REGISTRY: &str = "/usr/bin/docker-registry";

/// Why a registry test cannot run here, if it cannot.
pub fn needs_registry() -> Option<String> {
    crate::needs_root().or_else(|| {
        crate::needs_tools(&[
            (&[DOCKER_REGISTRY], "docker-registry"),
            (&["/usr/bin/skopeo"], "skopeo"),
            (&["/usr/bin/htpasswd"], "apache2-utils"),
            (&[crate::image::BUSYBOX], "busybox-static"),
            (&["/usr/bin/curl"], "curl"),
        ])
    })
}

/// How to run one registry.
#[derive(Clone, Debug, Default)]
pub struct RegistryBuilder {
    addr: Option<SocketAddr>,
    netns: Option<String>,
    htpasswd: Option<(String, String)>,
    tls: bool,
}

impl RegistryBuilder {
    /// Listen on `addr` (default: 127.0.0.1 on a free port).
    pub fn addr(mut self, addr: SocketAddr) -> Self {
        self.addr = Some(addr);
        self
    }
    /// Run inside named network namespace `ns` (`ip netns exec`).
    pub fn netns(mut self, ns: &str) -> Self {
        self.netns = Some(ns.into());
        self
    }
    /// Require basic auth of this user.
    pub fn htpasswd(mut self, user: &str, pass: &str) -> Self {
        self.htpasswd = Some((user.into(), pass.into()));
        self
    }
    /// Serve HTTPS with a certificate of a fresh CA.
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    pub fn start(self) -> Registry {
        Registry::start_with(self)
    }
}

/// A running registry; killed and cleaned up on drop.
pub struct Registry {
    child: Option<Child>,
    addr: SocketAddr,
    netns: Option<String>,
    dir: PathBuf,
    tls: bool,
    creds: Option<String>,
}

/// A free TCP port on `ip` (bound, then released for the registry to take).
pub fn free_port(ip: IpAddr) -> u16 {
    TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl Registry {
    /// A plain-HTTP registry on 127.0.0.1 at a free port, without auth.
    pub fn start_local() -> Registry {
        Registry::builder().start()
    }

    pub fn builder() -> RegistryBuilder {
        RegistryBuilder::default()
    }

    fn start_with(b: RegistryBuilder) -> Registry {
        let addr = b.addr.unwrap_or_else(|| {
            let ip: IpAddr = [127, 0, 0, 1].into();
            SocketAddr::new(ip, free_port(ip))
        });
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("sktest-registry-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("storage")).expect("registry dir");
        let mut reg = Registry {
            child: None,
            addr,
            netns: b.netns.clone(),
            dir: dir.clone(),
            tls: b.tls,
            creds: b.htpasswd.as_ref().map(|(u, p)| format!("{u}:{p}")),
        };

        let mut config = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n  secret: test-secret\n",
            dir.join("storage").display()
        );
        if b.tls {
            let (cert, key) = reg.make_certs();
            config.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            ));
        }
        if let Some((user, pass)) = &b.htpasswd {
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, pass])
                .output()
                .expect("htpasswd (apt-get install apache2-utils)");
            assert!(out.status.success(), "htpasswd failed");
            let file = dir.join("htpasswd");
            std::fs::write(&file, &out.stdout).expect("htpasswd file");
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: sktest\n    path: {}\n",
                file.display()
            ));
        }
        let config_path = dir.join("config.yml");
        std::fs::write(&config_path, config).expect("registry config");

        let log = std::fs::File::create(reg.log_path()).expect("registry log");
        let mut cmd = match &b.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, DOCKER_REGISTRY]);
                c
            }
            None => Command::new(DOCKER_REGISTRY),
        };
        cmd.arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        reg.child = Some(cmd.spawn().expect("starting docker-registry"));
        reg.wait_ready(Duration::from_secs(20));
        reg
    }

    /// A CA and a server certificate for the registry's address (and `localhost`); the CA in
    /// `certs.d/<host:port>/ca.crt`.
    fn make_certs(&self) -> (PathBuf, PathBuf) {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "sktest registry CA");
        let ca_cert = ca.self_signed(&ca_key).expect("CA cert");
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().expect("server key");
        let mut params =
            CertificateParams::new(vec!["localhost".to_string()]).expect("server params");
        params
            .subject_alt_names
            .push(SanType::IpAddress(self.addr.ip()));
        let cert = params.signed_by(&key, &issuer).expect("server cert");
        let ca_dir = self.certs_dir().join(self.host());
        std::fs::create_dir_all(&ca_dir).expect("certs.d");
        std::fs::write(ca_dir.join("ca.crt"), ca_cert.pem()).expect("ca.crt");
        let (c, k) = (self.dir.join("server.crt"), self.dir.join("server.key"));
        std::fs::write(&c, cert.pem()).expect("server.crt");
        std::fs::write(&k, key.serialize_pem()).expect("server.key");
        (c, k)
    }

    fn url(&self) -> String {
        format!(
            "{}://{}/v2/",
            if self.tls { "https" } else { "http" },
            self.host()
        )
    }

    /// Polls `GET /v2/` (200, or 401 behind auth) until the deadline; fails the test with the
    /// log's path if the registry exits or does not answer in time.
    fn wait_ready(&mut self, deadline: Duration) {
        let start = Instant::now();
        let url = self.url();
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "docker-registry exited ({status}) before answering {url}; log: {}\n{}",
                    self.log_path().display(),
                    std::fs::read_to_string(self.log_path()).unwrap_or_default()
                );
            }
            let mut cmd = match &self.netns {
                Some(ns) => {
                    let mut c = Command::new("ip");
                    c.args(["netns", "exec", ns, "curl"]);
                    c
                }
                None => Command::new("curl"),
            };
            cmd.args([
                "-s",
                "-k",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "2",
            ])
            .arg(&url);
            let code = cmd
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
            if matches!(code.as_deref(), Ok("200") | Ok("401")) {
                return;
            }
            assert!(
                start.elapsed() < deadline,
                "docker-registry did not answer {url} within {deadline:?} (last: {code:?}); log: {}",
                self.log_path().display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `HOST:PORT`, as image references name the registry.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `HOST:PORT/repo`, for a reference.
    pub fn image(&self, repo_tag: &str) -> String {
        format!("{}/{repo_tag}", self.host())
    }

    /// A certs.d-shaped directory: `<dir>/<host:port>/ca.crt` when the registry serves TLS.
    pub fn certs_dir(&self) -> PathBuf {
        self.dir.join("certs.d")
    }

    /// The directory with this registry's `ca.crt`, for skopeo's `--dest-cert-dir`.
    pub fn ca_dir(&self) -> PathBuf {
        self.certs_dir().join(self.host())
    }

    /// `user:pass` when the registry requires them.
    pub fn creds(&self) -> Option<&str> {
        self.creds.as_deref()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("registry.log")
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Kills the registry now (its storage stays until drop).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // With `ip netns exec`, the registry is ip's child: the exec replaced ip, so the
        // kill above reached it. Nothing else to reap.
    }

    /// Pushes `layout` to this registry as `repo_tag` with skopeo, trusting its CA and using
    /// its credentials.
    pub fn push(&self, layout: &crate::image::Built, repo_tag: &str) {
        crate::image::push_with(
            layout,
            &self.image(repo_tag),
            &crate::image::PushOptions {
                tls_verify: self.tls,
                creds: self.creds.clone(),
                cert_dir: self.tls.then(|| self.ca_dir()),
                netns: self.netns.clone(),
            },
        )
    }

    /// `skopeo inspect` of `repo_tag` in this registry, from where the registry is reached.
    pub fn inspect(&self, repo_tag: &str) -> serde_json::Value {
        crate::image::inspect_from(
            self.netns.as_deref(),
            &self.image(repo_tag),
            self.tls,
            self.creds.as_deref(),
        )
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
