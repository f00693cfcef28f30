//! The Deployment controller: one ReplicaSet per pod template (named by the
//! `pod-template-hash`), rolled by `RollingUpdate` (maxSurge/maxUnavailable,
//! counting only available pods) or `Recreate`, with revision annotations
//! for `kubectl rollout history/undo`, old ReplicaSets pruned past
//! `revisionHistoryLimit`, and the status fields `kubectl rollout status`
//! reads.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetSpec};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::events;
use super::podutil::{self, controller_ref};
use super::runner::{Action, Reconcile};
use crate::client::{Client, Kind};
use crate::controllers::ControllerError;
use crate::selector::LabelSelector as Selector;
use crate::store::{Key, WatchEvent};

pub const HASH_LABEL: &str = "pod-template-hash";
pub const REVISION: &str = "deployment.kubernetes.io/revision";
const DESIRED: &str = "deployment.kubernetes.io/desired-replicas";
const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
const CHANGE_CAUSE: &str = "kubernetes.io/change-cause";

pub struct DeploymentController {
    client: Client,
    ids: (&'static str, &'static str, &'static str),
}

impl DeploymentController {
    pub fn new(client: Client) -> Result<Self, ControllerError> {
        Ok(DeploymentController { client, ids: (Deployment::rt()?.id, ReplicaSet::rt()?.id, Pod::rt()?.id) })
    }
}

/// The template's hash, as Kubernetes names it: FNV-1a over the canonical
/// JSON of the template, in the "safe" alphabet (no vowels, no 0/1/3).
pub fn template_hash(t: &PodTemplateSpec) -> String {
    let mut t = t.clone();
    if let Some(l) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        l.remove(HASH_LABEL);
    }
    let text = serde_json::to_string(&t).unwrap_or_default();
    let mut h: u32 = 0x811c_9dc5;
    for b in text.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    h.to_string().bytes().map(|d| ALPHABET[usize::from(d - b'0') % ALPHABET.len()] as char).collect()
}

/// The template without the hash label, for "is this the same template".
fn bare(t: Option<&PodTemplateSpec>) -> Option<PodTemplateSpec> {
    let mut t = t?.clone();
    if let Some(l) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        l.remove(HASH_LABEL);
    }
    Some(t)
}

/// Resolves an int-or-percent against `total` (percent rounded up or down).
fn scaled(v: Option<&IntOrString>, total: i32, round_up: bool) -> i32 {
    match v {
        None => 0,
        Some(IntOrString::Int(i)) => *i,
        Some(IntOrString::String(s)) => {
            let pct: i64 = s.trim_end_matches('%').parse().unwrap_or(0);
            let x = pct * i64::from(total);
            let v = if round_up { (x + 99) / 100 } else { x / 100 };
            i32::try_from(v).unwrap_or(i32::MAX)
        }
    }
}

fn replicas_of(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

fn available_of(rs: &ReplicaSet) -> i32 {
    rs.status.as_ref().and_then(|s| s.available_replicas).unwrap_or(0)
}

/// The `maxSurge` of a rolling Deployment, in pods (0 for Recreate).
fn max_surge(d: &Deployment) -> i32 {
    let spec = d.spec.as_ref();
    let desired = spec.and_then(|s| s.replicas).unwrap_or(1);
    let strategy = spec.and_then(|s| s.strategy.as_ref());
    if strategy.and_then(|s| s.type_.as_deref()) == Some("Recreate") {
        return 0;
    }
    let ru = strategy.and_then(|s| s.rolling_update.as_ref());
    scaled(ru.and_then(|r| r.max_surge.as_ref()), desired, true)
}

/// Kubernetes' `getReplicaSetFraction`: the replicas `rs` gains (or loses)
/// when the Deployment's size changes, in proportion to its share of the
/// size it was last scaled for (its `max-replicas` annotation).
fn fraction(rs: &ReplicaSet, d: &Deployment) -> i32 {
    let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    if desired == 0 {
        return -replicas_of(rs);
    }
    let total = desired + max_surge(d);
    let annotated = rs
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(MAX_REPLICAS))
        .and_then(|v| v.parse::<i32>().ok())
        .unwrap_or_else(|| d.status.as_ref().and_then(|s| s.replicas).unwrap_or(0));
    if annotated <= 0 {
        return 0;
    }
    let size = f64::from(replicas_of(rs)) * f64::from(total) / f64::from(annotated);
    size.round() as i32 - replicas_of(rs)
}

fn revision_of(meta: &ObjectMeta) -> i64 {
    meta.annotations.as_ref().and_then(|a| a.get(REVISION)).and_then(|r| r.parse().ok()).unwrap_or(0)
}

fn created(rs: &ReplicaSet) -> i64 {
    rs.metadata.creation_timestamp.as_ref().map_or(0, |t| t.0.as_second())
}

fn condition(
    ty: &str,
    status: bool,
    reason: &str,
    message: String,
    old: Option<&DeploymentStatus>,
) -> DeploymentCondition {
    let now = Time(jiff::Timestamp::now());
    let prev = old.and_then(|s| s.conditions.as_ref()).and_then(|cs| cs.iter().find(|c| c.type_ == ty));
    let status = if status { "True" } else { "False" }.to_owned();
    // Keep the timestamps when nothing about the condition changed, so a
    // steady state writes nothing.
    if let Some(p) = prev {
        if p.status == status && p.reason.as_deref() == Some(reason) && p.message.as_deref() == Some(message.as_str()) {
            return p.clone();
        }
    }
    let transition = match prev {
        Some(p) if p.status == status => p.last_transition_time.clone(),
        _ => Some(now.clone()),
    };
    DeploymentCondition {
        type_: ty.to_owned(),
        status,
        reason: Some(reason.to_owned()),
        message: Some(message),
        last_update_time: Some(now),
        last_transition_time: transition,
    }
}

impl Reconcile for DeploymentController {
    fn name(&self) -> &'static str {
        "deployment"
    }

    fn keys_for(&mut self, ev: &WatchEvent, out: &mut Vec<Key>) {
        let (d_id, rs_id, pod_id) = self.ids;
        if ev.resource == d_id {
            out.push(Key::new(d_id, &ev.namespace, &ev.name));
        } else if ev.resource == rs_id {
            out.extend(podutil::controller_names(ev, "Deployment").map(|n| Key::new(d_id, &ev.namespace, n)));
        } else if ev.resource == pod_id && ev.kind == crate::store::EventType::Deleted {
            // Recreate waits for old pods to be gone: a pod's deletion may
            // unblock its deployment.
            for d in self.client.list::<Deployment>(Some(&ev.namespace)).unwrap_or_default() {
                let sel = d.spec.as_ref().and_then(|s| Selector::from_k8s(&s.selector).ok());
                if sel.is_some_and(|s| !s.is_empty() && s.matches(&ev.object)) {
                    out.push(Key::new(d_id, &ev.namespace, d.metadata.name.as_deref().unwrap_or_default()));
                }
            }
        }
    }

    fn all_keys(&mut self) -> Result<Vec<Key>, ControllerError> {
        self.client.keys::<Deployment>()
    }

    fn reconcile(&mut self, key: &Key) -> Result<Action, ControllerError> {
        let Some(d) = self.client.get::<Deployment>(&key.namespace, &key.name)? else { return Ok(Action::Done) };
        if d.metadata.deletion_timestamp.is_some() {
            return Ok(Action::Done);
        }
        let spec = d.spec.clone().unwrap_or_default();
        let Ok(sel) = Selector::from_k8s(&spec.selector) else { return Ok(Action::Done) };
        if sel.is_empty() {
            return Ok(Action::Done);
        }
        let uid = d.metadata.uid.clone().unwrap_or_default();
        let mut owned: Vec<ReplicaSet> = Vec::new();
        for mut rs in self.client.list::<ReplicaSet>(Some(&key.namespace))? {
            match controller_ref(&rs.metadata) {
                Some(r) if r.uid == uid => owned.push(rs),
                Some(_) => {}
                // An orphan whose labels match (say, left by `--cascade=orphan`)
                // is adopted, as Kubernetes claims ReplicaSets.
                None if rs.metadata.deletion_timestamp.is_none()
                    && sel.matches(&serde_json::json!({"metadata": {"labels": rs.metadata.labels}})) =>
                {
                    rs.metadata.owner_references.get_or_insert_with(Vec::new).push(podutil::owner_ref(
                        "apps/v1",
                        "Deployment",
                        &d.metadata,
                    ));
                    rs.metadata.resource_version = None;
                    owned.push(self.client.replace(&rs)?);
                }
                None => {}
            }
        }
        let desired = spec.replicas.unwrap_or(1);
        let want = bare(Some(&spec.template));
        let new_idx = owned.iter().position(|rs| bare(rs.spec.as_ref().and_then(|s| s.template.as_ref())) == want);
        let max_rev = owned.iter().map(|rs| revision_of(&rs.metadata)).max().unwrap_or(0);
        let paused = spec.paused == Some(true);

        let mut new_rs = match new_idx {
            Some(i) => {
                let mut rs = owned.remove(i);
                // minReadySeconds follows the Deployment onto its current ReplicaSet.
                let rs_spec = rs.spec.get_or_insert_with(Default::default);
                if rs_spec.min_ready_seconds != spec.min_ready_seconds {
                    rs_spec.min_ready_seconds = spec.min_ready_seconds;
                    rs.metadata.resource_version = None;
                    rs = self.client.replace(&rs)?;
                }
                // Moving back to an old template makes it the newest revision.
                let rev = revision_of(&rs.metadata);
                if rev <= max_rev && owned.iter().any(|o| revision_of(&o.metadata) > rev) {
                    let a = rs.metadata.annotations.get_or_insert_with(BTreeMap::new);
                    a.insert(REVISION.into(), (max_rev + 1).to_string());
                    copy_change_cause(&d, a);
                    rs = self.client.replace(&rs)?;
                }
                Some(rs)
            }
            None if paused => None,
            None => Some(self.create_new_rs(&d, &spec.template, max_rev + 1, desired, &owned)?),
        };
        let olds = owned;

        let mut olds = olds;
        if self.scale_proportionally(&d, new_rs.as_mut(), &mut olds, desired)? {
            self.cleanup(&d, new_rs.as_ref(), &olds, spec.revision_history_limit.unwrap_or(10))?;
            return self.sync_status(&d, new_rs.as_ref(), &olds, desired);
        }
        if let Some(new) = new_rs.as_mut() {
            if !paused {
                let strategy = spec.strategy.clone().unwrap_or_default();
                let recreate = strategy.type_.as_deref() == Some("Recreate");
                if recreate {
                    self.rollout_recreate(&d, new, &olds, desired)?;
                } else {
                    let ru = strategy.rolling_update.unwrap_or_default();
                    let surge = scaled(ru.max_surge.as_ref(), desired, true);
                    let mut unavailable = scaled(ru.max_unavailable.as_ref(), desired, false);
                    if surge == 0 && unavailable == 0 {
                        unavailable = 1;
                    }
                    self.rollout_rolling(&d, new, &olds, desired, surge, unavailable)?;
                }
            } else if olds.iter().all(|o| replicas_of(o) == 0) && replicas_of(new) != desired {
                // Paused: scaling still applies when there is nothing to roll.
                self.scale(&d, new, desired)?;
            }
        }
        self.cleanup(&d, new_rs.as_ref(), &olds, spec.revision_history_limit.unwrap_or(10))?;
        self.sync_status(&d, new_rs.as_ref(), &olds, desired)
    }
}

fn copy_change_cause(d: &Deployment, into: &mut BTreeMap<String, String>) {
    if let Some(c) = d.metadata.annotations.as_ref().and_then(|a| a.get(CHANGE_CAUSE)) {
        into.insert(CHANGE_CAUSE.into(), c.clone());
    }
}

impl DeploymentController {
    fn create_new_rs(
        &self,
        d: &Deployment,
        template: &PodTemplateSpec,
        revision: i64,
        desired: i32,
        olds: &[ReplicaSet],
    ) -> Result<ReplicaSet, ControllerError> {
        let hash = template_hash(template);
        let dname = d.metadata.name.clone().unwrap_or_default();
        let mut t = template.clone();
        t.metadata
            .get_or_insert_with(Default::default)
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(HASH_LABEL.into(), hash.clone());
        let mut selector: LabelSelector = d.spec.as_ref().map(|s| s.selector.clone()).unwrap_or_default();
        selector.match_labels.get_or_insert_with(BTreeMap::new).insert(HASH_LABEL.into(), hash.clone());
        let mut labels = t.metadata.as_ref().and_then(|m| m.labels.clone()).unwrap_or_default();
        labels.insert(HASH_LABEL.into(), hash.clone());
        let mut annotations = BTreeMap::new();
        annotations.insert(REVISION.to_owned(), revision.to_string());
        annotations.insert(DESIRED.to_owned(), desired.to_string());
        copy_change_cause(d, &mut annotations);
        // Start at 0 while old pods exist; the rollout scales it up.
        let old_pods: i32 = olds.iter().map(replicas_of).sum();
        let start = if old_pods == 0 { desired } else { 0 };
        let spec = d.spec.clone().unwrap_or_default();
        let rs = ReplicaSet {
            metadata: ObjectMeta {
                name: Some(format!("{dname}-{hash}")),
                namespace: d.metadata.namespace.clone(),
                labels: Some(labels),
                annotations: Some(annotations),
                owner_references: Some(vec![podutil::owner_ref("apps/v1", "Deployment", &d.metadata)]),
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(start),
                min_ready_seconds: spec.min_ready_seconds,
                selector,
                template: Some(t),
            }),
            status: None,
        };
        let created = self.client.create(&rs)?;
        if start > 0 {
            self.scaling_event(d, &format!("Scaled up replica set {dname}-{hash} from 0 to {start}"));
        }
        tracing::info!(replicaset = %format!("{dname}-{hash}"), revision, "created new replica set");
        Ok(created)
    }

    /// Sizes `rs` (and notes the Deployment size it was sized for).
    fn scale(&self, d: &Deployment, rs: &mut ReplicaSet, to: i32) -> Result<(), ControllerError> {
        let from = replicas_of(rs);
        let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let mut updated = rs.clone();
        updated.spec.get_or_insert_with(Default::default).replicas = Some(to);
        let a = updated.metadata.annotations.get_or_insert_with(BTreeMap::new);
        a.insert(DESIRED.into(), desired.to_string());
        a.insert(MAX_REPLICAS.into(), (desired + max_surge(d)).to_string());
        if from == to && updated.metadata.annotations == rs.metadata.annotations {
            return Ok(());
        }
        *rs = self.client.replace(&updated)?;
        if from == to {
            return Ok(());
        }
        let name = rs.metadata.name.clone().unwrap_or_default();
        let verb = if to > from { "up" } else { "down" };
        self.scaling_event(d, &format!("Scaled {verb} replica set {name} from {from} to {to}"));
        Ok(())
    }

    /// A change of `replicas` in the middle of a rolling update (Kubernetes'
    /// scaling event: an active ReplicaSet was sized for another count) is
    /// spread over the active ReplicaSets in proportion to their sizes, the
    /// rest to the largest, as Kubernetes' `scale` does — rather than all on
    /// the new one. Returns whether it did so (the rollout goes on next time).
    fn scale_proportionally(
        &self,
        d: &Deployment,
        new: Option<&mut ReplicaSet>,
        olds: &mut [ReplicaSet],
        desired: i32,
    ) -> Result<bool, ControllerError> {
        let recreate =
            d.spec.as_ref().and_then(|s| s.strategy.as_ref()).and_then(|s| s.type_.as_deref()) == Some("Recreate");
        let desired_of = |rs: &ReplicaSet| {
            rs.metadata.annotations.as_ref().and_then(|a| a.get(DESIRED)).and_then(|v| v.parse::<i32>().ok())
        };
        let mut active: Vec<&mut ReplicaSet> =
            new.into_iter().chain(olds.iter_mut()).filter(|rs| replicas_of(rs) > 0).collect();
        // One active ReplicaSet (or none) takes the new size in the rollout itself.
        let scaling = active.iter().any(|rs| desired_of(rs).is_some_and(|v| v != desired));
        if recreate || active.len() < 2 || !scaling {
            return Ok(false);
        }
        let total: i32 = active.iter().map(|rs| replicas_of(rs)).sum();
        let allowed = if desired > 0 { desired + max_surge(d) } else { 0 };
        let to_add = allowed - total;
        // Larger first; among equals, newer first when growing, older first when shrinking.
        active.sort_by(|a, b| {
            replicas_of(b)
                .cmp(&replicas_of(a))
                .then_with(|| if to_add > 0 { created(b).cmp(&created(a)) } else { created(a).cmp(&created(b)) })
        });
        let mut added = 0;
        let mut sizes: Vec<i32> = Vec::with_capacity(active.len());
        for rs in &active {
            let share = if to_add == 0 || to_add == added {
                0
            } else {
                let f = fraction(rs, d);
                let left = to_add - added;
                if to_add > 0 { f.min(left) } else { f.max(left) }
            };
            sizes.push(replicas_of(rs) + share);
            added += share;
        }
        if let Some(first) = sizes.first_mut() {
            *first = (*first + to_add - added).max(0);
        }
        for (rs, to) in active.into_iter().zip(sizes) {
            self.scale(d, rs, to)?;
        }
        Ok(true)
    }

    fn scaling_event(&self, d: &Deployment, msg: &str) {
        events::record(
            &self.client,
            "deployment-controller",
            ("apps/v1", "Deployment", &d.metadata),
            false,
            "ScalingReplicaSet",
            msg,
        );
    }

    fn rollout_recreate(
        &self,
        d: &Deployment,
        new: &mut ReplicaSet,
        olds: &[ReplicaSet],
        desired: i32,
    ) -> Result<(), ControllerError> {
        let mut olds = olds.to_vec();
        for o in olds.iter_mut() {
            self.scale(d, o, 0)?;
        }
        // New pods only once every old pod is gone.
        let ns = d.metadata.namespace.clone().unwrap_or_default();
        let old_uids: Vec<String> = olds.iter().filter_map(|o| o.metadata.uid.clone()).collect();
        let old_pods = self
            .client
            .list::<Pod>(Some(&ns))?
            .iter()
            .filter(|p| controller_ref(&p.metadata).is_some_and(|r| old_uids.contains(&r.uid)))
            // Finished pods run nothing: they do not hold the new ones back.
            .filter(|p| !matches!(podutil::phase(p), "Succeeded" | "Failed"))
            .count();
        if old_pods == 0 {
            self.scale(d, new, desired)?;
        }
        Ok(())
    }

    fn rollout_rolling(
        &self,
        d: &Deployment,
        new: &mut ReplicaSet,
        olds: &[ReplicaSet],
        desired: i32,
        surge: i32,
        unavailable: i32,
    ) -> Result<(), ControllerError> {
        let mut olds = olds.to_vec();
        // Scale the new ReplicaSet up within maxSurge.
        let all: i32 = replicas_of(new) + olds.iter().map(replicas_of).sum::<i32>();
        if replicas_of(new) > desired {
            self.scale(d, new, desired)?;
        } else if replicas_of(new) < desired {
            let max_total = desired.saturating_add(surge);
            if all < max_total {
                let up = (max_total - all).min(desired - replicas_of(new));
                let to = replicas_of(new) + up;
                self.scale(d, new, to)?;
            }
        }
        // Scale old ones down while keeping desired - maxUnavailable available.
        let old_total: i32 = olds.iter().map(replicas_of).sum();
        if old_total == 0 {
            return Ok(());
        }
        let all: i32 = replicas_of(new) + old_total;
        let min_available = desired - unavailable;
        let new_unavailable = (replicas_of(new) - available_of(new)).max(0);
        let max_down = all - min_available - new_unavailable;
        if max_down <= 0 {
            return Ok(());
        }
        olds.sort_by_key(created);
        // First the old pods that are not available anyway.
        let mut budget = max_down;
        for o in olds.iter_mut() {
            if budget <= 0 {
                break;
            }
            let unhealthy = (replicas_of(o) - available_of(o)).max(0).min(budget);
            if unhealthy > 0 {
                let to = replicas_of(o) - unhealthy;
                self.scale(d, o, to)?;
                budget -= unhealthy;
            }
        }
        // Then available ones, as far as availability allows.
        let available: i32 = available_of(new) + olds.iter().map(|o| available_of(o).min(replicas_of(o))).sum::<i32>();
        let mut down = (available - min_available).min(budget);
        for o in olds.iter_mut() {
            if down <= 0 {
                break;
            }
            let step = replicas_of(o).min(down);
            if step > 0 {
                let to = replicas_of(o) - step;
                self.scale(d, o, to)?;
                down -= step;
            }
        }
        Ok(())
    }

    /// Deletes the oldest fully scaled-down ReplicaSets past the history limit.
    fn cleanup(
        &self,
        d: &Deployment,
        new: Option<&ReplicaSet>,
        olds: &[ReplicaSet],
        limit: i32,
    ) -> Result<(), ControllerError> {
        let mut idle: Vec<&ReplicaSet> = olds
            .iter()
            .filter(|o| replicas_of(o) == 0 && o.status.as_ref().is_none_or(|s| s.replicas == 0))
            .filter(|o| new.is_none_or(|n| n.metadata.uid != o.metadata.uid))
            .collect();
        let limit = usize::try_from(limit).unwrap_or(0);
        if idle.len() <= limit {
            return Ok(());
        }
        idle.sort_by_key(|o| revision_of(&o.metadata));
        let ns = d.metadata.namespace.clone().unwrap_or_default();
        for o in &idle[..idle.len() - limit] {
            let name = o.metadata.name.as_deref().unwrap_or_default();
            super::ignore_not_found(self.client.delete::<ReplicaSet>(&ns, name, o.metadata.uid.as_deref()))?;
            tracing::info!(replicaset = name, "pruned old replica set");
        }
        Ok(())
    }

    fn sync_status(
        &self,
        d: &Deployment,
        new: Option<&ReplicaSet>,
        olds: &[ReplicaSet],
        desired: i32,
    ) -> Result<Action, ControllerError> {
        let all: Vec<&ReplicaSet> = new.into_iter().chain(olds).collect();
        let sum = |f: &dyn Fn(&ReplicaSet) -> i32| all.iter().map(|r| f(r)).sum::<i32>();
        let replicas = sum(&|r| r.status.as_ref().map_or(0, |s| s.replicas));
        let ready = sum(&|r| r.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0));
        let available = sum(&available_of);
        let updated = new.and_then(|n| n.status.as_ref()).map_or(0, |s| s.replicas);
        let new_available = new.map_or(0, available_of);
        let strategy = d.spec.as_ref().and_then(|s| s.strategy.clone()).unwrap_or_default();
        let max_unavailable = if strategy.type_.as_deref() == Some("Recreate") {
            0
        } else {
            let ru = strategy.rolling_update.unwrap_or_default();
            let s = scaled(ru.max_surge.as_ref(), desired, true);
            let u = scaled(ru.max_unavailable.as_ref(), desired, false);
            if s == 0 && u == 0 { 1 } else { u }
        };
        let old = d.status.as_ref();
        let available_cond = if available >= desired - max_unavailable {
            condition("Available", true, "MinimumReplicasAvailable", "Deployment has minimum availability.".into(), old)
        } else {
            condition(
                "Available",
                false,
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.".into(),
                old,
            )
        };
        let new_name = new.and_then(|n| n.metadata.name.clone()).unwrap_or_default();
        let complete = updated == desired && replicas == desired && new_available == desired;
        let progressing = if complete {
            condition(
                "Progressing",
                true,
                "NewReplicaSetAvailable",
                format!("ReplicaSet \"{new_name}\" has successfully progressed."),
                old,
            )
        } else {
            condition(
                "Progressing",
                true,
                "ReplicaSetUpdated",
                format!("ReplicaSet \"{new_name}\" is progressing."),
                old,
            )
        };
        let status = DeploymentStatus {
            observed_generation: d.metadata.generation,
            replicas: Some(replicas),
            updated_replicas: Some(updated),
            ready_replicas: Some(ready),
            available_replicas: Some(available),
            unavailable_replicas: Some((desired - available).max(0)),
            conditions: Some(vec![available_cond, progressing]),
            collision_count: old.and_then(|s| s.collision_count),
            terminating_replicas: None,
        };
        let mut dd = d.clone();
        let rev = new.map(|n| revision_of(&n.metadata)).unwrap_or(0);
        if rev > 0 && revision_of(&d.metadata) != rev {
            dd.metadata.annotations.get_or_insert_with(BTreeMap::new).insert(REVISION.into(), rev.to_string());
            dd.metadata.resource_version = None;
            dd = self.client.replace(&dd)?;
        }
        if dd.status.as_ref() != Some(&status) {
            dd.status = Some(status);
            dd.metadata.resource_version = None;
            self.client.replace_status(&dd)?;
        }
        // Pods becoming available after minReadySeconds change nothing in
        // the store by themselves; look again while a rollout is under way.
        Ok(if complete { Action::Done } else { Action::RequeueAfter(Duration::from_secs(1)) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_ignores_its_own_label_and_changes_with_the_template() {
        let mut t: PodTemplateSpec = serde_json::from_value(serde_json::json!({
            "metadata": {"labels": {"app": "a"}}, "spec": {"containers": [{"name": "c", "image": "x:1"}]}}))
        .expect("template");
        let h = template_hash(&t);
        assert!(!h.is_empty() && h.len() <= 10);
        assert!(h.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)));
        t.metadata.as_mut().and_then(|m| m.labels.as_mut()).map(|l| l.insert(HASH_LABEL.into(), h.clone()));
        assert_eq!(template_hash(&t), h);
        if let Some(s) = t.spec.as_mut() {
            s.containers[0].image = Some("x:2".into());
        }
        assert_ne!(template_hash(&t), h);
    }

    #[test]
    fn surge_rounds_up_and_unavailable_down() {
        let pct = IntOrString::String("25%".into());
        assert_eq!(scaled(Some(&pct), 6, true), 2);
        assert_eq!(scaled(Some(&pct), 6, false), 1);
        assert_eq!(scaled(Some(&IntOrString::Int(3)), 6, false), 3);
        assert_eq!(scaled(None, 6, false), 0);
    }
}
