//! CustomResourceDefinitions, as apiextensions' naming, establishing and
//! finalizer controllers keep them: a CRD whose names conflict with no
//! other kind is served (its kinds join the store's registry) and marked
//! `NamesAccepted` and `Established`; a deleted CRD is held by its cleanup
//! finalizer until every object of its kind is gone, and then stops being
//! served.

use std::time::Duration;

use serde_json::{Value, json};

use super::runner::{Action, Reconcile};
use crate::client::Client;
use crate::controllers::ControllerError;
use crate::crd::{self, CLEANUP_FINALIZER};
use crate::meta;
use crate::store::{Key, WatchEvent};

/// How often a deleted CRD looks again at the objects still held by their
/// own finalizers.
const CLEANUP_RECHECK: Duration = Duration::from_secs(2);

pub struct CrdController {
    client: Client,
}

impl CrdController {
    pub fn new(client: Client) -> Self {
        CrdController { client }
    }

    fn rt() -> Result<&'static crate::resources::ResourceType, ControllerError> {
        crate::resources::by_kind(crd::GROUP, "CustomResourceDefinition")
            .ok_or(ControllerError::NotServed { kind: "CustomResourceDefinition" })
    }

    /// A name of `crd` that another kind of its group already has.
    fn conflict(&self, crd: &Value) -> Result<Option<(&'static str, String)>, ControllerError> {
        let name = meta::get_str(crd, "name").unwrap_or_default();
        let spec = &crd["spec"];
        let group = spec["group"].as_str().unwrap_or_default();
        let names = &spec["names"];
        let (plural, kind) = (names["plural"].as_str().unwrap_or_default(), names["kind"].as_str().unwrap_or_default());
        // A built-in kind of the same group.
        if crate::resources::RESOURCES.iter().any(|r| r.group == group && r.plural == plural) {
            return Ok(Some(("PluralConflict", plural.to_owned())));
        }
        if crate::resources::RESOURCES.iter().any(|r| r.group == group && r.kind == kind) {
            return Ok(Some(("KindConflict", kind.to_owned())));
        }
        let (others, _) = self.client.store().list(crd::ID, None, None)?;
        for o in others.iter().filter(|o| meta::get_str(o, "name") != Some(name) && o["spec"]["group"] == group) {
            let accepted = &o["status"]["acceptedNames"];
            if accepted["kind"] == kind {
                return Ok(Some(("KindConflict", kind.to_owned())));
            }
            let short = |v: &Value| -> Vec<String> {
                v["shortNames"].as_array().into_iter().flatten().filter_map(|s| s.as_str().map(str::to_owned)).collect()
            };
            if let Some(s) = short(names).into_iter().find(|s| short(accepted).contains(s)) {
                return Ok(Some(("ShortNamesConflict", s)));
            }
        }
        Ok(None)
    }

    /// Writes `conditions` (and `acceptedNames` when given) to the CRD's
    /// status where they differ; a condition keeps its transition time
    /// while its status holds.
    fn set_status(
        &self,
        name: &str,
        conditions: &[(&str, &str, &str, &str)],
        accepted: Option<Value>,
    ) -> Result<(), ControllerError> {
        let rt = Self::rt()?;
        let Some(cur) = self.client.get_raw(rt, "", name)? else { return Ok(()) };
        let mut status = cur.get("status").cloned().unwrap_or_else(|| json!({}));
        let mut list: Vec<Value> = status["conditions"].as_array().cloned().unwrap_or_default();
        for (ty, st, reason, message) in conditions {
            let old = list.iter().position(|c| c["type"] == *ty);
            let since = match old.map(|i| &list[i]) {
                Some(c) if c["status"] == *st => c["lastTransitionTime"].clone(),
                _ => json!(meta::now()),
            };
            let c =
                json!({"type": ty, "status": st, "reason": reason, "message": message, "lastTransitionTime": since});
            match old {
                Some(i) => list[i] = c,
                None => list.push(c),
            }
        }
        status["conditions"] = json!(list);
        if let Some(a) = accepted {
            status["acceptedNames"] = a;
        }
        if cur.get("status") == Some(&status) {
            return Ok(());
        }
        self.client.update_status_raw(rt, "", name, |o| o["status"] = status)?;
        Ok(())
    }

    /// Deletes the CRD's objects; `true` once none is left.
    fn clean_up(&self, crd: &Value) -> Result<bool, ControllerError> {
        let name = meta::get_str(crd, "name").unwrap_or_default();
        let stored = self.client.store().kinds().stored();
        let Some(rt) = stored.into_iter().find(|r| r.custom.as_ref().is_some_and(|c| c.crd == name)) else {
            // Never served: nothing was stored under it.
            return Ok(true);
        };
        let keys = self.client.keys_raw(rt, None)?;
        if keys.is_empty() {
            return Ok(true);
        }
        self.client.delete_many(&keys)?;
        Ok(self.client.keys_raw(rt, None)?.is_empty())
    }
}

impl Reconcile for CrdController {
    fn name(&self) -> &'static str {
        "customresourcedefinition"
    }

    fn keys_for(&mut self, ev: &WatchEvent, out: &mut Vec<Key>) {
        if ev.resource == crd::ID {
            out.push(Key::new(crd::ID, "", &ev.name));
            // A CRD refused for a name another held gets its names once that
            // one goes or changes: the group's other CRDs look again.
            let group = ev.name.split_once('.').map_or("", |(_, g)| g);
            if let Ok((others, _)) = self.client.store().list(crd::ID, None, None) {
                for o in others.iter().filter(|o| o["spec"]["group"] == group) {
                    let name = meta::get_str(o, "name").unwrap_or_default();
                    if name != ev.name && !crd::established(o) {
                        out.push(Key::new(crd::ID, "", name));
                    }
                }
            }
        }
    }

    fn all_keys(&mut self) -> Result<Vec<Key>, ControllerError> {
        self.client.keys_raw(Self::rt()?, None)
    }

    fn reconcile(&mut self, key: &Key) -> Result<Action, ControllerError> {
        let kinds = self.client.store().kinds();
        let Some(crd) = self.client.get_raw(Self::rt()?, "", &key.name)? else {
            kinds.set(&key.name, Vec::new());
            return Ok(Action::Done);
        };
        if meta::get(&crd, "deletionTimestamp").is_some() {
            self.set_status(
                &key.name,
                &[("Terminating", "True", "InstanceDeletionInProgress", "CustomResource deletion is in progress")],
                None,
            )?;
            if !self.clean_up(&crd)? {
                return Ok(Action::RequeueAfter(CLEANUP_RECHECK));
            }
            self.set_status(
                &key.name,
                &[("Terminating", "False", "InstanceDeletionCompleted", "removed all instances")],
                None,
            )?;
            kinds.set(&key.name, Vec::new());
            tracing::info!(crd = %key.name, "custom resources removed; no longer served");
            let rt = Self::rt()?;
            self.client.update_raw(rt, "", &key.name, |o| {
                if let Some(f) = o.pointer_mut("/metadata/finalizers").and_then(Value::as_array_mut) {
                    f.retain(|f| f != CLEANUP_FINALIZER);
                }
            })?;
            return Ok(Action::Done);
        }
        let has_finalizer = crd
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| f.iter().any(|f| f == CLEANUP_FINALIZER));
        if !has_finalizer {
            self.client.update_raw(Self::rt()?, "", &key.name, |o| {
                let list = meta::meta_mut(o).entry("finalizers").or_insert_with(|| json!([]));
                if let Some(l) = list.as_array_mut() {
                    l.push(json!(CLEANUP_FINALIZER));
                }
            })?;
        }
        if let Some((reason, taken)) = self.conflict(&crd)? {
            let message = format!("{taken:?} is already in use");
            tracing::warn!(crd = %key.name, reason, taken, "custom resource names refused");
            kinds.set(&key.name, Vec::new());
            self.set_status(
                &key.name,
                &[
                    ("NamesAccepted", "False", reason, &message),
                    ("Established", "False", "NotAccepted", "not all names are accepted"),
                ],
                None,
            )?;
            return Ok(Action::Done);
        }
        // Served before it is said to be: a client that waits for
        // `Established` may create objects at once.
        kinds.set(&key.name, crd::types(kinds, &crd));
        let mut accepted = crd["spec"]["names"].clone();
        if accepted["singular"].as_str().is_none_or(str::is_empty) {
            accepted["singular"] = json!(accepted["kind"].as_str().unwrap_or_default().to_lowercase());
        }
        if accepted["listKind"].as_str().is_none_or(str::is_empty) {
            accepted["listKind"] = json!(format!("{}List", accepted["kind"].as_str().unwrap_or_default()));
        }
        self.set_status(
            &key.name,
            &[
                ("NamesAccepted", "True", "NoConflicts", "no conflicts found"),
                ("Established", "True", "InitialNamesAccepted", "the initial names have been accepted"),
            ],
            Some(accepted),
        )?;
        Ok(Action::Done)
    }
}
