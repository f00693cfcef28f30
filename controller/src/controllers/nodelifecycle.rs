//! The node lifecycle controller: a node's readiness comes from the newer of
//! the `lastHeartbeatTime` of its Ready condition (written by the fleet link
//! when the node's status changes, or by any client through `nodes/status`)
//! and the fleet link's in-memory liveness (presence and report age, never
//! written as heartbeats). Past the grace period the node's
//! Ready condition turns Unknown, it gets the `unreachable` taints and its
//! pods turn not-ready. A pod is evicted only when it tolerates the
//! `NoExecute` taint for a limited `tolerationSeconds` and that time is up:
//! kedge adds no default toleration, so by default nothing is evicted (edge
//! nodes drop off and come back; design.md §4). Each node also gets its
//! `spec.podCIDR` here, from the cluster CIDR.
//!
//! Liveness comes through the [`Liveness`] trait (the fleet link implements
//! it) and time from a [`Clock`], so tests can drive both.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod, PodCondition, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

use super::events;
use super::runner::{Action, Reconcile};
use super::watched::Watched;
use crate::client::{Client, Kind};
use crate::controllers::ControllerError;
use crate::scheduler::model::tolerates;
use crate::store::{Key, WatchEvent};

pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
pub const NOT_READY: &str = "node.kubernetes.io/not-ready";

/// What the controller knows of a node's liveness beyond its stored status.
pub trait Liveness: Send + Sync {
    /// The node's liveness as a heartbeat time (unix seconds); `None` when
    /// nothing better than the stored status is known.
    fn heartbeat(&self, node: &str) -> Option<i64>;
    /// The nodes whose liveness changed since the last call (each change
    /// also signals the resync of [`crate::controllers::runner::run_with_resync`]);
    /// `None`: not known, look at every node.
    fn take_changed(&self) -> Option<Vec<String>> {
        None
    }
}

/// The time the node lifecycle judges by, in unix seconds.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> i64;
}

/// The system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> i64 {
        jiff::Timestamp::now().as_second()
    }
}

#[derive(Debug, Clone)]
pub struct NodeLifecycleConfig {
    /// `--node-monitor-grace-period` (default 40 s).
    pub grace: Duration,
    /// `--cluster-cidr` (default 10.42.0.0/16); nodes get ranges from it.
    pub cluster_cidr: (Ipv4Addr, u8),
    /// `--node-cidr-mask-size` (default 24): the prefix of each node's range.
    pub node_cidr_mask: u8,
    pub clock: Arc<dyn Clock>,
}

impl Default for NodeLifecycleConfig {
    fn default() -> Self {
        NodeLifecycleConfig {
            grace: Duration::from_secs(40),
            cluster_cidr: (Ipv4Addr::new(10, 42, 0, 0), 16),
            node_cidr_mask: 24,
            clock: Arc::new(SystemClock),
        }
    }
}

/// The first network address, in `base/bits`, of a `/mask` range that
/// overlaps none of `taken` (CIDRs; unparsable ones are skipped).
fn free_range<'a>(base: Ipv4Addr, bits: u8, mask: u8, taken: impl Iterator<Item = &'a str>) -> Option<Ipv4Addr> {
    let span = |prefix: u8| 1u64 << (32 - u32::from(prefix));
    let mut used: Vec<(u64, u64)> = taken
        .filter_map(|c| c.parse::<ipnet::Ipv4Net>().ok())
        .map(|n| (u64::from(u32::from(n.network())), u64::from(u32::from(n.network())) + span(n.prefix_len())))
        .collect();
    used.sort_unstable();
    let start = u64::from(u32::from(base) & !(u32::MAX.checked_shr(u32::from(bits)).unwrap_or(0)));
    let end = start + span(bits);
    let step = span(mask);
    let mut next = used.iter().peekable();
    let mut candidate = start;
    // Ranges ending at or before the candidate no longer matter; the first
    // one left overlaps it or lies beyond.
    let mut reach = 0u64;
    while candidate + step <= end {
        while let Some(&&(s, e)) = next.peek() {
            if s >= candidate + step {
                break;
            }
            reach = reach.max(e);
            next.next();
        }
        if reach <= candidate {
            return u32::try_from(candidate).ok().map(Ipv4Addr::from);
        }
        // Skip to the first aligned range past everything overlapping.
        candidate = reach.div_ceil(step) * step;
    }
    None
}

pub struct NodeLifecycle {
    client: Client,
    cfg: NodeLifecycleConfig,
    node_id: &'static str,
    pod_id: &'static str,
    /// Nodes carrying a NoExecute taint of ours: their pods' changes matter.
    tainted: HashSet<String>,
    /// Nodes told (by an Event) that no pod CIDR is left for them.
    cidr_warned: HashSet<String>,
    /// Each node's `spec.podCIDR`, listed at the first allocation and kept
    /// from the Node watch since, as kube's range allocator keeps its set
    /// from the informer: listing every Node for each new one was
    /// quadratic (5,000 nodes joining spent minutes there).
    ranges: Watched<String>,
    /// In-memory liveness from the fleet link (presence, report age).
    liveness: Option<Arc<dyn Liveness>>,
    /// When this controller started (unix seconds): like Kubernetes' node
    /// controller, a node gets a full grace period from the moment the
    /// controller first sees it, so a restarted controller does not mark
    /// nodes NotReady before their agents have had time to reconnect.
    started: i64,
}

fn ready_condition(n: &Node) -> Option<&NodeCondition> {
    n.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == "Ready")
}

fn has_taint(n: &Node, key: &str, effect: &str) -> bool {
    n.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|t| t.iter().any(|t| t.key == key && t.effect == effect))
}

impl NodeLifecycle {
    pub fn new(
        client: Client,
        cfg: NodeLifecycleConfig,
        liveness: Option<Arc<dyn Liveness>>,
    ) -> Result<Self, ControllerError> {
        let started = cfg.clock.now();
        Ok(NodeLifecycle {
            client,
            cfg,
            node_id: Node::rt()?.id,
            pod_id: Pod::rt()?.id,
            tainted: HashSet::new(),
            cidr_warned: HashSet::new(),
            ranges: Watched::new(Node::rt()?.id, |n| {
                n.pointer("/spec/podCIDR").and_then(|c| c.as_str()).filter(|c| !c.is_empty()).map(str::to_owned)
            }),
            liveness,
            started,
        })
    }

    fn now(&self) -> i64 {
        self.cfg.clock.now()
    }

    /// Now, as a Kubernetes timestamp.
    fn now_time(&self) -> Option<Time> {
        jiff::Timestamp::from_second(self.now()).ok().map(Time)
    }

    /// The lowest free node range (`--node-cidr-mask-size`) of the cluster
    /// CIDR, not overlapping any node's (ranges given under another mask
    /// size stay theirs).
    fn allocate_cidr(&mut self) -> Result<String, ControllerError> {
        let taken = self.ranges.get(self.client.store())?.values().map(String::as_str);
        let (base, bits) = self.cfg.cluster_cidr;
        let mask = self.cfg.node_cidr_mask.clamp(bits, 32);
        free_range(base, bits, mask, taken).map(|a| format!("{a}/{mask}")).ok_or_else(|| ControllerError::NoPodCidr {
            cluster: format!("{base}/{bits}"),
            mask,
            blocks: 1u64 << (mask - bits),
        })
    }

    /// Adds or removes our taints so the node carries exactly `want`.
    fn set_taints(&self, node: &Node, want: &[(&str, &str)]) -> Result<Node, ControllerError> {
        let ours = [UNREACHABLE, NOT_READY];
        let mut n = node.clone();
        let taints = n.spec.get_or_insert_with(Default::default).taints.get_or_insert_with(Vec::new);
        let before = taints.clone();
        taints.retain(|t| !ours.contains(&t.key.as_str()) || want.iter().any(|(k, e)| *k == t.key && *e == t.effect));
        for (k, e) in want {
            if !taints.iter().any(|t| t.key == *k && t.effect == *e) {
                taints.push(Taint { key: (*k).into(), effect: (*e).into(), value: None, time_added: self.now_time() });
            }
        }
        if *taints == before {
            return Ok(node.clone());
        }
        n.metadata.resource_version = None;
        self.client.replace(&n)
    }

    fn mark_unknown(&self, node: &Node) -> Result<Node, ControllerError> {
        let mut n = node.clone();
        let conds = n.status.get_or_insert_with(Default::default).conditions.get_or_insert_with(Vec::new);
        let now = self.now_time();
        match conds.iter_mut().find(|c| c.type_ == "Ready") {
            Some(c) if c.status == "Unknown" => return Ok(node.clone()),
            Some(c) => {
                c.status = "Unknown".into();
                c.reason = Some("NodeStatusUnknown".into());
                c.message = Some("Kubelet stopped posting node status.".into());
                c.last_transition_time = now;
            }
            None => conds.push(NodeCondition {
                type_: "Ready".into(),
                status: "Unknown".into(),
                reason: Some("NodeStatusNeverUpdated".into()),
                message: Some("Kubelet never posted node status.".into()),
                last_transition_time: now,
                last_heartbeat_time: None,
            }),
        }
        n.metadata.resource_version = None;
        let n = self.client.replace_status(&n)?;
        let name = n.metadata.name.clone().unwrap_or_default();
        tracing::warn!(node = %name, "node stopped reporting: NotReady");
        events::record(
            &self.client,
            "node-controller",
            ("v1", "Node", &n.metadata),
            false,
            "NodeNotReady",
            &format!("Node {name} status is now: NodeNotReady"),
        );
        Ok(n)
    }

    fn pods_on(&self, node: &str) -> Result<Vec<Pod>, ControllerError> {
        Ok(self
            .client
            .list::<Pod>(None)?
            .into_iter()
            .filter(|p| {
                p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node)
                    && p.metadata.deletion_timestamp.is_none()
            })
            .collect())
    }

    fn mark_pods_not_ready(&self, pods: &[Pod]) -> Result<(), ControllerError> {
        for p in pods {
            let mut p = p.clone();
            let conds = p.status.get_or_insert_with(Default::default).conditions.get_or_insert_with(Vec::new);
            let now = self.now_time();
            match conds.iter_mut().find(|c| c.type_ == "Ready") {
                Some(c) if c.status == "False" => continue,
                Some(c) => {
                    c.status = "False".into();
                    c.reason = Some("NodeNotReady".into());
                    c.last_transition_time = now;
                }
                None => conds.push(PodCondition {
                    type_: "Ready".into(),
                    status: "False".into(),
                    reason: Some("NodeNotReady".into()),
                    last_transition_time: now,
                    ..Default::default()
                }),
            }
            p.metadata.resource_version = None;
            super::ignore_not_found(self.client.replace_status(&p))?;
        }
        Ok(())
    }

    /// Evicts pods whose toleration of a NoExecute taint has run out; returns
    /// the seconds until the next one would.
    fn evict(&self, node: &Node, pods: &[Pod]) -> Result<Option<i64>, ControllerError> {
        let taints: Vec<&Taint> = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_ref())
            .into_iter()
            .flatten()
            .filter(|t| t.effect == "NoExecute")
            .collect();
        if taints.is_empty() {
            return Ok(None);
        }
        let now = self.now();
        let mut next: Option<i64> = None;
        for p in pods {
            let tols = p.spec.as_ref().and_then(|s| s.tolerations.clone()).unwrap_or_default();
            // The earliest deadline over the taints this pod tolerates for a
            // limited time; a taint it does not tolerate at all does not
            // evict it (no default eviction in kedge).
            let mut deadline: Option<i64> = None;
            for t in &taints {
                let secs =
                    tols.iter().filter(|tol| tolerates(tol, t)).map(|tol| tol.toleration_seconds).collect::<Vec<_>>();
                if secs.is_empty() || secs.iter().any(Option::is_none) {
                    continue;
                }
                let limit = secs.into_iter().flatten().max().unwrap_or(0).max(0);
                let added = t.time_added.as_ref().map_or(now, |a| a.0.as_second());
                let at = added.saturating_add(limit);
                deadline = Some(deadline.map_or(at, |d| d.min(at)));
            }
            let Some(at) = deadline else { continue };
            if at <= now {
                let (ns, name) = (
                    p.metadata.namespace.as_deref().unwrap_or_default(),
                    p.metadata.name.as_deref().unwrap_or_default(),
                );
                tracing::warn!(pod = %format!("{ns}/{name}"), node = node.metadata.name.as_deref().unwrap_or_default(), "toleration expired: evicting");
                events::record(
                    &self.client,
                    "node-controller",
                    ("v1", "Pod", &p.metadata),
                    false,
                    "TaintManagerEviction",
                    &format!("Marking for deletion Pod {ns}/{name}"),
                );
                match self.client.delete::<Pod>(ns, name, p.metadata.uid.as_deref()) {
                    // Gone already, or another pod of that name by now.
                    Ok(()) | Err(ControllerError::NotFound(_) | ControllerError::Conflict(_)) => {}
                    Err(e) => return Err(e),
                }
            } else {
                next = Some(next.map_or(at - now, |n: i64| n.min(at - now)));
            }
        }
        Ok(next)
    }
}

/// The namespace of the nodes' Leases.
pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";

impl NodeLifecycle {
    /// Each Node has its Lease in `kube-node-lease` (owned by the Node, so
    /// it goes with it), written once: its `renewTime` is read from the
    /// fleet's liveness when a client asks (`api/objects.rs`), never written
    /// per heartbeat (design.md §3).
    fn ensure_lease(&self, node: &Node) -> Result<(), ControllerError> {
        use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
        let name = node.metadata.name.clone().unwrap_or_default();
        if self.client.get::<Lease>(NODE_LEASE_NAMESPACE, &name)?.is_some() {
            return Ok(());
        }
        let mut owner = super::podutil::owner_ref("v1", "Node", &node.metadata);
        owner.controller = None;
        owner.block_owner_deletion = None;
        let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
            jiff::Timestamp::from_second(self.cfg.clock.now()).unwrap_or_default(),
        );
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(NODE_LEASE_NAMESPACE.into()),
                owner_references: Some(vec![owner]),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(name),
                lease_duration_seconds: i32::try_from(self.cfg.grace.as_secs()).ok(),
                renew_time: Some(now),
                ..Default::default()
            }),
        };
        match self.client.create(&lease) {
            Ok(_) | Err(ControllerError::Conflict(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl Reconcile for NodeLifecycle {
    fn name(&self) -> &'static str {
        "node-lifecycle"
    }

    fn keys_for(&mut self, ev: &WatchEvent, out: &mut Vec<Key>) {
        if ev.resource == self.node_id {
            self.ranges.observe(ev);
            out.push(Key::new(self.node_id, "", &ev.name));
        } else if ev.resource == self.pod_id {
            if let Some(n) = ev.object.pointer("/spec/nodeName").and_then(|n| n.as_str()) {
                if self.tainted.contains(n) {
                    out.push(Key::new(self.node_id, "", n));
                }
            }
        }
    }

    fn all_keys(&mut self) -> Result<Vec<Key>, ControllerError> {
        // A resync: watch events may have been missed, so the ranges are
        // read again at the next allocation.
        self.ranges.forget();
        self.client.keys::<Node>()
    }

    /// Only the nodes whose presence changed: looking at every node on
    /// every change was quadratic (5,000 nodes joining kept the controller
    /// busy re-checking them, and only 8 were Ready after 6 minutes).
    fn signalled_keys(&mut self) -> Result<Vec<Key>, ControllerError> {
        match self.liveness.as_ref().and_then(|l| l.take_changed()) {
            Some(nodes) => Ok(nodes.iter().map(|n| Key::new(self.node_id, "", n)).collect()),
            None => self.all_keys(),
        }
    }

    fn reconcile(&mut self, key: &Key) -> Result<Action, ControllerError> {
        let Some(mut node) = self.client.get::<Node>("", &key.name)? else {
            // The node was deleted: its pods will never run again, and no
            // node will report them stopped, so they go at once (Kubernetes'
            // pod GC force-deletes them); their controllers replace them elsewhere.
            self.tainted.remove(&key.name);
            for p in self.pods_on(&key.name)? {
                let (ns, name) = (
                    p.metadata.namespace.as_deref().unwrap_or_default(),
                    p.metadata.name.as_deref().unwrap_or_default(),
                );
                tracing::info!(pod = %format!("{ns}/{name}"), node = %key.name, "node deleted: deleting its pod");
                super::ignore_not_found(self.client.delete_now::<Pod>(ns, name, p.metadata.uid.as_deref()))?;
            }
            return Ok(Action::Done);
        };
        self.ensure_lease(&node)?;
        if node.spec.as_ref().and_then(|s| s.pod_cidr.as_deref()).is_none_or(str::is_empty) {
            match self.allocate_cidr() {
                Ok(cidr) => {
                    let mut n = node.clone();
                    let spec = n.spec.get_or_insert_with(Default::default);
                    spec.pod_cidr = Some(cidr.clone());
                    spec.pod_cidrs = Some(vec![cidr.clone()]);
                    n.metadata.resource_version = None;
                    node = self.client.replace(&n)?;
                    // Taken now: the next allocation may come before this
                    // write's watch event.
                    if let Some(r) = self.ranges.listed() {
                        r.insert(key.name.clone(), cidr.clone());
                    }
                    self.cidr_warned.remove(&key.name);
                    tracing::info!(node = %key.name, %cidr, "assigned pod CIDR");
                }
                // The rest of the node's lifecycle goes on; its agent reports
                // NetworkUnavailable. Tried again at the node's next change
                // (a node deleted frees its /24).
                Err(e @ ControllerError::NoPodCidr { .. }) if self.cidr_warned.insert(key.name.clone()) => {
                    tracing::warn!(node = %key.name, error = %e, "no pod CIDR for the node");
                    let message = format!("Node {} status is now: CIDRNotAvailable ({e})", key.name);
                    events::record(
                        &self.client,
                        "cidrAllocator",
                        ("v1", "Node", &node.metadata),
                        true,
                        "CIDRNotAvailable",
                        &message,
                    );
                }
                Err(ControllerError::NoPodCidr { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let ready = ready_condition(&node);
        let stored = ready
            .and_then(|c| c.last_heartbeat_time.as_ref())
            .or(node.metadata.creation_timestamp.as_ref())
            .map_or(0, |t| t.0.as_second());
        let live = self.liveness.as_ref().and_then(|l| l.heartbeat(&key.name));
        let heartbeat = live.map_or(stored, |l| l.max(stored)).max(self.started);
        let grace = i64::try_from(self.cfg.grace.as_secs()).unwrap_or(i64::MAX);
        let age = self.now() - heartbeat;
        let mut requeue = None;
        if age > grace {
            node = self.mark_unknown(&node)?;
            node = self.set_taints(&node, &[(UNREACHABLE, "NoExecute"), (UNREACHABLE, "NoSchedule")])?;
        } else {
            requeue = Some(grace - age + 1);
            match ready.map(|c| c.status.as_str()) {
                Some("True") => node = self.set_taints(&node, &[])?,
                Some("False") => {
                    node = self.set_taints(&node, &[(NOT_READY, "NoExecute"), (NOT_READY, "NoSchedule")])?
                }
                _ => {}
            }
        }
        let not_ready = ready_condition(&node).is_none_or(|c| c.status != "True");
        if has_taint(&node, UNREACHABLE, "NoExecute") || has_taint(&node, NOT_READY, "NoExecute") {
            self.tainted.insert(key.name.clone());
        } else {
            self.tainted.remove(&key.name);
        }
        if not_ready || self.tainted.contains(&key.name) {
            let pods = self.pods_on(&key.name)?;
            if not_ready {
                self.mark_pods_not_ready(&pods)?;
            }
            if let Some(secs) = self.evict(&node, &pods)? {
                requeue = Some(requeue.map_or(secs, |r: i64| r.min(secs)));
            }
        }
        Ok(requeue.map_or(Action::Done, |s| Action::RequeueAfter(Duration::from_secs(s.max(1).unsigned_abs()))))
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod free_range_tests {
    use super::free_range;
    use std::net::Ipv4Addr;

    fn free(bits: u8, mask: u8, taken: &[&str]) -> Option<String> {
        free_range(Ipv4Addr::new(10, 42, 0, 0), bits, mask, taken.iter().copied()).map(|a| a.to_string())
    }

    #[test]
    fn the_lowest_range_overlapping_none_is_given() {
        assert_eq!(free(16, 24, &[]).as_deref(), Some("10.42.0.0"));
        assert_eq!(free(16, 24, &["10.42.0.0/24", "10.42.2.0/24"]).as_deref(), Some("10.42.1.0"));
        assert_eq!(free(16, 26, &["10.42.0.0/26", "10.42.0.128/26"]).as_deref(), Some("10.42.0.64"));
        // A /24 given before the mask size changed covers four /26s.
        assert_eq!(free(16, 26, &["10.42.0.0/24"]).as_deref(), Some("10.42.1.0"));
        assert_eq!(free(16, 24, &["10.42.0.64/26", "garbage"]).as_deref(), Some("10.42.1.0"));
    }

    #[test]
    fn a_full_pool_gives_none_and_a_wide_one_serves_ten_thousand_nodes() {
        assert_eq!(free(24, 26, &["10.42.0.0/26", "10.42.0.64/26", "10.42.0.128/26", "10.42.0.192/26"]), None);
        // 10.32.0.0/12 holds 16,384 /26s: 10,000 nodes of 61 pods.
        let base = u32::from(Ipv4Addr::new(10, 32, 0, 0));
        let taken: Vec<String> = (0..10_000u32).map(|i| format!("{}/26", Ipv4Addr::from(base + i * 64))).collect();
        let next = free_range(Ipv4Addr::from(base), 12, 26, taken.iter().map(String::as_str));
        assert_eq!(next, Some(Ipv4Addr::from(base + 10_000 * 64)));
    }
}
