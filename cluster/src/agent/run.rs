//! The agent's life: its start-up (its environment, its node's namespace, the kernel checks,
//! registration) and the loop that hands each new plan to the node, feeds it its tasks' events
//! and reports back. Plans arrive from a long poll that runs apart from applying them, so the
//! polls (the node's heartbeats) keep coming however long an apply takes.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use netcore::journal::Journal;
use netcore::netns::NetNs;
use netcore::xfrm::Owner;
use tokio::sync::{mpsc, watch};

use super::config::{AgentError, Config, NodeNs};
use super::credentials::{self, Credentials};
use super::dataplane::Dataplane;
use super::logs::LogSink;
use super::node::Node;
use super::tasks::{Event, Tasks};
use crate::client::{ClientError, ManagerClient};
use crate::paths::ClusterPaths;
use crate::pki::ca::new_key_and_request;
use crate::pki::tls::joining_config;
use crate::pki::token::JoinToken;
use crate::plan::{NodePlan, PlanState};
use crate::protocol::{
    Issued, JOIN, JoinRequest, PLAN, PlanResponse, REGISTER, RENEW, REPORT, RegisterRequest,
    RegisterResponse, RenewRequest, Report,
};
use crate::wait::{self, Check, Pace};

/// A plan and its digest, as the poll hands them on.
type Latest = Option<(Arc<NodePlan>, u64)>;

pub async fn run(cluster: &str, hostname: &str) -> anyhow::Result<()> {
    // Before tasks fill the descriptor table: one for each namespace whose nftables this
    // agent keeps programming (a sandbox per network, the ingress sandbox, the node), and
    // one for a task's, in flight. Past them, nft is spawned, a fork of the whole agent.
    netcore::nft::libnft::reserve_low_descriptors(64);
    let paths = ClusterPaths::new(cluster);
    let config = Config::from_env()?;
    let (node_ns, journal) = open_node(&paths, hostname, config.node_ns)?;
    // Only a host's namespace holds other clusters' and its owner's IPsec next to ours.
    let ipsec_owner = match (config.node_ns, &journal) {
        (NodeNs::Host, Some(j)) => {
            Owner::shared(cluster, &paths.nft_table("ipsec"), Some(j.clone()))
        }
        _ => Owner::namespace(),
    };
    // Refused at start, not at the first network: its sandbox could not balance VIPs. Only
    // IPVS needs bridged packets in conntrack (the nftables driver lifts its replies there).
    if config.driver == netcore::lb::Driver::Ipvs
        && node_ns
            .sysctl("net/bridge/bridge-nf-call-iptables")
            .is_err()
    {
        return Err(AgentError::NoBridgeNetfilter.into());
    }
    // The node's manager, if it is one, before the node enrolls: a new cluster's managers
    // must answer before any node can.
    let (role_tx, role_rx) = watch::channel(None);
    let (client_tx, client_rx) = watch::channel(None);
    tokio::spawn(super::replica::run(
        paths.clone(),
        hostname.to_string(),
        super::replica::Inputs {
            role: role_rx,
            client: client_rx,
        },
    ));
    let managers_file = credentials::dir(&paths, hostname).join("managers.json");
    let endpoint = match &config.manager_tcp {
        // Several managers: a comma-separated list, asked in turn until the leader answers,
        // after the managers the node last heard of (one promoted since may lead now).
        Some(addrs) if addrs.contains(',') => {
            let mut known: Vec<String> = std::fs::read(&managers_file)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default();
            for addr in addrs.split(',') {
                if !known.iter().any(|k| k == addr) {
                    known.push(addr.to_string());
                }
            }
            ManagerClient::tcp_any_of(&known)
        }
        Some(addr) => ManagerClient::tcp(addr),
        None => ManagerClient::new(&paths.agent_socket()),
    };
    let Config {
        vtep,
        driver,
        mesh,
        resolv_conf,
        ..
    } = config;
    let req = RegisterRequest {
        hostname: hostname.to_string(),
        addr: vtep,
        lb_driver: driver,
        mesh,
        kernel: nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default(),
        ipsec_missing: Some(probe_ipsec(&node_ns).await),
        resources: crate::model::NodeResources::of_this_machine(),
    };
    let (client, credentials, node_id) = enroll(endpoint, &paths, &req).await?;
    tracing::info!(node_id, hostname, %driver, %mesh, "registered");
    client_tx.send_replace(Some(client.clone()));

    let (plan_tx, plan_rx) = watch::channel::<Latest>(None);
    let renewal = Renewal::new(
        client.clone(),
        credentials::dir(&paths, hostname),
        &credentials,
    );
    tokio::spawn(poll_plans(
        client.clone(),
        renewal,
        plan_tx,
        Membership {
            role: role_tx,
            file: managers_file,
            known: Vec::new(),
        },
    ));
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    tokio::spawn(super::exec::serve(client.clone(), events_tx.clone()));
    let logs = LogSink::start(client.clone());
    let dataplane = Dataplane::new(paths.clone(), hostname, node_ns.clone(), vtep, driver, mesh)
        .with_journal(journal.clone())
        .with_ipsec_owner(ipsec_owner);
    let host_ports =
        netcore::hostport::HostPorts::new(node_ns.clone(), &paths.nft_table("hostports"), journal);
    let tasks = Tasks::new(paths, hostname, node_ns, events_tx, logs, resolv_conf)?;
    let node = Node::new(dataplane, host_ports, tasks);
    serve(node, &client, plan_rx, events_rx).await
}

/// The node's network namespace, and the journal of what the agent changes in it when it is a
/// whole machine's. A namespace of the node's own is the cluster's and goes with it; on a
/// machine (a guest or a host) what the agent changes is journaled, for `cluster down` to undo.
fn open_node(
    paths: &ClusterPaths,
    hostname: &str,
    node_ns: NodeNs,
) -> anyhow::Result<(NetNs, Option<Arc<Journal>>)> {
    Ok(if node_ns.is_machine() {
        (
            NetNs::of_pid(std::process::id())?,
            Some(Arc::new(Journal::new(paths.host_journal()))),
        )
    } else {
        (NetNs::open(&paths.node_ns(hostname))?, None)
    })
}

/// Applies each new plan and reports, until the plan channel closes. Nothing ticks: the loop
/// wakes for a new plan, a task event, or a timer set for a restart back-off ending or for
/// retrying what failed.
async fn serve(
    mut node: Node,
    client: &ManagerClient,
    mut plan_rx: watch::Receiver<Latest>,
    mut events_rx: mpsc::UnboundedReceiver<Event>,
) -> anyhow::Result<()> {
    let mut plan: Latest = None;
    let mut last_acked = None;
    let mut wake_at: Option<tokio::time::Instant> = None;
    loop {
        let mut reconcile;
        tokio::select! {
            changed = plan_rx.changed() => {
                if changed.is_err() {
                    anyhow::bail!("plan channel closed");
                }
                plan = plan_rx.borrow_and_update().clone();
                reconcile = true;
            }
            Some(ev) = events_rx.recv() => reconcile = node.tasks.on_event(ev),
            _ = wait::sleep_until(wake_at) => reconcile = true,
        }
        while let Ok(ev) = events_rx.try_recv() {
            reconcile |= node.tasks.on_event(ev);
        }
        let Some((plan, digest)) = &plan else {
            continue;
        };
        wake_at = None;
        // The version and digest of the plan last applied: the manager can send a second
        // delta under one version (a draining task settling), so both are reported.
        let mut applied = last_acked;
        if reconcile {
            let started = std::time::Instant::now();
            match node.reconcile(plan).await {
                Ok(()) => {
                    tracing::debug!(version = plan.version, took = ?started.elapsed(), "plan applied");
                    applied = Some((plan.version, *digest));
                }
                Err(e) => {
                    tracing::warn!("applying plan {}: {e:#}", plan.version);
                    wake_at = Some(tokio::time::Instant::now() + RETRY_AFTER);
                }
            }
        }
        if node.tasks.has_reports() || applied != last_acked {
            if send_report(client, &mut node.tasks, applied).await {
                last_acked = applied;
            } else {
                wake_at = Some(tokio::time::Instant::now() + RETRY_AFTER);
            }
        }
        if let Some(at) = node.tasks.next_start(plan) {
            wake_at = Some(wake_at.map_or(at, |w| w.min(at)));
        }
    }
}

/// Whether the manager took the report of what was applied and what the tasks did since the
/// last one.
async fn send_report(
    client: &ManagerClient,
    tasks: &mut Tasks,
    applied: Option<(u64, u64)>,
) -> bool {
    let report = Report {
        applied_version: applied.map(|(v, _)| v),
        plan_digest: applied.map(|(_, d)| d),
        tasks: tasks.reports(),
    };
    match client.post::<_, serde_json::Value>(REPORT, &report).await {
        Ok(_) => {
            tasks.clear_reports();
            true
        }
        Err(e) => {
            tracing::warn!("report: {e}");
            false
        }
    }
}

/// The node's standing with the manager: with the credentials it kept, it registers as the
/// node they name; without (or with expired ones) it joins with its token and keeps what it
/// is issued. Returns the client that speaks mutual TLS as that node.
async fn enroll(
    endpoint: ManagerClient,
    paths: &ClusterPaths,
    req: &RegisterRequest,
) -> anyhow::Result<(ManagerClient, Credentials, String)> {
    let dir = credentials::dir(paths, &req.hostname);
    if let Some(kept) = Credentials::load(&dir).filter(|c| !c.expired()) {
        let client = endpoint.with_tls(kept.tls()?);
        let node_id = ask_until_answered("registering with the manager", || {
            client.post::<_, RegisterResponse>(REGISTER, req)
        })
        .await
        .map_err(|e| refused_certificate(e, &dir))?
        .node_id;
        return Ok((client, kept, node_id));
    }
    let token_text = join_token(paths).await?;
    let token: JoinToken = token_text
        .parse()
        .map_err(|e| anyhow::anyhow!("the join token does not parse: {e}"))?;
    let joining = endpoint.clone().with_tls(joining_config(&token)?);
    let (key_pem, csr_pem) = new_key_and_request()?;
    let join = JoinRequest {
        token: token_text,
        csr_pem,
        node: req.clone(),
    };
    let issued: Issued = ask_until_answered("joining the cluster", || {
        joining.post::<_, Issued>(JOIN, &join)
    })
    .await?;
    let creds = Credentials::from_issued(key_pem, &issued);
    creds
        .save(&dir)
        .with_context(|| format!("keeping the node's credentials in {}", dir.display()))?;
    Ok((endpoint.with_tls(creds.tls()?), creds, issued.node_id))
}

/// Asks until the manager answers: a manager away, or a name still held by the node's
/// earlier self until it is marked down (409), is waited out; a refusal (400, 401, 403) is
/// final. Several request timeouts long: a stalled connection (see ManagerClient::call)
/// costs one attempt, not the agent.
async fn ask_until_answered<T, F, Fut>(what: &str, ask: F) -> Result<T, ClientError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    wait::until(
        Some(Duration::from_secs(120)),
        Pace::every(Duration::from_millis(20)),
        || async {
            match ask().await {
                Ok(r) => Check::Ready(r),
                Err(e @ ClientError::Status { status, .. })
                    if status.is_client_error() && status != 409 && status != 404 =>
                {
                    Check::Failed(e)
                }
                Err(e) => Check::NotYet(e),
            }
        },
    )
    .await
    .map_err(|w| {
        let e = w.into_reason();
        tracing::warn!("{what}: {e}");
        e
    })
}

/// What to tell whoever reads the agent's log when the manager refuses its certificate.
fn refused_certificate(e: ClientError, dir: &std::path::Path) -> anyhow::Error {
    match &e {
        ClientError::Status { status, .. } if *status == 401 || *status == 403 => {
            anyhow::anyhow!(
                "{e}\nThe manager no longer accepts this node's certificate. To join the node \
                 again (as docker swarm join would), delete {} and restart the agent with a \
                 join token.",
                dir.display()
            )
        }
        _ => anyhow::Error::new(e).context("registering with the manager"),
    }
}

/// The token to join with: SWARMKIT_JOIN_TOKEN, or the file the backend put on the machine.
/// The backend may still be writing it when the agent starts: it is waited for a while.
async fn join_token(paths: &ClusterPaths) -> anyhow::Result<String> {
    if let Ok(t) = std::env::var(ENV_JOIN_TOKEN) {
        return Ok(t.trim().to_string());
    }
    let file = paths.join_token_file();
    wait::until(
        Some(Duration::from_secs(30)),
        Pace::every(Duration::from_millis(50)),
        || async {
            match std::fs::read_to_string(&file) {
                Ok(t) if !t.trim().is_empty() => Check::Ready(t.trim().to_string()),
                Ok(_) => Check::NotYet(std::io::Error::other("the file is empty")),
                Err(e) => Check::NotYet(e),
            }
        },
    )
    .await
    .map_err(|w| w.into_reason())
    .with_context(|| {
            format!(
                "the node has no credentials yet and no join token to get them: put the output \
                 of `swarmkit cluster join-token worker -q` in {} (mode 0600) or in {ENV_JOIN_TOKEN}",
                file.display()
            )
        })
}

/// The environment variable an agent may take its join token from (else the token file).
pub const ENV_JOIN_TOKEN: &str = "SWARMKIT_JOIN_TOKEN";

/// The node's certificate and when it is replaced: before it expires (docker's window), and
/// as soon as the manager's plans name a root other than the one the node trusts (a CA
/// rotation).
struct Renewal {
    client: ManagerClient,
    dir: std::path::PathBuf,
    /// Drawn once per certificate: drawn at every poll, the earliest point of the window
    /// would win almost at once.
    renew_at: chrono::DateTime<chrono::Utc>,
    /// The root the credentials trust, read once.
    root_id: String,
}

impl Renewal {
    fn new(client: ManagerClient, dir: std::path::PathBuf, credentials: &Credentials) -> Renewal {
        Renewal {
            client,
            dir,
            renew_at: credentials.renew_at(),
            root_id: credentials.root_id(),
        }
    }

    fn due(&self, root_id: &str) -> bool {
        (!root_id.is_empty() && root_id != self.root_id) || chrono::Utc::now() >= self.renew_at
    }

    /// A new key, a certificate for it, kept and dialled with from now on.
    async fn renew(&mut self) -> anyhow::Result<()> {
        let (key_pem, csr_pem) = new_key_and_request()?;
        let issued: Issued = self.client.post(RENEW, &RenewRequest { csr_pem }).await?;
        let creds = Credentials::from_issued(key_pem, &issued);
        creds.save(&self.dir)?;
        self.client.set_tls(creds.tls()?);
        self.renew_at = creds.renew_at();
        self.root_id = creds.root_id();
        tracing::info!("renewed the node's certificate");
        Ok(())
    }
}

/// Set by a QEMU guest's init once its ESP and crypto modules are loaded (see vm/guest/rc.node).
const ESP_MODULES_DONE: &str = "/run/swarmkit-modules-esp.done";
const DATAPLANE_MODULES_DONE: &str = "/run/swarmkit-modules.done";
const ESP_MODULES_WAIT: Duration = Duration::from_secs(60);

/// What this kernel lacks for encrypted overlays (empty: nothing), by really trying.
async fn probe_ipsec(node: &NetNs) -> Vec<String> {
    // A guest loads its ESP modules off the path to a ready node; probing before they are in
    // would report them missing.
    if std::path::Path::new(DATAPLANE_MODULES_DONE).exists() {
        let loaded = wait::until(
            Some(ESP_MODULES_WAIT),
            Pace::every(Duration::from_millis(20)),
            || async { std::path::Path::new(ESP_MODULES_DONE).exists().into() },
        )
        .await;
        if loaded.is_err() {
            tracing::warn!(
                "{ESP_MODULES_DONE} did not appear within {ESP_MODULES_WAIT:?}; probing anyway"
            );
        }
    }
    match netcore::xfrm::probe(node).await {
        Ok(()) => Vec::new(),
        Err(netcore::xfrm::XfrmError::Unsupported { missing }) => {
            tracing::info!(
                "encrypted overlays unavailable here: missing {}",
                missing.join(", ")
            );
            missing
        }
        // The node still serves plain overlays; encrypted ones are refused with the reason.
        Err(e) => {
            tracing::warn!("probing the kernel for IPsec ESP: {e}");
            vec![format!("a working IPsec probe ({e})")]
        }
    }
}

/// What the plan answers say of the managers: whether this node runs one, and who they all
/// are (kept, so that a restarted agent asks the managers of now, not those it started with).
struct Membership {
    role: watch::Sender<Option<bool>>,
    file: std::path::PathBuf,
    known: Vec<String>,
}

impl Membership {
    fn heard(&mut self, client: &ManagerClient, r: &PlanResponse) {
        self.role.send_if_modified(|known| {
            let changed = *known != r.manager;
            *known = r.manager;
            changed
        });
        if r.managers.is_empty() || r.managers == self.known {
            return;
        }
        client.set_tcp_endpoints(&r.managers);
        let bytes = serde_json::to_vec(&r.managers).expect("strings serialize");
        if let Err(e) = crate::paths::write_atomically(&self.file, &bytes) {
            tracing::warn!(
                "keeping the managers' addresses in {}: {e}",
                self.file.display()
            );
        }
        self.known = r.managers.clone();
    }
}

/// How soon a failed apply or report is tried again.
const RETRY_AFTER: Duration = Duration::from_millis(500);

/// Long-polls the node's plan changes and hands on the accumulated plan. It runs apart from
/// applying, so the polls (the node's heartbeats) keep coming however long an apply takes.
async fn poll_plans(
    client: ManagerClient,
    mut renewal: Renewal,
    tx: watch::Sender<Option<(Arc<NodePlan>, u64)>>,
    mut membership: Membership,
) {
    let mut since: Option<u64> = None;
    let mut plan = PlanState::default();
    let mut digest = 0;
    // The manager holds a poll up to one heartbeat period, which it names in each answer.
    let mut hold = Duration::from_millis(500);
    loop {
        let uri = match since {
            Some(v) => format!("{PLAN}?since={v}"),
            None => PLAN.to_string(),
        };
        match client.get_held::<PlanResponse>(&uri, hold).await {
            Ok(r) => {
                since = Some(r.version);
                membership.heard(&client, &r);
                if r.heartbeat_ms > 0 {
                    hold = Duration::from_millis(r.heartbeat_ms);
                }
                if renewal.due(&r.root_id)
                    && let Err(e) = renewal.renew().await
                {
                    tracing::warn!(
                        "renewing the node's certificate: {e:#}; again at the next poll"
                    );
                }
                if let Some(delta) = &r.delta {
                    tracing::debug!(
                        version = r.version,
                        full = delta.full,
                        objects = delta.len(),
                        "plan delta"
                    );
                    digest = plan.apply(delta, digest);
                    tx.send_replace(Some((Arc::new(plan.to_plan(r.version)), digest)));
                }
            }
            Err(e @ ClientError::Status { status, .. }) if status == 401 || status == 403 => {
                // Removed from the cluster, or a certificate past its life: the node is
                // no longer one, and says so until it is restarted to join again.
                tracing::error!("{}", refused_certificate(e, &renewal.dir));
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            Err(e @ ClientError::Timeout { .. }) => {
                // A request nobody answered (not a manager that is away) is worth seeing.
                tracing::warn!("plan poll: {e}; polling again");
            }
            Err(e) => {
                // The dataplane keeps serving while the manager is away; the manager sends
                // the full plan if it cannot tell what we have.
                tracing::debug!("plan poll: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}
