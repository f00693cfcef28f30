//! The namespace controller: a namespace marked `Terminating` (it has a
//! `deletionTimestamp`) loses its contents and then disappears itself.
//!
//! Like Kubernetes' it acts a moment after the delete, not inside it, so
//! `kubectl delete -f` of a file that holds a namespace and objects in it can
//! still delete those objects one by one.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::runner::{Action, Reconcile};
use crate::api::{self, ApiError, meta};
use crate::resources;
use crate::store::{Key, Mutation, SharedStore, WatchEvent};

/// How long a terminating namespace is left alone before it is emptied.
pub const PURGE_DELAY: Duration = Duration::from_secs(1);
/// How often a namespace whose contents are draining is looked at again.
const RECHECK: Duration = Duration::from_secs(1);

pub struct NamespaceController {
    store: SharedStore,
    /// When this process first saw each namespace terminating.
    seen: HashMap<String, Instant>,
}

impl NamespaceController {
    pub fn new(store: SharedStore) -> Self {
        NamespaceController { store, seen: HashMap::new() }
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

    fn all_keys(&mut self) -> Result<Vec<Key>, ApiError> {
        let id = resources::namespaces().id;
        let (nss, _) = self.store.list(id, None, None)?;
        Ok(nss
            .iter()
            .filter(|ns| meta::get(ns, "deletionTimestamp").is_some())
            .filter_map(|ns| meta::get_str(ns, "name").map(|n| Key::new(id, "", n)))
            .collect())
    }

    fn reconcile(&mut self, key: &Key) -> Result<Action, ApiError> {
        let ns = key.name.as_str();
        let Some(obj) = self.store.get(key)? else {
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
        for rt in resources::RESOURCES.iter().filter(|r| r.namespaced) {
            let (items, _) = self.store.list(rt.id, Some(ns), None)?;
            keys.extend(items.iter().map(|it| Key::new(rt.id, ns, meta::get_str(it, "name").unwrap_or_default())));
        }
        if !keys.is_empty() {
            let n = keys.len();
            self.store.mutate_many::<ApiError, _>(&keys, |cur| {
                Ok(cur.iter().map(|o| o.clone().map_or(Mutation::Keep, api::deletion)).collect())
            })?;
            tracing::info!(objects = n, "deleted namespace contents");
            // Objects held by finalizers of their own stay until released.
            let left: usize = resources::RESOURCES
                .iter()
                .filter(|r| r.namespaced)
                .map(|rt| self.store.list(rt.id, Some(ns), None).map(|(v, _)| v.len()))
                .sum::<Result<usize, _>>()?;
            if left > 0 {
                return Ok(Action::RequeueAfter(RECHECK));
            }
        }
        self.store.mutate::<ApiError, _>(key, |cur| {
            let Some(mut o) = cur else { return Ok(Mutation::Keep) };
            let before = o.clone();
            if let Some(f) = o.pointer_mut("/spec/finalizers").and_then(Value::as_array_mut) {
                f.retain(|v| v.as_str() != Some("kubernetes"));
            }
            let nonempty = |v: Option<&Value>| v.and_then(Value::as_array).is_some_and(|f| !f.is_empty());
            let finalizers_left = nonempty(meta::get(&o, "finalizers")) || nonempty(o.pointer("/spec/finalizers"));
            Ok(match (finalizers_left, o == before) {
                (false, _) => Mutation::Delete,
                (true, true) => Mutation::Keep,
                (true, false) => Mutation::Put(o),
            })
        })?;
        self.seen.remove(ns);
        tracing::info!("namespace deleted");
        Ok(Action::Done)
    }
}
