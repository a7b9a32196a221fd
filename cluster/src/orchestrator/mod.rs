//! Turning services into tasks: the replicated, global and job orchestrators, the spread
//! scheduler, the restart policy and rolling updates. These run inside store transactions, so a service and
//! its tasks always change together.
//!
//! `reconcile` makes a service's tasks match its spec, slot by slot, and carries its rolling
//! update forward; it asks `restart` whether and when an emptied slot gets a new task, and
//! `tasks` to make and end task records, which asks `schedule` where a new task goes.
//! `node_loss` is what a lost node does to its tasks. Imports run node_loss -> reconcile ->
//! restart, tasks -> schedule.

mod node_loss;
mod reconcile;
mod restart;
mod schedule;
mod tasks;

pub use node_loss::node_down;
pub use reconcile::{
    HISTORY_PER_SLOT, MAX_REPLICAS, TASKS_PER_PASS, begin_update, in_transition, prune_history,
    reconcile, reconcile_at, reconcile_or_keep,
};
pub use schedule::{
    Constraint, ScheduleError, constraints_of, homes, is_active, pick_node, reservation,
};
pub use tasks::{shut_down, status, unplaced};

#[cfg(test)]
mod tests;
