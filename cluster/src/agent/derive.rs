//! What a node's plan means, derived without touching the kernel: the netcore specs of its
//! overlays, IPsec and ingress; the services that changed between two plans and what each
//! network's sandbox balances; and each task's DNS view. The agent hands these to the
//! dataplane and the resolver.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use imbl::ordmap::DiffItem;
use netcore::dns::{Answer, View};
use netcore::ingress::PublishedPort;
use netcore::lb::{Frontend, VirtualService};
use netcore::overlay::{self, OverlaySpec, Peer};
use netcore::xfrm::{IpsecSpec, NetworkIpsec};

use crate::model::{EndpointMode, Protocol};
use crate::plan::{IngressPlan, NetworkPlan, NodePlan, ServicePlan, TaskPlan};

/// The data port a plan asks for (plans from before it existed carry 0).
pub fn data_port(plan: &NodePlan) -> u16 {
    if plan.data_port == 0 {
        overlay::VXLAN_PORT
    } else {
        plan.data_port
    }
}

/// The IPsec the plan's encrypted networks need on this node: SAs and policies towards every
/// node that has endpoints on them.
pub fn ipsec_of(plan: &NodePlan, local: Ipv4Addr) -> IpsecSpec {
    IpsecSpec {
        local,
        port: data_port(plan),
        networks: plan
            .networks
            .iter()
            .filter(|n| n.encrypted)
            .filter_map(|n| {
                let ring = n.keyring.as_ref()?;
                Some(NetworkIpsec {
                    network_id: n.id.clone(),
                    vni: n.vni,
                    keys: ring.keys.clone(),
                    primary: ring.primary,
                    peers: n
                        .peers
                        .iter()
                        .map(|p| p.vtep)
                        .filter(|v| *v != local)
                        .collect(),
                })
            })
            .collect(),
    }
}

/// The overlay a network's sandbox is built to.
pub fn spec_of(n: &NetworkPlan, port: u16) -> OverlaySpec {
    OverlaySpec {
        network_id: n.id.clone(),
        vni: n.vni,
        subnet: n.subnet,
        gateway: n.gateway,
        mtu: n.mtu,
        port,
        peers: n
            .peers
            .iter()
            .map(|p| Peer {
                ip: p.ip,
                mac: overlay::mac_for(p.ip),
                vtep: p.vtep,
            })
            .collect(),
    }
}

/// What the ingress balances: each published port, under a mark of its own per port and
/// protocol.
pub fn ingress_services(ing: &IngressPlan) -> Vec<VirtualService> {
    ing.ports
        .iter()
        .map(|p| VirtualService {
            fwmark: 0x10000
                + u32::from(p.published)
                + if p.protocol == Protocol::Udp {
                    0x10000
                } else {
                    0
                },
            frontend: Frontend::Port {
                proto: p.protocol,
                port: p.published,
                target: p.target,
            },
            backends: p.backends.clone(),
        })
        .collect()
}

/// The ports the routing mesh answers on.
pub fn published_ports(ing: &IngressPlan) -> Vec<PublishedPort> {
    ing.ports
        .iter()
        .map(|p| PublishedPort {
            proto: p.protocol,
            port: p.published,
        })
        .collect()
}

/// A service as it was and as it is (None: absent).
pub type ServiceChange<'a> = (Option<&'a Arc<ServicePlan>>, Option<&'a Arc<ServicePlan>>);

/// Services that appeared, left or changed between two plans. Plans made from one plan state
/// share their service maps' unchanged subtrees, which the walk skips whole: it costs the
/// changes, not the services.
pub fn changed_services<'a>(old: &'a NodePlan, new: &'a NodePlan) -> Vec<ServiceChange<'a>> {
    old.services
        .diff(&new.services)
        .map(|d| match d {
            DiffItem::Add(_, n) => (None, Some(n)),
            DiffItem::Remove(_, o) => (Some(o), None),
            DiffItem::Update { old, new } => (Some(old.1), Some(new.1)),
        })
        .collect()
}

/// The networks whose services `changed_services` found changed: the tasks on them need
/// their load balancers and DNS views brought up to date.
pub fn networks_of(changed: &[ServiceChange]) -> HashSet<String> {
    let mut nets = HashSet::new();
    for s in changed.iter().flat_map(|(a, b)| [a, b]).flatten() {
        nets.extend(s.vips.keys().cloned());
        nets.extend(s.backends.keys().cloned());
    }
    nets
}

/// Networks a task shares with services, in the task's interface order; ingress carries no
/// service discovery.
pub fn task_networks<'a>(plan: &NodePlan, task: &'a TaskPlan) -> Vec<&'a str> {
    let ingress = plan.ingress.as_ref().map(|i| i.network_id.as_str());
    task.attachments
        .iter()
        .map(|a| a.network_id.as_str())
        .filter(|n| Some(*n) != ingress)
        .collect()
}

/// What `changed` does to a network's balanced services, by fwmark (None: gone).
pub fn network_changes(
    changed: &[ServiceChange],
    network_id: &str,
) -> Vec<(u32, Option<VirtualService>)> {
    let mut out = Vec::new();
    for (old, new) in changed {
        let now = new.and_then(|s| virtual_service(s, network_id));
        if let Some((_, mark)) = old.and_then(|s| s.vips.get(network_id))
            && now.as_ref().map(|v| v.fwmark) != Some(*mark)
        {
            out.push((*mark, None));
        }
        if let Some(v) = now {
            out.push((v.fwmark, Some(v)));
        }
    }
    // Marks that leave first: one freed and taken by another service in the same change
    // ends up taken.
    out.sort_by_key(|(_, v)| v.is_some());
    out
}

/// What the sandbox balances for `s` on the network: nothing while no task of it serves
/// there. Its VIP is on the sandbox's bridge all the same (see `apply_vips`), so a client gets
/// the reset or port-unreachable a reject rule would give, from the sandbox's own stack; and a
/// new service costs one load-balancer batch per node, when its first task runs, not two.
fn virtual_service(s: &ServicePlan, network_id: &str) -> Option<VirtualService> {
    let (vip, fwmark) = s.vips.get(network_id)?;
    let backends = s.backends.get(network_id).filter(|b| !b.is_empty())?;
    Some(VirtualService {
        fwmark: *fwmark,
        frontend: Frontend::Vip(*vip),
        backends: backends.clone(),
    })
}

/// The VIPs a network's sandbox balances: every VIP-mode service on the network with a task
/// that serves.
pub fn network_services(plan: &NodePlan, network_id: &str) -> Vec<VirtualService> {
    plan.services
        .values()
        .filter_map(|s| virtual_service(s, network_id))
        .collect()
}

/// How a name in a view was claimed: a service's own name wins over another's alias.
#[derive(Clone, Copy, PartialEq)]
enum Claim {
    Name,
    Alias,
}

/// The names `s` gives a task on `nets` (lower-case), with their answers: its name and
/// `tasks.NAME`, and its aliases on the networks that name them, as in Docker.
fn claims(s: &ServicePlan, nets: &[&str]) -> Vec<(String, Answer, Claim)> {
    let shared: Vec<&str> = nets
        .iter()
        .copied()
        .filter(|n| s.backends.contains_key(*n))
        .collect();
    if shared.is_empty() {
        return Vec::new();
    }
    let answers = |on: &[&str]| {
        let ips: Vec<Ipv4Addr> = on
            .iter()
            .flat_map(|n| s.backends.get(*n).cloned().unwrap_or_default())
            .collect();
        let name = match (s.endpoint_mode, on.first().and_then(|n| s.vips.get(*n))) {
            (EndpointMode::Vip, Some((vip, _))) => Answer {
                ips: vec![*vip],
                rotate: false,
            },
            _ => Answer {
                ips: ips.clone(),
                rotate: true,
            },
        };
        (name, Answer { ips, rotate: true })
    };
    let mut out = Vec::new();
    let (name, tasks) = answers(&shared);
    let lower = s.name.to_lowercase();
    out.push((format!("tasks.{lower}"), tasks, Claim::Name));
    out.push((lower, name, Claim::Name));
    for net in &shared {
        for alias in s.aliases.get(*net).into_iter().flatten() {
            let (name, tasks) = answers(&[net]);
            let alias = alias.to_lowercase();
            out.push((format!("tasks.{alias}"), tasks, Claim::Alias));
            out.push((alias, name, Claim::Alias));
        }
    }
    out
}

/// Whether `s` could claim `name` (lower-case) at all, without building its claims.
fn may_claim(s: &ServicePlan, name: &str) -> bool {
    let bare = name.strip_prefix("tasks.").unwrap_or(name);
    let is = |n: &str| n.eq_ignore_ascii_case(name) || n.eq_ignore_ascii_case(bare);
    is(&s.name) || s.aliases.values().flatten().any(|a| is(a))
}

/// Adds one claim the way the whole view is built: a name overwrites, an alias only fills.
fn claim(names: &mut HashMap<String, Answer>, name: String, answer: Answer, how: Claim) {
    match how {
        Claim::Name => {
            names.insert(name, answer);
        }
        Claim::Alias => {
            names.entry(name).or_insert(answer);
        }
    }
}

/// What the task resolves through 127.0.0.11: service names to VIPs (or task IPs in dnsrr
/// mode) and `tasks.NAME` to task IPs, only for services on networks it shares. A service's
/// network aliases resolve the same way, but only on the network that names them, as in
/// Docker.
pub fn task_view(plan: &NodePlan, task: &TaskPlan) -> View {
    let nets = task_networks(plan, task);
    let mut names = HashMap::new();
    for s in plan.services.values() {
        for (name, answer, how) in claims(s, &nets) {
            claim(&mut names, name, answer, how);
        }
    }
    View { names }
}

/// The names of `task`'s view that `changed` (from `changed_services`) touched, each with
/// its answer in `plan` (None: gone): what `task_view` would give for those names, found
/// without building the whole view.
pub fn view_changes(
    plan: &NodePlan,
    task: &TaskPlan,
    changed: &[ServiceChange],
) -> Vec<(String, Option<Answer>)> {
    let nets = task_networks(plan, task);
    let touched: BTreeSet<String> = changed
        .iter()
        .flat_map(|(a, b)| [a, b])
        .flatten()
        .flat_map(|s| claims(s, &nets))
        .map(|(name, _, _)| name)
        .collect();
    touched
        .into_iter()
        .map(|name| {
            let mut one = HashMap::new();
            for s in plan.services.values().filter(|s| may_claim(s, &name)) {
                for (n, answer, how) in claims(s, &nets) {
                    if n == name {
                        claim(&mut one, n, answer, how);
                    }
                }
            }
            let answer = one.remove(&name);
            (name, answer)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::AttachmentPlan;
    use std::collections::BTreeMap;

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 1, last)
    }

    fn task(nets: &[&str]) -> TaskPlan {
        TaskPlan {
            id: "t1".into(),
            name: "app.1.t1".into(),
            service_id: "app".into(),
            service_name: "app".into(),
            slot: 1,
            image: "whoami".into(),
            args: vec![],
            command_len: 0,
            mounts: vec![],
            env: vec![],
            hostname: "t1".into(),
            attachments: nets
                .iter()
                .enumerate()
                .map(|(i, n)| AttachmentPlan {
                    network_id: n.to_string(),
                    ifname: format!("eth{i}"),
                    addr: "10.0.9.9/24".parse().unwrap(),
                })
                .collect(),
            start_after: None,
            host_ports: vec![],
            stop_grace_ms: 0,
            user: String::new(),
            dir: String::new(),
            sysctls: Default::default(),
            stop_signal: String::new(),
            hosts: vec![],
            read_only: false,
            dns_search: vec![],
            dns_options: vec![],
            dns_servers: vec![],
            internal: false,
            health: None,
            health_disabled: false,
            files: vec![],
            limits: Default::default(),
            init: false,
            cap_add: vec![],
            cap_drop: vec![],
            groups: vec![],
            registry_auth: None,
        }
    }

    fn service(name: &str, mode: EndpointMode, on: &[(&str, u8, &[&str])]) -> ServicePlan {
        ServicePlan {
            id: name.into(),
            name: name.into(),
            endpoint_mode: mode,
            vips: on
                .iter()
                .filter(|_| mode == EndpointMode::Vip)
                .map(|(n, vip, _)| (n.to_string(), (ip(*vip), 300)))
                .collect(),
            backends: on
                .iter()
                .map(|(n, vip, _)| (n.to_string(), vec![ip(vip + 1), ip(vip + 2)]))
                .collect(),
            aliases: on
                .iter()
                .map(|(n, _, a)| (n.to_string(), a.iter().map(|s| s.to_string()).collect()))
                .collect::<BTreeMap<_, Vec<_>>>(),
        }
    }

    /// A plan as `PlanState` makes them: services by ID.
    fn plan(services: Vec<ServicePlan>) -> NodePlan {
        NodePlan {
            services: services
                .into_iter()
                .map(|s| (s.id.clone(), Arc::new(s)))
                .collect(),
            ingress: Some(IngressPlan {
                network_id: "ingress".into(),
                sandbox_addr: "10.255.0.2/16".parse().unwrap(),
                ports: vec![],
            }),
            ..Default::default()
        }
    }

    fn ips(v: &View, name: &str) -> Option<Vec<Ipv4Addr>> {
        v.names.get(name).map(|a| a.ips.clone())
    }

    #[test]
    fn aliases_resolve_on_their_own_network_only() {
        let p = plan(vec![service(
            "demo_db",
            EndpointMode::Vip,
            &[("back", 10, &["db", "Store"]), ("front", 20, &[])],
        )]);
        let on_back = task_view(&p, &task(&["ingress", "back"]));
        assert_eq!(ips(&on_back, "db"), Some(vec![ip(10)]));
        assert_eq!(ips(&on_back, "store"), Some(vec![ip(10)]));
        assert_eq!(ips(&on_back, "tasks.db"), Some(vec![ip(11), ip(12)]));
        assert_eq!(ips(&on_back, "demo_db"), Some(vec![ip(10)]));
        // On the other network the service resolves by name, not by the alias.
        let on_front = task_view(&p, &task(&["front"]));
        assert_eq!(ips(&on_front, "demo_db"), Some(vec![ip(20)]));
        assert_eq!(ips(&on_front, "db"), None);
        assert_eq!(ips(&on_front, "tasks.db"), None);
    }

    #[test]
    fn dnsrr_aliases_answer_task_addresses() {
        let p = plan(vec![service(
            "demo_db",
            EndpointMode::Dnsrr,
            &[("back", 10, &["db"])],
        )]);
        let v = task_view(&p, &task(&["back"]));
        assert_eq!(ips(&v, "db"), Some(vec![ip(11), ip(12)]));
        assert!(v.names["db"].rotate);
    }

    #[test]
    fn a_service_name_wins_over_another_services_alias() {
        let p = plan(vec![
            service("db", EndpointMode::Vip, &[("back", 30, &[])]),
            service("demo_db", EndpointMode::Vip, &[("back", 10, &["db"])]),
        ]);
        let v = task_view(&p, &task(&["back"]));
        assert_eq!(ips(&v, "db"), Some(vec![ip(30)]));
        assert_eq!(ips(&v, "demo_db"), Some(vec![ip(10)]));
    }

    /// The names a change touched, brought into the old view, give the new whole view: for
    /// services coming and going, backends changing, aliases colliding with names.
    #[test]
    fn view_changes_bring_a_view_to_the_whole_new_one() {
        let t = task(&["ingress", "back"]);
        let steps = vec![
            vec![service("web", EndpointMode::Vip, &[("back", 10, &[])])],
            vec![
                service("web", EndpointMode::Vip, &[("back", 10, &[])]),
                service(
                    "demo_db",
                    EndpointMode::Vip,
                    &[("back", 20, &["db", "Web"])],
                ),
            ],
            vec![
                service("web", EndpointMode::Vip, &[("back", 30, &[])]),
                service("demo_db", EndpointMode::Dnsrr, &[("back", 20, &["db"])]),
                service("db", EndpointMode::Vip, &[("back", 40, &[])]),
            ],
            vec![
                service("demo_db", EndpointMode::Dnsrr, &[("back", 20, &["db"])]),
                service("other", EndpointMode::Vip, &[("front", 50, &[])]),
            ],
            vec![],
        ];
        let mut prev = plan(Vec::new());
        let mut names = task_view(&prev, &t).names;
        for services in steps {
            let next = plan(services);
            let changed = changed_services(&prev, &next);
            for (name, answer) in view_changes(&next, &t, &changed) {
                match answer {
                    Some(a) => names.insert(name, a),
                    None => names.remove(&name),
                };
            }
            assert_eq!(names, task_view(&next, &t).names);
            prev = next;
        }
    }

    /// With a mark: `service` gives every VIP mark 300.
    fn marked(name: &str, mark: u32, vip: u8) -> ServicePlan {
        let mut s = service(name, EndpointMode::Vip, &[("back", vip, &[])]);
        s.vips.get_mut("back").unwrap().1 = mark;
        s
    }

    #[test]
    fn changed_services_and_their_balancing_on_a_network() {
        let old = plan(vec![
            marked("a", 300, 10),
            marked("b", 301, 20),
            marked("c", 302, 30),
        ]);
        // `a` is shared as plans from one plan state share it; `b` gains a backend; `c`
        // leaves and `d` comes with its mark and VIP.
        let mut b = marked("b", 301, 20);
        b.backends.get_mut("back").unwrap().push(ip(99));
        let mut services = old.services.clone();
        services.insert("b".into(), Arc::new(b));
        services.remove("c");
        services.insert("d".into(), Arc::new(marked("d", 302, 30)));
        let new = NodePlan {
            services,
            ..old.clone()
        };
        let changed = changed_services(&old, &new);
        let ids: Vec<_> = changed
            .iter()
            .map(|(o, n)| (o.map(|s| s.id.as_str()), n.map(|s| s.id.as_str())))
            .collect();
        assert_eq!(
            ids,
            [(Some("b"), Some("b")), (Some("c"), None), (None, Some("d"))]
        );
        let on_back = network_changes(&changed, "back");
        let marks: Vec<_> = on_back
            .iter()
            .map(|(m, s)| (*m, s.as_ref().map(|s| s.backends.len())))
            .collect();
        // The mark `c` frees is taken by `d`: freed first, so it ends up taken.
        assert_eq!(marks, [(302, None), (301, Some(3)), (302, Some(2))]);
        assert!(network_changes(&changed, "front").is_empty());
        assert!(changed_services(&new, &new).is_empty());
    }
}
