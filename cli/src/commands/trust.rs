//! The cluster's trust from the command line, in docker's shapes: `cluster join-token` (docker
//! swarm join-token), `cluster ca` (docker swarm ca) and `cluster env --tls` (a client
//! certificate for the stock docker CLI, as docker-machine's env gives one).
//!
//! Everything goes through the manager's API: `GET /swarm` (JoinTokens, TLSInfo.TrustRoot,
//! RootRotationInProgress, Version, Spec), `POST /swarm/update` (token rotation by query,
//! root rotation by Spec.CAConfig.ForceRotate) and `POST /swarmkit/v1/client-cert`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ::cluster::client::{ClientError, ManagerClient};
use ::cluster::paths::{ClusterPaths, create_private_dir, write_atomically};
use ::cluster::wait::{self, Check, Pace};
use bollard::models::{NodeState, Swarm, SwarmSpec};
use bollard::query_parameters::UpdateSwarmOptionsBuilder;

use crate::api::{Api, ApiError, ApiResult};

/// Which join token: the one that admits workers or the one that admits managers.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Worker,
    Manager,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Worker => "worker",
            Role::Manager => "manager",
        })
    }
}

/// How long `cluster ca --rotate` waits for every node to renew onto the new root: agents
/// renew on their next heartbeats, so a healthy cluster is done in seconds; two minutes
/// leaves room for a loaded machine without hanging a script for ever.
const ROTATION_DEADLINE: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error(
        "the manager of cluster {cluster:?} reports no {field} in GET /swarm: it predates the \
         cluster's PKI; bring the cluster up again with this swarmkit \
         (swarmkit cluster down {cluster} && swarmkit cluster up --name {cluster})"
    )]
    MissingField {
        cluster: String,
        field: &'static str,
    },
    #[error(
        "the manager of cluster {cluster:?} does not issue client certificates \
         (POST /swarmkit/v1/client-cert: {message}): it predates mutual TLS; bring the cluster \
         up again with this swarmkit, or use the unix socket (swarmkit cluster env {cluster})"
    )]
    NoClientCerts { cluster: String, message: String },
    #[error(
        "the manager of cluster {cluster:?} answered an unusable docker_host {answer:?} \
         (expected tcp://HOST:PORT)"
    )]
    BadDockerHost { cluster: String, answer: String },
    #[error("the root CA of cluster {cluster:?} was rotated {times} times, no more is possible")]
    ForceRotateExhausted { cluster: String, times: u64 },
    #[error(
        "root CA rotation of cluster {cluster:?} not finished after {}s: {pending}; it goes on \
         in the background, and `swarmkit cluster ca` prints the root in use until it is done",
        after.as_secs()
    )]
    RotationPending {
        cluster: String,
        after: Duration,
        pending: String,
    },
    #[error("writing the client credentials to {}", dir.display())]
    Credentials {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// `swarmkit cluster join-token ROLE [--rotate] [-q]`.
pub async fn join_token(
    cluster: &str,
    role: Role,
    rotate: bool,
    quiet: bool,
) -> anyhow::Result<i32> {
    let api = Api::connect(cluster)?;
    if rotate {
        let swarm = api.docker.inspect_swarm().await.api(&api)?;
        // A manager without tokens has no rotation either: say that, not its 404.
        token_of(cluster, &swarm, role)?;
        let (version, spec) = versioned_spec(cluster, swarm)?;
        let options = UpdateSwarmOptionsBuilder::new()
            .version(version)
            .rotate_worker_token(role == Role::Worker)
            .rotate_manager_token(role == Role::Manager)
            .build();
        api.docker.update_swarm(spec, options).await.api(&api)?;
        if !quiet {
            println!("Successfully rotated {role} join token.\n");
        }
    }
    // Read again after a rotation: the update answers nothing, the new token is only in the
    // swarm object.
    let swarm = api.docker.inspect_swarm().await.api(&api)?;
    let token = token_of(cluster, &swarm, role)?;
    print!("{}", join_token_text(role, &token, quiet));
    Ok(0)
}

/// docker's join-token text, with swarmkit's way in: nodes are agents that `cluster up`
/// starts, so the token is handed to an agent's environment rather than to `docker swarm join`.
fn join_token_text(role: Role, token: &str, quiet: bool) -> String {
    if quiet {
        return format!("{token}\n");
    }
    format!(
        "To add a {role} to this swarm, start its agent with this join token:\n\n    \
         SWARMKIT_JOIN_TOKEN={token}\n\n"
    )
}

fn token_of(cluster: &str, swarm: &Swarm, role: Role) -> Result<String, TrustError> {
    let tokens = swarm.join_tokens.as_ref();
    let token = match role {
        Role::Worker => tokens.and_then(|t| t.worker.clone()),
        Role::Manager => tokens.and_then(|t| t.manager.clone()),
    };
    token
        .filter(|t| !t.is_empty())
        .ok_or_else(|| missing(cluster, "JoinTokens"))
}

fn trust_root(cluster: &str, swarm: &Swarm) -> Result<String, TrustError> {
    swarm
        .tls_info
        .as_ref()
        .and_then(|t| t.trust_root.clone())
        .filter(|r| !r.is_empty())
        .ok_or_else(|| missing(cluster, "TLSInfo.TrustRoot"))
}

fn missing(cluster: &str, field: &'static str) -> TrustError {
    TrustError::MissingField {
        cluster: cluster.to_string(),
        field,
    }
}

/// The spec to send back and the version it was read at: the manager refuses an update made
/// from a stale read, so a concurrent change is not silently overwritten.
fn versioned_spec(cluster: &str, swarm: Swarm) -> Result<(i64, SwarmSpec), TrustError> {
    let version = swarm
        .version
        .and_then(|v| v.index)
        .and_then(|i| i64::try_from(i).ok())
        .ok_or_else(|| missing(cluster, "Version.Index"))?;
    let spec = swarm.spec.ok_or_else(|| missing(cluster, "Spec"))?;
    Ok((version, spec))
}

/// `swarmkit cluster ca [--rotate [-q] [--detach]]`.
pub async fn ca(cluster: &str, rotate: bool, quiet: bool, detach: bool) -> anyhow::Result<i32> {
    let api = Api::connect(cluster)?;
    let swarm = api.docker.inspect_swarm().await.api(&api)?;
    let before = trust_root(cluster, &swarm)?;
    if !rotate {
        print!("{}", pem_line(&before));
        return Ok(0);
    }
    let (version, mut spec) = versioned_spec(cluster, swarm)?;
    let ca = spec.ca_config.get_or_insert_default();
    let times = ca.force_rotate.unwrap_or(0);
    let exhausted = || TrustError::ForceRotateExhausted {
        cluster: cluster.to_string(),
        times,
    };
    // A larger ForceRotate than the manager holds is what asks it for a new root.
    ca.force_rotate = Some(times.checked_add(1).ok_or_else(exhausted)?);
    let options = UpdateSwarmOptionsBuilder::new().version(version).build();
    api.docker.update_swarm(spec, options).await.api(&api)?;
    if detach {
        if !quiet {
            eprintln!(
                "root CA rotation started; `swarmkit --cluster {cluster} cluster ca` prints the \
                 new root once every node has renewed onto it"
            );
        }
        return Ok(0);
    }
    let spinner = Spinner::start(quiet);
    let done = wait_for_new_root(&api, cluster, &before).await;
    spinner.finish();
    print!("{}", pem_line(&done?));
    Ok(0)
}

/// What the last look at a rotation saw, for the message of a wait that ran out.
enum Seen {
    /// The manager still reports RootRotationInProgress.
    Renewing,
    /// Not in progress, yet the root is the old one: the manager never started it.
    NotStarted,
}

/// Polls until the manager reports no rotation in progress and a root other than `before`.
/// Both, because a manager that starts the rotation after answering the update would report
/// "not in progress" with the old root for a moment, and that old root is not the answer.
async fn wait_for_new_root(api: &Api, cluster: &str, before: &str) -> anyhow::Result<String> {
    let waited = wait::until(
        Some(ROTATION_DEADLINE),
        Pace::doubling(Duration::from_millis(100), Duration::from_secs(1)),
        || async {
            let swarm = match api.docker.inspect_swarm().await.api(api) {
                Ok(s) => s,
                Err(e) => return Check::Failed(Err(anyhow::Error::from(e))),
            };
            let root = match trust_root(cluster, &swarm) {
                Ok(r) => r,
                Err(e) => return Check::Failed(Err(e.into())),
            };
            match swarm.root_rotation_in_progress {
                None => Check::Failed(Err(missing(cluster, "RootRotationInProgress").into())),
                Some(true) => Check::NotYet(Ok(Seen::Renewing)),
                Some(false) if root == before => Check::NotYet(Ok(Seen::NotStarted)),
                Some(false) => Check::Ready(root),
            }
        },
    )
    .await;
    // A failed try carries its error; a timed-out wait, what the last look saw.
    let last = match waited {
        Ok(root) => return Ok(root),
        Err(waited) => waited.into_reason()?,
    };
    let down = match last {
        Seen::Renewing => nodes_not_ready(api).await,
        Seen::NotStarted => Vec::new(),
    };
    Err(TrustError::RotationPending {
        cluster: cluster.to_string(),
        after: ROTATION_DEADLINE,
        pending: pending(&last, &down),
    }
    .into())
}

/// What a rotation that ran out of time still waits for, by what the last look saw and which
/// nodes are not ready.
fn pending(last: &Seen, down: &[String]) -> String {
    const NOT_STARTED: &str = "the manager accepted the update but still serves the old root \
                               and reports no rotation in progress";
    const RENEWING: &str = "the manager still reports RootRotationInProgress: not every node \
                            has renewed its certificate onto the new root";
    match last {
        Seen::NotStarted => NOT_STARTED.to_string(),
        Seen::Renewing if down.is_empty() => RENEWING.to_string(),
        Seen::Renewing => format!(
            "{RENEWING} (not ready, so they cannot renew until they are back: {})",
            down.join(", ")
        ),
    }
}

/// Hostnames of the nodes that are not ready: the likely holdouts of a rotation, since a node
/// renews its certificate only while it talks to the manager.
async fn nodes_not_ready(api: &Api) -> Vec<String> {
    let Ok(nodes) = api.docker.list_nodes(None).await else {
        return Vec::new();
    };
    let mut down: Vec<String> = nodes
        .iter()
        .filter(|n| n.status.as_ref().and_then(|s| s.state) != Some(NodeState::READY))
        .map(|n| {
            let name = crate::api::hostname(n);
            if name.is_empty() {
                n.id.clone().unwrap_or_default()
            } else {
                name
            }
        })
        .collect();
    down.sort_by(|a, b| crate::render::natural_cmp(a, b));
    down
}

/// A PEM as one block ending in exactly one newline, however the manager ended it.
fn pem_line(pem: &str) -> String {
    format!("{}\n", pem.trim_end())
}

/// The wait's progress on stderr, so stdout carries only the PEM (`> root.pem` works); drawn
/// only for a person watching a terminal.
struct Spinner(Option<indicatif::ProgressBar>);

impl Spinner {
    fn start(quiet: bool) -> Spinner {
        let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
        if quiet || ci || !std::io::stderr().is_terminal() {
            return Spinner(None);
        }
        let bar = indicatif::ProgressBar::new_spinner();
        if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {elapsed} {msg}") {
            bar.set_style(style);
        }
        bar.set_message("rotating the root CA: waiting for every node to renew onto the new root");
        bar.enable_steady_tick(Duration::from_millis(120));
        Spinner(Some(bar))
    }

    fn finish(self) {
        if let Some(bar) = self.0 {
            bar.finish_and_clear();
        }
    }
}

#[derive(serde::Serialize)]
struct ClientCertRequest<'a> {
    name: &'a str,
    csr_pem: &'a str,
}

#[derive(serde::Deserialize)]
struct ClientCert {
    cert_pem: String,
    root_pem: String,
    docker_host: String,
}

/// `swarmkit cluster env --tls`: a fresh client key (made here, never sent), a certificate for
/// it from the manager, written where DOCKER_CERT_PATH points, and the lines that point a
/// docker CLI at the manager's mutual-TLS listener.
pub async fn env_tls(cluster: &str) -> anyhow::Result<i32> {
    // The socket check gives the same "is the cluster up?" error as every other command.
    Api::connect(cluster)?;
    let paths = ClusterPaths::new(cluster);
    let (key_pem, csr_pem) = ::cluster::pki::ca::new_key_and_request()?;
    let name = client_name();
    let client = ManagerClient::of_cluster(&paths);
    let issued: ClientCert = client
        .post(
            "/swarmkit/v1/client-cert",
            &ClientCertRequest {
                name: &name,
                csr_pem: &csr_pem,
            },
        )
        .await
        .map_err(|e| client_cert_error(cluster, &paths, e))?;
    let host = checked_docker_host(cluster, &issued.docker_host)?;
    let dir = paths.client_credentials();
    write_credentials(&dir, &key_pem, &issued.cert_pem, &issued.root_pem).map_err(|source| {
        TrustError::Credentials {
            dir: dir.clone(),
            source,
        }
    })?;
    print!("{}", env_lines(&host, &dir));
    Ok(0)
}

fn env_lines(host: &str, dir: &Path) -> String {
    format!(
        "export DOCKER_HOST={host}\nexport DOCKER_TLS_VERIFY=1\nexport DOCKER_CERT_PATH={}\n",
        dir.display()
    )
}

fn client_cert_error(cluster: &str, paths: &ClusterPaths, err: ClientError) -> anyhow::Error {
    match err {
        ClientError::Status {
            status, message, ..
        } if matches!(status.as_u16(), 404 | 405) => TrustError::NoClientCerts {
            cluster: cluster.to_string(),
            message,
        }
        .into(),
        ClientError::Status { message, .. } => ApiError::Daemon(message).into(),
        ClientError::Connect { .. } => ApiError::Unreachable {
            cluster: cluster.to_string(),
            socket: paths.manager_socket(),
        }
        .into(),
        other => other.into(),
    }
}

/// The manager's docker_host, accepted only as tcp://HOST:PORT of plain characters: it is
/// printed into a line meant for `eval`, so anything else could run in the user's shell.
fn checked_docker_host(cluster: &str, answer: &str) -> Result<String, TrustError> {
    let bad = || TrustError::BadDockerHost {
        cluster: cluster.to_string(),
        answer: answer.to_string(),
    };
    let (host, port) = answer
        .strip_prefix("tcp://")
        .and_then(|rest| rest.rsplit_once(':'))
        .ok_or_else(bad)?;
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    let port_ok =
        port.parse::<u16>().is_ok_and(|p| p != 0) && port.chars().all(|c| c.is_ascii_digit());
    if host_ok && port_ok {
        Ok(answer.to_string())
    } else {
        Err(bad())
    }
}

/// The name the manager puts in the client certificate: which machine asked, so a list of
/// issued certificates says whose is whose.
fn client_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'))
        .collect();
    format!("client-{}", if host.is_empty() { "local" } else { &host })
}

/// docker reads exactly key.pem, cert.pem and ca.pem from DOCKER_CERT_PATH. Each file is
/// replaced atomically and owner-only; the key goes first so that a certificate never sits
/// beside a key it was not issued for after a clean run (a crash between the files can leave
/// the old certificate with the new key; running the command again mends it).
fn write_credentials(dir: &Path, key: &str, cert: &str, root: &str) -> std::io::Result<()> {
    create_private_dir(dir)?;
    write_atomically(&dir.join("key.pem"), key.as_bytes())?;
    write_atomically(&dir.join("cert.pem"), cert.as_bytes())?;
    write_atomically(&dir.join("ca.pem"), root.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_token_text_keeps_dockers_shape_and_quiet_is_the_token_alone() {
        let t = "SWMTKN-1-abc-def";
        assert_eq!(
            join_token_text(Role::Worker, t, false),
            "To add a worker to this swarm, start its agent with this join token:\n\n    \
             SWARMKIT_JOIN_TOKEN=SWMTKN-1-abc-def\n\n"
        );
        assert!(join_token_text(Role::Manager, t, false).starts_with("To add a manager "));
        assert_eq!(join_token_text(Role::Worker, t, true), "SWMTKN-1-abc-def\n");
    }

    #[test]
    fn only_a_plain_tcp_host_and_port_reaches_the_eval_line() {
        for good in [
            "tcp://127.0.0.1:2376",
            "tcp://[::1]:9",
            "tcp://mgr-1.lab:65535",
        ] {
            assert_eq!(checked_docker_host("c", good).unwrap(), good);
        }
        for bad in [
            "unix:///run/x.sock",
            "tcp://127.0.0.1",
            "tcp://127.0.0.1:0",
            "tcp://127.0.0.1:99999",
            "tcp://127.0.0.1:+80",
            "tcp://:80",
            "tcp://$(reboot):80",
            "tcp://a;b:80",
            "tcp://a b:80",
        ] {
            let err = checked_docker_host("c", bad).unwrap_err().to_string();
            assert!(err.contains("tcp://HOST:PORT"), "{bad}: {err}");
        }
    }

    #[test]
    fn swarm_objects_without_the_pki_fields_name_the_field() {
        let swarm = Swarm::default();
        for err in [
            token_of("c1", &swarm, Role::Worker).unwrap_err(),
            trust_root("c1", &swarm).unwrap_err(),
            versioned_spec("c1", swarm).unwrap_err(),
        ] {
            let text = err.to_string();
            assert!(text.contains("cluster up --name c1"), "{text}");
        }
        let text = trust_root("c1", &Swarm::default()).unwrap_err().to_string();
        assert!(text.contains("TLSInfo.TrustRoot"), "{text}");
    }

    #[test]
    fn the_version_and_spec_go_back_as_read() {
        let swarm: Swarm = serde_json::from_value(serde_json::json!({
            "Version": {"Index": 42},
            "Spec": {"Name": "default", "CAConfig": {"NodeCertExpiry": 7776000000000000u64, "ForceRotate": 3}},
        }))
        .unwrap();
        let (version, spec) = versioned_spec("c", swarm).unwrap();
        assert_eq!(version, 42);
        let ca = spec.ca_config.unwrap();
        assert_eq!(ca.force_rotate, Some(3));
        assert_eq!(ca.node_cert_expiry, Some(7_776_000_000_000_000));
    }

    #[test]
    fn a_rotation_out_of_time_says_what_it_waits_for_and_where_to_look() {
        let err = |last, down: &[&str]| {
            let down: Vec<String> = down.iter().map(|s| s.to_string()).collect();
            TrustError::RotationPending {
                cluster: "lab".into(),
                after: ROTATION_DEADLINE,
                pending: pending(&last, &down),
            }
            .to_string()
        };
        let renewing = err(Seen::Renewing, &["node2", "node3"]);
        assert!(
            renewing.contains("after 120s")
                && renewing.contains("RootRotationInProgress")
                && renewing.contains("cannot renew until they are back: node2, node3")
                && renewing.contains("`swarmkit cluster ca` prints the root in use"),
            "{renewing}"
        );
        assert!(!err(Seen::Renewing, &[]).contains("not ready"));
        assert!(err(Seen::NotStarted, &[]).contains("still serves the old root"));
    }

    #[test]
    fn credentials_are_owner_only_with_dockers_file_names() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let root = std::env::temp_dir().join(format!("swarmkit-creds-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let dir = root.join("client");
        write_credentials(&dir, "KEY", "CERT", "ROOT").unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("key.pem")), 0o600);
        assert_eq!(
            std::fs::read_to_string(dir.join("cert.pem")).unwrap(),
            "CERT"
        );
        assert_eq!(std::fs::read_to_string(dir.join("ca.pem")).unwrap(), "ROOT");
        write_credentials(&dir, "KEY2", "CERT2", "ROOT2").unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("key.pem")).unwrap(),
            "KEY2"
        );
        assert_eq!(
            env_lines("tcp://127.0.0.1:2376", &dir),
            format!(
                "export DOCKER_HOST=tcp://127.0.0.1:2376\nexport DOCKER_TLS_VERIFY=1\n\
                 export DOCKER_CERT_PATH={}\n",
                dir.display()
            )
        );
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn client_names_are_plain() {
        let name = client_name();
        assert!(name.starts_with("client-"), "{name}");
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-')),
            "{name}"
        );
    }
}
