//! The namespace controller: a namespace marked `Terminating` (it has a
//! `deletionTimestamp`) loses its contents and then disappears itself.
//!
//! Like Kubernetes' it acts a moment after the delete, not inside it, so
//! `kubectl delete -f` of a file that holds a namespace and objects in it can
//! still delete those objects one by one.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::ControllerError;
use super::runner::{Action, Reconcile};
use crate::client::Client;
use crate::meta;
use crate::resources;
use crate::store::{Key, WatchEvent};

/// How long a terminating namespace is left alone before it is emptied.
pub const PURGE_DELAY: Duration = Duration::from_secs(1);
/// How often a namespace whose contents are draining is looked at again.
const RECHECK: Duration = Duration::from_secs(1);

pub struct NamespaceController {
    client: Client,
    /// When this process first saw each namespace terminating.
    seen: HashMap<String, Instant>,
}

impl NamespaceController {
    pub fn new(client: Client) -> Self {
        NamespaceController { client, seen: HashMap::new() }
    }
}

impl Reconcile for NamespaceController {
    fn name(&self) -> &'static str {
        "namespace"
    }

    fn keys_for(&mut self, ev: &WatchEvent, out: &mut Vec<Key>) {
        if ev.resource == resources::namespaces().id && meta::get(&ev.object, "deletionTimestamp").is_some() {
            out.push(Key::new(ev.resource, "", &ev.name));
        }
    }

    fn all_keys(&mut self) -> Result<Vec<Key>, ControllerError> {
        let id = resources::namespaces().id;
        let (nss, _) = self.client.store().list(id, None, None)?;
        Ok(nss
            .iter()
            .filter(|ns| meta::get(ns, "deletionTimestamp").is_some())
            .filter_map(|ns| meta::get_str(ns, "name").map(|n| Key::new(id, "", n)))
            .collect())
    }

    fn reconcile(&mut self, key: &Key) -> Result<Action, ControllerError> {
        let ns = key.name.as_str();
        let Some(obj) = self.client.store().get(key)? else {
            self.seen.remove(ns);
            return Ok(Action::Done);
        };
        if meta::get(&obj, "deletionTimestamp").is_none() {
            self.seen.remove(ns);
            return Ok(Action::Done);
        }
        let waited = self.seen.entry(ns.to_owned()).or_insert_with(Instant::now).elapsed();
        if waited < PURGE_DELAY {
            return Ok(Action::RequeueAfter(PURGE_DELAY - waited));
        }
        let mut keys = Vec::new();
        let kinds = self.client.store().kinds().stored();
        for rt in kinds.iter().filter(|r| r.namespaced) {
            keys.extend(self.client.keys_raw(rt, Some(ns))?);
        }
        if !keys.is_empty() {
            let n = self.client.delete_many(&keys)?;
            tracing::info!(objects = n, "deleted namespace contents");
            // Objects held by finalizers of their own stay until released.
            let left: usize = kinds
                .iter()
                .filter(|r| r.namespaced)
                .map(|rt| self.client.store().list(rt.id, Some(ns), None).map(|(v, _)| v.len()))
                .sum::<Result<usize, _>>()?;
            if left > 0 {
                return Ok(Action::RequeueAfter(RECHECK));
            }
        }
        if self.client.finalize_namespace(ns)? {
            tracing::info!("namespace deleted");
        }
        self.seen.remove(ns);
        Ok(Action::Done)
    }
}
