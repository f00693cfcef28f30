//! The one write path: create, update and delete of stored objects, with
//! admission (`validate`), Service cluster-IP and node-port allocation,
//! preconditions, generation bumps, finalizers and pod binding. The HTTP
//! handlers (`api/objects.rs`) and the control loops (`client.rs`) both write
//! through a [`Writer`]; nothing else writes to the store.

mod binding;
mod delete;
mod error;
mod pod_sa;
mod service;

pub use pod_sa::INJECTED_TOKEN_SECONDS;

use std::net::Ipv4Addr;

use serde_json::{Value, json};

pub use binding::Binding;
pub use delete::{DeleteOpts, FOREGROUND_FINALIZER, ORPHAN_FINALIZER, Propagation, SYSTEM_NAMESPACES};
pub use error::WriteError;

use crate::meta;
use crate::resources::{self, ResourceType};
use crate::store::{Key, Mutation, SharedStore, StoreError};
use crate::validate::{self, FieldValidation};

/// The Service cluster-IP range unless configured (K3s' default).
pub const DEFAULT_SERVICE_CIDR: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 43, 0, 0), 16);

/// Writes to the store through admission and the API's rules.
#[derive(Clone)]
pub struct Writer {
    store: SharedStore,
    /// Where Service cluster IPs come from.
    service_cidr: (Ipv4Addr, u8),
    /// Whether pods get their ServiceAccount token mounted (not without
    /// TLS: no CA to trust, and tokens would cross the wire in clear).
    mount_tokens: bool,
}

/// The write parameters every mutating verb takes.
#[derive(Debug, Clone, Copy)]
pub struct WriteOpts<'a> {
    pub mode: FieldValidation,
    /// `dryRun=All`: run every check and answer as if written, store nothing.
    pub dry_run: bool,
    /// What becomes of `metadata.managedFields`.
    pub fields: Fields<'a>,
}

/// How a write treats field ownership ([`crate::managed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fields<'a> {
    /// The control loops: ownership stays as it was.
    Internal,
    /// A client's create or update, by this field manager.
    Track(&'a str),
    /// A server-side apply: the candidate carries them, final.
    AsIs,
}

impl WriteOpts<'_> {
    /// How the control loops write: strict, for real.
    pub const INTERNAL: WriteOpts<'static> =
        WriteOpts { mode: FieldValidation::Strict, dry_run: false, fields: Fields::Internal };
}

/// Which part of an object an update replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Everything but the status (`PUT`/`PATCH` of the object).
    Main,
    /// Only the status (the `status` subresource).
    Status,
}

/// Where an object lives.
#[derive(Debug, Clone, Copy)]
pub struct At<'a> {
    pub rt: &'static ResourceType,
    /// Empty for cluster-scoped kinds.
    pub ns: &'a str,
    pub name: &'a str,
}

fn is_crd(rt: &ResourceType) -> bool {
    rt.group == crate::crd::GROUP && rt.kind == "CustomResourceDefinition"
}

/// Checks (and fills) `apiVersion`/`kind` of a body against the URL's type.
fn check_type(rt: &ResourceType, body: &mut Value) -> Result<(), WriteError> {
    let want_av = rt.api_version();
    for (field, want) in [("apiVersion", want_av.as_str()), ("kind", rt.kind)] {
        match body.get(field).and_then(Value::as_str) {
            None | Some("") => {
                body[field] = Value::String(want.to_owned());
            }
            Some(have) if have != want => {
                return Err(WriteError::TypeMismatch { field, have: have.to_owned(), want: want.to_owned() });
            }
            Some(_) => {}
        }
    }
    Ok(())
}

impl Writer {
    pub fn new(store: SharedStore, service_cidr: (Ipv4Addr, u8)) -> Self {
        Writer { store, service_cidr, mount_tokens: false }
    }

    /// Pods created through this writer get their ServiceAccount token
    /// mounted (the server turns it on with TLS).
    pub fn mounting_tokens(mut self) -> Self {
        self.mount_tokens = true;
        self
    }

    /// The store, for reading.
    pub fn store(&self) -> &SharedStore {
        &self.store
    }

    fn ensure_namespace(&self, rt: &ResourceType, ns: &str) -> Result<(), WriteError> {
        if !rt.namespaced {
            return Ok(());
        }
        match self.store.get(&Key::new(resources::namespaces().id, "", ns))? {
            Some(n) if meta::get(&n, "deletionTimestamp").is_some() => {
                Err(WriteError::NamespaceTerminating { namespace: ns.to_owned() })
            }
            Some(_) => Ok(()),
            None => Err(WriteError::NotFound { resource: "namespaces".into(), name: ns.to_owned() }),
        }
    }

    /// Creates an object of `rt` in `ns` (empty for cluster-scoped kinds).
    /// Returns the stored object and any field-validation warnings.
    pub fn create(
        &self,
        rt: &'static ResourceType,
        ns: &str,
        mut body: Value,
        dups: &[String],
        w: WriteOpts<'_>,
    ) -> Result<(Value, Vec<String>), WriteError> {
        check_type(rt, &mut body)?;
        if rt.namespaced {
            match meta::get_str(&body, "namespace") {
                Some(n) if n != ns => return Err(WriteError::NamespaceMismatch),
                _ => meta::set(&mut body, "namespace", json!(ns)),
            }
        } else {
            meta::remove(&mut body, "namespace");
        }
        if meta::get_str(&body, "name").is_none() {
            if let Some(prefix) = meta::get_str(&body, "generateName").map(str::to_owned) {
                meta::set(&mut body, "name", json!(format!("{prefix}{}", meta::random_suffix())));
            }
        }
        if meta::get_str(&body, "resourceVersion").is_some() {
            return Err(WriteError::ResourceVersionOnCreate);
        }
        for f in ["uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation"] {
            meta::remove(&mut body, f);
        }
        if w.fields != Fields::AsIs {
            meta::remove(&mut body, "managedFields");
        }
        if rt.status && rt.kind != "Node" {
            if let Some(o) = body.as_object_mut() {
                o.remove("status");
            }
        }
        self.ensure_namespace(rt, ns)?;
        // The uid first: admission may use it (a Job's generated selector).
        meta::set(&mut body, "uid", json!(meta::new_uid()));
        if rt.custom.is_some() {
            self.custom_creatable(rt)?;
        }
        let admitted = validate::admit(rt, body, dups, w.mode, None)?;
        let mut obj = admitted.object;
        crate::crd::to_storage(rt, &mut obj);
        if is_crd(rt) {
            crate::crd::tidy(&mut obj);
            crate::crd::initial_status(&mut obj);
        }
        meta::set(&mut obj, "creationTimestamp", json!(meta::now()));
        if rt.generation {
            meta::set(&mut obj, "generation", json!(1));
        }
        if rt.kind == "Service" {
            service::allocate(&self.store, self.service_cidr, &mut obj)?;
        }
        if rt.kind == "Pod" && rt.group.is_empty() {
            pod_sa::admit(&self.store, &mut obj, self.mount_tokens)?;
        }
        if let Fields::Track(manager) = w.fields {
            crate::managed::on_create(rt, &mut obj, manager);
        }
        let name = meta::get_str(&obj, "name").unwrap_or_default().to_owned();
        let k = Key::new(rt.id, ns, &name);
        let out = self.store.mutate(&k, |cur| {
            if cur.is_some() {
                return Err(WriteError::AlreadyExists { resource: rt.qualified(), name: name.clone() });
            }
            if w.dry_run {
                return Ok(Mutation::Keep);
            }
            Ok(Mutation::Put(obj.clone()))
        })?;
        if w.dry_run {
            return Ok((obj, admitted.warnings));
        }
        tracing::info!(resource = rt.id, namespace = %ns, %name, rv = out.revision.unwrap_or(0), "created");
        Ok((out.object.unwrap_or(Value::Null), admitted.warnings))
    }

    /// Custom resources are not created while their CRD is being deleted.
    fn custom_creatable(&self, rt: &ResourceType) -> Result<(), WriteError> {
        let crd_name = rt.custom.as_ref().map(|c| c.crd.as_str()).unwrap_or_default();
        match self.store.get(&Key::new(crate::crd::ID, "", crd_name))? {
            Some(crd) if meta::get(&crd, "deletionTimestamp").is_none() => Ok(()),
            _ => Err(WriteError::CrdTerminating),
        }
    }

    /// The update path of PUT, PATCH and the subresources: `make` turns the
    /// stored object into the candidate, which is then checked (name,
    /// namespace, `resourceVersion` precondition, immutable metadata,
    /// status/spec separation), admitted and written in the same
    /// transaction, with a generation bump on spec change. An unchanged
    /// object is not written. `make`'s own errors come back as they are.
    pub fn update<E>(
        &self,
        at: At<'_>,
        part: Part,
        w: WriteOpts<'_>,
        dups: &[String],
        make: impl FnOnce(&Value) -> Result<Value, E>,
    ) -> Result<(Value, Vec<String>), E>
    where
        E: From<WriteError> + From<StoreError>,
    {
        let At { rt, ns, name } = at;
        let mut warnings = Vec::new();
        let mut preview = None;
        let out = self.store.mutate::<E, _>(&Key::new(rt.id, ns, name), |cur| {
            let old = cur.ok_or_else(|| WriteError::NotFound { resource: rt.qualified(), name: name.to_owned() })?;
            let cand = if rt.custom.is_some() {
                // (In the version the request names.)
                let mut shown = old.clone();
                crate::crd::present(rt, &mut shown);
                make(&shown)?
            } else {
                make(&old)?
            };
            let (obj, w2) = self.updated(at, part, w, dups, &old, cand)?;
            warnings = w2;
            if meta::without_rv(&obj) == meta::without_rv(&old) {
                return Ok(Mutation::Keep);
            }
            if w.dry_run {
                preview = Some(obj);
                return Ok(Mutation::Keep);
            }
            let finalizers_empty = meta::get(&obj, "finalizers").and_then(Value::as_array).is_none_or(Vec::is_empty);
            // (A namespace's own finalizer lives in `spec.finalizers`; only the
            // namespace controller removes a namespace.)
            if meta::get(&obj, "deletionTimestamp").is_some()
                && finalizers_empty
                && delete::grace_over(&obj)
                && rt.kind != "Namespace"
            {
                return Ok(Mutation::Delete);
            }
            Ok(Mutation::Put(obj))
        })?;
        if out.revision.is_some() {
            tracing::info!(resource = rt.id, namespace = %ns, %name, rv = out.revision.unwrap_or(0), "updated");
        }
        Ok((preview.or(out.object).unwrap_or(Value::Null), warnings))
    }

    /// The candidate of an update, checked against `old` and admitted.
    fn updated(
        &self,
        at: At<'_>,
        part: Part,
        w: WriteOpts<'_>,
        dups: &[String],
        old: &Value,
        mut cand: Value,
    ) -> Result<(Value, Vec<String>), WriteError> {
        let At { rt, ns, name } = at;
        if !cand.is_object() {
            return Err(WriteError::NotAnObject);
        }
        check_type(rt, &mut cand)?;
        match meta::get_str(&cand, "name") {
            Some(n) if n != name => {
                return Err(WriteError::NameMismatch { have: n.to_owned(), want: name.to_owned() });
            }
            _ => meta::set(&mut cand, "name", json!(name)),
        }
        if rt.namespaced {
            match meta::get_str(&cand, "namespace") {
                Some(n) if n != ns => return Err(WriteError::NamespaceMismatch),
                _ => meta::set(&mut cand, "namespace", json!(ns)),
            }
        }
        if let Some(rv) = meta::get_str(&cand, "resourceVersion") {
            if Some(rv) != meta::get_str(old, "resourceVersion") {
                return Err(WriteError::Stale { resource: rt.qualified(), name: name.to_owned() });
            }
        }
        if rt.status {
            // The main resource keeps the stored status; `status` changes only it.
            let applied_fields = meta::get(&cand, "managedFields").cloned();
            let (mut base, from) = match part {
                Part::Main => (cand, old),
                Part::Status => (old.clone(), &cand),
            };
            // An apply to the status brings its ownership along.
            if part == Part::Status && w.fields == Fields::AsIs {
                match applied_fields {
                    Some(f) => meta::set(&mut base, "managedFields", f),
                    None => meta::remove(&mut base, "managedFields"),
                }
            }
            match from.get("status") {
                Some(s) => base["status"] = s.clone(),
                None => {
                    base.as_object_mut().map(|o| o.remove("status"));
                }
            }
            cand = base;
        }
        for f in ["uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation"] {
            match meta::get(old, f) {
                Some(v) => meta::set(&mut cand, f, v.clone()),
                None => meta::remove(&mut cand, f),
            }
        }
        let admitted = validate::admit(rt, cand, dups, w.mode, Some(old))?;
        let mut obj = admitted.object;
        crate::crd::to_storage(rt, &mut obj);
        if rt.kind == "Service" {
            service::allocate(&self.store, self.service_cidr, &mut obj)?;
        }
        if is_crd(rt) {
            crate::crd::tidy(&mut obj);
            crate::crd::record_storage_version(&mut obj);
        }
        // A custom resource's generation counts every change but to its
        // metadata (and to its status, which has its own endpoint).
        let changed = if rt.custom.is_some() {
            let rest = |o: &'_ Value| -> Vec<(String, Value)> {
                let own = |k: &str| k == "metadata" || (rt.status && k == "status");
                o.as_object()
                    .map(|m| m.iter().filter(|(k, _)| !own(k)).map(|(k, v)| (k.clone(), v.clone())).collect())
                    .unwrap_or_default()
            };
            rest(&obj) != rest(old)
        } else {
            obj.get("spec") != old.get("spec")
        };
        if rt.generation && changed {
            let g = meta::get(old, "generation").and_then(Value::as_i64).unwrap_or(0);
            meta::set(&mut obj, "generation", json!(g + 1));
        }
        match w.fields {
            Fields::AsIs => {}
            Fields::Track(m) => crate::managed::on_update(rt, part == Part::Status, old, &mut obj, Some(m)),
            Fields::Internal => crate::managed::on_update(rt, part == Part::Status, old, &mut obj, None),
        }
        Ok((obj, admitted.warnings))
    }

    /// Creates the namespaces Kubernetes always has, where missing.
    pub fn system_namespaces(&self) -> Result<(), WriteError> {
        let rt = resources::namespaces();
        for name in SYSTEM_NAMESPACES {
            let body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
            match self.create(rt, "", body, &[], WriteOpts::INTERNAL) {
                Ok(_) | Err(WriteError::AlreadyExists { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}
