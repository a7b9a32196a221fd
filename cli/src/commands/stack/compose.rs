//! Reading compose files as `docker stack deploy` does: each file parsed as YAML, later files
//! merged over earlier ones, `${VAR}` interpolated from the environment, then read into the
//! compose-spec's types (`compose_spec`). Keys swarmkit does not carry out are refused here by
//! their path in the file, before anything is converted, so none is dropped without a word.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde_yaml::{Mapping, Value};

/// A stack's compose files, read and merged.
pub struct Loaded {
    pub compose: compose_spec::Compose,
    /// Where relative paths (`file:` of secrets and configs, bind sources, `env_file`) start:
    /// the first file's directory, as docker takes it.
    pub dir: PathBuf,
    /// What the compose-spec's types cannot hold, taken out of the file before they read it:
    /// per service, its `deploy.mode` (they know only replicated and global, not the jobs) and
    /// the `max_failure_ratio`s (a fraction, which they read as a whole number).
    pub raw: BTreeMap<String, RawDeploy>,
    pub warnings: Vec<String>,
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct RawDeploy {
    pub mode: Option<String>,
    pub update_failure_ratio: Option<f64>,
    pub rollback_failure_ratio: Option<f64>,
}

pub fn load(files: &[PathBuf]) -> anyhow::Result<Loaded> {
    let mut merged = Value::Null;
    for f in files {
        let text = std::fs::read_to_string(f)
            .with_context(|| format!("reading compose file {}", f.display()))?;
        let value: Value = serde_yaml::from_str(&text)
            .with_context(|| format!("{} is not valid YAML", f.display()))?;
        merge(&mut merged, value);
    }
    let dir = files
        .first()
        .and_then(|f| f.parent())
        .map(Path::to_path_buf)
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from("."));
    let mut warnings = Vec::new();
    let mut lookup = |name: &str| std::env::var(name).ok();
    interpolate_value(&mut merged, &mut lookup, &mut warnings)?;
    let (compose, raw) = parse(merged)?;
    Ok(Loaded {
        compose,
        dir,
        raw,
        warnings,
    })
}

/// Parses a merged, interpolated file: refuses unknown keys by path, takes out what the types
/// cannot hold, reads the rest.
pub fn parse(
    mut value: Value,
) -> anyhow::Result<(compose_spec::Compose, BTreeMap<String, RawDeploy>)> {
    refuse_unsupported(&value)?;
    let raw = take_raw(&mut value);
    let compose: compose_spec::Compose = compose_spec::Compose::options()
        .apply_merge(true)
        .from_yaml_value(value)
        .map_err(|e| anyhow::anyhow!("the compose file does not read as compose: {e}"))?;
    Ok((compose, raw))
}

/// Later files' keys win; mappings merge key by key, anything else is replaced.
fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Mapping(b), Value::Mapping(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, over) => *slot = over,
    }
}

fn interpolate_value(
    v: &mut Value,
    lookup: &mut dyn FnMut(&str) -> Option<String>,
    warnings: &mut Vec<String>,
) -> anyhow::Result<()> {
    match v {
        Value::String(s) => *s = interpolate(s, lookup, warnings)?,
        Value::Sequence(items) => {
            for item in items {
                interpolate_value(item, lookup, warnings)?;
            }
        }
        Value::Mapping(m) => {
            for (_, item) in m.iter_mut() {
                interpolate_value(item, lookup, warnings)?;
            }
        }
        Value::Tagged(t) => interpolate_value(&mut t.value, lookup, warnings)?,
        _ => {}
    }
    Ok(())
}

/// Compose's variable substitution: `$VAR`, `${VAR}`, `${VAR:-default}` (unset or empty),
/// `${VAR-default}` (unset), `${VAR:?message}`/`${VAR?message}` (an error), `${VAR:+other}`/
/// `${VAR+other}`, and `$$` for a literal `$`. An unset variable without a default is empty,
/// with docker's warning.
pub fn interpolate(
    s: &str,
    lookup: &mut dyn FnMut(&str) -> Option<String>,
    warnings: &mut Vec<String>,
) -> anyhow::Result<String> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('{') {
            let end = closing_brace(inner).ok_or_else(|| {
                anyhow::anyhow!("invalid interpolation format for {s:?}: an unclosed ${{")
            })?;
            out.push_str(&braced(&inner[..end], s, lookup, warnings)?);
            rest = &inner[end + 1..];
        } else {
            let len = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            if len == 0 {
                bail!(
                    "invalid interpolation format for {s:?}: a $ starts no variable; write $$ for a literal $"
                );
            }
            out.push_str(&variable(&after[..len], lookup, warnings));
            rest = &after[len..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The `}` that closes a `${`, past any nested `${...}` in a default.
fn closing_brace(s: &str) -> Option<usize> {
    let mut depth = 0usize;
    let bytes = s.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'{' if i > 0 && bytes[i - 1] == b'$' => depth += 1,
            b'}' if depth == 0 => return Some(i),
            b'}' => depth -= 1,
            _ => {}
        }
    }
    None
}

fn variable(
    name: &str,
    lookup: &mut dyn FnMut(&str) -> Option<String>,
    warnings: &mut Vec<String>,
) -> String {
    lookup(name).unwrap_or_else(|| {
        warnings.push(format!(
            "The {name} variable is not set. Defaulting to a blank string."
        ));
        String::new()
    })
}

fn braced(
    expr: &str,
    whole: &str,
    lookup: &mut dyn FnMut(&str) -> Option<String>,
    warnings: &mut Vec<String>,
) -> anyhow::Result<String> {
    let len = expr
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(expr.len());
    let (name, op) = expr.split_at(len);
    if name.is_empty() {
        bail!("invalid interpolation format for {whole:?}: ${{{expr}}} names no variable");
    }
    let value = lookup(name);
    let set_nonempty = value.as_deref().is_some_and(|v| !v.is_empty());
    let mut arg = |prefix: &str| -> anyhow::Result<Option<String>> {
        match op.strip_prefix(prefix) {
            Some(a) => interpolate(a, lookup, warnings).map(Some),
            None => Ok(None),
        }
    };
    for (prefix, present) in [(":-", set_nonempty), ("-", value.is_some())] {
        if let Some(default) = arg(prefix)? {
            return Ok(if present {
                value.unwrap_or_default()
            } else {
                default
            });
        }
    }
    for (prefix, present) in [(":?", set_nonempty), ("?", value.is_some())] {
        if let Some(message) = arg(prefix)? {
            if present {
                return Ok(value.unwrap_or_default());
            }
            bail!("required variable {name} is missing a value: {message}");
        }
    }
    for (prefix, present) in [(":+", set_nonempty), ("+", value.is_some())] {
        if let Some(other) = arg(prefix)? {
            return Ok(if present { other } else { String::new() });
        }
    }
    if !op.is_empty() {
        bail!("invalid interpolation format for {whole:?}: unknown operator in ${{{expr}}}");
    }
    Ok(value.unwrap_or_else(|| variable(name, lookup, warnings)))
}

/// The keys swarmkit carries out, per level of the file; `x-` extensions are always allowed
/// (compose ignores them by definition).
const TOP: &[&str] = &[
    "version", "services", "networks", "volumes", "secrets", "configs",
];
const SERVICE: &[&str] = &[
    "image",
    "command",
    "entrypoint",
    "environment",
    "env_file",
    "ports",
    "networks",
    "volumes",
    "tmpfs",
    "secrets",
    "configs",
    "healthcheck",
    "hostname",
    "user",
    "group_add",
    "working_dir",
    "stop_grace_period",
    "stop_signal",
    "cap_add",
    "cap_drop",
    "dns",
    "dns_search",
    "dns_opt",
    "extra_hosts",
    "sysctls",
    "read_only",
    "init",
    "labels",
    "deploy",
    "restart",
];
const DEPLOY: &[&str] = &[
    "mode",
    "replicas",
    "labels",
    "resources",
    "restart_policy",
    "update_config",
    "rollback_config",
    "placement",
    "endpoint_mode",
];
const RESOURCES: &[&str] = &["limits", "reservations"];
const LIMITS: &[&str] = &["cpus", "memory", "pids"];
const RESERVATIONS: &[&str] = &["cpus", "memory"];
const PLACEMENT: &[&str] = &["constraints", "preferences", "max_replicas_per_node"];
const NETWORK: &[&str] = &[
    "driver",
    "driver_opts",
    "attachable",
    "internal",
    "ipam",
    "labels",
    "external",
    "name",
    "enable_ipv6",
];
const VOLUME: &[&str] = &["driver", "driver_opts", "labels", "external", "name"];
const SECRET: &[&str] = &["file", "environment", "external", "name", "labels"];
const CONFIG: &[&str] = &[
    "file",
    "environment",
    "content",
    "external",
    "name",
    "labels",
];

/// Why a key is not done, where there is more to say than "remove it".
fn why(key: &str) -> &'static str {
    match key {
        "build" => "; build and push the image first, a stack runs images",
        "depends_on" | "links" => {
            "; a stack's services start independently and find each other by name"
        }
        "container_name" => "; a service's tasks are named by swarm",
        "network_mode" | "privileged" | "devices" | "pid" | "ipc" | "security_opt" => {
            "; swarm services cannot have it"
        }
        "ulimits" | "tty" | "logging" | "mem_limit" | "cpus" | "pids_limit" | "mem_reservation" => {
            "; swarmkit does not do it (limits go in deploy.resources)"
        }
        "name" => "; the stack's name is given on the command line",
        "include" | "extends" => "; give every file with -c instead",
        _ => "",
    }
}

fn refuse_keys(v: Option<&Value>, allowed: &[&str], at: &str) -> anyhow::Result<()> {
    let Some(Value::Mapping(m)) = v else {
        return Ok(());
    };
    for key in m.keys() {
        let Some(key) = key.as_str() else { continue };
        if key.starts_with("x-") || allowed.contains(&key) {
            continue;
        }
        let path = if at.is_empty() {
            key.to_string()
        } else {
            format!("{at}.{key}")
        };
        bail!(
            "swarmkit stack deploy does not do {path}: remove it{}. Nothing was created",
            why(key)
        );
    }
    Ok(())
}

fn entries(v: Option<&Value>) -> Vec<(String, &Value)> {
    match v {
        Some(Value::Mapping(m)) => m
            .iter()
            .filter_map(|(k, v)| Some((k.as_str()?.to_string(), v)))
            .collect(),
        _ => Vec::new(),
    }
}

fn refuse_unsupported(v: &Value) -> anyhow::Result<()> {
    if !v.is_mapping() {
        bail!("a compose file is a mapping with services: at its top");
    }
    refuse_keys(Some(v), TOP, "")?;
    for (name, svc) in entries(v.get("services")) {
        let at = format!("services.{name}");
        refuse_keys(Some(svc), SERVICE, &at)?;
        let deploy = svc.get("deploy");
        refuse_keys(deploy, DEPLOY, &format!("{at}.deploy"))?;
        let resources = deploy.and_then(|d| d.get("resources"));
        refuse_keys(resources, RESOURCES, &format!("{at}.deploy.resources"))?;
        refuse_keys(
            resources.and_then(|r| r.get("limits")),
            LIMITS,
            &format!("{at}.deploy.resources.limits"),
        )?;
        refuse_keys(
            resources.and_then(|r| r.get("reservations")),
            RESERVATIONS,
            &format!("{at}.deploy.resources.reservations"),
        )?;
        refuse_keys(
            deploy.and_then(|d| d.get("placement")),
            PLACEMENT,
            &format!("{at}.deploy.placement"),
        )?;
    }
    for (section, allowed) in [
        ("networks", NETWORK),
        ("volumes", VOLUME),
        ("secrets", SECRET),
        ("configs", CONFIG),
    ] {
        for (name, item) in entries(v.get(section)) {
            refuse_keys(Some(item), allowed, &format!("{section}.{name}"))?;
        }
    }
    Ok(())
}

/// Takes out of each service what `RawDeploy` keeps, leaving what the types can read.
fn take_raw(v: &mut Value) -> BTreeMap<String, RawDeploy> {
    let mut out = BTreeMap::new();
    let Some(Value::Mapping(services)) = v.get_mut("services") else {
        return out;
    };
    for (name, svc) in services.iter_mut() {
        let Some(name) = name.as_str() else { continue };
        octal_modes(svc);
        let Some(Value::Mapping(deploy)) = svc.get_mut("deploy") else {
            continue;
        };
        let mut raw = RawDeploy {
            mode: deploy
                .remove("mode")
                .and_then(|m| m.as_str().map(String::from)),
            ..Default::default()
        };
        let ratio = |d: &mut Mapping, key: &str| {
            d.get_mut(key)
                .and_then(Value::as_mapping_mut)
                .and_then(|c| c.remove("max_failure_ratio"))
                .and_then(|r| r.as_f64())
        };
        raw.update_failure_ratio = ratio(deploy, "update_config");
        raw.rollback_failure_ratio = ratio(deploy, "rollback_config");
        out.insert(name.to_string(), raw);
    }
    out
}

/// A secret's or config's `mode: 0440` is octal in compose (YAML 1.1); YAML 1.2, which
/// serde_yaml reads, makes it a string the types refuse.
fn octal_modes(svc: &mut Value) {
    for key in ["secrets", "configs"] {
        let Some(Value::Sequence(refs)) = svc.get_mut(key) else {
            continue;
        };
        for r in refs.iter_mut().filter_map(Value::as_mapping_mut) {
            let octal = r
                .get("mode")
                .and_then(Value::as_str)
                .filter(|m| m.len() > 1 && m.starts_with('0'))
                .and_then(|m| u32::from_str_radix(m, 8).ok());
            if let Some(mode) = octal {
                r.insert("mode".into(), Value::from(mode));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interp(s: &str) -> anyhow::Result<String> {
        let env = |n: &str| match n {
            "SET" => Some("value".to_string()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        let mut lookup = env;
        interpolate(s, &mut lookup, &mut Vec::new())
    }

    #[test]
    fn interpolation_follows_compose() {
        assert_eq!(interp("a-${SET}-$SET.b").unwrap(), "a-value-value.b");
        assert_eq!(interp("${UNSET:-def}").unwrap(), "def");
        assert_eq!(interp("${EMPTY:-def}").unwrap(), "def");
        assert_eq!(interp("${EMPTY-def}").unwrap(), "");
        assert_eq!(interp("${UNSET-def}").unwrap(), "def");
        assert_eq!(interp("${SET:-def}").unwrap(), "value");
        assert_eq!(interp("${UNSET:-${SET}x}").unwrap(), "valuex");
        assert_eq!(interp("${SET:+alt}|${UNSET:+alt}").unwrap(), "alt|");
        assert_eq!(interp("$$HOME and $${SET}").unwrap(), "$HOME and ${SET}");
        assert_eq!(interp("no vars").unwrap(), "no vars");
        let e = interp("${UNSET:?give it}").unwrap_err().to_string();
        assert!(e.contains("UNSET") && e.contains("give it"), "{e}");
        assert!(interp("${SET").is_err());
        assert!(interp("${SET!x}").is_err());
        let mut warnings = Vec::new();
        let mut none = |_: &str| None;
        assert_eq!(
            interpolate("x${NOPE}", &mut none, &mut warnings).unwrap(),
            "x"
        );
        assert_eq!(
            warnings,
            ["The NOPE variable is not set. Defaulting to a blank string."]
        );
    }

    #[test]
    fn later_files_merge_over_earlier_ones() {
        let mut a: Value =
            serde_yaml::from_str("services: {web: {image: whoami, ports: ['80:80']}}").unwrap();
        let b: Value =
            serde_yaml::from_str("services: {web: {ports: ['81:80']}, db: {image: postgres}}")
                .unwrap();
        merge(&mut a, b);
        let want: Value = serde_yaml::from_str(
            "services: {web: {image: whoami, ports: ['81:80']}, db: {image: postgres}}",
        )
        .unwrap();
        assert_eq!(a, want);
    }

    #[test]
    fn unsupported_keys_are_refused_by_path() {
        let refused = |yaml: &str| {
            parse(serde_yaml::from_str(yaml).unwrap())
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        let e = refused("services: {web: {image: whoami, privileged: true}}");
        assert!(e.contains("services.web.privileged"), "{e}");
        let e = refused(
            "services: {web: {image: whoami, deploy: {resources: {reservations: {devices: []}}}}}",
        );
        assert!(
            e.contains("services.web.deploy.resources.reservations.devices"),
            "{e}"
        );
        let e = refused("services: {web: {image: whoami, build: .}}");
        assert!(
            e.contains("services.web.build") && e.contains("image"),
            "{e}"
        );
        let e = refused("services: {web: {image: whoami}}\nnetworks: {n: {enable_ipv4: true}}");
        assert!(e.contains("networks.n.enable_ipv4"), "{e}");
        assert_eq!(
            refused("services: {web: {image: whoami, x-mine: 1}}\nx-common: {a: 1}"),
            ""
        );
    }

    #[test]
    fn job_modes_and_failure_ratios_survive_the_types() {
        let (compose, raw) = parse(
            serde_yaml::from_str(
                "services: {job: {image: whoami, deploy: {mode: replicated-job, update_config: {max_failure_ratio: 0.25}}}}",
            )
            .unwrap(),
        )
        .unwrap();
        assert!(compose.services.contains_key("job"));
        assert_eq!(
            raw["job"],
            RawDeploy {
                mode: Some("replicated-job".into()),
                update_failure_ratio: Some(0.25),
                rollback_failure_ratio: None,
            }
        );
    }
}
