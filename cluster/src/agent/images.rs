//! The node's images: tasks of a registry image wait (preparing, as docker's do) while the
//! node pulls it, once however many tasks want it, into the node's own content store; the
//! pull's end wakes the agent's loop, which starts them or rejects them with the pull's error.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use oci::{Image, RegistryOptions, Store};
use tokio::sync::mpsc;

use super::event::Event;
use crate::plan::TaskPlan;

pub enum Prepared {
    Ready(Arc<Image>),
    /// Being pulled; the agent hears of it by an [`Event::Pulled`].
    Pulling,
    Failed(String),
}

pub struct Images {
    store: Arc<Store>,
    registries: Arc<RegistryOptions>,
    /// Images stored, by the reference tasks name them with.
    ready: HashMap<String, Arc<Image>>,
    pulling: HashSet<String>,
    /// Why the pull a task waited on failed: told to it once, at its next converge. A later
    /// task of the image (the orchestrator's replacement) pulls again.
    failed: HashMap<String, String>,
    waiting: HashMap<String, Vec<String>>,
    events: mpsc::UnboundedSender<Event>,
}

impl Images {
    pub fn open(root: PathBuf, events: mpsc::UnboundedSender<Event>) -> std::io::Result<Images> {
        Ok(Images {
            store: Arc::new(Store::open(&root)?),
            registries: Arc::new(RegistryOptions::from_env()),
            ready: HashMap::new(),
            pulling: HashSet::new(),
            failed: HashMap::new(),
            waiting: HashMap::new(),
            events,
        })
    }

    /// The image of task `t` if the node has it; else its pull is started (or already under
    /// way) and the task waits.
    pub fn prepare(&mut self, t: &TaskPlan) -> Prepared {
        if let Some(why) = self.failed.remove(&t.id) {
            return Prepared::Failed(why);
        }
        if let Some(image) = self.ready.get(&t.image) {
            return Prepared::Ready(Arc::clone(image));
        }
        if let Some(image) = self.store.get(&t.image) {
            let image = Arc::new(image);
            self.ready.insert(t.image.clone(), Arc::clone(&image));
            return Prepared::Ready(image);
        }
        // The manager refused credentials that do not decode; a plan from before that check
        // fails its task alone, never leaving a pull marked under way that nobody runs.
        let credentials = match t.registry_auth.as_deref().map(oci::decode_registry_auth) {
            Some(Err(e)) => return Prepared::Failed(format!("the service's registry auth: {e}")),
            Some(Ok(c)) => Some(c),
            None => oci::docker_config_credentials(&t.image),
        };
        let waiting = self.waiting.entry(t.image.clone()).or_default();
        if !waiting.contains(&t.id) {
            waiting.push(t.id.clone());
        }
        if self.pulling.insert(t.image.clone()) {
            let (store, registries, events) = (
                Arc::clone(&self.store),
                Arc::clone(&self.registries),
                self.events.clone(),
            );
            let reference = t.image.clone();
            tokio::spawn(async move {
                let started = std::time::Instant::now();
                let result = store
                    .pull(&reference, credentials.as_ref(), &registries, &|_| {})
                    .await
                    .map_err(|e| e.to_string());
                match &result {
                    Ok(i) => tracing::info!(
                        image = reference,
                        digest = i.digest,
                        bytes = i.size,
                        took = ?started.elapsed(),
                        "pulled"
                    ),
                    Err(e) => tracing::warn!(image = reference, "pull failed: {e}"),
                }
                let _ = events.send(Event::Pulled {
                    image: reference,
                    result: result.map(Arc::new),
                });
            });
        }
        Prepared::Pulling
    }

    pub fn on_pulled(&mut self, image: String, result: Result<Arc<Image>, String>) {
        self.pulling.remove(&image);
        let waiting = self.waiting.remove(&image).unwrap_or_default();
        match result {
            Ok(i) => {
                self.ready.insert(image, i);
            }
            Err(why) => {
                for id in waiting {
                    self.failed.insert(id, why.clone());
                }
            }
        }
    }

    /// Forgets the waits of tasks the plan no longer has.
    pub fn retain(&mut self, wanted: &HashSet<&str>) {
        self.failed.retain(|id, _| wanted.contains(id.as_str()));
        for ids in self.waiting.values_mut() {
            ids.retain(|id| wanted.contains(id.as_str()));
        }
    }
}
