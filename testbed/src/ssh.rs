//! SSH to whole-machine nodes (QEMU guests, remote hosts) with russh: per-cluster client keys,
//! pinned host keys (an unknown or changed key is refused, never learned), remote commands,
//! and long-running commands that speak a protocol over their stdin and stdout.

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use russh::client::{self, Handle};
use russh::keys::ssh_key::LineEnding;
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh::{ChannelMsg, ChannelStream};
use tokio::io::AsyncWriteExt;

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("key {path}: {message}")]
    Key { path: PathBuf, message: String },
    #[error(
        "host key of {addr} does not match the key pinned for it: refusing to connect (a changed host key means another machine answers, or a man in the middle)"
    )]
    HostKeyMismatch { addr: String },
    #[error("ssh to {addr}: {source}")]
    Protocol {
        addr: String,
        #[source]
        source: russh::Error,
    },
    #[error("ssh to {addr}: the server refused public key authentication for user {user}")]
    AuthRejected { addr: String, user: String },
    #[error("ssh to {addr}: timed out after {after:?}")]
    Timeout { addr: String, after: Duration },
}

type Result<T, E = SshError> = std::result::Result<T, E>;

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SshError {
    let what = what.into();
    move |source| SshError::Io { what, source }
}

fn random_keypair() -> Ed25519Keypair {
    let mut seed = [0u8; 32];
    rand::fill(&mut seed);
    Ed25519Keypair::from_seed(&seed)
}

/// Loads the ed25519 client key at `path`, creating it (mode 0600) when absent.
pub fn ensure_client_key(path: &Path) -> Result<PrivateKey> {
    let key_err = |message: String| SshError::Key {
        path: path.to_path_buf(),
        message,
    };
    if let Ok(pem) = std::fs::read_to_string(path) {
        let mode = std::fs::metadata(path)
            .map_err(io(path.display().to_string()))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(key_err(format!(
                "mode {:o} lets others read it; it must be 0600",
                mode & 0o777
            )));
        }
        return PrivateKey::from_openssh(pem).map_err(|e| key_err(e.to_string()));
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir.display().to_string()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io(dir.display().to_string()))?;
    }
    let key = PrivateKey::from(random_keypair());
    let pem = key
        .to_openssh(LineEnding::LF)
        .map_err(|e| key_err(e.to_string()))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path.display().to_string()))?;
    std::io::Write::write_all(&mut f, pem.as_bytes()).map_err(io(path.display().to_string()))?;
    Ok(key)
}

/// A host key made on the host for a guest: dropbear's file format for the guest, and the
/// public half to pin before the guest ever answers.
pub struct HostKey {
    pub dropbear: Vec<u8>,
    /// The same key in OpenSSH's format, for guests that run sshd.
    pub openssh_private: Vec<u8>,
    pub public: PublicKey,
}

pub fn generate_host_key() -> HostKey {
    let kp = random_keypair();
    // dropbear's ed25519 key file: string "ssh-ed25519", string (seed || public).
    let mut dropbear = Vec::with_capacity(4 + 11 + 4 + 64);
    let name = b"ssh-ed25519";
    dropbear.extend_from_slice(&(name.len() as u32).to_be_bytes());
    dropbear.extend_from_slice(name);
    dropbear.extend_from_slice(&64u32.to_be_bytes());
    dropbear.extend_from_slice(&kp.to_bytes());
    let public = PublicKey::from(kp.public);
    let openssh_private = PrivateKey::from(kp)
        .to_openssh(LineEnding::LF)
        .map(|s| s.as_bytes().to_vec())
        .unwrap_or_default();
    HostKey {
        dropbear,
        openssh_private,
        public,
    }
}

pub fn public_openssh(key: &PublicKey) -> String {
    key.to_openssh().unwrap_or_default()
}

pub fn parse_public(line: &str) -> Result<PublicKey> {
    PublicKey::from_openssh(line.trim()).map_err(|e| SshError::Key {
        path: PathBuf::from("<pinned host key>"),
        message: e.to_string(),
    })
}

struct Client {
    pinned: PublicKey,
    mismatch: Arc<std::sync::atomic::AtomicBool>,
}

impl client::Handler for Client {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let ok = match key {
            PublicKeyOrCertificate::PublicKey { key, .. } => {
                key.key_data() == self.pinned.key_data()
            }
            PublicKeyOrCertificate::Certificate(_) => false,
        };
        if !ok {
            self.mismatch
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
        Ok(ok)
    }
}

/// Where and as whom to connect, and which host key to expect.
#[derive(Clone, Debug)]
pub struct Target {
    pub addr: String,
    pub user: String,
    pub host_key: PublicKey,
}

pub struct Session {
    handle: Handle<Client>,
    addr: String,
}

/// Connects and authenticates.
pub async fn connect(target: &Target, key: Arc<PrivateKey>, timeout: Duration) -> Result<Session> {
    let addr = target.addr.clone();
    let config = Arc::new(client::Config {
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(5)),
        keepalive_max: 6,
        nodelay: true,
        ..Default::default()
    });
    let mismatch = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let handler = Client {
        pinned: target.host_key.clone(),
        mismatch: mismatch.clone(),
    };
    let fut = async {
        let mut handle = client::connect(config, addr.as_str(), handler)
            .await
            .map_err(|source| {
                if mismatch.load(std::sync::atomic::Ordering::SeqCst) {
                    SshError::HostKeyMismatch { addr: addr.clone() }
                } else {
                    SshError::Protocol {
                        addr: addr.clone(),
                        source,
                    }
                }
            })?;
        let auth = handle
            .authenticate_publickey(&target.user, PrivateKeyWithHashAlg::new(key, None))
            .await
            .map_err(|source| SshError::Protocol {
                addr: addr.clone(),
                source,
            })?;
        if !auth.success() {
            return Err(SshError::AuthRejected {
                addr: addr.clone(),
                user: target.user.clone(),
            });
        }
        Ok(Session {
            handle,
            addr: addr.clone(),
        })
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| SshError::Timeout {
            addr: target.addr.clone(),
            after: timeout,
        })?
}

/// Quotes one argument for the remote POSIX shell.
pub fn shell_quote(arg: &str) -> String {
    if !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c))
    {
        return arg.to_string();
    }
    format!("'{}'", arg.replace('\'', "'\\''"))
}

/// What a remote command printed and how it ended.
pub struct Output {
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Output {
    /// Ok when the command exited 0; else an error saying `what` failed, with its exit code
    /// and what it printed on stderr.
    pub fn succeeded(&self, what: impl std::fmt::Display) -> anyhow::Result<()> {
        if self.code == 0 {
            return Ok(());
        }
        anyhow::bail!(
            "{what} failed ({}): {}",
            self.code,
            String::from_utf8_lossy(&self.stderr).trim()
        )
    }
}

impl Session {
    fn proto(&self) -> impl Fn(russh::Error) -> SshError + '_ {
        |source| SshError::Protocol {
            addr: self.addr.clone(),
            source,
        }
    }

    /// Runs `command` (a shell command line) and collects its output.
    pub async fn exec(&self, command: &str) -> Result<Output> {
        let mut out = Output {
            code: -1,
            stdout: Vec::new(),
            stderr: Vec::new(),
        };
        self.run(command, |fd, data| {
            if fd == 1 {
                out.stdout.extend_from_slice(data)
            } else {
                out.stderr.extend_from_slice(data)
            }
        })
        .await
        .map(|code| {
            out.code = code;
        })?;
        Ok(out)
    }

    /// Runs `command`, copying its output to this process's stdout and stderr as it comes.
    pub async fn exec_streaming(&self, command: &str) -> Result<i32> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(u8, Vec<u8>)>();
        let printer = tokio::spawn(async move {
            let mut so = tokio::io::stdout();
            let mut se = tokio::io::stderr();
            while let Some((fd, d)) = rx.recv().await {
                let _ = if fd == 1 {
                    so.write_all(&d).await
                } else {
                    se.write_all(&d).await
                };
            }
            let _ = so.flush().await;
            let _ = se.flush().await;
        });
        let code = self
            .run(command, |fd, d| {
                let _ = tx.send((fd, d.to_vec()));
            })
            .await;
        drop(tx);
        let _ = printer.await;
        code
    }

    /// Runs `command` with `input` on its stdin (then EOF), collecting its output.
    pub async fn exec_with_stdin(&self, command: &str, input: &[u8]) -> Result<Output> {
        let mut out = Output {
            code: -1,
            stdout: Vec::new(),
            stderr: Vec::new(),
        };
        out.code = self
            .run_input(command, Some(input), |fd, data| {
                if fd == 1 {
                    out.stdout.extend_from_slice(data)
                } else {
                    out.stderr.extend_from_slice(data)
                }
            })
            .await?;
        Ok(out)
    }

    async fn run(&self, command: &str, sink: impl FnMut(u8, &[u8])) -> Result<i32> {
        self.run_input(command, None, sink).await
    }

    async fn run_input(
        &self,
        command: &str,
        input: Option<&[u8]>,
        mut sink: impl FnMut(u8, &[u8]),
    ) -> Result<i32> {
        let mut ch = self
            .handle
            .channel_open_session()
            .await
            .map_err(self.proto())?;
        ch.exec(true, command).await.map_err(self.proto())?;
        if let Some(input) = input {
            ch.data(input).await.map_err(self.proto())?;
            ch.eof().await.map_err(self.proto())?;
        }
        let mut code = None;
        while let Some(msg) = ch.wait().await {
            match msg {
                ChannelMsg::Data { ref data } => sink(1, data),
                ChannelMsg::ExtendedData { ref data, ext: 1 } => sink(2, data),
                ChannelMsg::ExitStatus { exit_status } => code = Some(exit_status as i32),
                ChannelMsg::ExitSignal { .. } => code = code.or(Some(255)),
                _ => {}
            }
        }
        Ok(code.unwrap_or(255))
    }

    /// Starts `command` and gives its stdin and stdout as one byte stream (its stderr is
    /// dropped): for a process that speaks a protocol with us for as long as it runs.
    pub async fn exec_stream(&self, command: &str) -> Result<ChannelStream<client::Msg>> {
        let ch = self
            .handle
            .channel_open_session()
            .await
            .map_err(self.proto())?;
        ch.exec(true, command).await.map_err(self.proto())?;
        Ok(ch.into_stream())
    }

    pub fn is_closed(&self) -> bool {
        self.handle.is_closed()
    }

    /// Resolves when the connection ends.
    pub async fn closed(&self) {
        while !self.handle.is_closed() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}
