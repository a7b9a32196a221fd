//! Carries rolling updates, rollbacks and drains forward. Each step waits on something that
//! is not a client's request: a new task becoming routed on every node (acks move), an old
//! one stopping, an update delay ending. So while something is in transition this looks again
//! after every commit and every `BUSY_POLL` (acks move without commits); otherwise it sleeps
//! until the next commit.

use std::time::Duration;

use chrono::Utc;

use super::shared::Shared;
use crate::orchestrator;
use crate::wait;

/// How often acks are looked at while a service is in transition. Each step of an update waits
/// for one, so this bounds what the updater adds to a step; an idle cluster never polls.
const BUSY_POLL: Duration = Duration::from_millis(25);

pub async fn run(m: Shared) {
    let mut commits = m.store.subscribe();
    loop {
        let wake = step(&m);
        let until_wake = wake.map(|w| (w - Utc::now()).to_std().unwrap_or_default());
        tokio::select! {
            changed = commits.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = wait::sleep_until(until_wake.map(|d| tokio::time::Instant::now() + d)) => {}
        }
    }
}

/// One pass over the services in transition. A dry run on a copy first: only a pass that
/// changes something commits (a commit wakes this loop again, so an empty one would spin).
fn step(m: &Shared) -> Option<chrono::DateTime<Utc>> {
    let snapshot = m.store.snapshot();
    let busy = orchestrator::in_transition(&snapshot);
    if busy.is_empty() {
        return None;
    }
    let min_ack = m.min_ack(&snapshot);
    let now = Utc::now();
    let mut draft = (*snapshot).clone();
    let mut wake = Some(now + chrono::Duration::from_std(BUSY_POLL).unwrap_or_default());
    for id in &busy {
        let w = orchestrator::reconcile_or_keep(&mut draft, id, min_ack, now);
        wake = earliest(wake, w);
    }
    if !draft.is_dirty() {
        return wake;
    }
    let committed = m.update(|s| {
        let mut wake = Some(now + chrono::Duration::from_std(BUSY_POLL).unwrap_or_default());
        for id in &busy {
            let w = orchestrator::reconcile_or_keep(s, id, min_ack, now);
            wake = earliest(wake, w);
        }
        Ok(wake)
    });
    match committed {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!("advancing updates: {e}");
            // Try again shortly rather than wait for the next change.
            Some(now + chrono::Duration::milliseconds(500))
        }
    }
}

fn earliest(
    a: Option<chrono::DateTime<Utc>>,
    b: Option<chrono::DateTime<Utc>>,
) -> Option<chrono::DateTime<Utc>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
