//! The disruption controller: each PodDisruptionBudget's status — how many
//! of its pods are healthy, how many must be, and so how many may be
//! evicted now (`disruptionsAllowed`) — as Kubernetes' disruption
//! controller computes it. The eviction subresource (`api/eviction.rs`)
//! spends what it allows and notes each pod it evicted in `disruptedPods`
//! until the pod is gone (or two minutes have passed).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::podutil::{self, controller_ref};
use super::runner::{Action, Reconcile};
use crate::client::{Client, Kind};
use crate::controllers::ControllerError;
use crate::selector::LabelSelector;
use crate::store::{Key, WatchEvent};

/// How long an evicted pod counts as disrupted while it has not gone
/// (Kubernetes' `DeletionTimeout`).
pub const DELETION_TIMEOUT_SECS: i64 = 120;

pub struct DisruptionController {
    client: Client,
    ids: (&'static str, &'static str, &'static str, &'static str),
}

impl DisruptionController {
    pub fn new(client: Client) -> Result<Self, ControllerError> {
        let ids = (PodDisruptionBudget::rt()?.id, Pod::rt()?.id, ReplicaSet::rt()?.id, Deployment::rt()?.id);
        Ok(DisruptionController { client, ids })
    }
}

/// The budget's selector; in `policy/v1` a missing one selects nothing, an
/// empty one every pod of the namespace.
pub fn selector(pdb: &PodDisruptionBudget) -> Option<LabelSelector> {
    let s = pdb.spec.as_ref()?.selector.as_ref()?;
    LabelSelector::from_k8s(s).ok()
}

/// The pods of `pods` a budget covers.
pub fn covered<'p>(pdb: &PodDisruptionBudget, pods: &'p [Pod]) -> Vec<&'p Pod> {
    let Some(sel) = selector(pdb) else { return Vec::new() };
    pods.iter().filter(|p| sel.matches(&serde_json::json!({"metadata": {"labels": p.metadata.labels}}))).collect()
}

/// `value` of `total` (a count, or a percentage rounded up), as Kubernetes'
/// `GetScaledValueFromIntOrPercent(…, true)`.
fn scaled(value: &IntOrString, total: i32) -> Result<i32, String> {
    match value {
        IntOrString::Int(n) => Ok(*n),
        IntOrString::String(s) => {
            let pct: i64 = s
                .strip_suffix('%')
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| format!("invalid value {s:?}: must be an integer or a percentage"))?;
            Ok(i32::try_from((pct * i64::from(total) + 99) / 100).unwrap_or(i32::MAX))
        }
    }
}

/// What a budget's status says now, computed from its pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    pub expected: i32,
    pub desired_healthy: i32,
    pub current_healthy: i32,
    pub allowed: i32,
    /// Why nothing may be disrupted, when the pods' scale is unknown.
    pub error: Option<String>,
}

impl DisruptionController {
    /// The replicas the pods' controllers want, summed over the distinct
    /// controllers (a Deployment's pods count its replicas, not its
    /// ReplicaSets').
    fn expected_scale(&self, ns: &str, pods: &[&Pod]) -> Result<i32, String> {
        let mut seen = BTreeSet::new();
        let mut total = 0i32;
        for p in pods {
            let r = controller_ref(&p.metadata)
                .ok_or_else(|| format!("found no controller for pod {:?}", p.metadata.name.as_deref().unwrap_or("")))?;
            let scale = match (r.api_version.as_str(), r.kind.as_str()) {
                ("apps/v1", "ReplicaSet") => {
                    let rs = self
                        .client
                        .get::<ReplicaSet>(ns, &r.name)
                        .map_err(|e| e.to_string())?
                        .filter(|rs| rs.metadata.uid.as_deref() == Some(r.uid.as_str()));
                    let Some(rs) = rs else { continue };
                    match controller_ref(&rs.metadata).filter(|d| d.kind == "Deployment") {
                        Some(d) => {
                            if !seen.insert(d.uid.clone()) {
                                continue;
                            }
                            let dep = self.client.get::<Deployment>(ns, &d.name).map_err(|e| e.to_string())?;
                            dep.and_then(|d| d.spec.and_then(|s| s.replicas)).unwrap_or(1)
                        }
                        None => {
                            if !seen.insert(r.uid.clone()) {
                                continue;
                            }
                            rs.spec.and_then(|s| s.replicas).unwrap_or(1)
                        }
                    }
                }
                (av, kind) => {
                    // Kinds with a scale (StatefulSets, …): their spec.replicas.
                    let Some(rt) =
                        crate::resources::RESOURCES.iter().find(|t| t.scale && t.api_version() == av && t.kind == kind)
                    else {
                        return Err(format!("pods of a {kind} have no scale: use minAvailable as a number"));
                    };
                    if !seen.insert(r.uid.clone()) {
                        continue;
                    }
                    let obj = self.client.get_raw(rt, ns, &r.name).map_err(|e| e.to_string())?;
                    let replicas = obj.as_ref().and_then(|o| o.pointer("/spec/replicas")).and_then(|v| v.as_i64());
                    i32::try_from(replicas.unwrap_or(1)).unwrap_or(i32::MAX)
                }
            };
            total = total.saturating_add(scale);
        }
        Ok(total)
    }

    /// The budget of `pdb` over `pods` (its covered pods), with the pods
    /// still counted as disrupted.
    pub fn budget(&self, pdb: &PodDisruptionBudget, pods: &[&Pod], disrupted: &BTreeSet<String>) -> Budget {
        let ns = pdb.metadata.namespace.as_deref().unwrap_or_default();
        let spec = pdb.spec.clone().unwrap_or_default();
        let current_healthy = i32::try_from(
            pods.iter()
                .filter(|p| {
                    p.metadata.deletion_timestamp.is_none()
                        && podutil::is_ready(p)
                        && !disrupted.contains(p.metadata.name.as_deref().unwrap_or_default())
                })
                .count(),
        )
        .unwrap_or(i32::MAX);
        let counted = i32::try_from(pods.len()).unwrap_or(i32::MAX);
        let computed = match (&spec.min_available, &spec.max_unavailable) {
            (Some(IntOrString::Int(n)), _) => Ok((counted, *n)),
            (Some(pct), _) => self.expected_scale(ns, pods).and_then(|e| Ok((e, scaled(pct, e)?))),
            (None, Some(max)) => self.expected_scale(ns, pods).and_then(|e| Ok((e, (e - scaled(max, e)?).max(0)))),
            // Neither: Kubernetes defaults minAvailable to 1.
            (None, None) => Ok((counted, 1)),
        };
        match computed {
            Ok((expected, desired_healthy)) => {
                let allowed = if expected <= 0 { 0 } else { (current_healthy - desired_healthy).max(0) };
                Budget { expected, desired_healthy, current_healthy, allowed, error: None }
            }
            Err(e) => Budget { expected: 0, desired_healthy: 0, current_healthy, allowed: 0, error: Some(e) },
        }
    }
}

/// The `DisruptionAllowed` condition for `b`, keeping the transition time
/// of an unchanged one.
fn condition(b: &Budget, generation: Option<i64>, old: Option<&Condition>) -> Condition {
    let (status, reason, message) = match (&b.error, b.allowed > 0) {
        (Some(e), _) => ("False", "SyncFailed", e.clone()),
        (None, true) => ("True", "SufficientPods", String::new()),
        (None, false) => ("False", "InsufficientPods", String::new()),
    };
    let last_transition_time = match old {
        Some(c) if c.status == status && c.reason == reason => c.last_transition_time.clone(),
        _ => Time(jiff::Timestamp::from_second(jiff::Timestamp::now().as_second()).unwrap_or_default()),
    };
    Condition {
        type_: "DisruptionAllowed".into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

impl Reconcile for DisruptionController {
    fn name(&self) -> &'static str {
        "disruption"
    }

    fn keys_for(&mut self, ev: &WatchEvent, out: &mut Vec<Key>) {
        let (pdb_id, pod_id, rs_id, deploy_id) = self.ids;
        if ev.resource == pdb_id {
            out.push(Key::new(pdb_id, &ev.namespace, &ev.name));
        } else if ev.resource == pod_id || ev.resource == rs_id || ev.resource == deploy_id {
            // Few budgets per namespace: each looks again.
            for pdb in self.client.list::<PodDisruptionBudget>(Some(&ev.namespace)).unwrap_or_default() {
                out.push(Key::new(pdb_id, &ev.namespace, pdb.metadata.name.as_deref().unwrap_or_default()));
            }
        }
    }

    fn all_keys(&mut self) -> Result<Vec<Key>, ControllerError> {
        self.client.keys::<PodDisruptionBudget>()
    }

    fn reconcile(&mut self, key: &Key) -> Result<Action, ControllerError> {
        let Some(mut pdb) = self.client.get::<PodDisruptionBudget>(&key.namespace, &key.name)? else {
            return Ok(Action::Done);
        };
        let pods = self.client.list::<Pod>(Some(&key.namespace))?;
        let mine = covered(&pdb, &pods);
        let old = pdb.status.clone().unwrap_or_default();
        // Evicted pods count as disrupted until they are being deleted or
        // gone, or the deletion timeout has passed.
        let now = jiff::Timestamp::now().as_second();
        let mut disrupted: BTreeMap<String, Time> = BTreeMap::new();
        let mut next: Option<i64> = None;
        for (name, at) in old.disrupted_pods.clone().unwrap_or_default() {
            let pending = mine
                .iter()
                .any(|p| p.metadata.name.as_deref() == Some(name.as_str()) && p.metadata.deletion_timestamp.is_none());
            let expires = at.0.as_second() + DELETION_TIMEOUT_SECS;
            if pending && expires > now {
                next = Some(next.map_or(expires - now, |n| n.min(expires - now)));
                disrupted.insert(name, at);
            }
        }
        let names: BTreeSet<String> = disrupted.keys().cloned().collect();
        let b = self.budget(&pdb, &mine, &names);
        if let Some(e) = &b.error {
            tracing::warn!(pdb = %format!("{}/{}", key.namespace, key.name), "{e}");
        }
        let old_condition = old.conditions.iter().flatten().find(|c| c.type_ == "DisruptionAllowed");
        let status = PodDisruptionBudgetStatus {
            current_healthy: b.current_healthy,
            desired_healthy: b.desired_healthy,
            disruptions_allowed: b.allowed,
            expected_pods: b.expected,
            observed_generation: pdb.metadata.generation,
            disrupted_pods: (!disrupted.is_empty()).then_some(disrupted),
            conditions: Some(vec![condition(&b, pdb.metadata.generation, old_condition)]),
        };
        if pdb.status.as_ref() != Some(&status) {
            pdb.status = Some(status);
            // The resourceVersion read stays: an eviction that spent a
            // disruption meanwhile makes this a conflict (then a fresh look),
            // never an overwrite of what it spent.
            self.client.replace_status(&pdb)?;
        }
        Ok(next.map_or(Action::Done, |s| Action::RequeueAfter(std::time::Duration::from_secs(s.unsigned_abs() + 1))))
    }
}
