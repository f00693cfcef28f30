//! The scheduler: binds each pod without `spec.nodeName` to the best node
//! that passes kube-scheduler's filters (readiness, schedulability, taints
//! and tolerations, node selector and required node affinity, host ports,
//! cpu/memory/pod-count fit), scoring least-allocated nodes and spreading
//! one owner's replicas. A pod that fits nowhere gets `PodScheduled=False`
//! (`Unschedulable`, with kube-scheduler's message) and an event, and is
//! retried only when a node or a bound pod changes — never by polling.
//!
//! Node usage is kept in memory from the watch (as kube-scheduler's cache),
//! so one decision costs a pass over the nodes, not a read of every pod.

pub mod model;

use std::collections::{BTreeMap, HashMap, HashSet};

use k8s_openapi::api::core::v1::{Node, NodeSelector, PersistentVolume, PersistentVolumeClaim, Pod, PodCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::Value;

use crate::client::{Client, Kind};
use crate::controllers::ControllerError;
use crate::controllers::events;
use crate::controllers::runner::{Action, Reconcile};
use crate::store::{EventType, Key, WatchEvent};
use crate::write::Binding;
use model::{NodeInfo, NodeUsage, PodNeeds};

pub const SCHEDULER_NAME: &str = "default-scheduler";
/// Pods decided and bound per transaction.
const BATCH: usize = 1024;

#[derive(Default)]
struct NodeEntry {
    /// `None` while no Node object of that name exists.
    info: Option<NodeInfo>,
    usage: NodeUsage,
    /// The pods placed here (grouped by node, so the inter-pod plugins
    /// walk them with their node's labels at hand).
    pods: HashMap<Key, PodNeeds>,
}

pub struct Scheduler {
    client: Client,
    pod_id: &'static str,
    node_id: &'static str,
    pvc_id: &'static str,
    /// Every node with what is committed on it (usage is kept for a node
    /// name even before its Node object exists, so it is right when it does).
    nodes: BTreeMap<String, NodeEntry>,
    /// Bound, active pods: their node (what they hold is in its entry).
    placed: HashMap<Key, String>,
    /// Pods that fit nowhere, waiting for a change.
    waiting: HashSet<Key>,
    /// Placed pods with required pod anti-affinity (which may refuse others).
    anti: HashSet<Key>,
}

fn wants_scheduling(pod: &Value) -> bool {
    let unbound = pod.pointer("/spec/nodeName").and_then(Value::as_str).is_none_or(str::is_empty);
    let ours = pod.pointer("/spec/schedulerName").and_then(Value::as_str).is_none_or(|s| s == SCHEDULER_NAME);
    let phase = pod.pointer("/status/phase").and_then(Value::as_str).unwrap_or("Pending");
    let gated = pod.pointer("/spec/schedulingGates").and_then(Value::as_array).is_some_and(|g| !g.is_empty());
    unbound
        && ours
        && !gated
        && pod.pointer("/metadata/deletionTimestamp").is_none()
        && !matches!(phase, "Succeeded" | "Failed")
}

/// The node an active pod holds resources on, if any.
fn holds(pod: &Value) -> Option<&str> {
    let phase = pod.pointer("/status/phase").and_then(Value::as_str).unwrap_or("Pending");
    if matches!(phase, "Succeeded" | "Failed") {
        return None;
    }
    pod.pointer("/spec/nodeName").and_then(Value::as_str).filter(|n| !n.is_empty())
}

impl Scheduler {
    pub fn new(client: Client) -> Result<Self, ControllerError> {
        Ok(Scheduler {
            client,
            pod_id: Pod::rt()?.id,
            node_id: Node::rt()?.id,
            pvc_id: PersistentVolumeClaim::rt()?.id,
            nodes: BTreeMap::new(),
            placed: HashMap::new(),
            waiting: HashSet::new(),
            anti: HashSet::new(),
        })
    }

    fn unplace(&mut self, key: &Key) -> bool {
        self.anti.remove(key);
        if let Some(node) = self.placed.remove(key) {
            if let Some(e) = self.nodes.get_mut(&node) {
                if let Some(needs) = e.pods.remove(key) {
                    e.usage.remove(&needs);
                }
            }
            return true;
        }
        false
    }

    fn place(&mut self, key: Key, node: &str, needs: PodNeeds) {
        self.unplace(&key);
        let e = self.nodes.entry(node.to_owned()).or_default();
        e.usage.add(&needs);
        if needs.terms.as_ref().is_some_and(|t| !t.anti_affinity.is_empty()) {
            self.anti.insert(key.clone());
        }
        e.pods.insert(key.clone(), needs);
        self.placed.insert(key, node.to_owned());
    }

    /// Brings the usage cache in line with one pod's stored state.
    fn observe_pod(&mut self, key: &Key, pod: Option<&Value>) -> bool {
        let freed = self.unplace(key);
        if let Some(node) = pod.and_then(holds) {
            if let Ok(p) = serde_json::from_value::<Pod>(pod.cloned().unwrap_or(Value::Null)) {
                self.place(key.clone(), node, PodNeeds::from_pod(&p));
                return false;
            }
        }
        freed
    }

    fn observe_node(&mut self, name: &str, node: Option<&Value>) {
        match node.and_then(|n| serde_json::from_value::<Node>(n.clone()).ok()) {
            Some(n) => {
                self.nodes.entry(name.to_owned()).or_default().info = Some(NodeInfo::from_node(&n));
            }
            None => {
                if let Some(e) = self.nodes.get_mut(name) {
                    e.info = None;
                }
            }
        }
    }

    fn set_condition(
        &self,
        pod: &Pod,
        status: &str,
        reason: Option<&str>,
        message: Option<&str>,
    ) -> Result<bool, ControllerError> {
        let mut p = pod.clone();
        let st = p.status.get_or_insert_with(Default::default);
        let conds = st.conditions.get_or_insert_with(Vec::new);
        let now = Some(Time(jiff::Timestamp::now()));
        match conds.iter_mut().find(|c| c.type_ == "PodScheduled") {
            Some(c) if c.status == status && c.reason.as_deref() == reason && c.message.as_deref() == message => {
                return Ok(false);
            }
            Some(c) => {
                if c.status != status {
                    c.last_transition_time = now;
                }
                c.status = status.to_owned();
                c.reason = reason.map(str::to_owned);
                c.message = message.map(str::to_owned);
            }
            None => conds.push(PodCondition {
                type_: "PodScheduled".into(),
                status: status.to_owned(),
                reason: reason.map(str::to_owned),
                message: message.map(str::to_owned),
                last_transition_time: now,
                ..Default::default()
            }),
        }
        p.metadata.resource_version = None;
        self.client.replace_status(&p)?;
        Ok(true)
    }
}

impl Reconcile for Scheduler {
    fn name(&self) -> &'static str {
        "scheduler"
    }

    fn keys_for(&mut self, ev: &WatchEvent, out: &mut Vec<Key>) {
        let key = Key::new(ev.resource, &ev.namespace, &ev.name);
        if ev.resource == self.pod_id {
            let now = (ev.kind != EventType::Deleted).then_some(&ev.object);
            let freed = self.observe_pod(&key, now);
            if now.is_some_and(wants_scheduling) {
                out.push(key);
            } else {
                self.waiting.remove(&key);
            }
            if freed {
                out.extend(self.waiting.iter().cloned());
            }
        } else if ev.resource == self.node_id {
            let now = (ev.kind != EventType::Deleted).then_some(&ev.object);
            self.observe_node(&ev.name, now);
            out.extend(self.waiting.iter().cloned());
        } else if ev.resource == self.pvc_id {
            // A claim made or bound may let a waiting pod in.
            out.extend(self.waiting.iter().cloned());
        }
    }

    fn all_keys(&mut self) -> Result<Vec<Key>, ControllerError> {
        self.nodes.clear();
        self.placed.clear();
        self.anti.clear();
        let (nodes, _) = self.client.store().list(self.node_id, None, None)?;
        for n in &nodes {
            let name = n.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_owned();
            self.observe_node(&name, Some(n));
        }
        let (pods, _) = self.client.store().list(self.pod_id, None, None)?;
        let mut keys = Vec::new();
        for p in &pods {
            let key = Key::new(
                self.pod_id,
                p.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or_default(),
                p.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default(),
            );
            self.observe_pod(&key, Some(p));
            if wants_scheduling(p) {
                keys.push(key);
            }
        }
        Ok(keys)
    }

    fn reconcile(&mut self, key: &Key) -> Result<Action, ControllerError> {
        self.reconcile_batch(std::slice::from_ref(key)).pop().unwrap_or(Ok(Action::Done))
    }

    fn batch(&self) -> usize {
        BATCH
    }

    /// Decides each pod in turn (each decision sees the ones before it in
    /// the usage cache), then binds every placed pod in one transaction.
    fn reconcile_batch(&mut self, keys: &[Key]) -> Vec<Result<Action, ControllerError>> {
        let mut results: Vec<Result<Action, ControllerError>> = keys.iter().map(|_| Ok(Action::Done)).collect();
        let mut binds = Vec::new();
        let mut placed_idx = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            match self.decide(key) {
                Ok(Some(node)) => {
                    binds.push(Binding { namespace: key.namespace.clone(), name: key.name.clone(), node });
                    placed_idx.push(i);
                }
                Ok(None) => {}
                Err(e) => results[i] = Err(e),
            }
        }
        if binds.is_empty() {
            return results;
        }
        match self.client.bind_many(&binds, Some(SCHEDULER_NAME)) {
            Ok(per) => {
                for (j, r) in per.into_iter().enumerate() {
                    let i = placed_idx[j];
                    match r {
                        Ok(()) => {
                            self.waiting.remove(&keys[i]);
                            tracing::debug!(pod = %format!("{}/{}", keys[i].namespace, keys[i].name), node = %binds[j].node, "bound");
                        }
                        // Gone or bound meanwhile: nothing left to do for it.
                        Err(_) => {
                            self.unplace(&keys[i]);
                        }
                    }
                }
            }
            Err(e) => {
                let e = std::sync::Arc::new(e);
                for i in &placed_idx {
                    self.unplace(&keys[*i]);
                    results[*i] = Err(ControllerError::Batch(e.clone()));
                }
            }
        }
        results
    }
}

impl Scheduler {
    /// What the placed pods mean for `needs` (`model::interpod`).
    fn verdicts<'a>(&'a self, needs: &'a PodNeeds) -> Result<model::interpod::Verdicts<'a>, ControllerError> {
        use model::interpod::{NamespaceLabels, Placed, Verdicts};
        let holders = || {
            self.anti.iter().filter_map(|k| {
                let e = self.nodes.get(self.placed.get(k)?)?;
                let info = e.info.as_ref()?;
                Some(Placed { node: info.name.as_str(), node_labels: &info.labels, pod: e.pods.get(k)? })
            })
        };
        let wants_ns = needs.terms.as_ref().is_some_and(|t| t.uses_namespace_selector())
            || holders().any(|p| p.pod.terms.as_ref().is_some_and(|t| t.uses_namespace_selector()));
        let mut ns_labels = NamespaceLabels::new();
        if wants_ns {
            for ns in self.client.list::<k8s_openapi::api::core::v1::Namespace>(None)? {
                ns_labels.insert(ns.metadata.name.unwrap_or_default(), ns.metadata.labels.unwrap_or_default());
            }
        }
        let nodes: Vec<&NodeInfo> = self.nodes.values().filter_map(|e| e.info.as_ref()).collect();
        let placed = self.nodes.values().filter_map(|e| Some((e.info.as_ref()?, &e.pods))).flat_map(|(info, pods)| {
            pods.values().map(move |pod| Placed { node: info.name.as_str(), node_labels: &info.labels, pod })
        });
        Ok(Verdicts::new(needs, &nodes, placed, holders(), &ns_labels))
    }

    /// Picks a node for the pod at `key` and holds its resources there in the
    /// cache (`Some(node)`), or records why it fits nowhere (`None`).
    fn decide(&mut self, key: &Key) -> Result<Option<String>, ControllerError> {
        let pods = Pod::rt()?;
        let raw = self.client.get_raw(pods, &key.namespace, &key.name)?;
        let Some(raw) = raw.filter(wants_scheduling) else {
            self.waiting.remove(key);
            return Ok(None);
        };
        let pod: Pod = serde_json::from_value(raw).map_err(|source| ControllerError::Decode { kind: "Pod", source })?;
        let needs = PodNeeds::from_pod(&pod);
        let known = self.nodes.values().filter(|e| e.info.is_some()).count();
        let volumes = match self.volume_affinity(&pod)? {
            Ok(v) => v,
            Err(why) => {
                self.unschedulable(key, &pod, &format!("0/{known} nodes are available: {why}."))?;
                return Ok(None);
            }
        };
        // Inter-pod affinity and topology spread: worked out once, only when
        // the pod has such terms or a placed pod's anti-affinity may refuse it.
        let verdicts = (needs.terms.is_some() || !self.anti.is_empty()).then(|| self.verdicts(&needs)).transpose()?;
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        let mut feasible: Vec<(&NodeInfo, &NodeUsage)> = Vec::new();
        for e in self.nodes.values() {
            let Some(info) = &e.info else { continue };
            let passed = model::filter(info, &e.usage, &needs)
                .and_then(|()| {
                    if volumes.iter().all(|sel| model::affinity_matches(sel, info)) {
                        Ok(())
                    } else {
                        Err(vec!["node(s) had volume node affinity conflict".to_owned()])
                    }
                })
                .and_then(|()| {
                    verdicts.as_ref().map_or(Ok(()), |v| v.filter(info, &needs).map_err(|r| vec![r.to_owned()]))
                });
            match passed {
                Ok(()) => feasible.push((info, &e.usage)),
                Err(rs) => rs.into_iter().for_each(|r| *reasons.entry(r).or_insert(0) += 1),
            }
        }
        // Explicit spread constraints replace the default spreading of an owner's replicas.
        let explicit_spread = needs.terms.as_ref().is_some_and(|t| !t.spread.is_empty());
        let max_same = match needs.owner.as_ref() {
            Some(o) if !explicit_spread => feasible.iter().map(|(_, u)| u.of_owner(*o)).max().unwrap_or(0) + 1,
            _ => 0,
        };
        let extra = model::weighted_scores(&feasible, &needs, verdicts.as_ref());
        // Ties go to the node holding fewer pods, then by name.
        let best = feasible
            .iter()
            .zip(extra)
            .map(|((n, u), x)| {
                (model::score(n, u, &needs, max_same) + x, -u.requested.pods, std::cmp::Reverse(n.name.as_str()))
            })
            .max()
            .map(|(_, _, std::cmp::Reverse(name))| name.to_owned());
        let Some(node) = best else {
            let msg = model::unschedulable_message(known, &reasons);
            self.unschedulable(key, &pod, &msg)?;
            return Ok(None);
        };
        self.place(key.clone(), &node, needs);
        Ok(Some(node))
    }

    /// `PodScheduled=False` with kube-scheduler's message (and an event when
    /// it is new); the pod waits for a change.
    fn unschedulable(&mut self, key: &Key, pod: &Pod, msg: &str) -> Result<(), ControllerError> {
        if self.set_condition(pod, "False", Some("Unschedulable"), Some(msg))? {
            tracing::info!(pod = %format!("{}/{}", key.namespace, key.name), reason = %msg, "unschedulable");
            events::record(&self.client, SCHEDULER_NAME, ("v1", "Pod", &pod.metadata), true, "FailedScheduling", msg);
        }
        self.waiting.insert(key.clone());
        Ok(())
    }

    /// kube-scheduler's `VolumeBinding`: the required node affinity of every
    /// volume the pod's claims are bound to (a node must match them all),
    /// or why no node can take the pod. An unbound claim whose class waits
    /// for its first consumer fits anywhere: it is provisioned where the pod lands.
    fn volume_affinity(&self, pod: &Pod) -> Result<Result<Vec<NodeSelector>, String>, ControllerError> {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let mut out = Vec::new();
        for name in crate::controllers::volume::claims_of(pod) {
            let Some(claim) = self.client.get::<PersistentVolumeClaim>(ns, name)? else {
                return Ok(Err(format!("persistentvolumeclaim \"{name}\" not found")));
            };
            if claim.metadata.deletion_timestamp.is_some() {
                return Ok(Err(format!("persistentvolumeclaim \"{name}\" is being deleted")));
            }
            let spec = claim.spec.unwrap_or_default();
            match spec.volume_name.as_deref().filter(|v| !v.is_empty()) {
                Some(pv_name) => {
                    let Some(pv) = self.client.get::<PersistentVolume>("", pv_name)? else {
                        return Ok(Err(format!("persistentvolume \"{pv_name}\" not found")));
                    };
                    if let Some(req) = pv.spec.and_then(|s| s.node_affinity).and_then(|a| a.required) {
                        out.push(req);
                    }
                }
                None => {
                    let class = match spec.storage_class_name.as_deref().filter(|c| !c.is_empty()) {
                        Some(c) => self.client.get::<k8s_openapi::api::storage::v1::StorageClass>("", c)?,
                        None => None,
                    };
                    if !class.as_ref().is_some_and(crate::controllers::volume::waits_for_consumer) {
                        return Ok(Err("pod has unbound immediate PersistentVolumeClaims".to_owned()));
                    }
                    // Another pod of the claim already placed (bound, or earlier in
                    // this batch): the volume will be made on its node, so this
                    // pod goes there too (kube-scheduler's selected node).
                    let placed = self.nodes.iter().find_map(|(node, e)| {
                        e.pods
                            .values()
                            .any(|p| !p.terminating && p.namespace == ns && p.claims.iter().any(|c| c == name))
                            .then_some(node)
                    });
                    if let Some(node) = placed {
                        out.push(NodeSelector {
                            node_selector_terms: vec![k8s_openapi::api::core::v1::NodeSelectorTerm {
                                match_fields: Some(vec![k8s_openapi::api::core::v1::NodeSelectorRequirement {
                                    key: "metadata.name".into(),
                                    operator: "In".into(),
                                    values: Some(vec![node.clone()]),
                                }]),
                                match_expressions: None,
                            }],
                        });
                    }
                }
            }
        }
        Ok(Ok(out))
    }
}
