//! The StatefulSet controller (kube's `stateful_set_control.go`, trimmed):
//! pods `NAME-ORDINAL` with a stable hostname (and `subdomain` from
//! `serviceName`), each with its own claims made from `volumeClaimTemplates`
//! before the pod, so a pod made again finds its data.
//!
//! - `OrderedReady` (the default): ordinals are made one at a time in order,
//!   each once every one before it is Running and Ready; surplus pods go
//!   from the highest ordinal, one at a time, only while the others are
//!   healthy. `Parallel`: all at once.
//! - Revisions are ControllerRevisions `NAME-HASH` whose data is the patch
//!   `kubectl rollout undo` applies (`{"spec":{"template":{…,"$patch":"replace"}}}`).
//!   A `RollingUpdate` deletes, from the highest ordinal down to the
//!   partition, one pod at a time whose revision is not the update
//!   revision, once the others are Running and Ready; below the partition
//!   pods are made from the current revision. `OnDelete` replaces nothing.
//! - Claims stay when a pod or the set goes (`whenDeleted: Retain`, the
//!   default); with `whenDeleted: Delete` the set owns them and they go with
//!   it. (`whenScaled: Delete` is not implemented: claims stay.)

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, PodTemplateSpec, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use serde_json::{Value, json};

use super::events;
use super::podutil::{self, controller_ref};
use super::runner::{Action, Reconcile};
use crate::client::{Client, Kind};
use crate::controllers::{ControllerError, ignore_not_found};
use crate::selector::LabelSelector;
use crate::store::{Key, WatchEvent};

pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";
pub const REVISION_LABEL: &str = "controller-revision-hash";
const HASH_LABEL: &str = "controller.kubernetes.io/hash";
const COMPONENT: &str = "statefulset-controller";

/// The ordinal of a pod named `SET-N` (canonical decimal only).
pub fn ordinal_of(set: &str, pod: &str) -> Option<i32> {
    let n = pod.strip_prefix(set)?.strip_prefix('-')?;
    let v: i32 = n.parse().ok()?;
    (v >= 0 && v.to_string() == n).then_some(v)
}

/// What a revision holds: the patch that puts `template` back.
pub fn revision_data(template: &PodTemplateSpec) -> Value {
    let mut t = serde_json::to_value(template).unwrap_or_else(|_| json!({}));
    if let Some(m) = t.as_object_mut() {
        m.insert("$patch".into(), json!("replace"));
    }
    json!({"spec": {"template": t}})
}

/// The template a revision holds.
pub fn template_of(rev: &ControllerRevision) -> Option<PodTemplateSpec> {
    let mut t = rev.data.as_ref()?.0.pointer("/spec/template")?.clone();
    t.as_object_mut()?.remove("$patch");
    serde_json::from_value(t).ok()
}

fn claim_name(template: &str, set: &str, ord: i32) -> String {
    format!("{template}-{set}-{ord}")
}

/// Pod `ord` of `set` from `template` (of revision `revision`).
pub fn new_pod(set: &StatefulSet, template: &PodTemplateSpec, revision: &str, ord: i32) -> Pod {
    let set_name = set.metadata.name.clone().unwrap_or_default();
    let name = format!("{set_name}-{ord}");
    let spec = set.spec.clone().unwrap_or_default();
    let tmeta = template.metadata.clone().unwrap_or_default();
    let mut labels = tmeta.labels.unwrap_or_default();
    labels.insert(POD_NAME_LABEL.into(), name.clone());
    labels.insert(POD_INDEX_LABEL.into(), ord.to_string());
    labels.insert(REVISION_LABEL.into(), revision.to_owned());
    let mut pod_spec = template.spec.clone().unwrap_or_default();
    pod_spec.hostname = Some(name.clone());
    if let Some(svc) = spec.service_name.filter(|s| !s.is_empty()) {
        pod_spec.subdomain = Some(svc);
    }
    let volumes = pod_spec.volumes.get_or_insert_with(Vec::new);
    for t in spec.volume_claim_templates.iter().flatten() {
        let tname = t.metadata.name.clone().unwrap_or_default();
        volumes.retain(|v| v.name != tname);
        volumes.push(Volume {
            name: tname.clone(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim_name(&tname, &set_name, ord),
                read_only: None,
            }),
            ..Default::default()
        });
    }
    Pod {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: set.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: tmeta.annotations,
            owner_references: Some(vec![podutil::owner_ref("apps/v1", "StatefulSet", &set.metadata)]),
            ..Default::default()
        },
        spec: Some(pod_spec),
        status: None,
    }
}

/// The claims of pod `ord`, from the set's templates.
pub fn new_claims(set: &StatefulSet, ord: i32) -> Vec<PersistentVolumeClaim> {
    let set_name = set.metadata.name.clone().unwrap_or_default();
    let spec = set.spec.clone().unwrap_or_default();
    let owned = spec.persistent_volume_claim_retention_policy.and_then(|p| p.when_deleted).as_deref() == Some("Delete");
    let sel_labels = spec.selector.match_labels.clone().unwrap_or_default();
    spec.volume_claim_templates
        .into_iter()
        .flatten()
        .map(|t| {
            // The selector's labels win, as kube's claim identity has it.
            let mut labels = t.metadata.labels.clone().unwrap_or_default();
            labels.extend(sel_labels.clone());
            let mut owner = podutil::owner_ref("apps/v1", "StatefulSet", &set.metadata);
            owner.controller = None;
            owner.block_owner_deletion = None;
            PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some(claim_name(t.metadata.name.as_deref().unwrap_or_default(), &set_name, ord)),
                    namespace: set.metadata.namespace.clone(),
                    labels: Some(labels),
                    annotations: t.metadata.annotations.clone(),
                    owner_references: owned.then(|| vec![owner]),
                    ..Default::default()
                },
                spec: t.spec.clone(),
                status: None,
            }
        })
        .collect()
}

fn running_and_ready(p: &Pod) -> bool {
    podutil::phase(p) == "Running" && podutil::is_ready(p)
}

fn terminating(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_some()
}

fn revision_label(p: &Pod) -> Option<&str> {
    p.metadata.labels.as_ref()?.get(REVISION_LABEL).map(String::as_str)
}

fn selector(s: &StatefulSet) -> Option<LabelSelector> {
    s.spec.as_ref().and_then(|s| LabelSelector::from_k8s(&s.selector).ok()).filter(|s| !s.is_empty())
}

pub struct StatefulSetController {
    client: Client,
    sts_id: &'static str,
    pod_id: &'static str,
    rev_id: &'static str,
}

impl StatefulSetController {
    pub fn new(client: Client) -> Result<Self, ControllerError> {
        Ok(StatefulSetController {
            sts_id: StatefulSet::rt()?.id,
            pod_id: Pod::rt()?.id,
            rev_id: ControllerRevision::rt()?.id,
            client,
        })
    }

    /// The set's revisions (oldest first), with the update revision made or
    /// renumbered to be the newest, as kube does on a rollback.
    fn revisions(&self, set: &StatefulSet) -> Result<(Vec<ControllerRevision>, String), ControllerError> {
        let ns = set.metadata.namespace.as_deref().unwrap_or_default();
        let uid = set.metadata.uid.as_deref().unwrap_or_default();
        let mut revs: Vec<ControllerRevision> = self
            .client
            .list::<ControllerRevision>(Some(ns))?
            .into_iter()
            .filter(|r| controller_ref(&r.metadata).is_some_and(|o| o.uid == uid))
            .collect();
        revs.sort_by_key(|r| r.revision);
        let template = set.spec.clone().unwrap_or_default().template;
        let hash = super::deployment::template_hash(&template);
        let name = format!("{}-{hash}", set.metadata.name.as_deref().unwrap_or_default());
        let max = revs.last().map_or(0, |r| r.revision);
        match revs.iter().position(|r| r.metadata.name.as_deref() == Some(&name)) {
            Some(i) if revs[i].revision == max => {}
            Some(i) => {
                let mut r = revs.remove(i);
                r.revision = max + 1;
                revs.push(self.client.replace(&r)?);
            }
            None => {
                let mut labels = template.metadata.as_ref().and_then(|m| m.labels.clone()).unwrap_or_default();
                labels.insert(HASH_LABEL.into(), hash);
                let rev = ControllerRevision {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        namespace: set.metadata.namespace.clone(),
                        labels: Some(labels),
                        // kubectl rollout history's CHANGE-CAUSE comes from here.
                        annotations: set.metadata.annotations.clone(),
                        owner_references: Some(vec![podutil::owner_ref("apps/v1", "StatefulSet", &set.metadata)]),
                        ..Default::default()
                    },
                    data: Some(RawExtension(revision_data(&template))),
                    revision: max + 1,
                };
                match self.client.create(&rev) {
                    Ok(r) => revs.push(r),
                    // Left by a set deleted with its dependents orphaned: adopted.
                    Err(ControllerError::Conflict(e)) => {
                        let ns = set.metadata.namespace.as_deref().unwrap_or_default();
                        let Some(mut old) = self.client.get::<ControllerRevision>(ns, &name)? else {
                            return Err(ControllerError::Conflict(e));
                        };
                        if controller_ref(&old.metadata).is_some() {
                            return Err(ControllerError::Conflict(e));
                        }
                        old.metadata.owner_references.get_or_insert_with(Vec::new).push(podutil::owner_ref(
                            "apps/v1",
                            "StatefulSet",
                            &set.metadata,
                        ));
                        old.revision = max + 1;
                        revs.push(self.client.replace(&old)?);
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok((revs, name))
    }

    /// Owned pods (adopting orphans that match and are named like ours,
    /// releasing ours that stopped matching).
    fn pods(&self, set: &StatefulSet, sel: &LabelSelector) -> Result<Vec<Pod>, ControllerError> {
        let ns = set.metadata.namespace.as_deref().unwrap_or_default();
        let name = set.metadata.name.as_deref().unwrap_or_default();
        let uid = set.metadata.uid.clone().unwrap_or_default();
        let mut owned = Vec::new();
        for mut pod in self.client.list::<Pod>(Some(ns))? {
            let matches = sel.matches(&json!({"metadata": {"labels": pod.metadata.labels}}));
            let pod_name = pod.metadata.name.clone().unwrap_or_default();
            match controller_ref(&pod.metadata).map(|r| r.uid.clone()) {
                Some(owner) if owner == uid => {
                    if matches {
                        owned.push(pod);
                    } else {
                        if let Some(refs) = pod.metadata.owner_references.as_mut() {
                            refs.retain(|r| r.uid != uid);
                        }
                        ignore_not_found(self.client.replace(&pod))?;
                    }
                }
                None if matches && !terminating(&pod) && ordinal_of(name, &pod_name).is_some() => {
                    pod.metadata.owner_references.get_or_insert_with(Vec::new).push(podutil::owner_ref(
                        "apps/v1",
                        "StatefulSet",
                        &set.metadata,
                    ));
                    owned.push(self.client.replace(&pod)?);
                }
                _ => {}
            }
        }
        Ok(owned)
    }

    fn event(&self, set: &StatefulSet, warning: bool, reason: &str, msg: &str) {
        events::record(&self.client, COMPONENT, ("apps/v1", "StatefulSet", &set.metadata), warning, reason, msg);
    }

    fn delete_pod(&self, set: &StatefulSet, pod: &Pod) -> Result<(), ControllerError> {
        let (ns, name) =
            (pod.metadata.namespace.as_deref().unwrap_or_default(), pod.metadata.name.as_deref().unwrap_or_default());
        ignore_not_found(self.client.delete::<Pod>(ns, name, pod.metadata.uid.as_deref()))?;
        let set_name = set.metadata.name.as_deref().unwrap_or_default();
        self.event(set, false, "SuccessfulDelete", &format!("delete Pod {name} in StatefulSet {set_name} successful"));
        Ok(())
    }

    fn create_pod(&self, set: &StatefulSet, pod: &Pod, ord: i32) -> Result<bool, ControllerError> {
        let set_name = set.metadata.name.as_deref().unwrap_or_default();
        let pod_name = pod.metadata.name.as_deref().unwrap_or_default();
        let ns = set.metadata.namespace.as_deref().unwrap_or_default();
        for claim in new_claims(set, ord) {
            let cname = claim.metadata.name.clone().unwrap_or_default();
            match self.client.get::<PersistentVolumeClaim>(ns, &cname)? {
                // Being deleted: the pod waits for it to go, then gets a new one.
                Some(c) if c.metadata.deletion_timestamp.is_some() => return Ok(false),
                Some(_) => {}
                None => match self.client.create(&claim) {
                    Ok(_) => self.event(
                        set,
                        false,
                        "SuccessfulCreate",
                        &format!("create Claim {cname} Pod {pod_name} in StatefulSet {set_name} success"),
                    ),
                    Err(ControllerError::Conflict(_)) => {}
                    Err(e) => {
                        let msg = format!(
                            "create Claim {cname} for Pod {pod_name} in StatefulSet {set_name} failed error: {e}"
                        );
                        self.event(set, true, "FailedCreate", &msg);
                        return Err(e);
                    }
                },
            }
        }
        match self.client.create(pod) {
            Ok(_) => {
                self.event(
                    set,
                    false,
                    "SuccessfulCreate",
                    &format!("create Pod {pod_name} in StatefulSet {set_name} successful"),
                );
                Ok(true)
            }
            Err(ControllerError::Conflict(_)) => Ok(false), // still there (being deleted)
            Err(e) => {
                let msg = format!("create Pod {pod_name} in StatefulSet {set_name} failed error: {e}");
                self.event(set, true, "FailedCreate", &msg);
                Err(e)
            }
        }
    }

    fn sync(&self, set: &StatefulSet) -> Result<(), ControllerError> {
        let Some(sel) = selector(set) else { return Ok(()) };
        let spec = set.spec.clone().unwrap_or_default();
        let name = set.metadata.name.clone().unwrap_or_default();
        let (revs, update_rev) = self.revisions(set)?;
        let current_rev = set
            .status
            .as_ref()
            .and_then(|s| s.current_revision.clone())
            .filter(|c| revs.iter().any(|r| r.metadata.name.as_deref() == Some(c)))
            .unwrap_or_else(|| update_rev.clone());
        let current_template = revs
            .iter()
            .find(|r| r.metadata.name.as_deref() == Some(&current_rev))
            .and_then(template_of)
            .unwrap_or_else(|| spec.template.clone());
        let pods = self.pods(set, &sel)?;

        let start = spec.ordinals.as_ref().and_then(|o| o.start).unwrap_or(0).max(0);
        let replicas = spec.replicas.unwrap_or(1).max(0);
        let end = start.saturating_add(replicas);
        let monotonic = spec.pod_management_policy.as_deref() != Some("Parallel");
        let rolling = spec.update_strategy.as_ref().and_then(|u| u.type_.as_deref()) != Some("OnDelete");
        let partition = spec
            .update_strategy
            .as_ref()
            .and_then(|u| u.rolling_update.as_ref())
            .and_then(|r| r.partition)
            .unwrap_or(0)
            .max(0);
        let mut in_range: BTreeMap<i32, &Pod> = BTreeMap::new();
        let mut condemned: Vec<(i32, &Pod)> = Vec::new();
        for p in &pods {
            match ordinal_of(&name, p.metadata.name.as_deref().unwrap_or_default()) {
                Some(o) if o >= start && o < end => {
                    in_range.insert(o, p);
                }
                o => condemned.push((o.unwrap_or(i32::MAX), p)),
            }
        }
        condemned.sort_by_key(|(o, _)| std::cmp::Reverse(*o));

        let mut waiting = false;
        for ord in start..end {
            match in_range.get(&ord) {
                None => {
                    // Below the partition a pod is made at the current revision.
                    let (tmpl, rev) = if rolling && ord - start < partition {
                        (&current_template, current_rev.as_str())
                    } else {
                        (&spec.template, update_rev.as_str())
                    };
                    self.create_pod(set, &new_pod(set, tmpl, rev, ord), ord)?;
                    waiting = true;
                    if monotonic {
                        break;
                    }
                }
                Some(p) if !terminating(p) && matches!(podutil::phase(p), "Succeeded" | "Failed") => {
                    // A pod that stopped for good is made again.
                    self.delete_pod(set, p)?;
                    waiting = true;
                    if monotonic {
                        break;
                    }
                }
                Some(p) if terminating(p) || !running_and_ready(p) => {
                    waiting = true;
                    if monotonic {
                        break;
                    }
                }
                Some(_) => {}
            }
        }
        // Surplus pods, highest first: OrderedReady one at a time, and only
        // while the rest are healthy.
        for (_, p) in &condemned {
            if terminating(p) {
                if monotonic {
                    return Ok(());
                }
                continue;
            }
            if monotonic && waiting {
                return Ok(());
            }
            self.delete_pod(set, p)?;
            if monotonic {
                return Ok(());
            }
        }
        if !rolling || waiting {
            return Ok(());
        }
        // Rolling update: highest ordinal down to the partition, one pod at a time.
        for ord in (start.saturating_add(partition)..end).rev() {
            let Some(p) = in_range.get(&ord) else { return Ok(()) };
            if revision_label(p) != Some(update_rev.as_str()) {
                if !terminating(p) {
                    self.delete_pod(set, p)?;
                }
                return Ok(());
            }
            if !running_and_ready(p) {
                return Ok(());
            }
        }
        Ok(())
    }

    fn write_status(&self, key: &Key) -> Result<(), ControllerError> {
        let Some(set) = self.client.get::<StatefulSet>(&key.namespace, &key.name)? else { return Ok(()) };
        let Some(sel) = selector(&set) else { return Ok(()) };
        let spec = set.spec.clone().unwrap_or_default();
        let (revs, update_rev) = self.revisions(&set)?;
        let old = set.status.clone().unwrap_or_default();
        let mut current_rev = old
            .current_revision
            .clone()
            .filter(|c| revs.iter().any(|r| r.metadata.name.as_deref() == Some(c)))
            .unwrap_or_else(|| update_rev.clone());
        let pods: Vec<Pod> = self.pods(&set, &sel)?.into_iter().filter(|p| !terminating(p)).collect();
        let min_ready = i64::from(spec.min_ready_seconds.unwrap_or(0));
        let now = jiff::Timestamp::now().as_second();
        let count = |f: &dyn Fn(&Pod) -> bool| i32::try_from(pods.iter().filter(|p| f(p)).count()).unwrap_or(i32::MAX);
        let replicas = count(&|_| true);
        let ready = count(&|p| running_and_ready(p));
        let available = count(&|p| running_and_ready(p) && podutil::is_available(p, min_ready, now));
        let updated = count(&|p| revision_label(p) == Some(update_rev.as_str()));
        let mut current = count(&|p| revision_label(p) == Some(current_rev.as_str()));
        // A finished rolling update: the update revision becomes current.
        let rolling = spec.update_strategy.as_ref().and_then(|u| u.type_.as_deref()) != Some("OnDelete");
        if rolling && updated == replicas && ready == replicas && replicas == spec.replicas.unwrap_or(1) {
            current_rev = update_rev.clone();
            current = updated;
        }
        let status = StatefulSetStatus {
            observed_generation: set.metadata.generation,
            replicas,
            ready_replicas: Some(ready),
            available_replicas: Some(available),
            current_replicas: Some(current),
            updated_replicas: Some(updated),
            current_revision: Some(current_rev.clone()),
            update_revision: Some(update_rev),
            collision_count: Some(old.collision_count.unwrap_or(0)),
            conditions: old.conditions.clone(),
        };
        if set.status.as_ref() != Some(&status) {
            let mut s = set.clone();
            s.status = Some(status);
            ignore_not_found(self.client.replace_status(&s))?;
        }
        self.prune_history(&set, revs, &current_rev)
    }

    /// Keeps `revisionHistoryLimit` old revisions no live pod uses.
    fn prune_history(
        &self,
        set: &StatefulSet,
        revs: Vec<ControllerRevision>,
        current: &str,
    ) -> Result<(), ControllerError> {
        let limit =
            usize::try_from(set.spec.as_ref().and_then(|s| s.revision_history_limit).unwrap_or(10)).unwrap_or(0);
        let ns = set.metadata.namespace.as_deref().unwrap_or_default();
        let Some(newest) = revs.last().and_then(|r| r.metadata.name.clone()) else { return Ok(()) };
        let used: Vec<String> =
            self.client.list::<Pod>(Some(ns))?.iter().filter_map(|p| revision_label(p).map(str::to_owned)).collect();
        let old: Vec<&ControllerRevision> = revs
            .iter()
            .filter(|r| {
                let n = r.metadata.name.as_deref().unwrap_or_default();
                n != newest && n != current && !used.iter().any(|u| u == n)
            })
            .collect();
        for r in old.iter().take(old.len().saturating_sub(limit)) {
            let n = r.metadata.name.as_deref().unwrap_or_default();
            ignore_not_found(self.client.delete::<ControllerRevision>(ns, n, r.metadata.uid.as_deref()))?;
        }
        Ok(())
    }
}

impl Reconcile for StatefulSetController {
    fn name(&self) -> &'static str {
        "statefulset"
    }

    fn keys_for(&mut self, ev: &WatchEvent, out: &mut Vec<Key>) {
        if ev.resource == self.sts_id {
            out.push(Key::new(self.sts_id, &ev.namespace, &ev.name));
        } else if ev.resource == self.pod_id || ev.resource == self.rev_id {
            let mut orphan = false;
            for o in std::iter::once(&ev.object).chain(ev.prev.as_ref()) {
                match podutil::controller_of(o) {
                    Some(r) if r["kind"] == "StatefulSet" => {
                        out.push(Key::new(self.sts_id, &ev.namespace, r["name"].as_str().unwrap_or_default()))
                    }
                    Some(_) => {}
                    None => orphan = true,
                }
            }
            if orphan && ev.resource == self.pod_id {
                for s in self.client.list::<StatefulSet>(Some(&ev.namespace)).unwrap_or_default() {
                    let set = s.metadata.name.as_deref().unwrap_or_default();
                    if ordinal_of(set, &ev.name).is_some() && selector(&s).is_some_and(|sel| sel.matches(&ev.object)) {
                        out.push(Key::new(self.sts_id, &ev.namespace, set));
                    }
                }
            }
        }
    }

    fn all_keys(&mut self) -> Result<Vec<Key>, ControllerError> {
        self.client.keys::<StatefulSet>()
    }

    fn reconcile(&mut self, key: &Key) -> Result<Action, ControllerError> {
        let Some(set) = self.client.get::<StatefulSet>(&key.namespace, &key.name)? else { return Ok(Action::Done) };
        if set.metadata.deletion_timestamp.is_some() {
            return Ok(Action::Done);
        }
        self.sync(&set)?;
        self.write_status(key)?;
        // minReadySeconds: look again when a ready pod turns available.
        match set.spec.as_ref().and_then(|s| s.min_ready_seconds).filter(|m| *m > 0) {
            Some(m) => Ok(Action::RequeueAfter(std::time::Duration::from_secs(u64::try_from(m).unwrap_or(1)))),
            None => Ok(Action::Done),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set() -> StatefulSet {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "u-1"},
            "spec": {
                "serviceName": "web",
                "replicas": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {
                    "containers": [{"name": "c", "image": "busybox"}],
                    "volumes": [{"name": "data", "emptyDir": {}}]}},
                "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Delete", "whenScaled": "Retain"},
                "volumeClaimTemplates": [{"metadata": {"name": "data", "labels": {"tier": "db"}},
                    "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]
            }
        }))
        .expect("set")
    }

    #[test]
    fn ordinals_are_canonical_numbers_after_the_set_name() {
        assert_eq!(ordinal_of("web", "web-0"), Some(0));
        assert_eq!(ordinal_of("web", "web-12"), Some(12));
        for bad in ["web-01", "web-", "web--1", "webx-1", "web-1a", "web"] {
            assert_eq!(ordinal_of("web", bad), None, "{bad}");
        }
    }

    #[test]
    fn a_pod_has_its_identity_and_its_own_claims() {
        let s = set();
        let tmpl = s.spec.as_ref().map(|s| s.template.clone()).unwrap_or_default();
        let p = new_pod(&s, &tmpl, "web-abc", 1);
        assert_eq!(p.metadata.name.as_deref(), Some("web-1"));
        let labels = p.metadata.labels.clone().unwrap_or_default();
        assert_eq!(labels.get(POD_NAME_LABEL).map(String::as_str), Some("web-1"));
        assert_eq!(labels.get(POD_INDEX_LABEL).map(String::as_str), Some("1"));
        assert_eq!(labels.get(REVISION_LABEL).map(String::as_str), Some("web-abc"));
        assert_eq!(labels.get("app").map(String::as_str), Some("web"));
        let spec = p.spec.clone().unwrap_or_default();
        assert_eq!((spec.hostname.as_deref(), spec.subdomain.as_deref()), (Some("web-1"), Some("web")));
        let vols = spec.volumes.unwrap_or_default();
        assert_eq!(vols.len(), 1, "the claim replaces the template's volume of that name");
        assert_eq!(vols[0].persistent_volume_claim.as_ref().map(|c| c.claim_name.as_str()), Some("data-web-1"));
        assert_eq!(controller_ref(&p.metadata).map(|r| r.uid.as_str()), Some("u-1"));

        let claims = new_claims(&s, 1);
        assert_eq!(claims.len(), 1);
        assert_eq!(claims[0].metadata.name.as_deref(), Some("data-web-1"));
        let cl = claims[0].metadata.labels.clone().unwrap_or_default();
        assert_eq!((cl.get("app").map(String::as_str), cl.get("tier").map(String::as_str)), (Some("web"), Some("db")));
        let owner = claims[0].metadata.owner_references.clone().unwrap_or_default();
        assert!(owner.len() == 1 && owner[0].controller.is_none(), "whenDeleted Delete: owned, not controlled");
    }

    #[test]
    fn revision_data_is_the_patch_kubectl_applies_and_reads_back() {
        let s = set();
        let tmpl = s.spec.as_ref().map(|s| s.template.clone()).unwrap_or_default();
        let data = revision_data(&tmpl);
        assert_eq!(data["spec"]["template"]["$patch"], "replace");
        assert_eq!(data["spec"]["template"]["metadata"]["labels"]["app"], "web");
        // Keys sorted, as Go's map encoding (kubectl compares bytes).
        let text = serde_json::to_string(&data).unwrap_or_default();
        assert!(text.starts_with(r#"{"spec":{"template":{"$patch":"replace","metadata""#), "{text}");
        let rev = ControllerRevision { data: Some(RawExtension(data)), ..Default::default() };
        assert_eq!(template_of(&rev), Some(tmpl));
    }
}
