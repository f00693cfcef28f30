//! Pods on this node: the manager starts one worker per desired pod, tells
//! it when its pod changes or goes, and tears down pods nothing asks for any
//! more. Sources of desired pods: the static manifest folder (`manifests`)
//! and, with the fleet link, the controller's snapshot.

pub mod backoff;
pub mod manifests;
pub mod probe;
pub mod status;
pub mod storage;
pub mod translate;
pub mod worker;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use worker::{DesiredPod, WorkerContext};

use crate::runtime::CriRuntime;
use status::PodStatusFile;

type Slot = watch::Sender<Option<Arc<DesiredPod>>>;

pub struct PodManager<R> {
    ctx: Arc<WorkerContext<R>>,
    workers: HashMap<String, (Slot, JoinHandle<()>)>,
    /// Whether every pod source has been heard from, so that a sandbox no
    /// source names is truly unwanted (the kubelet's `sourcesReady`).
    sources_ready: bool,
}

impl<R: CriRuntime> PodManager<R> {
    pub fn new(ctx: WorkerContext<R>) -> Self {
        PodManager { ctx: Arc::new(ctx), workers: HashMap::new(), sources_ready: true }
    }

    /// Until every source has been heard from (a node whose cache was wiped
    /// has not heard from its controller yet), pods no source names are
    /// left running rather than taken for orphans: the controller may well
    /// want them.
    pub fn set_sources_ready(&mut self, ready: bool) {
        self.sources_ready = ready;
    }

    pub fn runtime(&self) -> &R {
        &self.ctx.runtime
    }

    /// Signalled after every pass of a pod worker.
    pub fn changed(&self) -> Arc<tokio::sync::Notify> {
        self.ctx.changed.clone()
    }

    /// What the workers noted for the fleet's events since the last call.
    pub fn take_notices(&self) -> Vec<kedge_common::wire::Event> {
        std::mem::take(&mut *self.ctx.notices.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Each pod worker's view of its pod, by pod uid, from memory.
    pub fn statuses(&self) -> BTreeMap<String, PodStatusFile> {
        self.ctx.statuses.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the whole desired set: new pods start, changed ones are
    /// handed to their worker, missing ones (and any sandbox of a pod no
    /// source names, e.g. left from before a restart) are torn down.
    pub fn set_desired(&mut self, pods: Vec<DesiredPod>) {
        let wanted: BTreeSet<String> = pods.iter().map(|p| p.uid.clone()).collect();
        self.workers.retain(|_, (_, handle)| !handle.is_finished());
        for (uid, (slot, _)) in &self.workers {
            if !wanted.contains(uid) {
                slot.send_if_modified(|cur| cur.take().is_some());
            }
        }
        for d in pods {
            let uid = d.uid.clone();
            match self.workers.get(&uid) {
                Some((slot, _)) => {
                    slot.send_if_modified(|cur| {
                        if cur.as_deref() == Some(&d) {
                            false
                        } else {
                            *cur = Some(Arc::new(d));
                            true
                        }
                    });
                }
                None => self.spawn(uid, Some(Arc::new(d))),
            }
        }
        // Orphans: sandboxes and status files of pods no source wants and
        // no worker owns (a pod that never got its sandbox, say for want of
        // a network, leaves only its status file and volumes behind).
        let orphans: BTreeSet<String> = self
            .ctx
            .runtime
            .sandbox_records()
            .iter()
            .filter_map(|s| s.config.metadata.as_ref().map(|m| m.uid.clone()))
            .chain(status::uids_on_disk(&self.ctx.paths))
            .filter(|uid| !wanted.contains(uid) && !self.workers.contains_key(uid))
            .collect();
        if !self.sources_ready {
            if !orphans.is_empty() {
                tracing::info!(
                    pods = orphans.len(),
                    "pods no source names yet: kept until the controller is heard from"
                );
            }
            return;
        }
        for uid in orphans {
            tracing::info!(uid = %uid, "removing a pod no source wants");
            self.spawn(uid, None);
        }
    }

    fn spawn(&mut self, uid: String, desired: Option<Arc<DesiredPod>>) {
        let (tx, rx) = watch::channel(desired);
        let handle = tokio::spawn(worker::run(self.ctx.clone(), uid.clone(), rx));
        self.workers.insert(uid, (tx, handle));
    }

    /// Whether every removed pod's worker has finished its teardown.
    pub fn idle(&self) -> bool {
        self.workers.values().all(|(slot, handle)| slot.borrow().is_some() || handle.is_finished())
    }
}
