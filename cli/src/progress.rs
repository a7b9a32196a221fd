//! Waiting for a service to converge, drawn like docker/cli's service progress:
//!
//! ```text
//! overall progress: 3 out of 3 tasks
//! 1/3: running   [==================================================>]
//! verify: Service converged
//! ```
//!
//! On a terminal the lines are redrawn in place; otherwise only the final state is printed,
//! so captured output is stable.

use std::collections::{BTreeMap, HashMap};
use std::io::{IsTerminal, Write};
use std::time::Duration;

use bollard::models::{Service, Task, TaskState};
use bollard::query_parameters::ListTasksOptions;

use crate::api::{Api, ApiResult};
use crate::render;

const POLL: Duration = Duration::from_millis(50);
/// Faster at first: a service converges in 60-200 ms, and polled only every 50 ms the same
/// add took 0.065 s or 0.115 s by where the poll fell.
const FIRST_POLLS: Duration = Duration::from_millis(10);
const FIRST_POLLS_FOR: Duration = Duration::from_millis(300);
/// Above this many replicas docker draws only the overall line.
const MAX_BARS: usize = 20;
/// A slot whose task failed this many times will not converge on its own: give up and
/// show the error rather than spin forever.
const FAIL_LIMIT: usize = 3;
const BAR_WIDTH: usize = 50;
const STATE_WIDTH: usize = 9;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProgressError {
    #[error("service {service} did not converge: task {task} failed {count} times: {err}")]
    TaskFailing {
        service: String,
        task: String,
        count: usize,
        err: String,
    },
}

/// Docker's ordering of task states; 0 means "not shown".
fn rank(state: Option<TaskState>) -> u8 {
    use TaskState::*;
    match state {
        Some(NEW) => 1,
        Some(ALLOCATED) => 2,
        Some(PENDING) => 3,
        Some(ASSIGNED) => 4,
        Some(ACCEPTED) => 5,
        Some(PREPARING) => 6,
        Some(READY) => 7,
        Some(STARTING) => 8,
        Some(RUNNING) => 9,
        Some(COMPLETE) => 10,
        Some(SHUTDOWN) => 11,
        Some(FAILED) => 12,
        Some(REJECTED) => 13,
        _ => 0,
    }
}

fn terminal(state: Option<TaskState>) -> bool {
    rank(state) > rank(Some(TaskState::RUNNING))
}

fn bar(rank: u8) -> String {
    let pct = ((f64::from(rank) / 9.0 * 100.0) as usize / 2).min(BAR_WIDTH);
    format!("[{}>{}]", "=".repeat(pct), " ".repeat(BAR_WIDTH - pct))
}

/// docker's truncError: one line, at most 75 characters.
fn trunc_error(err: &str) -> String {
    render::ellipsis(&err.replace('\n', " "), 75)
}

fn state(t: &Task) -> Option<TaskState> {
    t.status.as_ref().and_then(|s| s.state)
}

fn task_err(t: &Task) -> &str {
    t.status
        .as_ref()
        .and_then(|s| s.err.as_deref())
        .unwrap_or("")
}

/// Tasks of an older spec still run during an update; only tasks carrying the current
/// spec count towards convergence. (Docker asks the server with `_up-to-date`; comparing
/// the fields the CLI can change keeps this working against any manager.)
fn up_to_date(task: &Task, service: &Service) -> bool {
    let Some(task_spec) = &task.spec else {
        return true;
    };
    let Some(svc_spec) = service.spec.as_ref().and_then(|s| s.task_template.as_ref()) else {
        return true;
    };
    let (a, b) = (&task_spec.container_spec, &svc_spec.container_spec);
    let field = |f: fn(&bollard::models::TaskSpecContainerSpec) -> String| {
        a.as_ref().map(f) == b.as_ref().map(f)
    };
    field(|c| c.image.clone().unwrap_or_default())
        && field(|c| format!("{:?}", c.args.clone().unwrap_or_default()))
        && field(|c| format!("{:?}", c.env.clone().unwrap_or_default()))
        && task_spec.force_update.unwrap_or(0) == svc_spec.force_update.unwrap_or(0)
}

/// One poll's worth of display lines and verdict.
#[derive(Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub lines: Vec<String>,
    pub converged: bool,
}

/// Remembers which display line each slot got, so lines do not jump between polls.
#[derive(Default)]
pub struct Tracker {
    lines_by_key: BTreeMap<String, usize>,
}

impl Tracker {
    pub fn evaluate(
        &mut self,
        service: &Service,
        tasks: &[Task],
    ) -> Result<Snapshot, ProgressError> {
        let spec = service.spec.as_ref();
        let name = spec.and_then(|s| s.name.clone()).unwrap_or_default();
        let mode = spec.and_then(|s| s.mode.as_ref());
        if let Some(iteration) = service
            .job_status
            .as_ref()
            .and_then(|j| j.job_iteration.as_ref())
        {
            return job_progress(&name, mode, iteration.index, tasks);
        }
        let global = mode.is_some_and(|m| m.global.is_some());
        let key = |t: &Task| -> String {
            if global {
                render::truncate_id(t.node_id.as_deref().unwrap_or(""))
            } else {
                // Zero-padded so BTreeMap order is slot order.
                format!("{:010}", t.slot.unwrap_or(0))
            }
        };

        let current: Vec<&Task> = tasks.iter().filter(|t| up_to_date(t, service)).collect();
        check_failures(&name, global, &current, &key)?;

        // Per slot (or node), favour the task with the lowest desired state, then the
        // lowest observed state, as docker does during restarts.
        let mut chosen: BTreeMap<String, &Task> = BTreeMap::new();
        for t in current {
            if rank(t.desired_state) == 0 || rank(state(t)) == 0 {
                continue;
            }
            let k = key(t);
            let better = match chosen.get(&k) {
                None => true,
                Some(old) => {
                    (rank(t.desired_state), rank(state(t)))
                        < (rank(old.desired_state), rank(state(old)))
                }
            };
            if better {
                chosen.insert(k, t);
            }
        }
        chosen.retain(|_, t| !terminal(t.desired_state));

        let total = if global {
            chosen.len()
        } else {
            let replicas = mode
                .and_then(|m| m.replicated.as_ref())
                .and_then(|r| r.replicas)
                .unwrap_or(1);
            usize::try_from(replicas).unwrap_or(usize::MAX)
        };
        if global && total == 0 {
            return Ok(Snapshot {
                lines: vec!["overall progress: waiting for new tasks".into()],
                converged: false,
            });
        }
        let running = chosen
            .values()
            .filter(|t| state(t) == Some(TaskState::RUNNING))
            .count();

        let mut lines = vec![format!("overall progress: {running} out of {total} tasks")];
        if total <= MAX_BARS {
            for k in chosen.keys() {
                if !self.lines_by_key.contains_key(k) {
                    let next = self.lines_by_key.len() + 1;
                    self.lines_by_key.insert(k.clone(), next);
                }
            }
            let by_line: HashMap<usize, (&String, &&Task)> = chosen
                .iter()
                .filter_map(|(k, t)| self.lines_by_key.get(k).map(|i| (*i, (k, t))))
                .collect();
            for i in 1..=total {
                let (id, task) = match by_line.get(&i) {
                    Some((k, t)) if global => ((*k).clone(), Some(**t)),
                    Some((_, t)) => (format!("{i}/{total}"), Some(**t)),
                    None if global => continue,
                    None => (format!("{i}/{total}"), None),
                };
                lines.push(match task {
                    None => format!("{id}: "),
                    Some(t) if !task_err(t).is_empty() => {
                        format!("{id}: {}", trunc_error(task_err(t)))
                    }
                    Some(t) => {
                        let st = state(t).map(|s| s.to_string()).unwrap_or_default();
                        format!("{id}: {st:<STATE_WIDTH$} {}", bar(rank(state(t))))
                    }
                });
            }
        }
        Ok(Snapshot {
            lines,
            converged: running == total,
        })
    }
}

/// A job converges once it completed: a replicated job's total completions, or a task on
/// every node a global job runs on. Only tasks of the job's current iteration count (an
/// update runs it again).
fn job_progress(
    name: &str,
    mode: Option<&bollard::models::ServiceSpecMode>,
    iteration: Option<u64>,
    tasks: &[Task],
) -> Result<Snapshot, ProgressError> {
    let replicated = mode.and_then(|m| m.replicated_job.as_ref());
    let global = replicated.is_none();
    let key = |t: &Task| -> String {
        if global {
            render::truncate_id(t.node_id.as_deref().unwrap_or(""))
        } else {
            format!("{:010}", t.slot.unwrap_or(0))
        }
    };
    let current: Vec<&Task> = tasks
        .iter()
        .filter(|t| t.job_iteration.as_ref().and_then(|v| v.index) == iteration)
        .collect();
    check_failures(name, global, &current, &key)?;
    let completed: std::collections::BTreeSet<String> = current
        .iter()
        .filter(|t| state(t) == Some(TaskState::COMPLETE))
        .map(|t| key(t))
        .collect();
    let running = current
        .iter()
        .filter(|t| state(t) == Some(TaskState::RUNNING))
        .count();
    let total = match replicated {
        Some(job) => usize::try_from(job.total_completions.unwrap_or(0)).unwrap_or(usize::MAX),
        None => current
            .iter()
            .filter(|t| t.desired_state == Some(TaskState::COMPLETE))
            .map(|t| key(t))
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
    };
    let done = completed.len().min(total);
    Ok(Snapshot {
        lines: vec![
            format!("job progress: {done} out of {total} complete"),
            format!("active tasks: {running} running"),
        ],
        converged: done == total && (total > 0 || replicated.is_some()),
    })
}

fn check_failures(
    service: &str,
    global: bool,
    tasks: &[&Task],
    key: &dyn Fn(&Task) -> String,
) -> Result<(), ProgressError> {
    let mut failures: BTreeMap<String, Vec<&Task>> = BTreeMap::new();
    for t in tasks {
        if matches!(state(t), Some(TaskState::FAILED | TaskState::REJECTED)) {
            failures.entry(key(t)).or_default().push(t);
        }
    }
    let Some((_, failed)) = failures.into_iter().find(|(_, v)| v.len() >= FAIL_LIMIT) else {
        return Ok(());
    };
    let last = failed
        .iter()
        .max_by_key(|t| t.status.as_ref().and_then(|s| s.timestamp))
        .copied();
    let Some(last) = last else { return Ok(()) };
    let task = if global {
        format!("{service}.{}", last.node_id.as_deref().unwrap_or(""))
    } else {
        format!("{service}.{}", last.slot.unwrap_or(0))
    };
    let err = last
        .status
        .as_ref()
        .and_then(|s| s.err.clone().or_else(|| s.message.clone()))
        .unwrap_or_default();
    Err(ProgressError::TaskFailing {
        service: service.to_string(),
        task,
        count: failed.len(),
        err,
    })
}

/// Draws snapshots: in place on a terminal, only the last one otherwise.
struct Screen {
    /// `--quiet`: wait as usual, print nothing.
    quiet: bool,
    tty: bool,
    drawn: usize,
    last: Vec<String>,
}

impl Screen {
    fn show(&mut self, lines: &[String]) -> std::io::Result<()> {
        self.last = lines.to_vec();
        if !self.tty || self.quiet {
            return Ok(());
        }
        let mut out = std::io::stdout().lock();
        if self.drawn > 0 {
            write!(out, "\x1b[{}A", self.drawn)?;
        }
        for line in lines {
            writeln!(out, "\x1b[2K{line}")?;
        }
        self.drawn = lines.len();
        out.flush()
    }

    /// Prints the final lines plus `extra`, which is appended below the redrawn block.
    fn finish(&mut self, extra: Option<&str>) -> std::io::Result<()> {
        if self.quiet {
            return Ok(());
        }
        let mut out = std::io::stdout().lock();
        if !self.tty {
            for line in &self.last {
                writeln!(out, "{line}")?;
            }
        }
        if let Some(extra) = extra {
            writeln!(out, "{extra}")?;
        }
        out.flush()
    }
}

/// Polls the manager until every task of the service runs, drawing progress on stdout unless
/// `quiet` (docker's `--quiet` still waits; only `--detach` does not).
pub async fn converge(api: &Api, service_id: &str, quiet: bool) -> anyhow::Result<()> {
    let mut screen = Screen {
        quiet,
        tty: std::io::stdout().is_terminal(),
        drawn: 0,
        last: Vec::new(),
    };
    let mut tracker = Tracker::default();
    let filters = HashMap::from([("service".to_string(), vec![service_id.to_string()])]);
    let started = std::time::Instant::now();
    loop {
        let service = api
            .docker
            .inspect_service(service_id, None)
            .await
            .api(api)?;
        let tasks = api
            .docker
            .list_tasks(Some(ListTasksOptions {
                filters: Some(filters.clone()),
            }))
            .await
            .api(api)?;
        match tracker.evaluate(&service, &tasks) {
            Ok(snapshot) => {
                screen.show(&snapshot.lines)?;
                if snapshot.converged {
                    // docker's last line: a job ends, a service settles.
                    let last = if service.job_status.is_some() {
                        "job complete"
                    } else {
                        "verify: Service converged"
                    };
                    screen.finish(Some(last))?;
                    return Ok(());
                }
            }
            Err(err) => {
                screen.finish(None)?;
                return Err(err.into());
            }
        }
        let pace = if started.elapsed() < FIRST_POLLS_FOR {
            FIRST_POLLS
        } else {
            POLL
        };
        tokio::time::sleep(pace).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{
        ServiceSpec, ServiceSpecMode, ServiceSpecModeReplicated, TaskSpec, TaskSpecContainerSpec,
        TaskStatus,
    };

    fn service(replicas: i64, image: &str) -> Service {
        Service {
            id: Some("svc1".into()),
            spec: Some(ServiceSpec {
                name: Some("web".into()),
                mode: Some(ServiceSpecMode {
                    replicated: Some(ServiceSpecModeReplicated {
                        replicas: Some(replicas),
                    }),
                    ..Default::default()
                }),
                task_template: Some(TaskSpec {
                    container_spec: Some(TaskSpecContainerSpec {
                        image: Some(image.into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn task(slot: i64, desired: TaskState, st: TaskState, image: &str, err: &str) -> Task {
        Task {
            id: Some(format!("t{slot}{st}")),
            slot: Some(slot),
            desired_state: Some(desired),
            spec: Some(TaskSpec {
                container_spec: Some(TaskSpecContainerSpec {
                    image: Some(image.into()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            status: Some(TaskStatus {
                state: Some(st),
                err: (!err.is_empty()).then(|| err.to_string()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    const FULL: &str = "[==================================================>]";

    fn job(max_concurrent: i64, total: i64, iteration: u64) -> Service {
        let mut s = service(1, "busybox");
        let spec = s.spec.as_mut().unwrap();
        spec.mode = Some(ServiceSpecMode {
            replicated_job: Some(bollard::models::ServiceSpecModeReplicatedJob {
                max_concurrent: Some(max_concurrent),
                total_completions: Some(total),
            }),
            ..Default::default()
        });
        s.job_status = Some(bollard::models::ServiceJobStatus {
            job_iteration: Some(bollard::models::ObjectVersion {
                index: Some(iteration),
            }),
            last_execution: None,
        });
        s
    }

    fn job_task(slot: i64, st: TaskState, iteration: u64) -> Task {
        Task {
            job_iteration: Some(bollard::models::ObjectVersion {
                index: Some(iteration),
            }),
            ..task(slot, TaskState::COMPLETE, st, "busybox", "")
        }
    }

    #[test]
    fn a_job_converges_once_its_current_iteration_completed() {
        use TaskState::{COMPLETE, RUNNING};
        let svc = job(1, 2, 2);
        let mut tracker = Tracker::default();
        // The first run's completions do not count for the second.
        let tasks = [
            job_task(0, COMPLETE, 1),
            job_task(1, COMPLETE, 1),
            job_task(0, COMPLETE, 2),
            job_task(1, RUNNING, 2),
        ];
        let snap = tracker.evaluate(&svc, &tasks).unwrap();
        assert!(!snap.converged);
        assert_eq!(snap.lines[0], "job progress: 1 out of 2 complete");
        let tasks = [job_task(0, COMPLETE, 2), job_task(1, COMPLETE, 2)];
        let snap = tracker.evaluate(&svc, &tasks).unwrap();
        assert!(snap.converged);
        assert_eq!(snap.lines[0], "job progress: 2 out of 2 complete");
    }

    #[test]
    fn converged_output_matches_docker() {
        use TaskState::RUNNING;
        let tasks: Vec<Task> = (1..=3)
            .map(|s| task(s, RUNNING, RUNNING, "img", ""))
            .collect();
        let snap = Tracker::default().evaluate(&service(3, "img"), &tasks);
        let lines: Vec<String> = vec![
            "overall progress: 3 out of 3 tasks".into(),
            format!("1/3: running   {FULL}"),
            format!("2/3: running   {FULL}"),
            format!("3/3: running   {FULL}"),
        ];
        assert_eq!(
            snap,
            Ok(Snapshot {
                lines,
                converged: true
            })
        );
    }

    #[test]
    fn partial_progress_and_bars() {
        use TaskState::*;
        let tasks = vec![
            task(1, RUNNING, PREPARING, "img", ""),
            task(2, RUNNING, RUNNING, "img", ""),
        ];
        let snap = Tracker::default()
            .evaluate(&service(3, "img"), &tasks)
            .expect("ok");
        assert!(!snap.converged);
        assert_eq!(snap.lines[0], "overall progress: 1 out of 3 tasks");
        // preparing is state 6 of 9: 66% -> 33 '='.
        assert_eq!(
            snap.lines[1],
            format!("1/3: preparing [{}>{}]", "=".repeat(33), " ".repeat(17))
        );
        assert_eq!(snap.lines[3], "3/3: ");
        assert_eq!(bar(1), format!("[{}>{}]", "=".repeat(5), " ".repeat(45)));
    }

    #[test]
    fn old_spec_and_shutdown_tasks_do_not_count() {
        use TaskState::*;
        let tasks = vec![
            task(1, SHUTDOWN, RUNNING, "old", ""),
            task(1, RUNNING, STARTING, "new", ""),
            task(2, RUNNING, RUNNING, "old", ""),
        ];
        let snap = Tracker::default()
            .evaluate(&service(2, "new"), &tasks)
            .expect("ok");
        assert!(!snap.converged);
        assert_eq!(snap.lines[0], "overall progress: 0 out of 2 tasks");
    }

    #[test]
    fn repeated_failures_stop_the_wait() {
        use TaskState::*;
        let mut tasks: Vec<Task> = (0..3)
            .map(|_| task(1, SHUTDOWN, FAILED, "img", "no such image: img"))
            .collect();
        tasks.push(task(1, RUNNING, PENDING, "img", ""));
        let err = Tracker::default()
            .evaluate(&service(1, "img"), &tasks)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "service web did not converge: task web.1 failed 3 times: no such image: img"
        );
    }
}
