//! Typed, in-process access to the API for the control loops. Every write
//! goes through the same path as an HTTP request ([`crate::write`]:
//! admission, defaults, preconditions, generation, revision), so what a loop
//! writes is exactly what `kubectl` could have written. Errors are the loops'
//! own ([`ControllerError`]).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

use crate::controllers::ControllerError;
use crate::resources::{self, ResourceType};
use crate::store::{Key, SharedStore};
use crate::write::{At, Binding, DeleteOpts, Part, Propagation, WriteError, WriteOpts, Writer};

/// A kind the control loops handle as a typed `k8s-openapi` struct.
pub trait Kind: k8s_openapi::Resource + k8s_openapi::Metadata<Ty = ObjectMeta> + Serialize + DeserializeOwned {
    fn rt() -> Result<&'static ResourceType, ControllerError> {
        resources::by_kind(Self::GROUP, Self::KIND).ok_or(ControllerError::NotServed { kind: Self::KIND })
    }
}

impl<T> Kind for T where T: k8s_openapi::Resource + k8s_openapi::Metadata<Ty = ObjectMeta> + Serialize + DeserializeOwned
{}

#[derive(Clone)]
pub struct Client {
    writer: Writer,
    /// What the event recorder remembers (shared by the clones).
    events: std::sync::Arc<std::sync::Mutex<crate::controllers::events::Correlator>>,
}

fn decode<K: Kind>(v: Value) -> Result<K, ControllerError> {
    serde_json::from_value(v).map_err(|source| ControllerError::Decode { kind: K::KIND, source })
}

fn encode<K: Kind>(obj: &K) -> Result<Value, ControllerError> {
    serde_json::to_value(obj).map_err(|source| ControllerError::Encode { kind: K::KIND, source })
}

fn name_ns(meta: &ObjectMeta) -> (String, String) {
    (meta.namespace.clone().unwrap_or_default(), meta.name.clone().unwrap_or_default())
}

impl Client {
    pub fn new(writer: Writer) -> Self {
        Client { writer, events: crate::controllers::events::Correlator::shared() }
    }

    /// The event recorder's memory ([`crate::controllers::events::record`]).
    pub fn events(&self) -> &std::sync::Arc<std::sync::Mutex<crate::controllers::events::Correlator>> {
        &self.events
    }

    pub fn store(&self) -> &SharedStore {
        self.writer.store()
    }

    pub fn get<K: Kind>(&self, ns: &str, name: &str) -> Result<Option<K>, ControllerError> {
        let rt = K::rt()?;
        self.store().get(&Key::new(rt.id, ns, name))?.map(decode).transpose()
    }

    /// Every object of the kind, in one namespace or all.
    pub fn list<K: Kind>(&self, ns: Option<&str>) -> Result<Vec<K>, ControllerError> {
        let rt = K::rt()?;
        let (items, _) = self.store().list(rt.id, ns, None)?;
        items.into_iter().map(decode).collect()
    }

    /// The store keys of every object of the kind (what a control loop
    /// resyncs from).
    pub fn keys<K: Kind>(&self) -> Result<Vec<Key>, ControllerError> {
        self.keys_raw(K::rt()?, None)
    }

    /// The store keys of every object of `rt`, in one namespace or all.
    pub fn keys_raw(&self, rt: &ResourceType, ns: Option<&str>) -> Result<Vec<Key>, ControllerError> {
        let (items, _) = self.store().list(rt.id, ns, None)?;
        Ok(items
            .iter()
            .map(|o| {
                let meta = |f: &str| o.pointer(&format!("/metadata/{f}")).and_then(Value::as_str).unwrap_or_default();
                Key::new(rt.id, meta("namespace"), meta("name"))
            })
            .collect())
    }

    pub fn create<K: Kind>(&self, obj: &K) -> Result<K, ControllerError> {
        let rt = K::rt()?;
        let (ns, _) = name_ns(obj.metadata());
        let (stored, _) = self.writer.create(rt, &ns, encode(obj)?, &[], WriteOpts::INTERNAL)?;
        decode(stored)
    }

    fn write<K: Kind>(&self, obj: &K, part: Part) -> Result<K, ControllerError> {
        let rt = K::rt()?;
        let (ns, name) = name_ns(obj.metadata());
        let body = encode(obj)?;
        let at = At { rt, ns: &ns, name: &name };
        let (stored, _) = self.writer.update::<WriteError>(at, part, WriteOpts::INTERNAL, &[], |_| Ok(body))?;
        decode(stored)
    }

    /// Replaces the object (not its status); its `resourceVersion`, when set,
    /// is a precondition ([`ControllerError::Conflict`] when stale).
    pub fn replace<K: Kind>(&self, obj: &K) -> Result<K, ControllerError> {
        self.write(obj, Part::Main)
    }

    /// Replaces only the status, like `PUT …/status`.
    pub fn replace_status<K: Kind>(&self, obj: &K) -> Result<K, ControllerError> {
        self.write(obj, Part::Status)
    }

    /// Deletes the object if it still has `uid` (when given).
    pub fn delete<K: Kind>(&self, ns: &str, name: &str, uid: Option<&str>) -> Result<(), ControllerError> {
        self.delete_raw(K::rt()?, ns, name, uid, Propagation::Background)
    }

    /// Removes an object now, whatever grace period its deletion had (the
    /// kubelet's last delete of a pod its node has stopped); finalizers
    /// still hold it.
    pub fn delete_now<K: Kind>(&self, ns: &str, name: &str, uid: Option<&str>) -> Result<(), ControllerError> {
        let opts = DeleteOpts { uid: uid.map(str::to_owned), grace_period: Some(0), ..DeleteOpts::default() };
        self.writer.delete(K::rt()?, ns, name, &opts)?;
        Ok(())
    }

    /// Creates an object of any served kind from its JSON, with `opts`'
    /// field validation.
    pub fn create_raw(
        &self,
        rt: &'static ResourceType,
        ns: &str,
        body: Value,
        opts: WriteOpts<'_>,
    ) -> Result<Value, ControllerError> {
        Ok(self.writer.create(rt, ns, body, &[], opts)?.0)
    }

    /// An object of any served kind, as stored.
    pub fn get_raw(&self, rt: &ResourceType, ns: &str, name: &str) -> Result<Option<Value>, ControllerError> {
        Ok(self.store().get(&Key::new(rt.id, ns, name))?)
    }

    /// Edits an object of any kind in place (not its status), through the
    /// normal update path.
    pub fn update_raw(
        &self,
        rt: &'static ResourceType,
        ns: &str,
        name: &str,
        edit: impl FnOnce(&mut Value),
    ) -> Result<Value, ControllerError> {
        self.edit_raw(At { rt, ns, name }, Part::Main, edit)
    }

    /// Edits the status of an object of any kind in place.
    pub fn update_status_raw(
        &self,
        rt: &'static ResourceType,
        ns: &str,
        name: &str,
        edit: impl FnOnce(&mut Value),
    ) -> Result<Value, ControllerError> {
        self.edit_raw(At { rt, ns, name }, Part::Status, edit)
    }

    fn edit_raw(&self, at: At<'_>, part: Part, edit: impl FnOnce(&mut Value)) -> Result<Value, ControllerError> {
        let (stored, _) = self.writer.update::<WriteError>(at, part, WriteOpts::INTERNAL, &[], |old| {
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
    ) -> Result<(), ControllerError> {
        let opts = DeleteOpts { uid: uid.map(str::to_owned), propagation, ..DeleteOpts::default() };
        self.writer.delete(rt, ns, name, &opts)?;
        Ok(())
    }

    /// Deletes every object at `keys` in one transaction (marking those
    /// finalizers hold); returns how many there were.
    pub fn delete_many(&self, keys: &[Key]) -> Result<usize, ControllerError> {
        Ok(self.writer.delete_many(keys, false)?.len())
    }

    /// Removes an emptied namespace (see [`Writer::finalize_namespace`]);
    /// `false` while finalizers of others still hold it.
    pub fn finalize_namespace(&self, name: &str) -> Result<bool, ControllerError> {
        Ok(self.writer.finalize_namespace(name)?)
    }

    /// Binds pods to nodes in one transaction (see [`Writer::bind_many`]).
    /// A pod that could not be bound fails alone.
    pub fn bind_many(
        &self,
        binds: &[Binding],
        events_from: Option<&str>,
    ) -> Result<Vec<Result<(), ControllerError>>, ControllerError> {
        let per = self.writer.bind_many(binds, events_from)?;
        Ok(per.into_iter().map(|r| r.map_err(ControllerError::from)).collect())
    }
}
