//! Which of a task's options swarmkit honours, and the refusal of every other one by name.
//! Docker Swarm accepts options it then ignores (its users' most common complaint); here an
//! option is either done (`hostname`, `user`, `workdir`, network `sysctls`, ...) or refused
//! with a 400 that names the flag, so a spec never means more than what runs.

use axum::extract::{FromRequest, Request};
use bollard::models::{ServiceSpec, TaskSpecContainerSpec};
use serde_json::Value;

use super::error::{ApiError, ApiResult};

/// A service spec from a request body, refused when it carries a field the API's type does not
/// know: such a field would otherwise be dropped without a word.
pub struct Spec(pub ServiceSpec);

impl<S: Send + Sync> FromRequest<S> for Spec {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let super::extract::Json(raw) =
            super::extract::Json::<Value>::from_request(req, state).await?;
        spec_of(raw).map(Spec)
    }
}

/// A service spec from JSON, refused when it carries a field the API's type does not know
/// (what `POST /services/create` reads, and each service of a stack's check).
pub fn spec_of(mut raw: Value) -> ApiResult<ServiceSpec> {
    docker_spellings(&mut raw);
    let spec: ServiceSpec = serde_json::from_value(raw.clone()).map_err(|e| {
        ApiError::BadRequest(format!("the request body does not fit the API's type: {e}"))
    })?;
    let kept = serde_json::to_value(&spec).unwrap_or(Value::Null);
    let mut dropped = Vec::new();
    dropped_fields(&raw, &kept, "", &mut dropped);
    if dropped.is_empty() {
        return Ok(spec);
    }
    let named = dropped;
    Err(ApiError::BadRequest(format!(
        "swarmkit does not do {} yet: remove {}. It refuses what it would otherwise \
         ignore; the options it honours are listed in its README (Options)",
        named.join(", "),
        if named.len() == 1 { "it" } else { "them" }
    )))
}

/// docker's CLI sends `--health-cmd` as `Healthcheck`, which the swagger (and so the API's
/// type) spells `HealthCheck`; dockerd's decoder ignores the case.
fn docker_spellings(raw: &mut Value) {
    if let Some(c) = raw
        .pointer_mut("/TaskTemplate/ContainerSpec")
        .and_then(Value::as_object_mut)
        && !c.contains_key("HealthCheck")
        && let Some(h) = c.remove("Healthcheck")
    {
        c.insert("HealthCheck".into(), h);
    }
}

/// Paths of the fields set in `raw` (not null, not empty) that parsing dropped from `kept`.
fn dropped_fields(raw: &Value, kept: &Value, at: &str, out: &mut Vec<String>) {
    let empty = |v: &Value| match v {
        Value::Null => true,
        Value::Object(o) => o.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    };
    match (raw, kept) {
        (Value::Object(r), Value::Object(k)) => {
            for (key, value) in r {
                let path = if at.is_empty() {
                    key.clone()
                } else {
                    format!("{at}.{key}")
                };
                match k.get(key) {
                    Some(kv) => dropped_fields(value, kv, &path, out),
                    None if !empty(value) => out.push(path),
                    None => {}
                }
            }
        }
        (Value::Array(r), Value::Array(k)) => {
            for (i, (rv, kv)) in r.iter().zip(k).enumerate() {
                dropped_fields(rv, kv, &format!("{at}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// Refuses a spec that sets an option swarmkit does not do; checks the form of the ones it
/// does (`user`, `sysctls`, limits, capabilities, groups, ...).
pub fn check(spec: &ServiceSpec) -> ApiResult<()> {
    let Some(task) = &spec.task_template else {
        return Ok(());
    };
    let mut refused: Vec<&str> = Vec::new();
    if let Some(c) = &task.container_spec {
        refused.extend(unsupported_container(c));
        check_user(c.user.as_deref().unwrap_or_default())?;
        check_hostname(c.hostname.as_deref().unwrap_or_default())?;
        check_mounts(c)?;
        crate::policy::stop_signal(c.stop_signal.as_deref().unwrap_or_default())
            .map_err(ApiError::BadRequest)?;
        for line in c.hosts.iter().flatten() {
            check_host_line(line)?;
        }
        if let Some(d) = &c.dns_config {
            for word in d.search.iter().flatten().chain(d.options.iter().flatten()) {
                check_resolv_word(word)?;
            }
            for server in d.nameservers.iter().flatten() {
                nameserver(server)?;
            }
        }
        for (key, value) in c.sysctls.iter().flatten() {
            check_sysctl(key, value)?;
        }
        if let Some(h) = &c.health_check {
            check_health(h)?;
        }
        crate::capabilities::of_task(
            c.capability_add.as_deref().unwrap_or_default(),
            c.capability_drop.as_deref().unwrap_or_default(),
        )
        .map_err(ApiError::BadRequest)?;
        for group in c.groups.iter().flatten() {
            check_group(group)?;
        }
    }
    if let Some(r) = &task.resources {
        check_resources(r)?;
        if r.reservations
            .as_ref()
            .and_then(|g| g.generic_resources.as_ref())
            .is_some_and(|g| !g.is_empty())
        {
            refused.push("--generic-resource");
        }
        if r.swap_bytes.is_some_and(|v| v != 0) {
            refused.push("--memory-swap");
        }
        // -1 is docker's "as the node has it".
        if r.memory_swappiness.is_some_and(|v| v >= 0) {
            refused.push("--memory-swappiness");
        }
    }
    if task
        .log_driver
        .as_ref()
        .and_then(|l| l.name.as_deref())
        .is_some_and(|n| !n.is_empty())
    {
        refused.push("--log-driver");
    }
    match refused.first() {
        None => Ok(()),
        Some(_) => Err(ApiError::BadRequest(format!(
            "swarmkit does not do {} yet: remove {}. It refuses what it would otherwise \
             ignore; the options it honours are listed in its README (Options)",
            refused.join(", "),
            if refused.len() == 1 { "it" } else { "them" }
        ))),
    }
}

/// `--mount`s: well formed, and on an image they can go into. A built-in image runs from the
/// node's own filesystem, where a volume would land on the node's paths.
fn check_mounts(c: &TaskSpecContainerSpec) -> ApiResult<()> {
    let mounts = crate::plan::mounts_of(c).map_err(ApiError::BadRequest)?;
    let image = c.image.as_deref().unwrap_or_default();
    if !mounts.is_empty()
        && let Some(b) = crate::images::resolve(image)
    {
        return Err(ApiError::BadRequest(format!(
            "--mount needs an image from a registry: the built-in {} runs from the node's own filesystem; use a registry image, or leave --mount out",
            b.name()
        )));
    }
    Ok(())
}

/// The container options set in `c` that no part of swarmkit carries out, by docker's flag.
fn some<T>(v: &Option<Vec<T>>) -> bool {
    v.as_ref().is_some_and(|v| !v.is_empty())
}

fn unsupported_container(c: &TaskSpecContainerSpec) -> Vec<&'static str> {
    let yes = |v: Option<bool>| v == Some(true);
    let mut refused = Vec::new();
    if yes(c.tty) {
        refused.push("--tty");
    }
    if some(&c.ulimits) {
        refused.push("--ulimit");
    }
    if c.oom_score_adj.is_some_and(|v| v != 0) {
        refused.push("--oom-score-adj");
    }
    if c.privileges.as_ref().is_some_and(|p| {
        p.credential_spec.is_some()
            || p.se_linux_context.is_some()
            || p.seccomp.is_some()
            || p.app_armor.is_some()
            || p.no_new_privileges == Some(true)
    }) {
        refused.push("--credential-spec/--security-opt");
    }
    refused
}

/// docker's floor for `--limit-memory` (dockerd's `linuxMinMemory`): below it a task cannot
/// even start.
const MIN_MEMORY_LIMIT: i64 = 6 << 20;

/// The CFS quota's floor is 1 ms of every 100 ms period: 0.01 CPU.
const MIN_NANO_CPUS: i64 = 10_000_000;

/// Limits and reservations as the node's cgroup and the scheduler can honour them.
fn check_resources(r: &bollard::models::TaskSpecResources) -> ApiResult<()> {
    let bad = |why: String| Err(ApiError::BadRequest(why));
    let limits = r.limits.clone().unwrap_or_default();
    let reserve = r.reservations.clone().unwrap_or_default();
    let values = [
        ("--limit-cpu", limits.nano_cpus),
        ("--limit-memory", limits.memory_bytes),
        ("--limit-pids", limits.pids),
        ("--reserve-cpu", reserve.nano_cpus),
        ("--reserve-memory", reserve.memory_bytes),
    ];
    for (flag, value) in values {
        if value.is_some_and(|v| v < 0) {
            return bad(format!("invalid {flag}: it cannot be negative (0: none)"));
        }
    }
    if let Some(m) = limits
        .memory_bytes
        .filter(|m| (1..MIN_MEMORY_LIMIT).contains(m))
    {
        return bad(format!(
            "invalid --limit-memory {m} bytes: the minimum is 6MiB (give e.g. --limit-memory 64m)"
        ));
    }
    if let Some(n) = limits.nano_cpus.filter(|n| (1..MIN_NANO_CPUS).contains(n)) {
        return bad(format!(
            "invalid --limit-cpu {}: the minimum is 0.01 (a CPU's 1 ms in every 100 ms)",
            n as f64 / 1e9
        ));
    }
    Ok(())
}

/// A `--group`: a group name the node resolves, or a gid.
fn check_group(group: &str) -> ApiResult<()> {
    let valid = !group.is_empty()
        && group.len() <= 32
        && group
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !valid {
        return Err(ApiError::BadRequest(format!(
            "invalid --group {group:?}: give a group name or gid (e.g. audio, 1000)"
        )));
    }
    Ok(())
}

/// `user[:group]`, each a name or a number, as `docker service create --user` takes it; the
/// node resolves names when it starts the task.
fn check_user(user: &str) -> ApiResult<()> {
    if user.is_empty() {
        return Ok(());
    }
    let (u, g) = user.split_once(':').unwrap_or((user, ""));
    let valid = |s: &str| {
        !s.is_empty()
            && s.len() <= 32
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    };
    if !valid(u) || (user.contains(':') && !valid(g)) {
        return Err(ApiError::BadRequest(format!(
            "invalid --user {user:?}: give a user name or uid, optionally :group or :gid \
             (e.g. nobody, 1000:1000)"
        )));
    }
    Ok(())
}

/// A hostname, or one of docker's templates for it (letters, digits, '-', '.', and `{{ }}`
/// around a field).
fn check_hostname(h: &str) -> ApiResult<()> {
    let plain = h.replace(['{', '}', ' '], "");
    if h.len() > 63
        || !plain
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'))
        || (h.contains(' ') && !h.contains("{{"))
    {
        return Err(ApiError::BadRequest(format!(
            "invalid --hostname {h:?}: give a hostname (letters, digits, '-', '.'; at most 63), \
             or a template such as {{{{.Service.Name}}}}-{{{{.Task.Slot}}}}"
        )));
    }
    Ok(())
}

/// An extra hosts line as docker's CLI sends `--host name:ip`: `IP name [alias...]`.
fn check_host_line(line: &str) -> ApiResult<()> {
    let mut words = line.split_whitespace();
    let ip_ok = words
        .next()
        .is_some_and(|ip| ip.parse::<std::net::IpAddr>().is_ok());
    let names: Vec<&str> = words.collect();
    let names_ok = !names.is_empty()
        && names.iter().all(|n| {
            n.len() <= 253
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        });
    if !ip_ok || !names_ok {
        return Err(ApiError::BadRequest(format!(
            "invalid --host {line:?}: give NAME:IP, e.g. --host db:10.0.9.20"
        )));
    }
    Ok(())
}

/// A healthcheck as docker takes it: a test of `NONE`, `CMD arg...` or `CMD-SHELL command`
/// (or empty: none), durations of at least a millisecond where given, retries not negative.
fn check_health(h: &bollard::models::HealthConfig) -> ApiResult<()> {
    let bad = |why: String| Err(ApiError::BadRequest(format!("invalid healthcheck: {why}")));
    match h.test.as_deref().unwrap_or_default() {
        [] => {}
        [none] if none == "NONE" => {}
        [kind, rest @ ..] if kind == "CMD" || kind == "CMD-SHELL" => {
            if rest.is_empty() || rest.iter().all(|a| a.trim().is_empty()) {
                return bad(format!("{kind} needs a command: give --health-cmd CMD"));
            }
            if kind == "CMD-SHELL" && rest.len() != 1 {
                return bad("CMD-SHELL takes exactly one command string".into());
            }
        }
        [kind, ..] => {
            return bad(format!(
                "the test must start with NONE, CMD or CMD-SHELL, not {kind:?}"
            ));
        }
    }
    let durations = [
        ("--health-interval", h.interval),
        ("--health-timeout", h.timeout),
        ("--health-start-period", h.start_period),
        ("--health-start-interval", h.start_interval),
    ];
    for (flag, ns) in durations {
        if let Some(ns) = ns
            && ns != 0
            && !(1_000_000..=86_400_000_000_000).contains(&ns)
        {
            return bad(format!(
                "{flag} must be between 1ms and 24h (or 0 for the default)"
            ));
        }
    }
    if h.retries.is_some_and(|r| r < 0) {
        return bad("--health-retries must be 0 or more".into());
    }
    Ok(())
}

/// A `--dns` server: where the task's embedded DNS forwards the names it does not own, as
/// dockerd's does. IPv4, as the overlays are.
pub fn nameserver(server: &str) -> ApiResult<std::net::Ipv4Addr> {
    server.parse().map_err(|_| {
        ApiError::BadRequest(format!(
            "invalid --dns {server:?}: give a DNS server's IPv4 address, e.g. --dns 192.168.0.1"
        ))
    })
}

/// A `--dns-search` domain or `--dns-option`: one word of resolv.conf.
fn check_resolv_word(word: &str) -> ApiResult<()> {
    if word.is_empty()
        || word.len() > 253
        || !word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | ':'))
    {
        return Err(ApiError::BadRequest(format!(
            "invalid --dns-search or --dns-option {word:?}: give a domain (example.com) or an \
             option (ndots:2)"
        )));
    }
    Ok(())
}

/// Only what lives in the task's own network namespace can be set for it: the rest of the
/// kernel is the node's.
fn check_sysctl(key: &str, value: &str) -> ApiResult<()> {
    let well_formed = key.split('.').all(|part| {
        !part.is_empty()
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
    });
    if !key.starts_with("net.") || !well_formed {
        return Err(ApiError::BadRequest(format!(
            "invalid --sysctl {key}: only network sysctls (net.*) can be set for a task, in its \
             own network namespace; the rest of the kernel is the node's"
        )));
    }
    if value.is_empty() || value.contains(['\n', '/']) {
        return Err(ApiError::BadRequest(format!(
            "invalid --sysctl {key}={value:?}: give a value, e.g. {key}=1"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{HealthConfig, Limit, ResourceObject, TaskSpec, TaskSpecResources};

    fn spec(c: TaskSpecContainerSpec, r: Option<TaskSpecResources>) -> ServiceSpec {
        ServiceSpec {
            task_template: Some(TaskSpec {
                container_spec: Some(c),
                resources: r,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn what_the_docker_cli_sends_by_default_passes() {
        let c = TaskSpecContainerSpec {
            image: Some("whoami".into()),
            init: Some(false),
            dns_config: Some(Default::default()),
            ..Default::default()
        };
        let r = TaskSpecResources {
            limits: Some(Default::default()),
            reservations: Some(Default::default()),
            ..Default::default()
        };
        check(&spec(c, Some(r))).unwrap();
    }

    #[test]
    fn an_option_not_done_is_refused_by_its_flag() {
        let c = TaskSpecContainerSpec {
            tty: Some(true),
            ulimits: Some(vec![Default::default()]),
            ..Default::default()
        };
        let e = check(&spec(c, None)).unwrap_err().to_string();
        assert!(e.contains("--tty, --ulimit"), "{e}");
    }

    #[test]
    fn limits_reservations_init_capabilities_and_groups_pass() {
        let c = TaskSpecContainerSpec {
            init: Some(true),
            capability_add: Some(vec!["NET_ADMIN".into(), "CAP_SYS_TIME".into()]),
            capability_drop: Some(vec!["net_raw".into(), "ALL".into()]),
            groups: Some(vec!["audio".into(), "1000".into()]),
            ..Default::default()
        };
        let r = TaskSpecResources {
            limits: Some(Limit {
                nano_cpus: Some(500_000_000),
                memory_bytes: Some(64 << 20),
                pids: Some(100),
            }),
            reservations: Some(ResourceObject {
                nano_cpus: Some(250_000_000),
                memory_bytes: Some(32 << 20),
                generic_resources: None,
            }),
            ..Default::default()
        };
        check(&spec(c, Some(r))).unwrap();
        let swap = TaskSpecResources {
            swap_bytes: Some(1 << 30),
            memory_swappiness: Some(0),
            ..Default::default()
        };
        let e = check(&spec(Default::default(), Some(swap)))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--memory-swap, --memory-swappiness"), "{e}");
    }

    #[test]
    fn limits_capabilities_and_groups_are_checked_for_form() {
        let limits = |l: Limit| {
            let r = TaskSpecResources {
                limits: Some(l),
                ..Default::default()
            };
            check(&spec(Default::default(), Some(r)))
                .unwrap_err()
                .to_string()
        };
        let e = limits(Limit {
            memory_bytes: Some(1 << 20),
            ..Default::default()
        });
        assert!(e.contains("--limit-memory") && e.contains("6MiB"), "{e}");
        let e = limits(Limit {
            nano_cpus: Some(1_000_000),
            ..Default::default()
        });
        assert!(e.contains("--limit-cpu 0.001"), "{e}");
        let e = limits(Limit {
            pids: Some(-1),
            ..Default::default()
        });
        assert!(e.contains("--limit-pids"), "{e}");
        let reserve = TaskSpecResources {
            reservations: Some(ResourceObject {
                memory_bytes: Some(-5),
                ..Default::default()
            }),
            ..Default::default()
        };
        let e = check(&spec(Default::default(), Some(reserve)))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--reserve-memory"), "{e}");
        let caps = TaskSpecContainerSpec {
            capability_add: Some(vec!["NET_ADMIN".into(), "FLY".into()]),
            ..Default::default()
        };
        let e = check(&spec(caps, None)).unwrap_err().to_string();
        assert!(e.contains("--cap-add \"FLY\""), "{e}");
        let group = TaskSpecContainerSpec {
            groups: Some(vec!["a b".into()]),
            ..Default::default()
        };
        let e = check(&spec(group, None)).unwrap_err().to_string();
        assert!(e.contains("--group \"a b\""), "{e}");
    }

    #[test]
    fn healthchecks_are_checked_for_form() {
        let health = |test: &[&str], interval: Option<i64>| {
            let c = TaskSpecContainerSpec {
                health_check: Some(HealthConfig {
                    test: Some(test.iter().map(|s| s.to_string()).collect()),
                    interval,
                    ..Default::default()
                }),
                ..Default::default()
            };
            check(&spec(c, None))
        };
        health(&["NONE"], None).unwrap();
        health(&["CMD", "true"], None).unwrap();
        health(&["CMD-SHELL", "test -e /x"], Some(200_000_000)).unwrap();
        health(&[], None).unwrap();
        for (test, interval) in [
            (&["CMD"][..], None),
            (&["SHELL", "x"], None),
            (&["CMD-SHELL", "a", "b"], None),
            (&["CMD", "true"], Some(5)),
        ] {
            let e = health(test, interval).unwrap_err().to_string();
            assert!(e.contains("invalid healthcheck"), "{test:?}: {e}");
        }
    }

    #[test]
    fn users_and_sysctls_are_checked_for_form() {
        for ok in ["nobody", "1000", "1000:1000", "www-data:www-data"] {
            check_user(ok).unwrap();
        }
        for bad in ["a b", "x:", ":x", "../x", "a\n"] {
            assert!(check_user(bad).is_err(), "{bad}");
        }
        check_sysctl("net.ipv4.ip_forward", "1").unwrap();
        assert!(check_sysctl("kernel.shmmax", "1").is_err());
        assert!(check_sysctl("net..x", "1").is_err());
        assert!(check_sysctl("net.ipv4.ip_forward", "").is_err());
        assert!(check_sysctl("net.ipv4/../x", "1").is_err());
    }

    #[test]
    fn fields_the_type_does_not_know_are_named() {
        let raw = serde_json::json!({
            "Name": "w",
            "Labels": {"any": "thing"},
            "TaskTemplate": {"ContainerSpec": {"Image": "whoami", "Healthcheck": {"Test": ["CMD", "false"]},
                             "Nonsense": null}},
            "Bogus": [1],
        });
        let spec: ServiceSpec = serde_json::from_value(raw.clone()).unwrap();
        let mut out = Vec::new();
        dropped_fields(&raw, &serde_json::to_value(&spec).unwrap(), "", &mut out);
        out.sort();
        assert_eq!(out, ["Bogus", "TaskTemplate.ContainerSpec.Healthcheck"]);
        // What the extractor does first, so docker's spelling is kept.
        let mut raw = raw;
        docker_spellings(&mut raw);
        let spec: ServiceSpec = serde_json::from_value(raw).unwrap();
        let test = spec
            .task_template
            .unwrap()
            .container_spec
            .unwrap()
            .health_check;
        assert_eq!(test.unwrap().test.unwrap(), ["CMD", "false"]);
    }

    #[test]
    fn host_lines_and_stop_signals_are_checked_for_form() {
        check_host_line("10.0.9.20 db").unwrap();
        check_host_line("10.0.9.20 db db.local").unwrap();
        assert!(check_host_line("db 10.0.9.20").is_err());
        assert!(check_host_line("10.0.9.20").is_err());
        for ok in ["SIGINT", "INT", "sigusr1", "2", ""] {
            crate::policy::stop_signal(ok).unwrap();
        }
        assert!(crate::policy::stop_signal("SIGNOPE").is_err());
        assert!(crate::policy::stop_signal("99").is_err());
    }

    #[test]
    fn hostnames_are_checked_for_form() {
        check_hostname("{{.Service.Name}}-{{.Task.Slot}}").unwrap();
        check_hostname("db.internal").unwrap();
        assert!(check_hostname("a b").is_err());
        assert!(check_hostname(&"x".repeat(64)).is_err());
    }
}
