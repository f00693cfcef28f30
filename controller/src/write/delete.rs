//! Deletion: immediate unless finalizers hold the object (then it is marked
//! with `deletionTimestamp`), `propagationPolicy` through the garbage
//! collector's finalizers, preconditions, and namespaces (marked
//! `Terminating`, emptied and removed by the namespace controller).

use serde_json::{Value, json};

use super::{WriteError, Writer};
use crate::meta;
use crate::resources::{self, ResourceType};
use crate::store::{Key, Mutation};

/// Namespaces that always exist and may not be deleted.
pub const SYSTEM_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public", "kube-node-lease"];

pub const ORPHAN_FINALIZER: &str = "orphan";
pub const FOREGROUND_FINALIZER: &str = "foregroundDeletion";

/// `DeleteOptions`.
#[derive(Debug, Default, Clone)]
pub struct DeleteOpts {
    /// Precondition: the object still has this uid.
    pub uid: Option<String>,
    /// Precondition: the object still has this resourceVersion.
    pub rv: Option<String>,
    pub dry_run: bool,
    pub propagation: Propagation,
    /// `gracePeriodSeconds`: how long a pod's node has to stop it (pods
    /// only; unset = the pod's `terminationGracePeriodSeconds`, 0 = now).
    pub grace_period: Option<i64>,
}

/// `propagationPolicy`: what happens to the objects this one owns.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Propagation {
    /// Delete now; the garbage collector deletes dependents afterwards.
    #[default]
    Background,
    /// Dependents are deleted first; the owner waits (`foregroundDeletion` finalizer).
    Foreground,
    /// Dependents are kept and lose their owner reference (`orphan` finalizer).
    Orphan,
}

impl Propagation {
    /// The finalizer that makes the garbage collector act before the owner goes.
    pub fn finalizer(self) -> Option<&'static str> {
        match self {
            Propagation::Background => None,
            Propagation::Foreground => Some(FOREGROUND_FINALIZER),
            Propagation::Orphan => Some(ORPHAN_FINALIZER),
        }
    }
}

/// The grace period deleting `obj` gets, as Kubernetes' pod strategy
/// decides it: only pods have one — the request's, else the pod's
/// `terminationGracePeriodSeconds` (30) — and a pod that is not on a node
/// or has finished goes at once. A negative request counts as 1 s.
pub fn grace_period(obj: &Value, requested: Option<i64>) -> i64 {
    let is_pod = obj.get("kind").and_then(Value::as_str) == Some("Pod")
        && obj.get("apiVersion").and_then(Value::as_str) == Some("v1");
    if !is_pod {
        return 0;
    }
    let bound = obj.pointer("/spec/nodeName").and_then(Value::as_str).is_some_and(|n| !n.is_empty());
    let finished = matches!(obj.pointer("/status/phase").and_then(Value::as_str), Some("Succeeded" | "Failed"));
    // A mirror pod has nothing to stop (its static pod runs on).
    let mirror = obj.pointer("/metadata/annotations/kubernetes.io~1config.mirror").is_some();
    if !bound || finished || mirror {
        return 0;
    }
    let grace =
        requested.or_else(|| obj.pointer("/spec/terminationGracePeriodSeconds").and_then(Value::as_i64)).unwrap_or(30);
    if grace < 0 { 1 } else { grace }
}

/// Whether an object whose deletion has started may go once its finalizers
/// are gone: its grace period is over (0; a pod's node sets it so when the
/// pod has stopped).
pub fn grace_over(obj: &Value) -> bool {
    meta::get(obj, "deletionGracePeriodSeconds").and_then(Value::as_i64).unwrap_or(0) <= 0
}

/// What deleting `old` with `grace` seconds means: remove it when no
/// finalizer holds it and no grace period is due; otherwise mark it with
/// `deletionTimestamp` (when the grace ends) and `deletionGracePeriodSeconds`.
/// A second delete may shorten a running grace period, never lengthen it.
pub fn deletion(old: Value, grace: i64) -> Mutation {
    let has_finalizers = meta::get(&old, "finalizers").and_then(Value::as_array).is_some_and(|f| !f.is_empty());
    if !has_finalizers && grace == 0 {
        return Mutation::Delete;
    }
    let current = meta::get(&old, "deletionGracePeriodSeconds").and_then(Value::as_i64);
    if meta::get(&old, "deletionTimestamp").is_some() && current.is_some_and(|c| c <= grace) {
        return Mutation::Keep;
    }
    let mut o = old;
    start_deletion(&mut o, grace);
    Mutation::Put(o)
}

/// Sets `deletionTimestamp` to when the grace period ends and
/// `deletionGracePeriodSeconds`; the first time, bumps `generation`, as
/// Kubernetes does, so controllers comparing `observedGeneration` notice.
fn start_deletion(o: &mut Value, grace: i64) {
    let first = meta::get(o, "deletionTimestamp").is_none();
    meta::set(o, "deletionTimestamp", json!(meta::seconds_from_now(grace)));
    meta::set(o, "deletionGracePeriodSeconds", json!(grace));
    if first {
        if let Some(g) = meta::get(o, "generation").and_then(Value::as_i64).filter(|g| *g > 0) {
            meta::set(o, "generation", json!(g + 1));
        }
    }
}

/// Foreground and orphan deletion: the object stays, marked, with the
/// finalizer the garbage collector acts on and then removes.
fn mark_for_collection(old: Value, finalizer: &str, grace: i64) -> Mutation {
    let mut o = old;
    let before = o.clone();
    let list = meta::meta_mut(&mut o).entry("finalizers").or_insert_with(|| json!([]));
    if let Some(l) = list.as_array_mut() {
        if !l.iter().any(|f| f == finalizer) {
            l.push(json!(finalizer));
        }
    }
    let current = meta::get(&o, "deletionGracePeriodSeconds").and_then(Value::as_i64);
    if meta::get(&o, "deletionTimestamp").is_none() || current.is_some_and(|c| c > grace) {
        start_deletion(&mut o, grace);
    }
    if o == before { Mutation::Keep } else { Mutation::Put(o) }
}

fn preconditions(q: &str, name: &str, old: &Value, opts: &DeleteOpts) -> Result<(), WriteError> {
    let failed = |field, want: &str, have: &str| WriteError::Precondition {
        resource: q.to_owned(),
        name: name.to_owned(),
        field,
        want: want.to_owned(),
        have: have.to_owned(),
    };
    if let Some(uid) = &opts.uid {
        let have = meta::get_str(old, "uid").unwrap_or_default();
        if uid != have {
            return Err(failed("UID", uid, have));
        }
    }
    if let Some(rv) = &opts.rv {
        let have = meta::get_str(old, "resourceVersion").unwrap_or_default();
        if rv != have {
            return Err(failed("ResourceVersion", rv, have));
        }
    }
    Ok(())
}

impl Writer {
    /// Deletes (or, with finalizers, marks for deletion) one object.
    /// Returns its last state.
    pub fn delete(
        &self,
        rt: &'static ResourceType,
        ns: &str,
        name: &str,
        opts: &DeleteOpts,
    ) -> Result<Value, WriteError> {
        if rt.kind == "Namespace" {
            return self.delete_namespace(name, opts);
        }
        let q = rt.qualified();
        let out = self.store.mutate::<WriteError, _>(&Key::new(rt.id, ns, name), |cur| {
            let old = cur.ok_or_else(|| WriteError::NotFound { resource: q.clone(), name: name.to_owned() })?;
            preconditions(&q, name, &old, opts)?;
            if opts.dry_run {
                return Ok(Mutation::Keep);
            }
            let grace = grace_period(&old, opts.grace_period);
            Ok(match opts.propagation.finalizer() {
                None => deletion(old, grace),
                Some(f) => mark_for_collection(old, f, grace),
            })
        })?;
        if out.revision.is_some() {
            tracing::info!(resource = rt.id, namespace = %ns, %name, "deleted");
        }
        Ok(out.object.unwrap_or(Value::Null))
    }

    /// Deleting a namespace marks it `Terminating`; the namespace controller
    /// (`controllers::namespace`) then deletes its contents and finally the
    /// namespace ([`Writer::finalize_namespace`]), as Kubernetes does.
    fn delete_namespace(&self, name: &str, opts: &DeleteOpts) -> Result<Value, WriteError> {
        if SYSTEM_NAMESPACES.contains(&name) {
            return Err(WriteError::SystemNamespace { name: name.to_owned() });
        }
        let key = Key::new(resources::namespaces().id, "", name);
        let out = self.store.mutate::<WriteError, _>(&key, |cur| {
            let old =
                cur.ok_or_else(|| WriteError::NotFound { resource: "namespaces".into(), name: name.to_owned() })?;
            preconditions("namespaces", name, &old, opts)?;
            if meta::get(&old, "deletionTimestamp").is_some() || opts.dry_run {
                return Ok(Mutation::Keep);
            }
            let mut o = old;
            meta::set(&mut o, "deletionTimestamp", json!(meta::now()));
            o["status"]["phase"] = json!("Terminating");
            Ok(Mutation::Put(o))
        })?;
        tracing::info!(namespace = %name, "namespace terminating");
        Ok(out.object.unwrap_or(Value::Null))
    }

    /// Deletes every object at `keys` (marking those finalizers hold) in one
    /// transaction; keys with nothing stored are skipped. Returns the last
    /// state of each object found.
    pub fn delete_many(&self, keys: &[Key], dry_run: bool) -> Result<Vec<Value>, WriteError> {
        let outs = self.store.mutate_many::<WriteError, _>(keys, |cur| {
            Ok(cur
                .iter()
                .map(|o| match o {
                    Some(o) if !dry_run => deletion(o.clone(), grace_period(o, None)),
                    _ => Mutation::Keep,
                })
                .collect())
        })?;
        Ok(outs.into_iter().filter_map(|o| o.object).collect())
    }

    /// The last step of deleting a namespace: its `kubernetes` finalizer is
    /// removed, and the namespace with it once no finalizer is left. Returns
    /// whether the namespace is gone.
    pub fn finalize_namespace(&self, name: &str) -> Result<bool, WriteError> {
        let key = Key::new(resources::namespaces().id, "", name);
        let mut gone = true;
        self.store.mutate::<WriteError, _>(&key, |cur| {
            let Some(mut o) = cur else { return Ok(Mutation::Keep) };
            let before = o.clone();
            if let Some(f) = o.pointer_mut("/spec/finalizers").and_then(Value::as_array_mut) {
                f.retain(|v| v.as_str() != Some("kubernetes"));
            }
            let nonempty = |v: Option<&Value>| v.and_then(Value::as_array).is_some_and(|f| !f.is_empty());
            let finalizers_left = nonempty(meta::get(&o, "finalizers")) || nonempty(o.pointer("/spec/finalizers"));
            gone = !finalizers_left;
            Ok(match (finalizers_left, o == before) {
                (false, _) => Mutation::Delete,
                (true, true) => Mutation::Keep,
                (true, false) => Mutation::Put(o),
            })
        })?;
        Ok(gone)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::write::{Part, WriteOpts};

    fn writer(dir: &std::path::Path) -> Writer {
        let store = Arc::new(crate::store::Store::open(&dir.join("s.redb"), 100).expect("store"));
        let w = Writer::new(store, crate::write::DEFAULT_SERVICE_CIDR);
        w.system_namespaces().expect("namespaces");
        w
    }

    fn pods() -> &'static ResourceType {
        resources::by_kind("", "Pod").expect("pods")
    }

    fn pod(w: &Writer, name: &str, node: Option<&str>, grace: Option<i64>) {
        let mut spec = json!({"containers": [{"name": "c", "image": "busybox"}]});
        if let Some(n) = node {
            spec["nodeName"] = json!(n);
        }
        if let Some(g) = grace {
            spec["terminationGracePeriodSeconds"] = json!(g);
        }
        let body = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec});
        w.create(pods(), "default", body, &[], WriteOpts::INTERNAL).expect("create");
    }

    fn get(w: &Writer, name: &str) -> Option<Value> {
        w.store.get(&Key::new(pods().id, "default", name)).expect("get")
    }

    fn delete(w: &Writer, name: &str, grace: Option<i64>) -> Value {
        w.delete(pods(), "default", name, &DeleteOpts { grace_period: grace, ..Default::default() }).expect("delete")
    }

    /// A pod on a node is marked (Terminating) with its grace period until
    /// its node says it stopped; unbound pods and `--grace-period=0` go at once.
    #[test]
    fn pods_on_a_node_terminate_gracefully() {
        let dir = tempfile::tempdir().expect("tmp");
        let w = writer(dir.path());
        pod(&w, "bound", Some("n1"), Some(3));
        let marked = delete(&w, "bound", None);
        assert_eq!(marked["metadata"]["deletionGracePeriodSeconds"], 3);
        let at = marked["metadata"]["deletionTimestamp"].as_str().expect("timestamp");
        let at: jiff::Timestamp = at.parse().expect("rfc3339");
        let ahead = at.as_second() - jiff::Timestamp::now().as_second();
        assert!((2..=3).contains(&ahead), "deletionTimestamp is when the grace ends: {ahead}s ahead");
        assert!(get(&w, "bound").is_some(), "still there while its node stops it");

        // A status write (the node's report) does not finish it.
        let mut status = get(&w, "bound").expect("pod");
        status["status"] = json!({"phase": "Running"});
        let at = crate::write::At { rt: pods(), ns: "default", name: "bound" };
        w.update::<WriteError>(at, Part::Status, WriteOpts::INTERNAL, &[], |_| Ok(status.clone())).expect("status");
        assert!(get(&w, "bound").is_some());

        // A second delete may shorten the grace period, never lengthen it.
        assert_eq!(delete(&w, "bound", Some(60))["metadata"]["deletionGracePeriodSeconds"], 3);
        assert_eq!(delete(&w, "bound", Some(1))["metadata"]["deletionGracePeriodSeconds"], 1);
        // The last delete (the node stopped it, or --force --grace-period=0).
        delete(&w, "bound", Some(0));
        assert!(get(&w, "bound").is_none());

        pod(&w, "pending", None, Some(30));
        delete(&w, "pending", None);
        assert!(get(&w, "pending").is_none(), "a pod on no node has nothing to stop");

        pod(&w, "forced", Some("n1"), None);
        assert_eq!(delete(&w, "forced", None)["metadata"]["deletionGracePeriodSeconds"], 30, "the default");
        delete(&w, "forced", Some(0));
        assert!(get(&w, "forced").is_none());
    }

    /// Finalizers still hold a pod whose grace period is over.
    #[test]
    fn finalizers_hold_a_stopped_pod() {
        let dir = tempfile::tempdir().expect("tmp");
        let w = writer(dir.path());
        pod(&w, "held", Some("n1"), Some(5));
        let at = crate::write::At { rt: pods(), ns: "default", name: "held" };
        let add = |o: &Value| {
            let mut o = o.clone();
            o["metadata"]["finalizers"] = json!(["example.com/hold"]);
            Ok::<_, WriteError>(o)
        };
        w.update::<WriteError>(at, Part::Main, WriteOpts::INTERNAL, &[], add).expect("finalizer");
        delete(&w, "held", None);
        let stopped = delete(&w, "held", Some(0));
        assert_eq!(stopped["metadata"]["deletionGracePeriodSeconds"], 0);
        assert!(get(&w, "held").is_some());
        let drop = |o: &Value| {
            let mut o = o.clone();
            o["metadata"]["finalizers"] = json!([]);
            Ok::<_, WriteError>(o)
        };
        w.update::<WriteError>(at, Part::Main, WriteOpts::INTERNAL, &[], drop).expect("drop finalizer");
        assert!(get(&w, "held").is_none(), "gone once the finalizer is");
    }
}
