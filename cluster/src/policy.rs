//! What a service spec says about restarts, rolling updates and stopping, with Swarm's
//! defaults filled in. The spec keeps exactly what the client sent; these read it.

use std::time::Duration;

use bollard::models::{
    ServiceSpec, ServiceSpecRollbackConfigOrderEnum, ServiceSpecUpdateConfigOrderEnum,
    TaskSpecRestartPolicyConditionEnum,
};

/// Swarm's defaults (swarmkit's api/defaults).
pub const DEFAULT_RESTART_DELAY: Duration = Duration::from_secs(5);
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartCondition {
    None,
    OnFailure,
    Any,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestartPolicy {
    pub condition: RestartCondition,
    pub delay: Duration,
    /// 0: no limit.
    pub max_attempts: u64,
    /// Restarts count against `max_attempts` only within this long before now (Swarm's
    /// `--restart-window`); 0: over the task slot's whole life under one spec.
    pub window: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    StopFirst,
    StartFirst,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UpdatePolicy {
    /// Slots replaced at once; 0: all of them.
    pub parallelism: u64,
    /// Pause after a slot is replaced before the next one starts.
    pub delay: Duration,
    pub order: Order,
}

fn nanos(v: Option<i64>) -> Duration {
    Duration::from_nanos(v.unwrap_or(0).max(0) as u64)
}

pub fn restart_policy(spec: &ServiceSpec) -> RestartPolicy {
    let p = spec
        .task_template
        .as_ref()
        .and_then(|t| t.restart_policy.clone())
        .unwrap_or_default();
    RestartPolicy {
        condition: match p.condition {
            Some(TaskSpecRestartPolicyConditionEnum::NONE) => RestartCondition::None,
            Some(TaskSpecRestartPolicyConditionEnum::ON_FAILURE) => RestartCondition::OnFailure,
            _ => RestartCondition::Any,
        },
        delay: p.delay.map_or(DEFAULT_RESTART_DELAY, |d| nanos(Some(d))),
        max_attempts: p.max_attempts.unwrap_or(0).max(0) as u64,
        window: nanos(p.window),
    }
}

/// The policy for rolling out the current spec: `UpdateConfig`, or `RollbackConfig` when the
/// current spec is a rollback. Swarm's defaults: one at a time, no delay, stop-first.
pub fn update_policy(spec: &ServiceSpec, rollback: bool) -> UpdatePolicy {
    if rollback {
        let c = spec.rollback_config.clone().unwrap_or_default();
        UpdatePolicy {
            parallelism: c.parallelism.map_or(1, |p| p.max(0) as u64),
            delay: nanos(c.delay),
            order: match c.order {
                Some(ServiceSpecRollbackConfigOrderEnum::START_FIRST) => Order::StartFirst,
                _ => Order::StopFirst,
            },
        }
    } else {
        let c = spec.update_config.clone().unwrap_or_default();
        UpdatePolicy {
            parallelism: c.parallelism.map_or(1, |p| p.max(0) as u64),
            delay: nanos(c.delay),
            order: match c.order {
                Some(ServiceSpecUpdateConfigOrderEnum::START_FIRST) => Order::StartFirst,
                _ => Order::StopFirst,
            },
        }
    }
}

/// How long a stopping task's process has between SIGTERM and SIGKILL.
pub fn stop_grace(spec: &ServiceSpec) -> Duration {
    spec.task_template
        .as_ref()
        .and_then(|t| t.container_spec.as_ref())
        .and_then(|c| c.stop_grace_period)
        .map_or(DEFAULT_STOP_GRACE, |g| nanos(Some(g)))
}

/// Refuses durations and counts no client should send, naming the flag that sets them.
pub fn validate(spec: &ServiceSpec) -> Result<(), String> {
    let negative = |v: Option<i64>, flag: &str| match v {
        Some(n) if n < 0 => Err(format!(
            "invalid {flag} {n}: it cannot be negative (durations are nanoseconds in the API, e.g. 5s on the command line)"
        )),
        _ => Ok(()),
    };
    let tt = spec.task_template.clone().unwrap_or_default();
    if let Some(r) = &tt.restart_policy {
        negative(r.delay, "--restart-delay")?;
        negative(r.max_attempts, "--restart-max-attempts")?;
        negative(r.window, "--restart-window")?;
    }
    if let Some(c) = &tt.container_spec {
        negative(c.stop_grace_period, "--stop-grace-period")?;
    }
    if let Some(u) = &spec.update_config {
        negative(u.parallelism, "--update-parallelism")?;
        negative(u.delay, "--update-delay")?;
        negative(u.monitor, "--update-monitor")?;
    }
    if let Some(u) = &spec.rollback_config {
        negative(u.parallelism, "--rollback-parallelism")?;
        negative(u.delay, "--rollback-delay")?;
        negative(u.monitor, "--rollback-monitor")?;
    }
    Ok(())
}

/// The signal `--stop-signal` names (`SIGINT`, `INT` or a number); empty: SIGTERM.
pub fn stop_signal(name: &str) -> Result<nix::sys::signal::Signal, String> {
    use nix::sys::signal::Signal;
    if name.is_empty() {
        return Ok(Signal::SIGTERM);
    }
    let upper = name.to_ascii_uppercase();
    let parsed = match upper.parse::<i32>() {
        Ok(n) => Signal::try_from(n).ok(),
        Err(_) => {
            let full = if upper.starts_with("SIG") {
                upper
            } else {
                format!("SIG{upper}")
            };
            full.parse::<Signal>().ok()
        }
    };
    parsed.ok_or_else(|| {
        format!("invalid --stop-signal {name:?}: give a signal name or number, e.g. SIGINT or 2")
    })
}

/// A task's hostname from `--hostname`, with docker's templates for the task at hand
/// (`{{.Service.Name}}`, `{{.Task.Slot}}`, `{{.Task.Name}}`, `{{.Task.ID}}`,
/// `{{.Node.Hostname}}`, `{{.Node.ID}}`); None: the task's own ID, as docker does.
pub fn hostname(template: &str, fields: &[(&str, &str)]) -> Option<String> {
    if template.is_empty() {
        return None;
    }
    let mut out = template.to_string();
    for (name, value) in fields {
        out = out.replace(&format!("{{{{{name}}}}}"), value);
        out = out.replace(&format!("{{{{ {name} }}}}"), value);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{
        ServiceSpecUpdateConfig, TaskSpec, TaskSpecContainerSpec, TaskSpecRestartPolicy,
    };

    #[test]
    fn swarm_defaults_when_the_spec_says_nothing() {
        let spec = ServiceSpec::default();
        assert_eq!(
            restart_policy(&spec),
            RestartPolicy {
                condition: RestartCondition::Any,
                delay: Duration::from_secs(5),
                max_attempts: 0,
                window: Duration::ZERO,
            }
        );
        assert_eq!(
            update_policy(&spec, false),
            UpdatePolicy {
                parallelism: 1,
                delay: Duration::ZERO,
                order: Order::StopFirst
            }
        );
        assert_eq!(stop_grace(&spec), Duration::from_secs(10));
    }

    #[test]
    fn spec_values_are_read_and_negative_ones_refused() {
        let mut spec = ServiceSpec {
            task_template: Some(TaskSpec {
                restart_policy: Some(TaskSpecRestartPolicy {
                    condition: Some(TaskSpecRestartPolicyConditionEnum::ON_FAILURE),
                    delay: Some(0),
                    max_attempts: Some(2),
                    window: None,
                }),
                container_spec: Some(TaskSpecContainerSpec {
                    stop_grace_period: Some(500_000_000),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            update_config: Some(ServiceSpecUpdateConfig {
                parallelism: Some(0),
                order: Some(ServiceSpecUpdateConfigOrderEnum::START_FIRST),
                ..Default::default()
            }),
            ..Default::default()
        };
        let r = restart_policy(&spec);
        assert_eq!(r.condition, RestartCondition::OnFailure);
        assert_eq!((r.delay, r.max_attempts), (Duration::ZERO, 2));
        assert_eq!(stop_grace(&spec), Duration::from_millis(500));
        let u = update_policy(&spec, false);
        assert_eq!((u.parallelism, u.order), (0, Order::StartFirst));
        // A rollback has its own config, with the same defaults.
        assert_eq!(update_policy(&spec, true).order, Order::StopFirst);
        assert!(validate(&spec).is_ok());
        if let Some(u) = spec.update_config.as_mut() {
            u.delay = Some(-1);
        }
        assert!(validate(&spec).unwrap_err().contains("--update-delay"));
    }
}
