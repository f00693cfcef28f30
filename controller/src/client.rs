//! Typed, in-process access to the API for the control loops. Every write
//! goes through the same path as an HTTP request (admission, defaults,
//! preconditions, generation, revision), so what a loop writes is exactly
//! what `kubectl` could have written.

use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

use crate::api::objects::{self, At, DeleteOpts, Part, Propagation, WriteOpts};
use crate::api::{ApiError, ApiState};
use crate::resources::{self, ResourceType};
use crate::store::{Key, SharedStore};

/// A kind the control loops handle as a typed `k8s-openapi` struct.
pub trait Kind: k8s_openapi::Resource + k8s_openapi::Metadata<Ty = ObjectMeta> + Serialize + DeserializeOwned {
    fn rt() -> Result<&'static ResourceType, ApiError> {
        resources::by_kind(Self::GROUP, Self::KIND)
            .ok_or_else(|| ApiError::internal(format!("kind {} is not served", Self::KIND)))
    }
}

impl<T> Kind for T where T: k8s_openapi::Resource + k8s_openapi::Metadata<Ty = ObjectMeta> + Serialize + DeserializeOwned
{}

#[derive(Clone)]
pub struct Client {
    st: Arc<ApiState>,
}

fn decode<K: Kind>(v: Value) -> Result<K, ApiError> {
    serde_json::from_value(v).map_err(|e| ApiError::internal(format!("stored {} does not decode: {e}", K::KIND)))
}

fn encode<K: Kind>(obj: &K) -> Result<Value, ApiError> {
    serde_json::to_value(obj).map_err(|e| ApiError::internal(format!("{} does not encode: {e}", K::KIND)))
}

fn name_ns(meta: &ObjectMeta) -> (String, String) {
    (meta.namespace.clone().unwrap_or_default(), meta.name.clone().unwrap_or_default())
}

impl Client {
    pub fn new(st: Arc<ApiState>) -> Self {
        Client { st }
    }

    pub fn store(&self) -> &SharedStore {
        &self.st.store
    }

    pub fn get<K: Kind>(&self, ns: &str, name: &str) -> Result<Option<K>, ApiError> {
        let rt = K::rt()?;
        self.st.store.get(&Key::new(rt.id, ns, name))?.map(decode).transpose()
    }

    /// Every object of the kind, in one namespace or all.
    pub fn list<K: Kind>(&self, ns: Option<&str>) -> Result<Vec<K>, ApiError> {
        let rt = K::rt()?;
        let (items, _) = self.st.store.list(rt.id, ns, None)?;
        items.into_iter().map(decode).collect()
    }

    /// The store keys of every object of the kind (what a control loop
    /// resyncs from).
    pub fn keys<K: Kind>(&self) -> Result<Vec<Key>, ApiError> {
        let rt = K::rt()?;
        let (items, _) = self.st.store.list(rt.id, None, None)?;
        Ok(items
            .iter()
            .map(|o| {
                let meta = |f: &str| o.pointer(&format!("/metadata/{f}")).and_then(Value::as_str).unwrap_or_default();
                Key::new(rt.id, meta("namespace"), meta("name"))
            })
            .collect())
    }

    pub fn create<K: Kind>(&self, obj: &K) -> Result<K, ApiError> {
        let rt = K::rt()?;
        let (ns, _) = name_ns(obj.metadata());
        let (stored, _) = objects::create_object(&self.st, rt, &ns, encode(obj)?, &[], WriteOpts::INTERNAL)?;
        decode(stored)
    }

    fn write<K: Kind>(&self, obj: &K, part: Part) -> Result<K, ApiError> {
        let rt = K::rt()?;
        let (ns, name) = name_ns(obj.metadata());
        let body = encode(obj)?;
        let (stored, _) =
            objects::update(&self.st, At { rt, ns: &ns, name: &name }, part, WriteOpts::INTERNAL, &[], |_| Ok(body))?;
        decode(stored)
    }

    /// Replaces the object (not its status); its `resourceVersion`, when set,
    /// is a precondition (409 when stale).
    pub fn replace<K: Kind>(&self, obj: &K) -> Result<K, ApiError> {
        self.write(obj, Part::Main)
    }

    /// Replaces only the status, like `PUT …/status`.
    pub fn replace_status<K: Kind>(&self, obj: &K) -> Result<K, ApiError> {
        self.write(obj, Part::Status)
    }

    /// Deletes the object if it still has `uid` (when given).
    pub fn delete<K: Kind>(&self, ns: &str, name: &str, uid: Option<&str>) -> Result<(), ApiError> {
        let rt = K::rt()?;
        let opts = DeleteOpts { uid: uid.map(str::to_owned), ..DeleteOpts::default() };
        objects::delete_object(&self.st, rt, ns, name, &opts).map(|_| ())
    }

    /// An object of any served kind, as stored.
    pub fn get_raw(&self, rt: &ResourceType, ns: &str, name: &str) -> Result<Option<Value>, ApiError> {
        Ok(self.st.store.get(&Key::new(rt.id, ns, name))?)
    }

    /// Edits an object of any kind in place (not its status), through the
    /// normal update path.
    pub fn update_raw(
        &self,
        rt: &'static ResourceType,
        ns: &str,
        name: &str,
        edit: impl FnOnce(&mut Value),
    ) -> Result<Value, ApiError> {
        let at = At { rt, ns, name };
        let (stored, _) = objects::update(&self.st, at, Part::Main, WriteOpts::INTERNAL, &[], |old| {
            let mut v = old.clone();
            edit(&mut v);
            Ok(v)
        })?;
        Ok(stored)
    }

    /// Deletes an object of any kind if it still has `uid` (when given).
    pub fn delete_raw(
        &self,
        rt: &'static ResourceType,
        ns: &str,
        name: &str,
        uid: Option<&str>,
        propagation: Propagation,
    ) -> Result<(), ApiError> {
        let opts = DeleteOpts { uid: uid.map(str::to_owned), propagation, ..DeleteOpts::default() };
        objects::delete_object(&self.st, rt, ns, name, &opts).map(|_| ())
    }

    /// Binds pods to nodes in one transaction (see `api::binding`).
    pub fn bind_many(
        &self,
        binds: &[crate::api::binding::Binding],
        events_from: Option<&str>,
    ) -> Result<Vec<Result<(), ApiError>>, ApiError> {
        crate::api::binding::bind_many(&self.st, binds, events_from)
    }
}
