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

/// What deleting `old` means: set `deletionTimestamp` while finalizers
/// remain, remove it otherwise.
pub fn deletion(old: Value) -> Mutation {
    let has_finalizers = meta::get(&old, "finalizers").and_then(Value::as_array).is_some_and(|f| !f.is_empty());
    if !has_finalizers {
        return Mutation::Delete;
    }
    if meta::get(&old, "deletionTimestamp").is_some() {
        return Mutation::Keep;
    }
    let mut o = old;
    start_deletion(&mut o);
    Mutation::Put(o)
}

/// Sets `deletionTimestamp` (and bumps `generation`, as Kubernetes does, so
/// controllers comparing `observedGeneration` notice).
fn start_deletion(o: &mut Value) {
    meta::set(o, "deletionTimestamp", json!(meta::now()));
    meta::set(o, "deletionGracePeriodSeconds", json!(0));
    if let Some(g) = meta::get(o, "generation").and_then(Value::as_i64).filter(|g| *g > 0) {
        meta::set(o, "generation", json!(g + 1));
    }
}

/// Foreground and orphan deletion: the object stays, marked, with the
/// finalizer the garbage collector acts on and then removes.
fn mark_for_collection(old: Value, finalizer: &str) -> Mutation {
    let mut o = old;
    let before = o.clone();
    let list = meta::meta_mut(&mut o).entry("finalizers").or_insert_with(|| json!([]));
    if let Some(l) = list.as_array_mut() {
        if !l.iter().any(|f| f == finalizer) {
            l.push(json!(finalizer));
        }
    }
    if meta::get(&o, "deletionTimestamp").is_none() {
        start_deletion(&mut o);
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
            Ok(match opts.propagation.finalizer() {
                None => deletion(old),
                Some(f) => mark_for_collection(old, f),
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
                .map(|o| if dry_run { Mutation::Keep } else { o.clone().map_or(Mutation::Keep, deletion) })
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
