//! The ways into a lab beyond its unix sockets, made by `lab up --tls` and `--ssh`: a
//! throwaway CA with a server certificate per node and one client certificate (the Engine
//! API over TLS, as `docker --tlsverify` speaks it), and per node an SSH server's host key
//! with a client key and an inventory that pins them (as `swarmkit doctor --inventory`
//! takes it). Everything lives in the lab's directory, private keys mode 0600; nothing is
//! written anywhere else on the host (root's `authorized_keys` is the lab's own, bind-mounted
//! over `/root` in the SSH servers' private mount namespaces only).

use std::io::Write as _;
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use super::LabNode;

/// The port each dockerd serves the Engine API over TLS on, at its underlay address.
pub const TLS_PORT: u16 = 2376;

/// The port each node's SSH server listens on, at its underlay address.
pub const SSH_PORT: u16 = 22;

/// How long the lab's certificates are valid (a lab is for an afternoon, not a year).
const LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);

fn invalid(what: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(what.to_string())
}

/// Writes `body` to `path` with `mode`, replacing what was there.
pub(super) fn write_mode(path: &Path, body: &[u8], mode: u32) -> std::io::Result<()> {
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    f.write_all(body)?;
    // The umask may have narrowed what `mode` asked for; never widened.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

fn mkdir_mode(dir: &Path, mode: u32) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
}

fn params(common_name: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    p.distinguished_name = dn;
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - Duration::from_secs(3600);
    p.not_after = now + LIFETIME;
    let mut serial: [u8; 16] = rand::random();
    serial[0] = (serial[0] & 0x7f) | 0x01;
    p.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    p
}

/// The lab's TLS material, docker's layout: `tls_dir/{ca.pem,cert.pem,key.pem}` (the CA and
/// the client's certificate and key: `DOCKER_CERT_PATH`), and for each node
/// `NODE_DIR/tls/{ca.pem,cert.pem,key.pem}` (its server certificate, for the node's underlay
/// address, hostname, `localhost` and 127.0.0.1). The CA's key is never written. With no
/// nodes, a client's set under a CA of its own: one no lab trusts.
pub fn make_tls(lab: &str, tls_dir: &Path, nodes: &[LabNode]) -> std::io::Result<()> {
    let alg = &rcgen::PKCS_ECDSA_P256_SHA256;
    let ca_key = KeyPair::generate_for(alg).map_err(invalid)?;
    let mut ca = params(&format!("swarm-lab {lab} CA"));
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_pem = ca.self_signed(&ca_key).map_err(invalid)?.pem();
    let issuer = Issuer::new(ca, ca_key);
    let leaf = |cn: &str,
                sans: Vec<SanType>,
                usage: ExtendedKeyUsagePurpose|
     -> std::io::Result<(String, String)> {
        let key = KeyPair::generate_for(alg).map_err(invalid)?;
        let mut p = params(cn);
        p.subject_alt_names = sans;
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![usage];
        p.use_authority_key_identifier_extension = true;
        let cert = p.signed_by(&key, &issuer).map_err(invalid)?;
        Ok((cert.pem(), key.serialize_pem()))
    };
    let write_set = |dir: &Path, (cert, key): (String, String)| -> std::io::Result<()> {
        mkdir_mode(dir, 0o755)?;
        write_mode(&dir.join("ca.pem"), ca_pem.as_bytes(), 0o644)?;
        write_mode(&dir.join("cert.pem"), cert.as_bytes(), 0o644)?;
        write_mode(&dir.join("key.pem"), key.as_bytes(), 0o600)
    };
    write_set(
        tls_dir,
        leaf(
            &format!("swarm-lab {lab} client"),
            Vec::new(),
            ExtendedKeyUsagePurpose::ClientAuth,
        )?,
    )?;
    for n in nodes {
        let ip: IpAddr = n.addr.parse().map_err(invalid)?;
        let sans = vec![
            SanType::IpAddress(ip),
            SanType::DnsName(n.hostname.as_str().try_into().map_err(invalid)?),
            SanType::DnsName("localhost".try_into().map_err(invalid)?),
            SanType::IpAddress(IpAddr::from([127, 0, 0, 1])),
        ];
        write_set(
            &n.dir.join("tls"),
            leaf(&n.hostname, sans, ExtendedKeyUsagePurpose::ServerAuth)?,
        )?;
    }
    Ok(())
}

/// dockerd's flags for the TLS listener of node `n` (after `make_tls`).
pub(super) fn dockerd_tls_flags(n: &LabNode) -> String {
    let d = n.dir.join("tls");
    format!(
        "-H tcp://{addr}:{TLS_PORT} --tlsverify --tlscacert {d}/ca.pem --tlscert {d}/cert.pem --tlskey {d}/key.pem",
        addr = n.addr,
        d = d.display()
    )
}

/// The lab's SSH material: the client key `ssh_dir/id_ed25519` (OpenSSH format, 0600), root's
/// home for the servers `ssh_dir/root/.ssh/authorized_keys` (0700/0700/0600), a dropbear host
/// key per node `NODE_DIR/ssh_host_ed25519` (0600), and `inventory`, which names each node by
/// hostname at `addr:22` as root with the client key and its host key pinned.
pub(super) fn make_ssh(ssh_dir: &Path, inventory: &Path, nodes: &[LabNode]) -> std::io::Result<()> {
    mkdir_mode(ssh_dir, 0o700)?;
    let key_path = ssh_dir.join("id_ed25519");
    let key = crate::ssh::ensure_client_key(&key_path).map_err(invalid)?;
    let public = key.public_key().to_openssh().map_err(invalid)?;
    let home = root_home(ssh_dir);
    mkdir_mode(&home, 0o700)?;
    mkdir_mode(&home.join(".ssh"), 0o700)?;
    write_mode(
        &home.join(".ssh/authorized_keys"),
        format!("{public} swarm-lab\n").as_bytes(),
        0o600,
    )?;
    let mut toml = String::from(
        "# The lab's nodes over SSH (dropbear in each node's namespace, at its underlay\n\
         # address: reachable only from inside the lab's namespaces), for\n\
         # `swarmkit doctor --inventory`.\n",
    );
    for n in nodes {
        let host_key = crate::ssh::generate_host_key();
        write_mode(&host_key_path(n), &host_key.dropbear, 0o600)?;
        toml.push_str(&format!(
            "\n[[host]]\nname = \"{name}\"\naddress = \"{addr}:{SSH_PORT}\"\nuser = \"root\"\n\
             key = \"{key}\"\nhost_key = \"{pin}\"\n",
            name = n.hostname,
            addr = n.addr,
            key = key_path.display(),
            pin = crate::ssh::public_openssh(&host_key.public),
        ));
    }
    write_mode(inventory, toml.as_bytes(), 0o644)
}

/// The home directory the SSH servers see as root's.
pub(super) fn root_home(ssh_dir: &Path) -> PathBuf {
    ssh_dir.join("root")
}

/// Node `n`'s dropbear host key.
pub(super) fn host_key_path(n: &LabNode) -> PathBuf {
    n.dir.join("ssh_host_ed25519")
}

/// The shell lines that start node `n`'s SSH server in the foreground (in its network
/// namespace, under `unshare -m --propagation private`): the lab's root home bind-mounted
/// over /root, then dropbear exec'd (so the started process is dropbear).
pub(super) fn dropbear_script(n: &LabNode, ssh_dir: &Path) -> String {
    format!(
        "set -e\n\
         mount --bind {home} /root\n\
         exec dropbear -F -E -s -r {key} -p {addr}:{SSH_PORT} -P {pid}\n",
        home = root_home(ssh_dir).display(),
        key = host_key_path(n).display(),
        addr = n.addr,
        pid = n.dir.join("dropbear.pid").display(),
    )
}

/// The dropbear binary, if installed (dropbear-bin).
pub fn dropbear() -> Option<PathBuf> {
    ["/usr/sbin/dropbear", "/usr/bin/dropbear", "/sbin/dropbear"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// Why a lab's nodes cannot run SSH servers here, if they cannot.
pub fn ssh_unavailable() -> Option<String> {
    if dropbear().is_none() {
        return Some(
            "dropbear is missing (apt-get install dropbear-bin, or run scripts/setup)".into(),
        );
    }
    if !["/usr/bin/mount", "/bin/mount"]
        .iter()
        .any(|p| Path::new(p).is_file())
    {
        return Some("/usr/bin/mount is missing (apt-get install mount)".into());
    }
    None
}

/// Whether process `pid`'s network namespace has a TCP socket listening on `port`.
pub(super) fn listens(pid: u32, port: u16) -> bool {
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
    table.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 3
            && f[3] == "0A"
            && f[1]
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
                == Some(port)
    })
}
