//! Healthchecks as dockerd runs them for Swarm: the command runs every interval inside the
//! task (its namespaces, its user); the first success makes a starting task ready (so it joins
//! the load balancers only then), and `retries` failures in a row make it unhealthy (so it is
//! failed and replaced). Failures in the start period do not count until the first success.

use std::time::Duration;

use tokio::sync::mpsc;

use super::event::Event;
use super::process;
use crate::plan::{HealthPlan, TaskPlan};

/// How much of a failed check's output the task's error keeps, as docker keeps the end of it.
const OUTPUT_KEPT: usize = 200;

/// Checks `task` (whose process is `pid`) until it is unhealthy or its process is gone.
pub async fn monitor(
    cluster: String,
    task: TaskPlan,
    pid: u32,
    h: HealthPlan,
    events: mpsc::UnboundedSender<Event>,
) {
    let started = tokio::time::Instant::now();
    let start_period = Duration::from_millis(h.start_period_ms);
    let mut healthy = false;
    let mut failures = 0;
    loop {
        let starting = !healthy && started.elapsed() < start_period;
        let pause = if starting {
            h.start_interval_ms
        } else {
            h.interval_ms
        };
        // The check's own period: docker's first check also comes one interval after start.
        tokio::time::sleep(Duration::from_millis(pause)).await;
        if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_err() {
            return; // its exit is reported by whoever watches its process
        }
        match check_once(&cluster, &task, pid, &h).await {
            Ok(()) => {
                failures = 0;
                if !healthy {
                    healthy = true;
                    let _ = events.send(Event::Ready {
                        id: task.id.clone(),
                    });
                }
            }
            Err(why) => {
                tracing::debug!(task = task.name, "healthcheck failed: {why}");
                if !healthy && started.elapsed() < start_period {
                    continue;
                }
                failures += 1;
                if failures >= h.retries {
                    let _ = events.send(Event::Unhealthy {
                        id: task.id.clone(),
                        why,
                    });
                    return;
                }
            }
        }
    }
}

async fn check_once(
    cluster: &str,
    task: &TaskPlan,
    pid: u32,
    h: &HealthPlan,
) -> Result<(), String> {
    let child = process::probe(cluster, task, pid, &h.argv, &[])
        .and_then(|mut cmd| cmd.spawn())
        .map_err(|e| format!("the healthcheck could not start: {e}"))?;
    let timeout = Duration::from_millis(h.timeout_ms);
    // On the timeout the child is dropped, which kills it.
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Err(_) => Err(format!("the healthcheck took longer than {timeout:?}")),
        Ok(Err(e)) => Err(format!("the healthcheck: {e}")),
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => {
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            let text = text.trim();
            let tail: String = text
                .chars()
                .rev()
                .take(OUTPUT_KEPT)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            Err(match out.status.code() {
                Some(c) => format!("the healthcheck exited {c}: {tail}"),
                None => format!("the healthcheck was killed: {tail}"),
            })
        }
    }
}
