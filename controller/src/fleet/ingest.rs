//! What nodes send: join requests ([`super::join`]), reports that become
//! Pod and Node status (written only when something other than a heartbeat
//! time changed), presence that feeds liveness, events that become
//! Kubernetes Events. A node's message is taken only if it carries the
//! signature of the key recorded for that node and a counter above the
//! newest taken ([`super::trust`]). Anything else — garbage, truncated
//! CBOR, an unknown protocol version, another node's message, an oversize
//! payload, a forgery, a replay, a message over the node's rate — is
//! dropped with a log line and counted, before it touches the API: the
//! broker is hostile, so what arrives unverified writes nothing, Events
//! included.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus, Node,
    NodeAddress, NodeCondition, NodeStatus, NodeSystemInfo, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kedge_common::sign::Purpose;
use kedge_common::topics::{self, NodeTopic};
use kedge_common::wire::{self, NetworkStatus, NodeReport, Presence};

use super::join::Joins;
use super::trust::{Kind, Trust, Untrusted};
use super::{FleetOptions, FleetState, dashboard};
use crate::client::Client;
use crate::controllers::ControllerError;
use crate::controllers::{events, ignore_not_found};

pub struct Ingest {
    client: Client,
    opts: FleetOptions,
    state: Arc<FleetState>,
    trust: Trust,
    joins: Joins,
    /// Messages dropped, by why (for the log, which says each reason at
    /// powers of two rather than a line per message of a flood).
    dropped: BTreeMap<&'static str, u64>,
    /// The newest verified report of each node over its report rate, taken
    /// in at the next tick its rate allows (a newer one replaces it).
    waiting: BTreeMap<String, NodeReport>,
    /// Each node's static pods, as mirror pods.
    mirrors: Arc<super::mirror::Mirrors>,
    /// The snapshot generation each node last reported acting on.
    observed: BTreeMap<String, u64>,
}
/// The `kubernetes.io`/`k8s.io` labels a node may set on its own Node, as
/// Kubernetes' NodeRestriction admission allows a kubelet
/// (`kubeletapis.IsKubeletLabel`).
const NODE_LABELS: [&str; 11] = [
    "kubernetes.io/hostname",
    "kubernetes.io/arch",
    "kubernetes.io/os",
    "beta.kubernetes.io/arch",
    "beta.kubernetes.io/os",
    "beta.kubernetes.io/instance-type",
    "node.kubernetes.io/instance-type",
    "failure-domain.beta.kubernetes.io/zone",
    "failure-domain.beta.kubernetes.io/region",
    "topology.kubernetes.io/zone",
    "topology.kubernetes.io/region",
];
/// Label namespaces a node may use freely (and their subdomains).
const NODE_LABEL_NAMESPACES: [&str; 2] = ["kubelet.kubernetes.io", "node.kubernetes.io"];

/// Whether a node may set label `key` on its own Node (at registration and
/// after): NodeRestriction's rule. Labels outside the `kubernetes.io` and
/// `k8s.io` namespaces are the node's to set; inside them only the list
/// above and the kubelet's own namespaces — so no node makes itself
/// `node-role.kubernetes.io/control-plane` or sets the
/// `node-restriction.kubernetes.io/` labels that pods may select on to stay
/// off untrusted nodes.
fn node_may_set(key: &str) -> bool {
    let Some((prefix, _)) = key.split_once('/') else { return true };
    let within = |ns: &str| prefix == ns || prefix.ends_with(&format!(".{ns}"));
    if within("node-restriction.kubernetes.io") {
        return false;
    }
    if !within("kubernetes.io") && !within("k8s.io") {
        return true;
    }
    NODE_LABELS.contains(&key) || NODE_LABEL_NAMESPACES.iter().any(|ns| within(ns))
}

/// The labels of `reported` that `node` may set; the others are logged.
fn allowed_labels(node: &str, reported: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let (allowed, refused): (BTreeMap<_, _>, BTreeMap<_, _>) =
        reported.iter().map(|(k, v)| (k.clone(), v.clone())).partition(|(k, _)| node_may_set(k));
    if !refused.is_empty() {
        tracing::warn!(%node, labels = ?refused.keys().collect::<Vec<_>>(), "node tried to set labels nodes may not set; ignored");
    }
    allowed
}

fn time(secs: i64) -> Option<Time> {
    jiff::Timestamp::from_second(secs).ok().filter(|_| secs > 0).map(Time)
}

fn cpu_quantity(milli: i64) -> Quantity {
    Quantity(if milli % 1000 == 0 { (milli / 1000).to_string() } else { format!("{milli}m") })
}

fn bytes_quantity(bytes: i64) -> Quantity {
    Quantity(format!("{}Ki", bytes / 1024))
}

fn resources(r: &wire::NodeResources) -> BTreeMap<String, Quantity> {
    BTreeMap::from([
        ("cpu".to_string(), cpu_quantity(r.cpu_milli)),
        ("memory".to_string(), bytes_quantity(r.memory_bytes)),
        ("ephemeral-storage".to_string(), bytes_quantity(r.ephemeral_storage_bytes)),
        ("pods".to_string(), Quantity(r.pods.to_string())),
    ])
}

/// `conditions` with the transition times of `old` kept where the status did
/// not change, and the heartbeat times set to `now`.
fn carry_times(mut conds: Vec<NodeCondition>, old: Option<&Vec<NodeCondition>>, now: &Time) -> Vec<NodeCondition> {
    for c in &mut conds {
        let prev = old.and_then(|o| o.iter().find(|p| p.type_ == c.type_));
        c.last_transition_time = match prev {
            Some(p) if p.status == c.status => p.last_transition_time.clone(),
            _ => Some(now.clone()),
        };
        c.last_heartbeat_time = Some(now.clone());
    }
    conds
}

fn without_times(conds: Option<&Vec<NodeCondition>>) -> Vec<NodeCondition> {
    conds
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|mut c| {
            c.last_heartbeat_time = None;
            c.last_transition_time = None;
            c
        })
        .collect()
}

fn node_condition(type_: &str, on: bool, reason_on: &str, reason_off: &str, message: &str) -> NodeCondition {
    NodeCondition {
        type_: type_.into(),
        status: if on { "True" } else { "False" }.into(),
        reason: Some(if on { reason_on } else { reason_off }.into()),
        message: Some(message.into()),
        ..Default::default()
    }
}

fn node_status(r: &NodeReport, old: Option<&NodeStatus>) -> NodeStatus {
    let now = Time(jiff::Timestamp::now());
    let p = r.pressure;
    let mut conds = vec![
        node_condition("Ready", true, "KubeletReady", "", "kedge agent is posting ready status"),
        node_condition(
            "MemoryPressure",
            p.memory,
            "KubeletHasInsufficientMemory",
            "KubeletHasSufficientMemory",
            if p.memory { "node has memory pressure" } else { "node has sufficient memory available" },
        ),
        node_condition(
            "DiskPressure",
            p.disk,
            "KubeletHasDiskPressure",
            "KubeletHasNoDiskPressure",
            if p.disk { "node has disk pressure" } else { "node has no disk pressure" },
        ),
        node_condition(
            "PIDPressure",
            p.pid,
            "KubeletHasInsufficientPID",
            "KubeletHasSufficientPID",
            if p.pid { "node has PID pressure" } else { "node has sufficient PID available" },
        ),
    ];
    match &r.network {
        NetworkStatus::None => {}
        NetworkStatus::Ready => conds.insert(
            0,
            node_condition("NetworkUnavailable", false, "", "KedgeNetworkReady", "kedge pod network is set up"),
        ),
        NetworkStatus::Unavailable { reason } => {
            conds.insert(0, node_condition("NetworkUnavailable", true, "NoPodNetwork", "", reason))
        }
    }
    let kubelet = format!("v1.32.0+kedge-{}", r.agent_version);
    NodeStatus {
        capacity: Some(resources(&r.capacity)),
        allocatable: Some(resources(&r.allocatable)),
        addresses: Some(
            r.addresses.iter().map(|(t, a)| NodeAddress { type_: t.clone(), address: a.clone() }).collect(),
        ),
        conditions: Some(carry_times(conds, old.and_then(|o| o.conditions.as_ref()), &now)),
        node_info: Some(NodeSystemInfo {
            architecture: r.info.architecture.clone(),
            operating_system: r.info.operating_system.clone(),
            os_image: r.info.os_image.clone(),
            kernel_version: r.info.kernel_version.clone(),
            machine_id: r.info.machine_id.clone(),
            container_runtime_version: r.info.container_runtime_version.clone(),
            kubelet_version: kubelet.clone(),
            kube_proxy_version: kubelet,
            boot_id: r.boot_id.clone(),
            system_uuid: String::new(),
            swap: None,
        }),
        ..old.cloned().unwrap_or_default()
    }
}

fn same_node_status(a: Option<&NodeStatus>, b: &NodeStatus) -> bool {
    let Some(a) = a else { return false };
    let strip = |s: &NodeStatus| {
        let mut s = s.clone();
        s.conditions = Some(without_times(s.conditions.as_ref()));
        s
    };
    strip(a) == strip(b)
}

fn container_state(s: &wire::ContainerState) -> ContainerState {
    match s {
        wire::ContainerState::Waiting { reason, message } => ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.to_string()),
                message: (!message.is_empty()).then(|| message.clone()),
            }),
            ..Default::default()
        },
        wire::ContainerState::Running { started_at } => ContainerState {
            running: Some(ContainerStateRunning { started_at: time(*started_at) }),
            ..Default::default()
        },
        wire::ContainerState::Terminated { exit_code, reason, message, started_at, finished_at } => ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: *exit_code,
                reason: Some(reason.to_string()),
                message: (!message.is_empty()).then(|| message.clone()),
                started_at: time(*started_at),
                finished_at: time(*finished_at),
                ..Default::default()
            }),
            ..Default::default()
        },
    }
}

fn pod_status(r: &wire::PodReport, host_ip: Option<&str>, old: Option<&PodStatus>) -> PodStatus {
    let now = Time(jiff::Timestamp::now());
    let containers_ready = !r.containers.is_empty() && r.containers.iter().all(|c| c.ready);
    let cond = |type_: &str, on: bool, reason: Option<&str>| {
        let status = if on { "True" } else { "False" };
        let prev = old.and_then(|o| o.conditions.as_ref()).and_then(|cs| cs.iter().find(|c| c.type_ == type_));
        PodCondition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.map(str::to_string),
            last_transition_time: match prev {
                Some(p) if p.status == status => p.last_transition_time.clone(),
                _ => Some(now.clone()),
            },
            ..Default::default()
        }
    };
    let not_ready = (!containers_ready).then_some("ContainersNotReady");
    PodStatus {
        phase: Some(r.phase.to_string()),
        conditions: Some(vec![
            cond("PodReadyToStartContainers", r.start_time.is_some(), None),
            cond("Initialized", true, None),
            cond("Ready", r.ready, not_ready),
            cond("ContainersReady", containers_ready, not_ready),
            cond("PodScheduled", true, None),
        ]),
        host_ip: host_ip.map(str::to_string),
        host_ips: host_ip.map(|ip| vec![k8s_openapi::api::core::v1::HostIP { ip: ip.to_string() }]),
        pod_ip: r.pod_ip.clone(),
        pod_ips: r.pod_ip.as_ref().map(|ip| vec![PodIP { ip: ip.clone() }]),
        start_time: r.start_time.and_then(time),
        container_statuses: Some(
            r.containers
                .iter()
                .map(|c| ContainerStatus {
                    name: c.name.clone(),
                    image: c.image.clone(),
                    image_id: c.image_id.clone(),
                    container_id: (!c.container_id.is_empty()).then(|| c.container_id.clone()),
                    ready: c.ready,
                    started: Some(c.started),
                    restart_count: i32::try_from(c.restart_count).unwrap_or(i32::MAX),
                    state: Some(container_state(&c.state)),
                    last_state: Some(c.last_state.as_ref().map(container_state).unwrap_or_default()),
                    ..Default::default()
                })
                .collect(),
        ),
        qos_class: old.and_then(|o| o.qos_class.clone()),
        ..Default::default()
    }
}

impl Ingest {
    pub fn new(
        client: Client,
        opts: FleetOptions,
        state: Arc<FleetState>,
        joins: Joins,
        mirrors: Arc<super::mirror::Mirrors>,
    ) -> Ingest {
        Ingest {
            client,
            opts,
            state,
            trust: Trust::default(),
            joins,
            dropped: BTreeMap::new(),
            waiting: BTreeMap::new(),
            mirrors,
            observed: BTreeMap::new(),
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Takes one message from the broker.
    pub fn handle(&mut self, topic: &str, payload: &[u8]) {
        if let Some(node) = topics::parse_join_topic(&self.opts.prefix, topic) {
            return self.joins.handle(node, payload, &mut self.trust);
        }
        let Some((node, which)) = topics::parse_node_topic(&self.opts.prefix, topic) else {
            tracing::debug!(%topic, "message on a topic outside the fleet tree; ignored");
            return;
        };
        if !topics::valid_node_name(node) {
            self.drop("invalid node name", node, which, payload.len(), "not a node name");
            self.state.count_rejected(node, which.leaf(), "invalid node name");
            return;
        }
        if payload.is_empty() || which == NodeTopic::Desired {
            // A cleared retained message, or our own snapshot.
            return;
        }
        if which == NodeTopic::Rotate {
            return self.joins.rotate(node, payload, &mut self.trust);
        }
        let node = node.to_string();
        if let Err((why, e)) = self.take(&node, which, payload) {
            self.drop(why, &node, which, payload.len(), &e);
            self.state.count_rejected(&node, which.leaf(), why);
        }
    }

    /// Keeps the nodes' message counters in the store ([`Trust::persist`]).
    pub fn persist(&mut self) {
        self.trust.persist(&self.client);
    }

    /// Takes in the reports that waited for their node's rate, as far as it
    /// allows now (called every 100 ms).
    pub fn tick(&mut self) {
        let nodes: Vec<String> = self.waiting.keys().cloned().collect();
        for node in nodes {
            if !self.trust.report_allowed(&node) {
                continue;
            }
            let Some(r) = self.waiting.remove(&node) else { continue };
            // Revoked meanwhile: not taken.
            let n = match self.client.get::<Node>("", &node) {
                Ok(Some(n)) if self.trust.key(&self.client, &node, Some(&n)).is_ok() => n,
                _ => continue,
            };
            if let Err(e) = self.report(&node, n, r) {
                tracing::warn!(%node, error = %e, "a report that waited for its rate not written");
            }
        }
    }

    /// Logs a dropped message: the first of each reason and then at powers
    /// of two, so a flood costs a counter, not a log line each.
    fn drop(&mut self, why: &'static str, node: &str, which: NodeTopic, bytes: usize, error: &str) {
        let n = self.dropped.entry(why).or_default();
        *n += 1;
        if n.is_power_of_two() {
            tracing::warn!(%node, kind = ?which, bytes, error, dropped = *n, "message from a node dropped ({why})");
        }
    }

    /// Verifies and takes one message of a node.
    fn take(&mut self, node: &str, which: NodeTopic, payload: &[u8]) -> Result<(), (&'static str, String)> {
        let untrusted = |e: Untrusted| match e {
            Untrusted::NotJoined(_) => ("not joined", e.to_string()),
            Untrusted::Replay { .. } => ("replay", e.to_string()),
            Untrusted::RateLimited => ("rate limited", e.to_string()),
        };
        let cap = self.opts.max_payload;
        match which {
            NodeTopic::Status => {
                let n = self.client.get::<Node>("", node).map_err(|e| ("store", e.to_string()))?;
                let key = self.trust.key(&self.client, node, n.as_ref()).map_err(untrusted)?;
                let r = wire::decode_verified_for::<NodeReport>(payload, node, cap, Purpose::Report, &key)
                    .map_err(|e| ("unverified", e.to_string()))?;
                self.trust.admit(&self.client, node, Kind::Report, r.seq).map_err(untrusted)?;
                self.state.heard_from(node, r.seq);
                let Some(n) = n else { return Ok(()) };
                if !self.trust.report_allowed(node) {
                    if self.waiting.insert(node.to_owned(), r).is_some() {
                        return Err(("rate limited", "a newer report came before this one was written".into()));
                    }
                    return Ok(());
                }
                self.waiting.remove(node);
                self.report(node, n, r).map_err(|e| ("store", e.to_string()))
            }
            NodeTopic::Presence => {
                let n = self.client.get::<Node>("", node).map_err(|e| ("store", e.to_string()))?;
                let key = self.trust.key(&self.client, node, n.as_ref()).map_err(untrusted)?;
                if payload.len() > cap {
                    return Err(("malformed", format!("presence of {} bytes over the cap", payload.len())));
                }
                let p = Presence::from_json(payload).map_err(|e| ("malformed", e.to_string()))?;
                p.verify(node, &key).map_err(|e| ("unverified", format!("presence: {e}")))?;
                self.trust.admit(&self.client, node, Kind::Presence, p.seq).map_err(untrusted)?;
                tracing::info!(%node, online = p.online, seq = p.seq, "presence");
                self.state.set_presence(node, p.online, p.seq);
                Ok(())
            }
            NodeTopic::Events => {
                let key = self.trust.key(&self.client, node, None).map_err(untrusted)?;
                let ev = kedge_common::envelope::decode_verified::<wire::Event>(payload, cap, Purpose::Event, &key)
                    .map_err(|e| ("unverified", e.to_string()))?;
                self.trust.admit(&self.client, node, Kind::Event, ev.seq).map_err(untrusted)?;
                self.event(node, ev);
                Ok(())
            }
            NodeTopic::Desired | NodeTopic::Rotate => Ok(()),
        }
    }

    fn event(&self, node: &str, ev: wire::Event) {
        let (kind, meta) = match &ev.pod {
            Some((ns, name, uid)) => (
                "Pod",
                ObjectMeta {
                    namespace: Some(ns.clone()),
                    name: Some(name.clone()),
                    uid: Some(uid.clone()),
                    ..Default::default()
                },
            ),
            None => ("Node", ObjectMeta { name: Some(node.to_string()), ..Default::default() }),
        };
        let component = format!("kubelet/{node}");
        events::record(&self.client, &component, ("v1", kind, &meta), !ev.normal, &ev.reason, &ev.message);
    }

    /// A verified report of a joined node (its Node as just read).
    fn report(&mut self, node: &str, mut n: Node, r: NodeReport) -> Result<(), ControllerError> {
        // Labels the node reports (arch, os, hostname) are kept current; a
        // node cannot set the labels NodeRestriction keeps from kubelets.
        let labels = n.metadata.labels.get_or_insert_with(BTreeMap::new);
        let before = labels.clone();
        labels.extend(allowed_labels(node, &r.labels));
        if *labels != before {
            n.metadata.resource_version = None;
            n = self.client.replace(&n)?;
        }
        let status = node_status(&r, n.status.as_ref());
        if !same_node_status(n.status.as_ref(), &status) {
            n.status = Some(status);
            n.metadata.resource_version = None;
            self.client.replace_status(&n)?;
        }
        // The node is alive whatever becomes of its pods' status below.
        self.state.set_report(node, dashboard::ReportSummary::of(&r));
        let host_ip = r.addresses.iter().find(|(t, _)| t == "InternalIP").map(|(_, a)| a.as_str());
        if let Err(e) = self.mirrors.report(&self.client, &n, r.static_pods.clone()) {
            tracing::warn!(%node, error = %e, "mirror pods not brought in step");
        }
        for pr in &r.pods {
            if let Err(e) = self.pod_report(node, pr, host_ip) {
                tracing::warn!(%node, pod = %format!("{}/{}", pr.namespace, pr.name), error = %e, "pod status from the report not written");
            }
        }
        if self.observed.get(node) != Some(&r.observed_generation) {
            self.observed.insert(node.to_owned(), r.observed_generation);
            self.not_on_node(node, &r)?;
            self.volumes_removed(node, r.observed_generation)?;
        }
        Ok(())
    }

    /// Pods being deleted that the node does not run although it acts on a
    /// snapshot made after their deletion began (it refused them, say): it
    /// will never report them stopped, so they go now — the kubelet
    /// finishes the deletion of a pod it is not running at once.
    fn not_on_node(&self, node: &str, r: &NodeReport) -> Result<(), ControllerError> {
        for p in self.client.list::<Pod>(None)? {
            let here = p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node);
            let rv = p.metadata.resource_version.as_deref().and_then(|v| v.parse::<u64>().ok()).unwrap_or(u64::MAX);
            let reported = r.pods.iter().any(|pr| Some(pr.uid.as_str()) == p.metadata.uid.as_deref());
            let mirror = p.metadata.annotations.as_ref().is_some_and(|a| a.contains_key(super::mirror::MIRROR));
            if here && !reported && !mirror && p.metadata.deletion_timestamp.is_some() && rv <= r.observed_generation {
                let (ns, name) = (
                    p.metadata.namespace.as_deref().unwrap_or_default(),
                    p.metadata.name.as_deref().unwrap_or_default(),
                );
                tracing::info!(%node, pod = %format!("{ns}/{name}"), "pod being deleted is not on its node; removed");
                ignore_not_found(self.client.delete_now::<Pod>(ns, name, p.metadata.uid.as_deref()))?;
            }
        }
        Ok(())
    }

    /// Deleted node-local volumes whose data the node has removed: it acts
    /// on a snapshot made after the volume was marked so, which named it
    /// (`volume::data_to_delete`); their objects go now.
    fn volumes_removed(&self, node: &str, observed: u64) -> Result<(), ControllerError> {
        use crate::controllers::volume;
        for pv in self.client.list::<k8s_openapi::api::core::v1::PersistentVolume>(None)? {
            let rv = pv.metadata.resource_version.as_deref().and_then(|v| v.parse::<u64>().ok()).unwrap_or(u64::MAX);
            if volume::pinned_node(&pv) == Some(node) && volume::data_to_delete(&pv) && rv <= observed {
                tracing::info!(%node, volume = pv.metadata.name.as_deref().unwrap_or_default(), "the node removed the volume's data");
                volume::release_data(&self.client, &pv)?;
            }
        }
        Ok(())
    }

    /// One pod's status from its node's report, if that pod is still the one
    /// bound there.
    fn pod_report(&self, node: &str, pr: &wire::PodReport, host_ip: Option<&str>) -> Result<(), ControllerError> {
        {
            let Some(mut pod) = self.client.get::<Pod>(&pr.namespace, &pr.name)? else { return Ok(()) };
            // A mirror pod's status is its static pod's (the node's uid for it).
            let mirrored =
                pod.metadata.annotations.as_ref().and_then(|a| a.get(super::mirror::MIRROR)) == Some(&pr.uid);
            if (pod.metadata.uid.as_deref() != Some(pr.uid.as_str()) && !mirrored)
                || pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) != Some(node)
            {
                return Ok(()); // a report about an older pod of that name
            }
            let status = pod_status(pr, host_ip, pod.status.as_ref());
            let same = pod.status.as_ref().is_some_and(|old| {
                let strip = |s: &PodStatus| {
                    let mut s = s.clone();
                    if let Some(cs) = s.conditions.as_mut() {
                        cs.iter_mut().for_each(|c| c.last_transition_time = None);
                    }
                    s
                };
                strip(old) == strip(&status)
            });
            if !same {
                pod.status = Some(status);
                pod.metadata.resource_version = None;
                ignore_not_found(self.client.replace_status(&pod))?;
            }
            // Being deleted and stopped on its node: the object goes now (the
            // kubelet's final delete with grace 0, for this uid only).
            if pr.terminated && pod.metadata.deletion_timestamp.is_some() {
                match self.client.delete_now::<Pod>(&pr.namespace, &pr.name, Some(&pr.uid)) {
                    Ok(()) => {
                        tracing::info!(%node, pod = %format!("{}/{}", pr.namespace, pr.name), "pod stopped on its node; removed");
                    }
                    Err(ControllerError::NotFound(_) | ControllerError::Conflict(_)) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_read_like_kubectl() {
        assert_eq!(cpu_quantity(4000).0, "4");
        assert_eq!(cpu_quantity(1500).0, "1500m");
        assert_eq!(bytes_quantity(2 * 1024 * 1024).0, "2048Ki");
    }

    #[test]
    fn nodes_set_only_the_labels_node_restriction_allows() {
        for key in [
            "kubernetes.io/arch",
            "topology.kubernetes.io/zone",
            "node.kubernetes.io/instance-type",
            "sub.kubelet.kubernetes.io/x",
            "example.com/rack",
            "plain",
        ] {
            assert!(node_may_set(key), "{key}");
        }
        for key in [
            "node-role.kubernetes.io/control-plane",
            "node-restriction.kubernetes.io/trusted",
            "x.node-restriction.kubernetes.io/y",
            "kubernetes.io/role",
            "k8s.io/anything",
            "sub.k8s.io/x",
        ] {
            assert!(!node_may_set(key), "{key}");
        }
    }

    /// A report (anyone may publish one on a hostile broker) that asks for
    /// the control-plane role: not at registration, not after.
    #[test]
    fn a_report_cannot_give_its_node_a_role() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Arc::new(crate::store::Store::open(&dir.path().join("s.redb"), 100).expect("store"));
        let writer = crate::write::Writer::new(store, crate::write::DEFAULT_SERVICE_CIDR);
        writer.system_namespaces().expect("namespaces");
        let client = Client::new(writer);
        let (mqtt, _eventloop) = rumqttc::AsyncClient::new(rumqttc::MqttOptions::new("t", "127.0.0.1", 1), 10);
        let key = Arc::new(kedge_common::sign::SigningKey::generate().expect("key").0);
        let joins = Joins::new(client.clone(), dir.path().join("tokens"), key, mqtt, "kedge".into(), 1 << 20);
        let mut ingest = Ingest::new(
            client.clone(),
            FleetOptions::default(),
            FleetState::new(std::time::Duration::from_secs(60)),
            joins,
            Default::default(),
        );
        let labels = |extra: &[(&str, &str)]| -> BTreeMap<String, String> {
            let mut l = BTreeMap::from([("kubernetes.io/arch".to_owned(), "arm64".to_owned())]);
            l.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
            l
        };
        let node = || client.get::<Node>("", "n1").expect("get").expect("joined");
        client
            .create(&Node {
                metadata: ObjectMeta { name: Some("n1".into()), ..Default::default() },
                ..Default::default()
            })
            .expect("joined");
        let first = labels(&[("node-role.kubernetes.io/control-plane", ""), ("example.com/rack", "r1")]);
        ingest
            .report("n1", node(), NodeReport { node: "n1".into(), labels: first, ..Default::default() })
            .expect("report");
        let later =
            labels(&[("node-restriction.kubernetes.io/trusted", "yes"), ("node-role.kubernetes.io/master", "")]);
        ingest
            .report("n1", node(), NodeReport { node: "n1".into(), labels: later, ..Default::default() })
            .expect("report");
        let keys: Vec<String> = node().metadata.labels.unwrap_or_default().into_keys().collect();
        assert_eq!(keys, ["example.com/rack", "kubernetes.io/arch"]);
    }

    /// The broker is hostile: a report, presence or event under n1's name is
    /// taken only signed with n1's recorded key and newer than the last.
    #[test]
    fn only_the_joined_key_speaks_for_a_node_and_only_once() {
        use kedge_common::envelope::{encode, encode_signed};
        use kedge_common::sign::SigningKey;
        let (_dir, client, state, mut ingest, k1, k2) = joined();
        let seq = |n: u64| kedge_common::wire::Seq::start(2).0 + n;
        let report = |key: &SigningKey, n: u64, arch: &str| {
            let mut r = NodeReport { node: "n1".into(), seq: seq(n), ..Default::default() };
            r.info.architecture = arch.into();
            encode_signed(&r, Purpose::Report, key).expect("encode")
        };
        let arch = || -> String {
            let n = client.get::<Node>("", "n1").expect("get").expect("n1");
            n.status.and_then(|s| s.node_info).map(|i| i.architecture).unwrap_or_default()
        };
        let status = "kedge/v1/nodes/n1/status";
        ingest.handle(status, &report(&k1, 5, "arm64"));
        assert_eq!(arch(), "arm64", "n1's own report is taken");
        ingest.handle(status, &report(&k2, 6, "evil"));
        assert_eq!(arch(), "arm64", "signed by n2's key: dropped");
        let mut unsigned = NodeReport { node: "n1".into(), seq: seq(7), ..Default::default() };
        unsigned.info.architecture = "unsigned".into();
        ingest.handle(status, &encode(&unsigned).expect("encode"));
        assert_eq!(arch(), "arm64", "unsigned: dropped");
        ingest.handle(status, &report(&k1, 4, "older"));
        assert_eq!(arch(), "arm64", "an older report (a replay): dropped");
        ingest.handle(status, &report(&k1, 8, "riscv64"));
        assert_eq!(arch(), "riscv64", "a newer one is taken");
        assert_eq!(state.node("n1").map(|n| n.rejected), Some(3), "the three counted");
        // Presence: a forged offline does not turn n1 silent; its own does.
        let mut p = Presence { online: true, seq: seq(1), ..Default::default() };
        p.sign("n1", &k1);
        ingest.handle("kedge/v1/nodes/n1/presence", &p.to_json());
        assert_eq!(state.node("n1").and_then(|n| n.online), Some(true));
        let mut forged = Presence { online: false, seq: seq(9), ..Default::default() };
        forged.sign("n1", &k2);
        ingest.handle("kedge/v1/nodes/n1/presence", &forged.to_json());
        ingest.handle("kedge/v1/nodes/n1/presence", br#"{"online":false,"since":"","boot_id":""}"#);
        ingest.handle("kedge/v1/nodes/n1/presence", &p.to_json());
        assert_eq!(state.node("n1").and_then(|n| n.online), Some(true), "forged, unsigned, replayed");
        // Events: a forged one writes nothing.
        let ev = wire::Event { reason: "Forged".into(), message: "x".into(), seq: seq(10), ..Default::default() };
        ingest.handle("kedge/v1/nodes/n1/events", &encode_signed(&ev, Purpose::Event, &k2).expect("encode"));
        ingest.handle("kedge/v1/nodes/n1/events", &encode(&ev).expect("encode"));
        let events = client.list::<k8s_openapi::api::core::v1::Event>(None).expect("list");
        assert!(events.is_empty(), "no Event from a forgery: {events:?}");
        let genuine = wire::Event { reason: "Started".into(), ..ev };
        ingest.handle("kedge/v1/nodes/n1/events", &encode_signed(&genuine, Purpose::Event, &k1).expect("encode"));
        ingest.handle("kedge/v1/nodes/n1/events", &encode_signed(&genuine, Purpose::Event, &k1).expect("encode"));
        let events = client.list::<k8s_openapi::api::core::v1::Event>(None).expect("list");
        assert_eq!(events.len(), 1, "the genuine event once, its replay dropped: {events:?}");
        // A node that never joined: nothing registers.
        let (k3, _) = SigningKey::generate().expect("key");
        let r3 = NodeReport { node: "n3".into(), seq: seq(1), ..Default::default() };
        ingest.handle("kedge/v1/nodes/n3/status", &encode_signed(&r3, Purpose::Report, &k3).expect("encode"));
        assert!(client.get::<Node>("", "n3").expect("get").is_none(), "no Node from a report");
        assert!(state.node("n3").is_none(), "and no state kept for it");
    }

    type Joined = (
        tempfile::TempDir,
        Client,
        Arc<FleetState>,
        Ingest,
        kedge_common::sign::SigningKey,
        kedge_common::sign::SigningKey,
    );

    /// An ingest with two joined nodes, n1 and n2, and their keys.
    /// What a node said before a controller restart is not taken again
    /// after it: the counters were kept (every few seconds, and at stop).
    /// A restarted node's will (offline) overtook its online presence,
    /// numbered below it and so dropped as a replay: the node's next
    /// report, numbered above the will, says it is online after all. A
    /// report older than the offline changes nothing.
    #[test]
    fn a_report_newer_than_an_offline_presence_brings_the_node_back() {
        use kedge_common::envelope::encode_signed;
        let (_dir, _client, state, mut ingest, k1, _) = joined();
        let seq = |n: u64| kedge_common::wire::Seq::start(2).0 + n;
        let presence = |online: bool, n: u64| {
            let mut p = Presence { online, seq: seq(n), ..Default::default() };
            p.sign("n1", &k1);
            p.to_json()
        };
        let report = |n: u64| {
            let r = NodeReport { node: "n1".into(), seq: seq(n), ..Default::default() };
            encode_signed(&r, Purpose::Report, &k1).expect("encode")
        };
        let online = |state: &FleetState| state.node("n1").and_then(|n| n.online);
        ingest.handle("kedge/v1/nodes/n1/presence", &presence(false, 2));
        ingest.handle("kedge/v1/nodes/n1/presence", &presence(true, 1));
        assert_eq!(online(&state), Some(false), "the online presence, numbered below the will, is a replay");
        ingest.handle("kedge/v1/nodes/n1/status", &report(3));
        assert_eq!(online(&state), Some(true), "a report after the will: online");
        ingest.handle("kedge/v1/nodes/n1/presence", &presence(false, 9));
        ingest.handle("kedge/v1/nodes/n1/status", &report(8));
        assert_eq!(online(&state), Some(false), "an older report does not undo a newer offline");
    }

    #[test]
    fn a_restart_takes_no_message_twice() {
        use kedge_common::envelope::encode_signed;
        let (dir, client, _state, mut ingest, k1, _) = joined();
        let seq = |n: u64| kedge_common::wire::Seq::start(2).0 + n;
        let ev = |n: u64| {
            let e = wire::Event { reason: format!("R{n}"), message: "x".into(), seq: seq(n), ..Default::default() };
            encode_signed(&e, Purpose::Event, &k1).expect("encode")
        };
        let events = || client.list::<k8s_openapi::api::core::v1::Event>(None).expect("list").len();
        ingest.handle("kedge/v1/nodes/n1/events", &ev(3));
        ingest.handle("kedge/v1/nodes/n1/events", &ev(4));
        assert_eq!(events(), 2);
        ingest.persist();
        // A new controller on the same store.
        let (mqtt, _eventloop) = rumqttc::AsyncClient::new(rumqttc::MqttOptions::new("t", "127.0.0.1", 1), 10);
        let ckey = Arc::new(kedge_common::sign::SigningKey::generate().expect("key").0);
        let joins = Joins::new(client.clone(), dir.path().join("tokens"), ckey, mqtt, "kedge".into(), 1 << 20);
        let state = FleetState::new(std::time::Duration::from_secs(60));
        let mut again = Ingest::new(client.clone(), FleetOptions::default(), state, joins, Default::default());
        again.handle("kedge/v1/nodes/n1/events", &ev(4));
        again.handle("kedge/v1/nodes/n1/events", &ev(3));
        assert_eq!(events(), 2, "taken before the restart: dropped");
        again.handle("kedge/v1/nodes/n1/events", &ev(5));
        assert_eq!(events(), 3, "a newer one is taken");
    }

    fn joined() -> Joined {
        use kedge_common::sign::SigningKey;
        let dir = tempfile::tempdir().expect("tmp");
        let store = Arc::new(crate::store::Store::open(&dir.path().join("s.redb"), 100).expect("store"));
        let writer = crate::write::Writer::new(store, crate::write::DEFAULT_SERVICE_CIDR);
        writer.system_namespaces().expect("namespaces");
        let client = Client::new(writer);
        let (mqtt, _eventloop) = rumqttc::AsyncClient::new(rumqttc::MqttOptions::new("t", "127.0.0.1", 1), 10);
        let ckey = Arc::new(SigningKey::generate().expect("key").0);
        let joins = Joins::new(client.clone(), dir.path().join("tokens"), ckey, mqtt, "kedge".into(), 1 << 20);
        let state = FleetState::new(std::time::Duration::from_secs(60));
        let ingest = Ingest::new(client.clone(), FleetOptions::default(), state.clone(), joins, Default::default());
        let (k1, _) = SigningKey::generate().expect("key");
        let (k2, _) = SigningKey::generate().expect("key");
        for (name, key) in [("n1", &k1), ("n2", &k2)] {
            let annotations =
                BTreeMap::from([(super::super::trust::NODE_KEY_ANNOTATION.to_owned(), key.public().to_string())]);
            let meta = ObjectMeta { name: Some(name.into()), annotations: Some(annotations), ..Default::default() };
            client.create(&Node { metadata: meta, ..Default::default() }).expect("joined");
        }
        (dir, client, state, ingest, k1, k2)
    }

    /// Reports are state: one over the node's rate is not lost but waits
    /// (the newest only) for the rate to allow it.
    #[test]
    fn a_report_over_the_rate_waits_and_the_newest_is_taken() {
        let (_dir, client, _state, mut ingest, k1, _) = joined();
        let arch = || -> String {
            let n = client.get::<Node>("", "n1").expect("get").expect("n1");
            n.status.and_then(|s| s.node_info).map(|i| i.architecture).unwrap_or_default()
        };
        let send = |ingest: &mut Ingest, i: u64| {
            let mut r = NodeReport { node: "n1".into(), seq: i, ..Default::default() };
            r.info.architecture = format!("r{i}");
            let payload = kedge_common::envelope::encode_signed(&r, Purpose::Report, &k1).expect("encode");
            ingest.handle("kedge/v1/nodes/n1/status", &payload);
        };
        // Past the burst, faster than the rate: one waits.
        let mut i = 0;
        while !ingest.waiting.contains_key("n1") {
            i += 1;
            assert!(i < 100_000, "no report ever waited");
            send(&mut ingest, i);
        }
        assert_eq!(arch(), format!("r{}", i - 1), "the one before is written, the last waits");
        send(&mut ingest, i + 1);
        std::thread::sleep(std::time::Duration::from_millis(100));
        ingest.tick();
        assert_eq!(arch(), format!("r{}", i + 1), "the newest waiting one, once the rate allows");
    }

    #[test]
    fn a_heartbeat_alone_is_no_change() {
        let r = NodeReport { node: "n1".into(), ..Default::default() };
        let first = node_status(&r, None);
        let second = node_status(&r, Some(&first));
        assert!(same_node_status(Some(&first), &second));
        let mut pressed = r.clone();
        pressed.pressure.disk = true;
        assert!(!same_node_status(Some(&first), &node_status(&pressed, Some(&first))));
    }
}
