//! Making a service's tasks match its spec, and carrying its rolling update (or rollback)
//! forward. Everything here runs inside a store transaction, so a service and its tasks
//! always change together.

use std::cell::{Cell, OnceCell};
use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::Utc;

use super::restart::refill;
use super::schedule::{
    ScheduleError, constraints_of, has_room, homes, is_active, pick_node, placeable,
};
use super::tasks::{new_task, place_pending, shut_down, still_pending, unplaced};
use crate::model::{
    Availability, NodeState, Service, ServiceMode, Task, TaskState, Time, UpdateState, UpdateStatus,
};
use crate::policy::{self, Order, UpdatePolicy};
use crate::store::State;

/// Tasks kept per slot, current one included (Swarm's task history retention limit).
pub const HISTORY_PER_SLOT: usize = 5;

/// The most replicas a service may ask for. Each task is a process, a namespace and an
/// address on every network of the service on some node, and the store and every plan carry
/// it: past this a typo (`--replicas 1000000`) would take the cluster down rather than run.
pub const MAX_REPLICAS: u64 = 10_000;

/// The most tasks one reconcile pass creates. Placing a task reads every task (spread, IPAM),
/// and a pass runs inside a store transaction that heartbeats and reports wait for, so a big
/// service is filled over several passes: the rest wait in `Service::filling`, which keeps
/// the service in `in_transition` and so in the updater's hands, one commit after another.
pub const TASKS_PER_PASS: usize = 100;

/// Starts the rolling update (or rollback) of a service whose tasks must be replaced.
pub fn begin_update(service: &mut Service, rollback: bool) {
    let (state, message) = if rollback {
        (UpdateState::RollbackStarted, "manually requested rollback")
    } else {
        (UpdateState::Updating, "update in progress")
    };
    service.update_status = Some(UpdateStatus {
        state,
        started: Utc::now(),
        completed: None,
        message: message.to_string(),
        last_slot_done: None,
        slots: BTreeSet::new(),
    });
}

fn updating(service: &Service) -> bool {
    service.update_status.as_ref().is_some_and(|u| {
        matches!(
            u.state,
            UpdateState::Updating | UpdateState::RollbackStarted
        )
    })
}

/// Makes the service's tasks match its spec, with what the API knows: no task counts as
/// routed everywhere yet, so replacements that wait for one are left to `reconcile_at`.
pub fn reconcile(state: &mut State, service_id: &str) -> Result<(), ScheduleError> {
    reconcile_at(state, service_id, 0, Utc::now()).map(|_| ())
}

/// Like `reconcile`, but a failure to place a task leaves the state as it was (the caller's
/// other changes stand).
pub fn reconcile_or_keep(
    state: &mut State,
    service_id: &str,
    min_ack: u64,
    now: Time,
) -> Option<Time> {
    let before = state.clone();
    match reconcile_at(state, service_id, min_ack, now) {
        Ok(wake) => wake,
        Err(e) => {
            tracing::warn!("reconciling service {service_id}: {e}");
            *state = before;
            None
        }
    }
}

/// Whether a task is reachable through every node's load balancers: running, and every ready
/// node has applied the version that added it.
fn routed(t: &Task, min_ack: u64) -> bool {
    t.status.state == TaskState::Running && t.running_version.is_some_and(|v| v <= min_ack)
}

/// Makes the service's tasks match its spec: one running task per slot (1..=replicas, or one
/// per eligible node in a global mode), tasks of other slots shut down, exited tasks replaced
/// under the restart policy, tasks of an older spec replaced under the update policy, tasks
/// on draining nodes moved. A job's slots instead run to completion, at most
/// `MaxConcurrent` at once (see `Pass::jobs`). A task that serves is replaced start-first
/// (its successor routed everywhere before it leaves) unless the update order is stop-first.
/// At most `TASKS_PER_PASS` tasks are created; the service is left `filling` if slots wait
/// for more. `min_ack` is the plan version every ready node has applied. Returns when it
/// must run again on its own (an update delay ending), if ever. Idempotent: a second run
/// with nothing changed writes nothing.
pub fn reconcile_at(
    state: &mut State,
    service_id: &str,
    min_ack: u64,
    now: Time,
) -> Result<Option<Time>, ScheduleError> {
    let Some(mut service) = state.services.get(service_id).cloned() else {
        return Ok(None);
    };
    let mode = service.mode();
    let homes = if mode.is_global() {
        homes(state, &service)
    } else {
        BTreeMap::new()
    };
    let wanted: BTreeSet<u64> = match mode {
        ServiceMode::Replicated { replicas } => (1..=replicas).collect(),
        ServiceMode::ReplicatedJob { total, .. } => (1..=total).collect(),
        ServiceMode::Global | ServiceMode::GlobalJob => homes.keys().copied().collect(),
    };
    let rollback = service
        .update_status
        .as_ref()
        .is_some_and(|u| u.state == UpdateState::RollbackStarted);
    let pass = Pass {
        service: &service,
        update: policy::update_policy(&service.spec, rollback),
        homes,
        min_ack,
        now,
        budget: Cell::new(TASKS_PER_PASS),
        cut_short: Cell::new(false),
        no_room: OnceCell::new(),
    };
    let mut status = service.update_status.clone();
    let mut by_slot: BTreeMap<u64, Vec<Task>> = BTreeMap::new();
    for t in state.tasks_of(service_id) {
        by_slot.entry(t.slot).or_default().push(t.clone());
    }

    let unwanted: Vec<Task> = by_slot
        .iter()
        .filter(|(slot, _)| !wanted.contains(slot))
        .flat_map(|(_, ts)| ts.iter().cloned())
        .collect();
    for t in unwanted {
        shut_down(state, t);
    }
    let slots = wanted
        .iter()
        .map(|slot| (*slot, by_slot.remove(slot).unwrap_or_default()));
    let wake = match mode {
        ServiceMode::ReplicatedJob { max_concurrent, .. } => {
            pass.jobs(state, slots, max_concurrent)?;
            None
        }
        ServiceMode::GlobalJob => {
            pass.jobs(state, slots, u64::MAX)?;
            None
        }
        ServiceMode::Replicated { .. } | ServiceMode::Global => {
            let mut left = Left::default();
            for (slot, tasks) in slots {
                pass.slot(state, slot, tasks, &mut status, &mut left)?;
            }
            pass.carry_update(state, &service, &mut status, left, &wanted)?
        }
    };
    let filling = pass.cut_short.get();
    if status != service.update_status || filling != service.filling {
        service.update_status = status;
        service.filling = filling;
        state.put_service(service);
    }
    prune_history(state, service_id);
    Ok(wake)
}

/// What one `reconcile_at` works from.
struct Pass<'a> {
    service: &'a Service,
    update: UpdatePolicy,
    /// A global service's slots and the node each stands for (see `homes`); empty otherwise.
    homes: BTreeMap<u64, String>,
    min_ack: u64,
    now: Time,
    /// New tasks this pass may still create (see `TASKS_PER_PASS`).
    budget: Cell<usize>,
    /// Whether a slot was left empty because the budget ran out.
    cut_short: Cell<bool>,
    /// Why a pending task of this service found no node this pass: its others reserve the
    /// same, so they take the explanation without a search of their own.
    no_room: OnceCell<String>,
}

/// What the slots leave to the rolling update.
#[derive(Default)]
struct Left {
    /// Slots whose tasks are all stale and that wait for their turn, with those tasks.
    waiting: Vec<(u64, Vec<Task>)>,
    /// Whether a slot still runs a task of an older spec.
    stale: bool,
}

impl Pass<'_> {
    /// Whether this pass has created all the tasks it may; asking notes that a slot waits.
    fn spent(&self) -> bool {
        let spent = self.budget.get() == 0;
        if spent {
            self.cut_short.set(true);
        }
        spent
    }

    /// Places a pending task where a node now has room, out of this pass's budget.
    fn retry_pending(&self, state: &mut State, t: &Task) {
        if let Some(why) = self.no_room.get() {
            still_pending(state, t, why);
            return;
        }
        if self.spent() {
            return;
        }
        match place_pending(state, t) {
            Ok(()) => self.budget.set(self.budget.get().saturating_sub(1)),
            Err(e) => {
                let _ = self.no_room.set(e.to_string());
            }
        }
    }

    /// Moves the rolling update on, or, with none under way, replaces at once (as far as
    /// this pass goes) what the slots left stale: say, a task left on a node that came back
    /// after its update finished.
    fn carry_update(
        &self,
        state: &mut State,
        service: &Service,
        status: &mut Option<UpdateStatus>,
        left: Left,
        wanted: &BTreeSet<u64>,
    ) -> Result<Option<Time>, ScheduleError> {
        if let Some(u) = status.as_mut().filter(|_| updating(service)) {
            return self.advance_update(state, u, left, wanted);
        }
        for (slot, _) in left.waiting {
            if self.spent() {
                break;
            }
            self.place(state, slot, 0, None)?;
        }
        Ok(None)
    }

    /// Runs a job's slots to completion: a slot is done once a task of this iteration
    /// completed there, and the rest start (or restart, under the restart policy, after a
    /// failure) while fewer than `max_concurrent` run. A task of an earlier iteration
    /// stops: an update runs the job again from the start, as Swarm's JobIteration does.
    fn jobs(
        &self,
        state: &mut State,
        slots: impl Iterator<Item = (u64, Vec<Task>)>,
        max_concurrent: u64,
    ) -> Result<(), ScheduleError> {
        let generation = self.service.spec_generation;
        let mut running = 0u64;
        let mut idle = Vec::new();
        for (slot, tasks) in slots {
            let mut runs = false;
            for t in tasks.iter().filter(|t| is_active(t)) {
                if t.spec_generation == generation && !on_draining_node(state, &t.node_id) {
                    if unplaced(t) {
                        self.retry_pending(state, t);
                    }
                    runs = true;
                } else {
                    shut_down(state, t.clone());
                }
            }
            let done = tasks
                .iter()
                .any(|t| t.spec_generation == generation && t.status.state == TaskState::Complete);
            if runs {
                running += 1;
            } else if !done {
                idle.push(slot);
            }
        }
        for slot in idle {
            if running >= max_concurrent || self.spent() {
                break;
            }
            if let Some((restarts, at)) = refill(state, self.service, slot, self.now)
                && self.place(state, slot, restarts, at)?
            {
                running += 1;
            }
        }
        Ok(())
    }

    /// Creates a task for `slot` out of this pass's budget: on the slot's node for a global
    /// service, which a paused node refuses (false), else where the spread puts it.
    fn place(
        &self,
        state: &mut State,
        slot: u64,
        restarts: u64,
        start_after: Option<Time>,
    ) -> Result<bool, ScheduleError> {
        let home = self.homes.get(&slot).map(String::as_str);
        if let Some(node) = home {
            let constraints = constraints_of(&self.service.spec).unwrap_or_default();
            // A node without room for its reservations gets no task (docker shows a pending
            // one there); the service is looked at again when that changes.
            if !state
                .nodes
                .get(node)
                .is_some_and(|n| placeable(n, &constraints) && has_room(state, n, self.service))
            {
                return Ok(false);
            }
        }
        let t = new_task(state, self.service, slot, home, restarts, start_after)?;
        state.put_task(t);
        self.budget.set(self.budget.get().saturating_sub(1));
        Ok(true)
    }

    /// Brings one slot to one current task: keeps it, or replaces what is stale or gone. A
    /// slot whose every task is of an older spec waits in `left` for the rolling update.
    fn slot(
        &self,
        state: &mut State,
        slot: u64,
        mut tasks: Vec<Task>,
        status: &mut Option<UpdateStatus>,
        left: &mut Left,
    ) -> Result<(), ScheduleError> {
        let service = self.service;
        tasks.sort_by_key(|t| t.created);
        let active: Vec<&Task> = tasks.iter().filter(|t| is_active(t)).collect();
        let keep = active
            .iter()
            .rev()
            .find(|t| {
                t.spec_generation == service.spec_generation && !on_draining_node(state, &t.node_id)
            })
            .copied();
        let stale: Vec<&Task> = active
            .iter()
            .filter(|t| Some(t.id.as_str()) != keep.map(|k| k.id.as_str()))
            .copied()
            .collect();
        if let Some(k) = keep
            && unplaced(k)
        {
            self.retry_pending(state, k);
        }
        let outdated = stale
            .iter()
            .any(|t| t.spec_generation != service.spec_generation);
        left.stale |= outdated;
        match (keep, stale.is_empty()) {
            (Some(k), true) => {
                if routed(k, self.min_ack)
                    && let Some(u) = status.as_mut()
                    && u.slots.remove(&slot)
                {
                    u.last_slot_done = Some(self.now);
                }
            }
            (Some(k), false) => {
                // Start-first: the old task leaves once its successor is routed everywhere
                // (or at once, if it serves nobody anyway).
                let old_serves = stale.iter().any(|t| t.status.state == TaskState::Running);
                if routed(k, self.min_ack) || !old_serves {
                    for t in stale {
                        shut_down(state, t.clone());
                    }
                }
            }
            (None, false) if outdated => left
                .waiting
                .push((slot, stale.into_iter().cloned().collect::<Vec<Task>>())),
            (None, false) => {
                // Only its node is draining: a successor elsewhere first, whatever the order.
                if !self.spent() {
                    self.place(state, slot, 0, None)?;
                }
            }
            (None, true) => {
                if self.held(state, slot, &tasks, status.as_ref()) {
                    // Stop-first: the successor starts once its predecessor has stopped.
                    return Ok(());
                }
                // Asked before `refill`, which reads every task: an empty slot past the budget
                // costs this pass nothing.
                if self.spent() {
                    return Ok(());
                }
                if let Some((restarts, at)) = refill(state, service, slot, self.now) {
                    self.place(state, slot, restarts, at)?;
                }
            }
        }
        Ok(())
    }

    /// Whether a stop-first update holds an empty slot of its own until the task it replaces
    /// (of an older spec, started, on a ready node) has stopped.
    fn held(
        &self,
        state: &State,
        slot: u64,
        tasks: &[Task],
        status: Option<&UpdateStatus>,
    ) -> bool {
        self.update.order == Order::StopFirst
            && status.is_some_and(|u| u.slots.contains(&slot))
            && tasks.iter().any(|t| {
                t.spec_generation != self.service.spec_generation
                    && !t.status.state.is_terminal()
                    && t.status.state >= TaskState::Starting
                    && state
                        .nodes
                        .get(&t.node_id)
                        .is_some_and(|n| n.state == NodeState::Ready)
            })
    }

    /// Moves the rolling update on: starts waiting slots as its parallelism and delay allow,
    /// and completes it once no slot is stale or in flight. Returns when the delay ends, if
    /// slots wait for it.
    fn advance_update(
        &self,
        state: &mut State,
        u: &mut UpdateStatus,
        left: Left,
        wanted: &BTreeSet<u64>,
    ) -> Result<Option<Time>, ScheduleError> {
        u.slots.retain(|s| wanted.contains(s));
        let room = match self.update.parallelism {
            0 => usize::MAX,
            p => (p as usize).saturating_sub(u.slots.len()),
        };
        let due = u.last_slot_done.map(|t| {
            t + chrono::Duration::from_std(self.update.delay).unwrap_or(chrono::Duration::MAX)
        });
        let mut wake = None;
        if due.is_some_and(|d| d > self.now) {
            wake = due.filter(|_| !left.waiting.is_empty());
        } else {
            self.start_slots(state, u, room, left.waiting)?;
        }
        if !left.stale && u.slots.is_empty() {
            let rolled_back = u.state == UpdateState::RollbackStarted;
            u.state = if rolled_back {
                UpdateState::RollbackCompleted
            } else {
                UpdateState::Completed
            };
            u.completed = Some(self.now);
            u.message = if rolled_back {
                "rollback completed"
            } else {
                "update completed"
            }
            .to_string();
        }
        Ok(wake)
    }

    /// Replaces the waiting slots that fit in `room` (and again those already in flight whose
    /// successor exited), in the update's order.
    fn start_slots(
        &self,
        state: &mut State,
        u: &mut UpdateStatus,
        mut room: usize,
        waiting: Vec<(u64, Vec<Task>)>,
    ) -> Result<(), ScheduleError> {
        for (slot, stale) in waiting {
            // A slot already in flight whose successor exited goes again, under the
            // restart policy; a new slot needs room.
            let again = u.slots.contains(&slot);
            if !again && room == 0 {
                continue;
            }
            if self.update.order == Order::StartFirst && self.spent() {
                break;
            }
            if !again {
                room -= 1;
                u.slots.insert(slot);
            }
            match self.update.order {
                Order::StartFirst => {
                    let (restarts, at) = if again {
                        match refill(state, self.service, slot, self.now) {
                            Some(r) => r,
                            None => continue,
                        }
                    } else {
                        (0, None)
                    };
                    self.place(state, slot, restarts, at)?;
                }
                Order::StopFirst => {
                    for t in stale {
                        shut_down(state, t);
                    }
                }
            }
        }
        Ok(())
    }
}

/// Whether the node is draining: its tasks move elsewhere.
fn on_draining_node(state: &State, node: &str) -> bool {
    state
        .nodes
        .get(node)
        .is_some_and(|n| n.availability == Availability::Drain)
}

/// Services whose tasks are being replaced, moved or created over several passes, which
/// `reconcile_at` must see again as tasks become routed and acks move, global services a
/// node is ready for (it joined, came back, or was made active), and services with a pending
/// task that a node now has room for: one pass over the tasks, one over a global service's
/// tasks per global service, and one per service with a pending task.
pub fn in_transition(state: &State) -> BTreeSet<String> {
    let mut out: BTreeSet<String> = state
        .services
        .values()
        .filter(|s| updating(s) || s.filling || (s.mode().is_global() && awaits_node(state, s)))
        .map(|s| s.id.clone())
        .collect();
    for service in state.waiting_services() {
        if pick_node(state, service).is_ok() {
            out.insert(service.to_string());
        }
    }
    out.extend(state.crowded_services().map(String::from));
    for node in state
        .nodes
        .values()
        .filter(|n| n.availability == Availability::Drain)
    {
        out.extend(state.services_on(&node.id).map(String::from));
    }
    out
}

/// Whether a global service has a node that takes new tasks and would get one: no task of
/// the service is meant to run there, a job has not completed there, and the restart policy
/// does not leave the slot empty. Without that last question a slot the policy leaves
/// empty (`--restart-condition none` after an exit) would keep the service in transition,
/// and the updater polling, for good.
fn awaits_node(state: &State, service: &Service) -> bool {
    let constraints = constraints_of(&service.spec).unwrap_or_default();
    let job = service.mode().is_job();
    let filled: BTreeSet<u64> = state
        .tasks
        .values()
        .filter(|t| t.service_id == service.id)
        .filter(|t| {
            is_active(t)
                || (job
                    && t.spec_generation == service.spec_generation
                    && t.status.state == TaskState::Complete)
        })
        .map(|t| t.slot)
        .collect();
    homes(state, service).into_iter().any(|(slot, node)| {
        !filled.contains(&slot)
            && state
                .nodes
                .get(&node)
                .is_some_and(|n| placeable(n, &constraints) && has_room(state, n, service))
            && refill(state, service, slot, Utc::now()).is_some()
    })
}

/// Deletes the oldest finished tasks beyond the per-slot history limit.
pub fn prune_history(state: &mut State, service_id: &str) {
    let mut by_slot: HashMap<u64, Vec<(chrono::DateTime<Utc>, String, bool)>> = HashMap::new();
    for t in state.tasks_of(service_id) {
        let finished = t.desired != TaskState::Running && t.status.state.is_terminal();
        by_slot
            .entry(t.slot)
            .or_default()
            .push((t.created, t.id.clone(), finished));
    }
    for (_, mut tasks) in by_slot {
        if tasks.len() <= HISTORY_PER_SLOT {
            continue;
        }
        tasks.sort();
        let excess = tasks.len() - HISTORY_PER_SLOT;
        for (_, id, finished) in tasks.into_iter().filter(|t| t.2).take(excess) {
            debug_assert!(finished);
            state.remove_task(&id);
        }
    }
}
