//! A value per object of one cluster-scoped kind, keyed by name: listed
//! once from the store, then kept from the watch (what a client-go
//! informer's indexer is for). Listing every Node whenever one changed was
//! quadratic with thousands of nodes joining; the node lifecycle (pod
//! ranges), the network table (node entries) and the fleet dashboard (Ready)
//! keep what they need here instead.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::store::{EventType, Store, StoreError, WatchEvent};

pub struct Watched<V> {
    resource: &'static str,
    /// What is kept of an object (as stored JSON); `None`: nothing.
    value: fn(&Value) -> Option<V>,
    /// `None` until listed, and again after [`Watched::forget`].
    map: Option<BTreeMap<String, V>>,
}

impl<V> Watched<V> {
    pub fn new(resource: &'static str, value: fn(&Value) -> Option<V>) -> Self {
        Watched { resource, value, map: None }
    }

    /// Applies a watch event (of other kinds: ignored). Before the first
    /// list there is nothing to keep up to date: the list will say it.
    pub fn observe(&mut self, ev: &WatchEvent) {
        if ev.resource != self.resource {
            return;
        }
        let Some(map) = self.map.as_mut() else { return };
        match (ev.kind, (self.value)(&ev.object)) {
            (EventType::Deleted, _) | (_, None) => map.remove(&ev.name),
            (_, Some(v)) => map.insert(ev.name.clone(), v),
        };
    }

    /// Forgets everything: the next [`Watched::get`] lists again. For a
    /// resync, when watch events may have been missed.
    pub fn forget(&mut self) {
        self.map = None;
    }

    /// The values, listed from `store` first if need be.
    pub fn get(&mut self, store: &Store) -> Result<&mut BTreeMap<String, V>, StoreError> {
        let map = match self.map.take() {
            Some(m) => m,
            None => {
                let (objects, _) = store.list(self.resource, None, None)?;
                let name = |o: &Value| o.pointer("/metadata/name")?.as_str().map(str::to_owned);
                objects.iter().filter_map(|o| Some((name(o)?, (self.value)(o)?))).collect()
            }
        };
        Ok(self.map.insert(map))
    }

    /// The values if listed; for writing what the watch will say next.
    pub fn listed(&mut self) -> Option<&mut BTreeMap<String, V>> {
        self.map.as_mut()
    }

    /// As if listed with these values (tests).
    #[cfg(test)]
    pub fn set(&mut self, map: BTreeMap<String, V>) {
        self.map = Some(map);
    }

    /// How many objects have a value (0 before the first list).
    pub fn count(&self) -> usize {
        self.map.as_ref().map_or(0, BTreeMap::len)
    }
}
