//! Embedded DNS, like Docker's 127.0.0.11 resolver: one resolver per agent answers for every
//! task on the node. Each task (a "scope") sees only the names its networks give it; views are
//! plain maps replaced wholesale on every plan change (the aardvark-dns pattern), so the query
//! path only takes a read lock and never waits on the control plane.
//!
//! The listening sockets are created inside each task's network namespace on a thread that has
//! entered it, then handed to the agent's tokio runtime: a socket keeps the namespace it was
//! created in, so one process can serve many namespaces. Names a task's view does not hold
//! are forwarded, as dockerd forwards them, from a socket made in the task's namespace to the
//! node's resolvers (or the task's `--dns`).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{DNSClass, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

use crate::netns::{NetNs, NetNsError};

/// Where a machine lists its resolvers.
pub const HOST_RESOLV_CONF: &str = "/etc/resolv.conf";
/// Where systemd-resolved lists the resolvers behind its loopback stub, as dockerd looks.
const RESOLVED_RESOLV_CONF: &str = "/run/systemd/resolve/resolv.conf";

/// The IPv4 nameservers of a resolv.conf text, in order.
pub fn nameservers(resolv_conf: &str) -> Vec<Ipv4Addr> {
    resolv_conf
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next()?.parse().ok())
                .flatten()
        })
        .collect()
}

/// The resolvers a task's embedded DNS forwards to on a node whose resolvers `path` lists.
/// Loopback ones are the node's own and unreachable from a task's namespace; where those are
/// all there is (systemd-resolved's stub), the ones behind the stub are used, as dockerd does.
pub fn node_upstreams(path: &std::path::Path) -> Vec<SocketAddr> {
    let reachable = |p: &std::path::Path| -> Vec<SocketAddr> {
        let text = std::fs::read_to_string(p).unwrap_or_default();
        nameservers(&text)
            .into_iter()
            .filter(|a| !a.is_loopback())
            .map(|a| SocketAddr::from((a, 53)))
            .collect()
    };
    let found = reachable(path);
    if found.is_empty() && path == std::path::Path::new(HOST_RESOLV_CONF) {
        return reachable(std::path::Path::new(RESOLVED_RESOLV_CONF));
    }
    found
}

/// Where the resolver listens inside every task namespace, as in Docker.
pub const RESOLVER_ADDR: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 11);
pub const VIP_TTL: u32 = 600;
/// Idle TCP clients are dropped after this, so a stuck client cannot pin a task.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Classic DNS UDP limit, used when the client sent no EDNS.
const UDP_PLAIN_MAX: usize = 512;
/// What we advertise and honour over EDNS (the DNS flag day 2020 value).
const UDP_EDNS_MAX: u16 = 1232;

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("dns: {0}")]
    Namespace(#[from] NetNsError),
    #[error("dns: bind {proto} {addr} in namespace {ns}: {source}")]
    Bind {
        proto: &'static str,
        addr: SocketAddr,
        ns: String,
        #[source]
        source: std::io::Error,
    },
    #[error("dns: register {proto} socket of namespace {ns} with tokio: {source}")]
    Register {
        proto: &'static str,
        ns: String,
        #[source]
        source: std::io::Error,
    },
    #[error("dns: serve_in must be called from within a tokio runtime")]
    NoRuntime,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Answer {
    pub ips: Vec<Ipv4Addr>,
    /// dnsrr services and `tasks.NAME`: rotate the order on every answer.
    pub rotate: bool,
}

/// What one task can resolve. Keys are lower-case without a trailing dot ("search",
/// "tasks.search").
#[derive(Clone, Debug, Default, PartialEq)]
pub struct View {
    pub names: HashMap<String, Answer>,
}

struct Entry {
    answer: Answer,
    /// Next rotation offset; carried across view swaps so a plan change does not restart it.
    turn: AtomicUsize,
}

/// One view, shared by every task on the same networks; changed in place (see
/// `Resolver::update_shared_view`).
type Scope = RwLock<HashMap<String, Entry>>;

pub struct Resolver {
    scopes: RwLock<HashMap<String, Arc<Scope>>>,
}

/// Stops serving when dropped or aborted.
pub struct ServeHandle {
    tasks: Vec<JoinHandle<()>>,
}

impl ServeHandle {
    pub fn abort(&self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Drop for ServeHandle {
    fn drop(&mut self) {
        self.abort();
    }
}

impl Resolver {
    pub fn new() -> Arc<Resolver> {
        Arc::new(Resolver {
            scopes: RwLock::new(HashMap::new()),
        })
    }

    /// Replace what `scope` (a task id) can see. Cheap; called on every plan change.
    pub fn set_view(&self, scope: &str, view: View) {
        self.set_shared_view(&[scope], view);
    }

    /// Gives every scope in `scopes` one shared copy of `view`: tasks on the same networks see
    /// the same names, so a plan change builds one view, not one per task, and memory does not
    /// multiply by the tasks. Rotation turns carry over from the first scope's old view.
    pub fn set_shared_view(&self, scopes: &[&str], view: View) {
        let mut all = self.scopes.write().unwrap_or_else(|e| e.into_inner());
        let old = scopes.iter().find_map(|s| all.get(*s)).cloned();
        let old = old
            .as_ref()
            .map(|o| o.read().unwrap_or_else(|e| e.into_inner()));
        let fresh: Arc<Scope> = Arc::new(RwLock::new(
            view.names
                .into_iter()
                .map(|(name, answer)| {
                    let name = normalize(&name);
                    let turn = old
                        .as_ref()
                        .and_then(|o| o.get(&name))
                        .map_or(0, |e| e.turn.load(Ordering::Relaxed));
                    let entry = Entry {
                        answer,
                        turn: AtomicUsize::new(turn),
                    };
                    (name, entry)
                })
                .collect(),
        ));
        drop(old);
        for scope in scopes {
            all.insert(scope.to_string(), Arc::clone(&fresh));
        }
    }

    /// Changes some names of the view that `scopes` share (`None`: the name is gone), in
    /// place, so a plan change costs the names it touched. Scopes not seen yet join that
    /// view. Returns false, changing nothing, when the scopes do not already share one view;
    /// the caller then sets it whole with `set_shared_view`.
    pub fn update_shared_view(
        &self,
        scopes: &[&str],
        changes: Vec<(String, Option<Answer>)>,
    ) -> bool {
        let mut all = self.scopes.write().unwrap_or_else(|e| e.into_inner());
        let mut present = scopes.iter().filter_map(|s| all.get(*s));
        let Some(shared) = present.next().cloned() else {
            return false;
        };
        if !present.all(|s| Arc::ptr_eq(s, &shared)) {
            return false;
        }
        for scope in scopes {
            if !all.contains_key(*scope) {
                all.insert(scope.to_string(), Arc::clone(&shared));
            }
        }
        drop(all);
        let mut names = shared.write().unwrap_or_else(|e| e.into_inner());
        for (name, answer) in changes {
            let name = normalize(&name);
            match answer {
                None => {
                    names.remove(&name);
                }
                Some(answer) => match names.get_mut(&name) {
                    // The rotation carries on, as across a whole new view.
                    Some(e) => e.answer = answer,
                    None => {
                        let turn = AtomicUsize::new(0);
                        names.insert(name, Entry { answer, turn });
                    }
                },
            }
        }
        true
    }

    pub fn remove(&self, scope: &str) {
        let mut scopes = self.scopes.write().unwrap_or_else(|e| e.into_inner());
        scopes.remove(scope);
    }

    fn scope(&self, scope: &str) -> Option<Arc<Scope>> {
        let scopes = self.scopes.read().unwrap_or_else(|e| e.into_inner());
        scopes.get(scope).cloned()
    }

    /// Bind 127.0.0.11:53 (UDP and TCP) inside `ns` and answer queries there from `scope`'s
    /// view; names the view does not hold are forwarded to `upstreams` in order (none: they
    /// are NXDOMAIN). The namespace needs `lo` up. Dropping/aborting the returned handle stops
    /// serving.
    pub fn serve_in(
        self: &Arc<Self>,
        scope: &str,
        ns: &NetNs,
        upstreams: Vec<SocketAddr>,
    ) -> Result<ServeHandle, DnsError> {
        let rt = tokio::runtime::Handle::try_current().map_err(|_| DnsError::NoRuntime)?;
        let addr = SocketAddr::from((RESOLVER_ADDR, 53));
        let bind_err = |proto| {
            let ns = ns.name().to_string();
            move |source| DnsError::Bind {
                proto,
                addr,
                ns,
                source,
            }
        };
        let (udp, tcp) = ns.run(|| {
            let udp = std::net::UdpSocket::bind(addr).map_err(bind_err("udp"))?;
            let tcp = std::net::TcpListener::bind(addr).map_err(bind_err("tcp"))?;
            Ok::<_, DnsError>((udp, tcp))
        })??;
        let reg_err = |proto| {
            let ns = ns.name().to_string();
            move |source| DnsError::Register { proto, ns, source }
        };
        udp.set_nonblocking(true).map_err(reg_err("udp"))?;
        tcp.set_nonblocking(true).map_err(reg_err("tcp"))?;
        let _guard = rt.enter();
        let udp = tokio::net::UdpSocket::from_std(udp).map_err(reg_err("udp"))?;
        let tcp = tokio::net::TcpListener::from_std(tcp).map_err(reg_err("tcp"))?;
        let (r1, r2) = (Arc::clone(self), Arc::clone(self));
        let (s1, s2) = (scope.to_string(), scope.to_string());
        let forwarder = Forwarder {
            ns: ns.clone(),
            upstreams: upstreams.into(),
            inflight: Arc::new(tokio::sync::Semaphore::new(MAX_FORWARDS_IN_FLIGHT)),
        };
        let f2 = forwarder.clone();
        Ok(ServeHandle {
            tasks: vec![
                rt.spawn(async move { r1.serve_udp(&s1, Arc::new(udp), forwarder).await }),
                rt.spawn(async move { r2.serve_tcp(s2, tcp, f2).await }),
            ],
        })
    }

    async fn serve_udp(&self, scope: &str, sock: Arc<tokio::net::UdpSocket>, forwarder: Forwarder) {
        let mut buf = vec![0u8; 4096];
        loop {
            let (n, peer) = match sock.recv_from(&mut buf).await {
                Ok(r) => r,
                Err(e) => {
                    // ICMP errors from earlier replies surface here; they do not end the socket.
                    tracing::debug!(scope, error = %e, "dns udp recv");
                    continue;
                }
            };
            let reply = match self.handle(scope, &buf[..n], Transport::Udp, &forwarder) {
                Some(Handled::Reply(reply)) => reply,
                Some(Handled::Forward { unanswered }) => {
                    // Answered on its own task: a slow upstream must not hold up the names we own.
                    match forwarder.inflight.clone().try_acquire_owned() {
                        Ok(permit) => {
                            let (query, sock, fwd) =
                                (buf[..n].to_vec(), Arc::clone(&sock), forwarder.clone());
                            tokio::spawn(async move {
                                let reply = fwd
                                    .forward(&query, Transport::Udp)
                                    .await
                                    .unwrap_or(unanswered);
                                let _ = sock.send_to(&reply, peer).await;
                                drop(permit);
                            });
                            continue;
                        }
                        Err(_) => unanswered,
                    }
                }
                None => continue,
            };
            if let Err(e) = sock.send_to(&reply, peer).await {
                tracing::debug!(scope, %peer, error = %e, "dns udp send");
            }
        }
    }

    async fn serve_tcp(
        self: Arc<Self>,
        scope: String,
        listener: tokio::net::TcpListener,
        forwarder: Forwarder,
    ) {
        // Owned here so that aborting the accept loop also ends its open connections.
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let (conn, _) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(scope, error = %e, "dns tcp accept");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            while conns.try_join_next().is_some() {}
            let (me, scope, fwd) = (Arc::clone(&self), scope.clone(), forwarder.clone());
            conns.spawn(async move {
                let _ = tokio::time::timeout(TCP_IDLE * 6, me.serve_conn(&scope, conn, &fwd)).await;
            });
        }
    }

    /// RFC 1035 4.2.2 framing: each message is preceded by its 16-bit length.
    async fn serve_conn(
        &self,
        scope: &str,
        mut conn: tokio::net::TcpStream,
        forwarder: &Forwarder,
    ) -> std::io::Result<()> {
        loop {
            let mut len = [0u8; 2];
            match tokio::time::timeout(TCP_IDLE, conn.read_exact(&mut len)).await {
                Ok(Ok(_)) => {}
                Ok(Err(_)) | Err(_) => return Ok(()),
            }
            let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
            tokio::time::timeout(TCP_IDLE, conn.read_exact(&mut msg))
                .await
                .map_err(|_| std::io::ErrorKind::TimedOut)??;
            let reply = match self.handle(scope, &msg, Transport::Tcp, forwarder) {
                Some(Handled::Reply(reply)) => reply,
                Some(Handled::Forward { unanswered }) => forwarder
                    .forward(&msg, Transport::Tcp)
                    .await
                    .unwrap_or(unanswered),
                None => return Ok(()),
            };
            let Ok(n) = u16::try_from(reply.len()) else {
                return Ok(());
            };
            let mut out = Vec::with_capacity(reply.len() + 2);
            out.extend_from_slice(&n.to_be_bytes());
            out.extend_from_slice(&reply);
            conn.write_all(&out).await?;
        }
    }

    /// The wire reply to one wire query from the view alone (a name it does not hold is
    /// NXDOMAIN), or None when the packet is too short to even carry an id (nothing sensible
    /// can be sent back).
    pub fn answer(&self, scope: &str, query: &[u8], transport: Transport) -> Option<Vec<u8>> {
        let reply = match Message::from_vec(query) {
            Ok(req) if req.metadata.message_type == MessageType::Query => {
                self.respond(scope, &req, transport).0
            }
            Ok(_) => return None,
            Err(_) => formerr(query)?,
        };
        reply.to_vec().ok()
    }

    /// What to do with one wire query: answer it from the view, or forward it when the view
    /// does not hold the name and there is somewhere to forward to.
    fn handle(
        &self,
        scope: &str,
        query: &[u8],
        transport: Transport,
        forwarder: &Forwarder,
    ) -> Option<Handled> {
        let (mut reply, owned) = match Message::from_vec(query) {
            Ok(req) if req.metadata.message_type == MessageType::Query => {
                self.respond(scope, &req, transport)
            }
            Ok(_) => return None,
            Err(_) => (formerr(query)?, true),
        };
        if owned || forwarder.upstreams.is_empty() {
            return reply.to_vec().ok().map(Handled::Reply);
        }
        // What the client gets if no upstream answers: a failure, not a claim the name is not.
        reply.metadata.response_code = ResponseCode::ServFail;
        reply.metadata.authoritative = false;
        Some(Handled::Forward {
            unanswered: reply.to_vec().ok()?,
        })
    }

    /// The reply from the view, and whether the view holds the name (or the query is one the
    /// view answers whatever the name: malformed or not a plain query).
    fn respond(&self, scope: &str, req: &Message, transport: Transport) -> (Message, bool) {
        let mut resp = Message::response(req.metadata.id, req.metadata.op_code);
        resp.metadata.recursion_desired = req.metadata.recursion_desired;
        // glibc ignores answers without RA from a server it treats as recursive.
        resp.metadata.recursion_available = true;
        resp.metadata.authoritative = true;
        resp.queries = req.queries.clone();
        if req.edns.is_some() {
            let mut edns = Edns::new();
            edns.set_max_payload(UDP_EDNS_MAX);
            resp.edns = Some(edns);
        }
        if req.metadata.op_code != OpCode::Query {
            resp.metadata.response_code = ResponseCode::NotImp;
            return (resp, true);
        }
        let [q] = req.queries.as_slice() else {
            resp.metadata.response_code = ResponseCode::FormErr;
            return (resp, true);
        };
        let name = normalize(&q.name().to_ascii());
        let entry_scope = self.scope(scope);
        let names = entry_scope
            .as_ref()
            .map(|s| s.read().unwrap_or_else(|e| e.into_inner()));
        let Some(entry) = names.as_ref().and_then(|n| n.get(&name)) else {
            resp.metadata.response_code = ResponseCode::NXDomain;
            return (resp, false);
        };
        let wants_a = matches!(q.query_type(), RecordType::A | RecordType::ANY);
        if !wants_a || q.query_class() != DNSClass::IN {
            return (resp, true);
        }
        let ips = &entry.answer.ips;
        let (ttl, start) = if entry.answer.rotate && !ips.is_empty() {
            (0, entry.turn.fetch_add(1, Ordering::Relaxed) % ips.len())
        } else {
            (VIP_TTL, 0)
        };
        for ip in ips[start..].iter().chain(&ips[..start]) {
            let rec = Record::from_rdata(q.name().clone(), ttl, RData::A(A(*ip)));
            resp.add_answer(rec);
        }
        if let Transport::Udp = transport {
            let limit = req.edns.as_ref().map_or(UDP_PLAIN_MAX, |e| {
                e.max_payload().min(UDP_EDNS_MAX) as usize
            });
            if resp.to_vec().map_or(0, |v| v.len()) > limit {
                // The client retries over TCP, where the whole set fits.
                resp = resp.truncate();
            }
        }
        (resp, true)
    }
}

enum Handled {
    Reply(Vec<u8>),
    /// Not a name of the view: ask upstream; `unanswered` is the reply if none answers.
    Forward {
        unanswered: Vec<u8>,
    },
}

/// How long one upstream has to answer before the next is asked; a client (glibc: 5 s)
/// gives up on us after about two of these.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);
/// Forwarded queries a task may have open at once; past that they fail at once, so a task
/// flooding names cannot grow the agent's memory.
const MAX_FORWARDS_IN_FLIGHT: usize = 64;

/// Where a scope's queries for names it does not own go, as dockerd's embedded DNS sends
/// them: from inside the task's namespace, so through the task's own routes (its gateway
/// leg; a task on internal networks only has none), to the node's resolvers or its `--dns`.
#[derive(Clone)]
struct Forwarder {
    ns: NetNs,
    upstreams: Arc<[SocketAddr]>,
    inflight: Arc<tokio::sync::Semaphore>,
}

impl Forwarder {
    /// The first upstream's reply, in order; None if none answered.
    async fn forward(&self, query: &[u8], transport: Transport) -> Option<Vec<u8>> {
        for &upstream in self.upstreams.iter() {
            let asked = match transport {
                Transport::Udp => self.over_udp(upstream, query).await,
                Transport::Tcp => self.over_tcp(upstream, query).await,
            };
            match asked {
                Ok(reply) => return Some(reply),
                Err(e) => {
                    tracing::debug!(ns = self.ns.name(), %upstream, error = %e, "dns forward")
                }
            }
        }
        None
    }

    /// A socket made inside the task's namespace (a blocking thread enters it).
    async fn socket<T: Send + 'static>(
        &self,
        make: impl FnOnce() -> std::io::Result<T> + Send + 'static,
    ) -> std::io::Result<T> {
        let ns = self.ns.clone();
        tokio::task::spawn_blocking(move || ns.run(make))
            .await
            .map_err(std::io::Error::other)?
            .map_err(std::io::Error::other)?
    }

    async fn over_udp(&self, upstream: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
        let sock = self
            .socket(move || {
                let s = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
                s.connect(upstream)?;
                s.set_nonblocking(true)?;
                Ok(s)
            })
            .await?;
        let sock = tokio::net::UdpSocket::from_std(sock)?;
        sock.send(query).await?;
        let deadline = tokio::time::Instant::now() + FORWARD_TIMEOUT;
        let mut buf = vec![0u8; 65535];
        loop {
            let n = tokio::time::timeout_at(deadline, sock.recv(&mut buf))
                .await
                .map_err(|_| std::io::ErrorKind::TimedOut)??;
            // A connected socket hears only the upstream; a reply to another id is stale.
            if n >= 2 && buf[..2] == query[..2] {
                buf.truncate(n);
                return Ok(buf);
            }
        }
    }

    async fn over_tcp(&self, upstream: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
        let conn = self
            .socket(move || {
                let s = std::net::TcpStream::connect_timeout(&upstream, FORWARD_TIMEOUT)?;
                s.set_nonblocking(true)?;
                Ok(s)
            })
            .await?;
        let mut conn = tokio::net::TcpStream::from_std(conn)?;
        let len = u16::try_from(query.len()).map_err(std::io::Error::other)?;
        let exchange = async {
            let mut out = Vec::with_capacity(query.len() + 2);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(query);
            conn.write_all(&out).await?;
            let mut len = [0u8; 2];
            conn.read_exact(&mut len).await?;
            let mut reply = vec![0u8; u16::from_be_bytes(len) as usize];
            conn.read_exact(&mut reply).await?;
            Ok::<_, std::io::Error>(reply)
        };
        tokio::time::timeout(FORWARD_TIMEOUT, exchange)
            .await
            .map_err(|_| std::io::ErrorKind::TimedOut)?
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// Lower-case and without the root dot, the form view keys use.
fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// A FORMERR reply for a packet that does not parse, echoing its id and opcode.
fn formerr(query: &[u8]) -> Option<Message> {
    let [hi, lo, flags, ..] = *query else {
        return None;
    };
    // A packet with QR set is itself a response; answering it could start a loop.
    if flags & 0x80 != 0 {
        return None;
    }
    let op = OpCode::from_u8((flags >> 3) & 0x0f);
    let mut resp = Message::error_msg(u16::from_be_bytes([hi, lo]), op, ResponseCode::FormErr);
    resp.metadata.recursion_available = true;
    Some(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;

    #[test]
    fn nameservers_are_read_in_order_ipv4_only() {
        let text = "# comment\nsearch example.com\nnameserver 10.0.0.2\nnameserver fe80::1\n\
                    nameserver 127.0.0.53\nnameserver  192.168.0.1 # trailing\n";
        assert_eq!(
            nameservers(text),
            [
                Ipv4Addr::new(10, 0, 0, 2),
                Ipv4Addr::new(127, 0, 0, 53),
                Ipv4Addr::new(192, 168, 0, 1)
            ]
        );
    }

    fn resolver() -> Arc<Resolver> {
        let r = Resolver::new();
        let mut names = HashMap::new();
        let vip = Answer {
            ips: vec![Ipv4Addr::new(10, 0, 0, 5)],
            rotate: false,
        };
        let tasks = Answer {
            ips: (6..9).map(|i| Ipv4Addr::new(10, 0, 0, i)).collect(),
            rotate: true,
        };
        names.insert("search".to_string(), vip);
        names.insert("Tasks.Search".to_string(), tasks);
        r.set_view("t1", View { names });
        r
    }

    fn ask(r: &Resolver, scope: &str, name: &str, ty: RecordType) -> Message {
        let mut q = Message::query();
        q.metadata.recursion_desired = true;
        q.add_query(Query::query(Name::from_ascii(name).unwrap(), ty));
        let wire = r
            .answer(scope, &q.to_vec().unwrap(), Transport::Udp)
            .unwrap();
        let resp = Message::from_vec(&wire).unwrap();
        assert_eq!(resp.metadata.id, q.metadata.id);
        assert!(resp.metadata.recursion_available);
        resp
    }

    fn ips(m: &Message) -> Vec<Ipv4Addr> {
        m.answers
            .iter()
            .filter_map(|r| match r.data {
                RData::A(A(ip)) => Some(ip),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn vip_answers_case_insensitive_with_ttl() {
        let r = resolver();
        for name in ["search", "search.", "SEARCH."] {
            let m = ask(&r, "t1", name, RecordType::A);
            assert_eq!(m.metadata.response_code, ResponseCode::NoError);
            assert_eq!(ips(&m), vec![Ipv4Addr::new(10, 0, 0, 5)]);
            assert_eq!(m.answers[0].ttl, VIP_TTL);
        }
    }

    #[test]
    fn rotating_names_rotate_with_zero_ttl() {
        let r = resolver();
        let a = ips(&ask(&r, "t1", "tasks.search", RecordType::A));
        let b = ips(&ask(&r, "t1", "tasks.search", RecordType::A));
        assert_eq!(a.len(), 3);
        assert_ne!(a, b);
        let mut rot = a.clone();
        rot.rotate_left(1);
        assert_eq!(b, rot);
        let m = ask(&r, "t1", "tasks.search", RecordType::A);
        assert!(m.answers.iter().all(|r| r.ttl == 0));
    }

    #[test]
    fn set_view_keeps_rotation() {
        let r = resolver();
        let first = ips(&ask(&r, "t1", "tasks.search", RecordType::A));
        let view = r.scope("t1").unwrap();
        let names = view
            .read()
            .unwrap()
            .iter()
            .map(|(k, e)| (k.clone(), e.answer.clone()))
            .collect();
        r.set_view("t1", View { names });
        assert_ne!(ips(&ask(&r, "t1", "tasks.search", RecordType::A)), first);
    }

    #[test]
    fn a_shared_view_changes_in_place_and_takes_in_new_scopes() {
        let r = Resolver::new();
        let answer = |last| Answer {
            ips: vec![Ipv4Addr::new(10, 0, 0, last)],
            rotate: false,
        };
        let names = HashMap::from([("web".to_string(), answer(2))]);
        r.set_shared_view(&["t1", "t2"], View { names });
        let changes = vec![
            ("DB".to_string(), Some(answer(3))),
            ("web".to_string(), None),
        ];
        assert!(r.update_shared_view(&["t1", "t2", "t3"], changes));
        for t in ["t1", "t2", "t3"] {
            let scope = r.scope(t).unwrap();
            let names = scope.read().unwrap();
            assert_eq!(
                names.get("db").map(|e| e.answer.clone()),
                Some(answer(3)),
                "{t}"
            );
            assert!(!names.contains_key("web"), "{t}");
        }
        r.set_view("t4", View::default());
        assert!(
            !r.update_shared_view(&["t1", "t4"], Vec::new()),
            "t1 and t4 see different views"
        );
        assert!(
            !r.update_shared_view(&["t9"], Vec::new()),
            "no view to change"
        );
    }

    #[test]
    fn other_types_unknown_names_and_scopes() {
        let r = resolver();
        let m = ask(&r, "t1", "search", RecordType::AAAA);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.answers.is_empty());
        let m = ask(&r, "t1", "nope", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        let m = ask(&r, "t2", "search", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        r.remove("t1");
        let m = ask(&r, "t1", "search", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    }

    #[test]
    fn malformed_gets_formerr() {
        let r = resolver();
        // Header claims one question but the packet ends.
        let pkt = [0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 3, b'a'];
        let wire = r.answer("t1", &pkt, Transport::Udp).unwrap();
        let m = Message::from_vec(&wire).unwrap();
        assert_eq!(m.metadata.id, 0x1234);
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
        assert!(r.answer("t1", &[1], Transport::Udp).is_none());
    }

    #[test]
    fn large_sets_truncate_over_udp_only() {
        let r = Resolver::new();
        let big = Answer {
            ips: (0..100).map(|i| Ipv4Addr::new(10, 0, 1, i)).collect(),
            rotate: true,
        };
        let names = HashMap::from([("tasks.big".to_string(), big)]);
        r.set_view("s", View { names });
        let m = ask(&r, "s", "tasks.big", RecordType::A);
        assert!(m.metadata.truncation);
        let mut q = Message::query();
        q.add_query(Query::query(
            Name::from_ascii("tasks.big").unwrap(),
            RecordType::A,
        ));
        let wire = r.answer("s", &q.to_vec().unwrap(), Transport::Tcp).unwrap();
        assert_eq!(Message::from_vec(&wire).unwrap().answers.len(), 100);
    }
}
