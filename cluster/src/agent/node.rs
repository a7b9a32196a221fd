//! The node as its agent keeps it (its dataplane, its tasks, their host-mode ports) and how a
//! plan is applied to it: encryption and overlays before the tasks that use them, load
//! balancers and DNS views once the tasks are there, and what the plan dropped last, so no
//! step removes what a later one still needs.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use anyhow::Context;
use netcore::hostport::HostPorts;

use super::dataplane::Dataplane;
use super::derive::{self, ServiceChange};
use super::tasks::Tasks;
use crate::plan::{NodePlan, TaskPlan};

pub struct Node {
    dataplane: Dataplane,
    host_ports: HostPorts,
    pub tasks: Tasks,
    /// The plan last applied in full: what the next apply compares against.
    applied: Option<Arc<NodePlan>>,
    /// Tasks left by an earlier agent and absent from the plan were stopped.
    swept: bool,
}

impl Node {
    pub fn new(dataplane: Dataplane, host_ports: HostPorts, tasks: Tasks) -> Node {
        Node {
            dataplane,
            host_ports,
            tasks,
            applied: None,
            swept: false,
        }
    }

    pub async fn reconcile(&mut self, plan: &Arc<NodePlan>) -> anyhow::Result<()> {
        // Whatever fails below is re-applied in full next time.
        let prev = self.applied.take();
        self.apply(plan, prev.as_deref()).await?;
        self.applied = Some(Arc::clone(plan));
        if !self.swept {
            self.tasks.sweep(plan);
            self.swept = true;
        }
        Ok(())
    }

    /// Makes the node match `plan`. Tasks' load balancers and DNS views are rebuilt only
    /// where a service on one of their networks changed since `prev` (the plan applied
    /// last), so a change costs in proportion to what it touches.
    async fn apply(&mut self, plan: &NodePlan, prev: Option<&NodePlan>) -> anyhow::Result<()> {
        self.apply_networks(plan).await?;
        self.tasks.converge(plan, &self.dataplane).await;
        let changed = prev.map(|p| derive::changed_services(p, plan));
        self.dataplane.apply_vips(plan, changed.as_deref()).await?;
        self.update_views(plan, prev, changed.as_deref());
        let host_ports = self.tasks.host_ports();
        tokio::task::block_in_place(|| self.host_ports.apply(&host_ports))
            .context("host-mode ports")?;
        self.dataplane.prune_networks(plan).await;
        self.dataplane
            .prune_ipsec(plan)
            .await
            .context("encrypted networks")?;
        Ok(())
    }

    /// Encryption first, so a new peer's VXLAN is never sent in the clear; then the overlays
    /// and the ingress.
    async fn apply_networks(&mut self, plan: &NodePlan) -> anyhow::Result<()> {
        let started = std::time::Instant::now();
        self.dataplane
            .install_ipsec(plan)
            .await
            .context("encrypted networks")?;
        self.dataplane.apply_networks(plan).await?;
        let networks = started.elapsed();
        self.dataplane.apply_ingress(plan).await?;
        tracing::debug!(?networks, ingress = ?(started.elapsed() - networks), "dataplane applied");
        Ok(())
    }

    /// Brings the running tasks' DNS views up to date: with `changed` (the services that
    /// changed since `prev`), only the names they touched, in the views of tasks on their
    /// networks; without, every view whole.
    fn update_views(
        &self,
        plan: &NodePlan,
        prev: Option<&NodePlan>,
        changed: Option<&[ServiceChange<'_>]>,
    ) {
        let touched = changed.map(derive::networks_of);
        let prev_tasks: HashSet<&str> = prev
            .map(|p| p.tasks.keys().map(String::as_str).collect())
            .unwrap_or_default();
        // Tasks on the same networks see the same names: each view is computed once per
        // apply (not once per task), and shared.
        let mut by_nets: HashMap<Vec<String>, Vec<&TaskPlan>> = HashMap::new();
        for t in self.tasks.live() {
            if let Some(nets) = &touched
                && prev_tasks.contains(t.id.as_str())
                && !t.attachments.iter().any(|a| nets.contains(&a.network_id))
            {
                continue;
            }
            let key = derive::task_networks(plan, t)
                .into_iter()
                .map(String::from)
                .collect();
            by_nets.entry(key).or_default().push(t);
        }
        let resolver = self.tasks.resolver();
        for tasks in by_nets.into_values() {
            let ids: Vec<&str> = tasks.iter().map(|t| t.id.as_str()).collect();
            // The names the change touched, when the view shared so far is the one for `prev`;
            // the whole view otherwise.
            let updated = changed.is_some_and(|c| {
                let changes = derive::view_changes(plan, tasks[0], c);
                resolver.update_shared_view(&ids, changes)
            });
            if !updated {
                let view = derive::task_view(plan, tasks[0]);
                resolver.set_shared_view(&ids, view);
            }
        }
    }
}
