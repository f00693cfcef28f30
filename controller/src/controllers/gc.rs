//! The garbage collector: objects whose owners (`metadata.ownerReferences`)
//! are all gone are deleted; foreground deletion deletes an owner's
//! dependents before the owner; orphan deletion strips the owner reference
//! from the dependents and keeps them. As in Kubernetes, the two latter act
//! through the `foregroundDeletion` and `orphan` finalizers the API sets.
//!
//! The collector keeps an in-memory graph (owner uid → dependents) built from
//! the store at start and from every committed change, so an owner's
//! deletion finds its dependents without scanning.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::Value;

use super::ControllerError;
use super::runner::{Action, Reconcile};
use crate::client::Client;
use crate::meta;
use crate::resources::{self, ResourceType};
use crate::store::{EventType, Key, WatchEvent};
use crate::write::{FOREGROUND_FINALIZER, ORPHAN_FINALIZER, Propagation};

pub struct GarbageCollector {
    client: Client,
    /// Owner uid → the objects naming it as an owner.
    dependents: HashMap<String, HashSet<Key>>,
    /// Object → (its uid, the uids of its owners).
    nodes: HashMap<Key, (String, Vec<String>)>,
    /// uid → object.
    by_uid: HashMap<String, Key>,
}

fn owner_uids(obj: &Value) -> Vec<String> {
    owner_refs(obj).iter().filter_map(|r| r["uid"].as_str().map(str::to_owned)).collect()
}

fn owner_refs(obj: &Value) -> Vec<Value> {
    meta::get(obj, "ownerReferences").and_then(Value::as_array).cloned().unwrap_or_default()
}

fn has_finalizer(obj: &Value, f: &str) -> bool {
    meta::get(obj, "finalizers").and_then(Value::as_array).is_some_and(|l| l.iter().any(|x| x == f))
}

fn rt_of(kinds: &resources::Registry, key: &Key) -> Option<&'static ResourceType> {
    kinds.stored().into_iter().find(|r| r.id == key.resource)
}

impl GarbageCollector {
    pub fn new(client: Client) -> Self {
        GarbageCollector { client, dependents: HashMap::new(), nodes: HashMap::new(), by_uid: HashMap::new() }
    }

    fn forget(&mut self, key: &Key) {
        if let Some((uid, owners)) = self.nodes.remove(key) {
            self.by_uid.remove(&uid);
            for o in owners {
                if let Some(set) = self.dependents.get_mut(&o) {
                    set.remove(key);
                    if set.is_empty() {
                        self.dependents.remove(&o);
                    }
                }
            }
        }
    }

    fn index(&mut self, key: &Key, obj: &Value) {
        self.forget(key);
        let uid = meta::get_str(obj, "uid").unwrap_or_default().to_owned();
        let owners = owner_uids(obj);
        for o in &owners {
            self.dependents.entry(o.clone()).or_default().insert(key.clone());
        }
        self.by_uid.insert(uid.clone(), key.clone());
        self.nodes.insert(key.clone(), (uid, owners));
    }

    fn dependents_of(&self, uid: &str) -> Vec<Key> {
        self.dependents.get(uid).map(|s| s.iter().cloned().collect()).unwrap_or_default()
    }

    /// Whether the owner a reference names still exists with that uid.
    /// Kinds this server does not serve count as present (cannot be checked).
    fn owner_exists(&self, r: &Value, ns: &str) -> Result<bool, ControllerError> {
        let api_version = r["apiVersion"].as_str().unwrap_or_default();
        let group = api_version.split_once('/').map_or("", |(g, _)| g);
        let kind = r["kind"].as_str().unwrap_or_default();
        let Some(rt) = self.client.store().kinds().by_kind(group, kind) else { return Ok(true) };
        // A cluster-scoped object cannot be owned by a namespaced one; such a
        // reference cannot be resolved, and is not a reason to collect it.
        if rt.namespaced && ns.is_empty() {
            return Ok(true);
        }
        let ns = if rt.namespaced { ns } else { "" };
        let owner = self.client.get_raw(rt, ns, r["name"].as_str().unwrap_or_default())?;
        Ok(owner.is_some_and(|o| meta::get(&o, "uid") == r.get("uid")))
    }
}

impl Reconcile for GarbageCollector {
    fn name(&self) -> &'static str {
        "garbage-collector"
    }

    fn keys_for(&mut self, ev: &WatchEvent, out: &mut Vec<Key>) {
        let key = Key::new(ev.resource, &ev.namespace, &ev.name);
        match ev.kind {
            EventType::Deleted => {
                let uid = meta::get_str(&ev.object, "uid").unwrap_or_default().to_owned();
                // Its dependents may be orphans now; owners deleting in the
                // foreground may be waiting for it.
                out.extend(self.dependents_of(&uid));
                out.extend(owner_uids(&ev.object).iter().filter_map(|o| self.by_uid.get(o).cloned()));
                self.forget(&key);
            }
            EventType::Added | EventType::Modified => {
                let owners_changed = ev
                    .prev
                    .as_ref()
                    .is_none_or(|p| meta::get(p, "ownerReferences") != meta::get(&ev.object, "ownerReferences"));
                let collecting = meta::get(&ev.object, "deletionTimestamp").is_some()
                    && (has_finalizer(&ev.object, ORPHAN_FINALIZER) || has_finalizer(&ev.object, FOREGROUND_FINALIZER));
                self.index(&key, &ev.object);
                if collecting || (owners_changed && !owner_uids(&ev.object).is_empty()) {
                    out.push(key);
                }
            }
        }
    }

    fn all_keys(&mut self) -> Result<Vec<Key>, ControllerError> {
        self.dependents.clear();
        self.nodes.clear();
        self.by_uid.clear();
        let mut keys = Vec::new();
        for rt in self.client.store().kinds().stored() {
            let (items, _) = self.client.store().list(rt.id, None, None)?;
            for obj in items {
                let key = Key::new(
                    rt.id,
                    meta::get_str(&obj, "namespace").unwrap_or_default(),
                    meta::get_str(&obj, "name").unwrap_or_default(),
                );
                self.index(&key, &obj);
                let collecting = meta::get(&obj, "deletionTimestamp").is_some();
                if collecting || !owner_uids(&obj).is_empty() {
                    keys.push(key);
                }
            }
        }
        Ok(keys)
    }

    fn reconcile(&mut self, key: &Key) -> Result<Action, ControllerError> {
        let Some(rt) = rt_of(self.client.store().kinds(), key) else { return Ok(Action::Done) };
        let Some(obj) = self.client.get_raw(rt, &key.namespace, &key.name)? else { return Ok(Action::Done) };
        let uid = meta::get_str(&obj, "uid").unwrap_or_default().to_owned();
        let deleting = meta::get(&obj, "deletionTimestamp").is_some();

        if deleting && has_finalizer(&obj, ORPHAN_FINALIZER) {
            for d in self.dependents_of(&uid) {
                let Some(drt) = rt_of(self.client.store().kinds(), &d) else { continue };
                let strip = |v: &mut Value| {
                    if let Some(refs) = v.pointer_mut("/metadata/ownerReferences").and_then(Value::as_array_mut) {
                        refs.retain(|r| r["uid"].as_str() != Some(uid.as_str()));
                    }
                };
                super::ignore_not_found(self.client.update_raw(drt, &d.namespace, &d.name, strip).map(|_| ()))?;
            }
            tracing::info!(dependents = self.dependents_of(&uid).len(), "orphaned dependents");
            let drop_finalizer = |v: &mut Value| {
                if let Some(f) = v.pointer_mut("/metadata/finalizers").and_then(Value::as_array_mut) {
                    f.retain(|x| x != ORPHAN_FINALIZER);
                }
            };
            super::ignore_not_found(self.client.update_raw(rt, &key.namespace, &key.name, drop_finalizer).map(|_| ()))?;
            return Ok(Action::Done);
        }

        if deleting && has_finalizer(&obj, FOREGROUND_FINALIZER) {
            let deps = self.dependents_of(&uid);
            if deps.is_empty() {
                let drop_finalizer = |v: &mut Value| {
                    if let Some(f) = v.pointer_mut("/metadata/finalizers").and_then(Value::as_array_mut) {
                        f.retain(|x| x != FOREGROUND_FINALIZER);
                    }
                };
                super::ignore_not_found(
                    self.client.update_raw(rt, &key.namespace, &key.name, drop_finalizer).map(|_| ()),
                )?;
                tracing::info!("dependents gone; owner deleted");
                return Ok(Action::Done);
            }
            for d in &deps {
                let Some(drt) = rt_of(self.client.store().kinds(), d) else { continue };
                // A namespaced owner only owns objects in its own namespace.
                if !key.namespace.is_empty() && d.namespace != key.namespace {
                    continue;
                }
                let Some(dep) = self.client.get_raw(drt, &d.namespace, &d.name)? else { continue };
                // Another owner still there keeps the dependent: it only
                // loses its reference to this one.
                let mut other_owner = false;
                for r in owner_refs(&dep).iter().filter(|r| r["uid"].as_str() != Some(uid.as_str())) {
                    if self.owner_exists(r, &d.namespace)? {
                        other_owner = true;
                    }
                }
                if other_owner {
                    let strip = |v: &mut Value| {
                        if let Some(refs) = v.pointer_mut("/metadata/ownerReferences").and_then(Value::as_array_mut) {
                            refs.retain(|r| r["uid"].as_str() != Some(uid.as_str()));
                        }
                    };
                    super::ignore_not_found(self.client.update_raw(drt, &d.namespace, &d.name, strip))?;
                } else {
                    super::ignore_not_found(self.client.delete_raw(
                        drt,
                        &d.namespace,
                        &d.name,
                        None,
                        Propagation::Foreground,
                    ))?;
                }
            }
            // Each dependent's deletion requeues this owner; look again
            // anyway in case one is held up by a finalizer of its own.
            return Ok(Action::RequeueAfter(Duration::from_secs(5)));
        }

        let refs = owner_refs(&obj);
        if refs.is_empty() || deleting {
            return Ok(Action::Done);
        }
        let mut absent = Vec::new();
        for r in &refs {
            if !self.owner_exists(r, &key.namespace)? {
                absent.push(r["uid"].clone());
            }
        }
        if absent.len() == refs.len() {
            tracing::info!(uid = %uid, "all owners gone; deleting");
            super::ignore_not_found(self.client.delete_raw(
                rt,
                &key.namespace,
                &key.name,
                Some(&uid),
                Propagation::Background,
            ))?;
        } else if !absent.is_empty() {
            let strip = |v: &mut Value| {
                if let Some(refs) = v.pointer_mut("/metadata/ownerReferences").and_then(Value::as_array_mut) {
                    refs.retain(|r| !absent.contains(&r["uid"]));
                }
            };
            super::ignore_not_found(self.client.update_raw(rt, &key.namespace, &key.name, strip).map(|_| ()))?;
        }
        Ok(Action::Done)
    }
}
