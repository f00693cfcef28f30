//! The DaemonSet controller: one pod on each eligible node (node selector,
//! required node affinity, taints against the pod's tolerations), including
//! nodes that appear later; surplus and misplaced pods removed; rolling
//! updates bounded by `maxUnavailable`, or with `maxSurge` the new pod
//! started beside the old one, which goes once the new is available (at
//! most `maxSurge` nodes at a time; an unavailable old pod is replaced at
//! once), as Kubernetes' surge update. DaemonSet pods tolerate
//! `not-ready`/`unreachable` forever, as in Kubernetes, so they are never
//! evicted from a node that drops off.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{Node, Pod, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::deployment::template_hash;
use super::events;
use super::podutil::{self, controller_ref};
use super::runner::{Action, Reconcile};
use crate::client::{Client, Kind};
use crate::controllers::ControllerError;
use crate::scheduler::model::{self, NodeInfo, NodeUsage, PodNeeds};
use crate::store::{Key, WatchEvent};

pub const REVISION_HASH_LABEL: &str = "controller-revision-hash";

pub struct DaemonSetController {
    client: Client,
    ids: (&'static str, &'static str, &'static str),
    /// Per (DaemonSet uid, node): no new pod before this instant, and the
    /// next wait, after a daemon pod failed there (Kubernetes'
    /// `failedPodsBackoff`: 1 s doubling to 15 min).
    backoff: HashMap<(String, String), (std::time::Instant, std::time::Duration)>,
}

const FAILED_BACKOFF_START: std::time::Duration = std::time::Duration::from_secs(1);
const FAILED_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(15 * 60);

impl DaemonSetController {
    pub fn new(client: Client) -> Result<Self, ControllerError> {
        Ok(DaemonSetController {
            client,
            ids: (DaemonSet::rt()?.id, Node::rt()?.id, Pod::rt()?.id),
            backoff: HashMap::new(),
        })
    }
}

/// The tolerations Kubernetes adds to every DaemonSet pod.
fn daemon_tolerations(host_network: bool) -> Vec<Toleration> {
    let exists = |key: &str, effect: &str| Toleration {
        key: Some(key.into()),
        operator: Some("Exists".into()),
        effect: Some(effect.into()),
        value: None,
        toleration_seconds: None,
    };
    let mut t = vec![
        exists("node.kubernetes.io/not-ready", "NoExecute"),
        exists("node.kubernetes.io/unreachable", "NoExecute"),
        exists("node.kubernetes.io/disk-pressure", "NoSchedule"),
        exists("node.kubernetes.io/memory-pressure", "NoSchedule"),
        exists("node.kubernetes.io/pid-pressure", "NoSchedule"),
        exists("node.kubernetes.io/unschedulable", "NoSchedule"),
    ];
    if host_network {
        t.push(exists("node.kubernetes.io/network-unavailable", "NoSchedule"));
    }
    t
}

/// The pod template as the DaemonSet runs it: its tolerations include the
/// daemon ones.
fn pod_template(ds: &DaemonSet) -> k8s_openapi::api::core::v1::PodTemplateSpec {
    let mut t = ds.spec.as_ref().map(|s| s.template.clone()).unwrap_or_default();
    let spec = t.spec.get_or_insert_with(Default::default);
    let tols = spec.tolerations.get_or_insert_with(Vec::new);
    for d in daemon_tolerations(spec.host_network == Some(true)) {
        if !tols.contains(&d) {
            tols.push(d);
        }
    }
    t
}

/// Whether a daemon pod belongs on `node` (readiness and cordoning aside:
/// daemons run there too). As in Kubernetes, a new pod needs every
/// NoSchedule/NoExecute taint tolerated, while a running one is only moved
/// off by a NoExecute taint it does not tolerate.
fn eligible(node: &NodeInfo, needs: &PodNeeds, already_running: bool) -> bool {
    let mut n = node.clone();
    n.ready = true;
    n.unschedulable = false;
    if already_running {
        n.taints.retain(|t| t.effect == "NoExecute");
    }
    // Capacity and ports are the node's business; placement is by labels,
    // affinity and taints.
    let mut needs = needs.clone();
    needs.requests = Default::default();
    needs.host_ports.clear();
    model::filter(&n, &NodeUsage::default(), &needs).is_ok()
}

impl Reconcile for DaemonSetController {
    fn name(&self) -> &'static str {
        "daemonset"
    }

    fn keys_for(&mut self, ev: &WatchEvent, out: &mut Vec<Key>) {
        let (ds_id, node_id, pod_id) = self.ids;
        if ev.resource == ds_id {
            out.push(Key::new(ds_id, &ev.namespace, &ev.name));
        } else if ev.resource == node_id {
            for ds in self.client.list::<DaemonSet>(None).unwrap_or_default() {
                out.push(Key::new(
                    ds_id,
                    ds.metadata.namespace.as_deref().unwrap_or_default(),
                    ds.metadata.name.as_deref().unwrap_or_default(),
                ));
            }
        } else if ev.resource == pod_id {
            out.extend(podutil::controller_names(ev, "DaemonSet").map(|n| Key::new(ds_id, &ev.namespace, n)));
        }
    }

    fn all_keys(&mut self) -> Result<Vec<Key>, ControllerError> {
        self.client.keys::<DaemonSet>()
    }

    fn reconcile(&mut self, key: &Key) -> Result<Action, ControllerError> {
        let Some(ds) = self.client.get::<DaemonSet>(&key.namespace, &key.name)? else { return Ok(Action::Done) };
        if ds.metadata.deletion_timestamp.is_some() {
            return Ok(Action::Done);
        }
        let uid = ds.metadata.uid.clone().unwrap_or_default();
        let template = pod_template(&ds);
        let hash = template_hash(&template);
        let probe = Pod { metadata: ObjectMeta::default(), spec: template.spec.clone(), status: None };
        let needs = PodNeeds::from_pod(&probe);
        let nodes: Vec<NodeInfo> = self.client.list::<Node>(None)?.iter().map(NodeInfo::from_node).collect();
        let mut by_node: HashMap<String, Vec<Pod>> = HashMap::new();
        // Nodes where a pod of ours is still stopping: no new one before it
        // has gone (a hostPort or hostNetwork daemon could not start beside it).
        let mut stopping: std::collections::HashSet<String> = std::collections::HashSet::new();
        for p in self.client.list::<Pod>(Some(&key.namespace))? {
            if controller_ref(&p.metadata).is_some_and(|r| r.uid == uid) {
                let node = p.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
                if p.metadata.deletion_timestamp.is_none() {
                    by_node.entry(node).or_default().push(p);
                } else {
                    stopping.insert(node);
                }
            }
        }
        let wanted: Vec<&NodeInfo> =
            nodes.iter().filter(|n| eligible(n, &needs, by_node.get(&n.name).is_some_and(|p| !p.is_empty()))).collect();
        let spec = ds.spec.clone().unwrap_or_default();
        let min_ready = i64::from(spec.min_ready_seconds.unwrap_or(0));
        let now = jiff::Timestamp::now().as_second();
        let ns = key.namespace.clone();
        let delete = |p: &Pod| -> Result<(), ControllerError> {
            super::ignore_not_found(self.client.delete::<Pod>(
                &ns,
                p.metadata.name.as_deref().unwrap_or_default(),
                p.metadata.uid.as_deref(),
            ))
        };
        let strategy = spec.update_strategy.clone().unwrap_or_default();
        let rolling = strategy.type_.as_deref() != Some("OnDelete");
        let desired_count = i64::try_from(wanted.len()).unwrap_or(i64::MAX);
        // `maxSurge` (a count, or a percentage of the desired pods rounded up).
        let surge = match strategy.rolling_update.as_ref().and_then(|r| r.max_surge.clone()).filter(|_| rolling) {
            Some(IntOrString::Int(i)) => i64::from(i.max(0)),
            Some(IntOrString::String(s)) => {
                (s.trim_end_matches('%').parse::<i64>().unwrap_or(0) * desired_count + 99) / 100
            }
            None => 0,
        };
        let is_current = |p: &Pod| p.metadata.labels.as_ref().and_then(|l| l.get(REVISION_HASH_LABEL)) == Some(&hash);
        // Pods on nodes that no longer want one, failed pods, and duplicates go.
        let mut misscheduled = 0;
        for (node, pods) in by_node.iter_mut() {
            let wanted_here = wanted.iter().any(|n| &n.name == node);
            if !wanted_here {
                misscheduled += pods.len();
                pods.iter().try_for_each(&delete)?;
                pods.clear();
                continue;
            }
            let (keep, gone): (Vec<Pod>, Vec<Pod>) = pods.drain(..).partition(|p| podutil::phase(p) != "Failed");
            gone.iter().try_for_each(&delete)?;
            let slot = (uid.clone(), node.clone());
            if !gone.is_empty() {
                let next =
                    self.backoff.get(&slot).map_or(FAILED_BACKOFF_START, |(_, d)| (*d * 2).min(FAILED_BACKOFF_MAX));
                self.backoff.insert(slot, (std::time::Instant::now() + next, next));
                tracing::warn!(node = %node, retry_in_s = next.as_secs(), "daemon pod failed; backing off");
            } else if keep.iter().any(podutil::is_ready) {
                self.backoff.remove(&slot);
            }
            let mut keep = keep;
            keep.sort_by_key(|p| p.metadata.creation_timestamp.as_ref().map_or(0, |t| t.0.as_second()));
            // One pod per node; while surging, one of the old template and
            // one of the new.
            let mut kept: Vec<Pod> = Vec::new();
            for p in keep {
                let new = is_current(&p);
                let room = if surge > 0 { !kept.iter().any(|k| is_current(k) == new) } else { kept.is_empty() };
                if room {
                    kept.push(p);
                } else {
                    delete(&p)?;
                }
            }
            *pods = kept;
        }
        let make = |node: &str| -> Result<Pod, ControllerError> {
            let mut t = template.clone();
            let tmeta = t.metadata.take().unwrap_or_default();
            let mut labels = tmeta.labels.unwrap_or_default();
            labels.insert(REVISION_HASH_LABEL.into(), hash.clone());
            let mut pspec = t.spec.take().unwrap_or_default();
            pspec.node_name = Some(node.to_owned());
            let pod = Pod {
                metadata: ObjectMeta {
                    generate_name: Some(format!("{}-", key.name)),
                    namespace: Some(key.namespace.clone()),
                    labels: Some(labels),
                    annotations: tmeta.annotations,
                    owner_references: Some(vec![podutil::owner_ref("apps/v1", "DaemonSet", &ds.metadata)]),
                    ..Default::default()
                },
                spec: Some(pspec),
                status: None,
            };
            self.client.create(&pod)
        };
        // Nodes without a pod get one, bound directly to the node.
        let mut created = 0;
        let mut backing_off: Option<std::time::Duration> = None;
        for n in &wanted {
            if by_node.get(&n.name).is_some_and(|p| !p.is_empty()) || stopping.contains(&n.name) {
                continue;
            }
            if let Some((until, _)) = self.backoff.get(&(uid.clone(), n.name.clone())) {
                let left = until.saturating_duration_since(std::time::Instant::now());
                if !left.is_zero() {
                    backing_off = Some(backing_off.map_or(left, |b| b.min(left)));
                    continue;
                }
            }
            let p = make(&n.name)?;
            by_node.entry(n.name.clone()).or_default().push(p);
            created += 1;
        }
        if created > 0 {
            let msg = format!("Created {created} pod(s) for daemon set {}", key.name);
            events::record(
                &self.client,
                "daemonset-controller",
                ("apps/v1", "DaemonSet", &ds.metadata),
                false,
                "SuccessfulCreate",
                &msg,
            );
        }
        // Rolling update: replace old-template pods, at most maxUnavailable
        // unavailable at a time.
        let desired = i32::try_from(wanted.len()).unwrap_or(i32::MAX);
        let is_new = is_current;
        let available = |p: &Pod| podutil::is_available(p, min_ready, now);
        if rolling && surge > 0 {
            // Surge: a new pod beside each old one (unavailable old ones at
            // once, available ones up to maxSurge nodes at a time), the old
            // one deleted when the new is available.
            let mut surging = 0i64;
            let mut start_on: Vec<String> = Vec::new();
            let mut old_only: Vec<(String, bool)> = Vec::new();
            for (node, pods) in &by_node {
                let new = pods.iter().find(|p| is_new(p));
                let old = pods.iter().find(|p| !is_new(p));
                match (new, old) {
                    (Some(n), Some(o)) if available(n) => delete(o)?,
                    (Some(_), Some(_)) => surging += 1,
                    (None, Some(o)) => old_only.push((node.clone(), available(o))),
                    _ => {}
                }
            }
            // Unavailable old pods first: they cost no surge.
            old_only.sort_by_key(|(_, avail)| *avail);
            for (node, avail) in old_only {
                if avail {
                    if surging >= surge {
                        break;
                    }
                    surging += 1;
                }
                start_on.push(node);
            }
            for node in start_on {
                let p = make(&node)?;
                by_node.entry(node).or_default().push(p);
            }
        } else if rolling {
            let current: Vec<&Pod> = by_node.values().flatten().collect();
            let max_unavailable = match strategy.rolling_update.and_then(|r| r.max_unavailable) {
                Some(IntOrString::Int(i)) => i,
                Some(IntOrString::String(s)) => {
                    let pct: i64 = s.trim_end_matches('%').parse().unwrap_or(0);
                    // Rounded up, as Kubernetes does for DaemonSets.
                    i32::try_from((pct * i64::from(desired) + 99) / 100).unwrap_or(1)
                }
                None => 1,
            }
            .max(1);
            let unavailable = i32::try_from(wanted.len()).unwrap_or(0)
                - i32::try_from(current.iter().filter(|p| available(p)).count()).unwrap_or(0);
            let mut budget = max_unavailable - unavailable.max(0);
            let mut old: Vec<&&Pod> = current.iter().filter(|p| !is_new(p)).collect();
            // Old pods that are not available cost nothing to replace: first.
            old.sort_by_key(|p| available(p));
            for p in old {
                if available(p) {
                    if budget <= 0 {
                        break;
                    }
                    budget -= 1;
                }
                delete(p)?;
            }
        }
        // Counted by node (a surging node holds two pods), as Kubernetes counts.
        let count = |f: &dyn Fn(&Pod) -> bool| {
            i32::try_from(by_node.values().filter(|ps| ps.iter().any(f)).count()).unwrap_or(0)
        };
        let status = DaemonSetStatus {
            desired_number_scheduled: desired,
            current_number_scheduled: count(&|_| true),
            number_misscheduled: i32::try_from(misscheduled).unwrap_or(0),
            number_ready: count(&podutil::is_ready),
            updated_number_scheduled: Some(count(&is_new)),
            number_available: Some(count(&available)),
            number_unavailable: Some((desired - count(&available)).max(0)),
            observed_generation: ds.metadata.generation,
            collision_count: ds.status.as_ref().and_then(|s| s.collision_count),
            conditions: ds.status.as_ref().and_then(|s| s.conditions.clone()),
        };
        if ds.status.as_ref() != Some(&status) {
            let mut d = ds.clone();
            d.status = Some(status);
            d.metadata.resource_version = None;
            self.client.replace_status(&d)?;
        }
        let waiting: BTreeMap<i64, ()> = by_node
            .values()
            .flatten()
            .filter_map(|p| podutil::until_available(p, min_ready, now))
            .map(|s| (s, ()))
            .collect();
        let next = waiting.keys().next().map(|s| std::time::Duration::from_secs(s.unsigned_abs()));
        Ok(match (next, backing_off) {
            (Some(a), Some(b)) => Action::RequeueAfter(a.min(b)),
            (Some(a), None) | (None, Some(a)) => Action::RequeueAfter(a),
            (None, None) => Action::Done,
        })
    }
}
