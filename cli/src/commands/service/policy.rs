//! The flags of `service create` and `service update` that say how tasks restart, roll out
//! and stop, as docker spells them. Like docker's CLI, a spec carries only what a flag set.

use std::time::Duration;

use bollard::models::{
    ServiceSpec, ServiceSpecRollbackConfig, ServiceSpecRollbackConfigOrderEnum,
    ServiceSpecUpdateConfig, ServiceSpecUpdateConfigOrderEnum, TaskSpecRestartPolicy,
    TaskSpecRestartPolicyConditionEnum,
};
use clap::{Args, ValueEnum};

use crate::duration;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum RestartCondition {
    None,
    OnFailure,
    Any,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Order {
    StopFirst,
    StartFirst,
}

#[derive(Args, Debug, Clone, Default)]
pub struct PolicyArgs {
    /// Restart when condition is met
    #[arg(long, value_enum)]
    restart_condition: Option<RestartCondition>,
    /// Delay between restart attempts (ns|us|ms|s|m|h) (default 5s)
    #[arg(long, value_parser = duration::go, value_name = "DURATION")]
    restart_delay: Option<Duration>,
    /// Maximum number of restarts before giving up
    #[arg(long, value_name = "N")]
    restart_max_attempts: Option<u64>,
    /// Window used to evaluate the restart policy (ns|us|ms|s|m|h)
    #[arg(long, value_parser = duration::go, value_name = "DURATION")]
    restart_window: Option<Duration>,
    /// Maximum number of tasks updated simultaneously (0 to update all at once) (default 1)
    #[arg(long, value_name = "N")]
    update_parallelism: Option<u64>,
    /// Delay between updates (ns|us|ms|s|m|h) (default 0s)
    #[arg(long, value_parser = duration::go, value_name = "DURATION")]
    update_delay: Option<Duration>,
    /// Update order (default stop-first)
    #[arg(long, value_enum)]
    update_order: Option<Order>,
    /// Maximum number of tasks rolled back simultaneously (0 to roll back all at once)
    #[arg(long, value_name = "N")]
    rollback_parallelism: Option<u64>,
    /// Delay between task rollbacks (ns|us|ms|s|m|h) (default 0s)
    #[arg(long, value_parser = duration::go, value_name = "DURATION")]
    rollback_delay: Option<Duration>,
    /// Rollback order (default stop-first)
    #[arg(long, value_enum)]
    rollback_order: Option<Order>,
    /// Time to wait before force killing a task (ns|us|ms|s|m|h) (default 10s)
    #[arg(long, value_parser = duration::go, value_name = "DURATION")]
    stop_grace_period: Option<Duration>,
}

fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl PolicyArgs {
    /// Sets what the flags name, leaving every other field of `spec` exactly as it was.
    pub fn apply(&self, spec: &mut ServiceSpec) {
        let task = spec.task_template.get_or_insert_with(Default::default);
        if self.restart_condition.is_some()
            || self.restart_delay.is_some()
            || self.restart_max_attempts.is_some()
            || self.restart_window.is_some()
        {
            let r = task
                .restart_policy
                .get_or_insert_with(TaskSpecRestartPolicy::default);
            if let Some(c) = self.restart_condition {
                r.condition = Some(match c {
                    RestartCondition::None => TaskSpecRestartPolicyConditionEnum::NONE,
                    RestartCondition::OnFailure => TaskSpecRestartPolicyConditionEnum::ON_FAILURE,
                    RestartCondition::Any => TaskSpecRestartPolicyConditionEnum::ANY,
                });
            }
            if let Some(d) = self.restart_delay {
                r.delay = Some(nanos(d));
            }
            if let Some(n) = self.restart_max_attempts {
                r.max_attempts = Some(count(n));
            }
            if let Some(d) = self.restart_window {
                r.window = Some(nanos(d));
            }
        }
        if let Some(g) = self.stop_grace_period {
            task.container_spec
                .get_or_insert_with(Default::default)
                .stop_grace_period = Some(nanos(g));
        }
        if self.update_parallelism.is_some()
            || self.update_delay.is_some()
            || self.update_order.is_some()
        {
            let u = spec
                .update_config
                .get_or_insert_with(ServiceSpecUpdateConfig::default);
            if let Some(n) = self.update_parallelism {
                u.parallelism = Some(count(n));
            }
            if let Some(d) = self.update_delay {
                u.delay = Some(nanos(d));
            }
            if let Some(o) = self.update_order {
                u.order = Some(match o {
                    Order::StopFirst => ServiceSpecUpdateConfigOrderEnum::STOP_FIRST,
                    Order::StartFirst => ServiceSpecUpdateConfigOrderEnum::START_FIRST,
                });
            }
        }
        if self.rollback_parallelism.is_some()
            || self.rollback_delay.is_some()
            || self.rollback_order.is_some()
        {
            let u = spec
                .rollback_config
                .get_or_insert_with(ServiceSpecRollbackConfig::default);
            if let Some(n) = self.rollback_parallelism {
                u.parallelism = Some(count(n));
            }
            if let Some(d) = self.rollback_delay {
                u.delay = Some(nanos(d));
            }
            if let Some(o) = self.rollback_order {
                u.order = Some(match o {
                    Order::StopFirst => ServiceSpecRollbackConfigOrderEnum::STOP_FIRST,
                    Order::StartFirst => ServiceSpecRollbackConfigOrderEnum::START_FIRST,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_flags_given_reach_the_spec() {
        let mut spec = ServiceSpec::default();
        PolicyArgs::default().apply(&mut spec);
        assert_eq!(spec.update_config, None);
        assert_eq!(
            spec.task_template
                .as_ref()
                .and_then(|t| t.restart_policy.clone()),
            None
        );
        let args = PolicyArgs {
            restart_condition: Some(RestartCondition::OnFailure),
            update_order: Some(Order::StartFirst),
            stop_grace_period: Some(Duration::from_millis(500)),
            ..Default::default()
        };
        args.apply(&mut spec);
        let task = spec.task_template.clone().unwrap_or_default();
        let restart = task.restart_policy.unwrap_or_default();
        assert_eq!(
            restart.condition,
            Some(TaskSpecRestartPolicyConditionEnum::ON_FAILURE)
        );
        assert_eq!(restart.delay, None);
        assert_eq!(
            task.container_spec.and_then(|c| c.stop_grace_period),
            Some(500_000_000)
        );
        let update = spec.update_config.unwrap_or_default();
        assert_eq!(
            update.order,
            Some(ServiceSpecUpdateConfigOrderEnum::START_FIRST)
        );
        assert_eq!(update.parallelism, None);
    }
}
