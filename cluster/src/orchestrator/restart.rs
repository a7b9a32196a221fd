//! Whether and when a slot whose task ended gets a new one: the service's restart policy
//! (condition, delay, attempts within a window), and a back-off of its own for a slot that
//! keeps failing.

use chrono::Utc;

use crate::model::{Service, Task, TaskState, Time};
use crate::policy::{self, RestartCondition};
use crate::store::State;

/// Back-off for a slot whose tasks keep failing, whatever the policy's delay: 0 for the first
/// failure, then doubling up to 5 s, so a task that cannot start never spins.
fn failure_backoff(state: &State, service_id: &str, slot: u64) -> chrono::Duration {
    let recent_failures = state
        .tasks
        .values()
        .filter(|t| t.service_id == service_id && t.slot == slot)
        .filter(|t| matches!(t.status.state, TaskState::Failed | TaskState::Rejected))
        .filter(|t| Utc::now() - t.status.timestamp < chrono::Duration::seconds(30))
        .count() as u32;
    match recent_failures {
        0 | 1 => chrono::Duration::zero(),
        n => chrono::Duration::milliseconds((100i64 << (n - 2).min(6)).min(5000)),
    }
}

/// When (and whether) a slot with no task gets a new one, from the slot's last task and the
/// service's restart policy: `Some((restarts, start_after))`, or `None` to leave it empty.
pub fn refill(
    state: &State,
    service: &Service,
    slot: u64,
    now: Time,
) -> Option<(u64, Option<Time>)> {
    let last = state
        .tasks
        .values()
        .filter(|t| t.service_id == service.id && t.slot == slot)
        .max_by_key(|t| t.created);
    let Some(last) = last else {
        return Some((0, None));
    };
    // Ended on its own (not shut down by us, nor lost with its node): the policy decides.
    let exited = last.drain_version.is_none()
        && matches!(
            last.status.state,
            TaskState::Complete | TaskState::Failed | TaskState::Rejected
        );
    if !exited || last.spec_generation != service.spec_generation {
        return Some((0, None));
    }
    let p = policy::restart_policy(&service.spec);
    let wanted = match p.condition {
        RestartCondition::Any => true,
        RestartCondition::OnFailure => last.status.state != TaskState::Complete,
        RestartCondition::None => false,
    };
    if !wanted || (p.max_attempts > 0 && attempts(state, service, last, &p, now) >= p.max_attempts)
    {
        return None;
    }
    let delay = chrono::Duration::from_std(p.delay)
        .unwrap_or(chrono::Duration::MAX)
        .max(failure_backoff(state, &service.id, slot));
    let at = (delay > chrono::Duration::zero()).then(|| now + delay);
    Some((last.restarts + 1, at))
}

/// Restarts of the slot that count against the policy's maximum: all of them under the
/// current spec, or with a window, those made within it.
fn attempts(
    state: &State,
    service: &Service,
    last: &Task,
    p: &policy::RestartPolicy,
    now: Time,
) -> u64 {
    if p.window.is_zero() {
        return last.restarts;
    }
    let since = chrono::Duration::from_std(p.window)
        .ok()
        .and_then(|w| now.checked_sub_signed(w))
        .unwrap_or(Time::MIN_UTC);
    state
        .tasks
        .values()
        .filter(|t| {
            t.service_id == service.id
                && t.slot == last.slot
                && t.spec_generation == service.spec_generation
                && t.restarts > 0
                && t.created > since
        })
        .count() as u64
}
