//! The scheduler's decision logic without I/O: what a pod needs, what a node
//! offers, which filters a node fails (with kube-scheduler's reasons) and
//! how the nodes that pass are scored.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{
    Node, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod, Taint, Toleration,
};

use kedge_common::quantity;

/// Requested or allocatable amounts: milli-CPU, bytes of memory, pod count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    pub cpu_milli: i128,
    pub memory: i128,
    pub pods: i64,
}

fn q(map: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>, k: &str) -> Option<i128> {
    map.and_then(|m| m.get(k)).and_then(|v| quantity::parse_milli(&v.0).ok())
}

/// What the scheduler knows about one node.
#[derive(Debug, Clone, Default)]
pub struct NodeInfo {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    pub ready: bool,
    pub unschedulable: bool,
    pub allocatable: Resources,
}

impl NodeInfo {
    pub fn from_node(n: &Node) -> Self {
        let status = n.status.as_ref();
        let alloc = status.and_then(|s| s.allocatable.as_ref().or(s.capacity.as_ref()));
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .is_some_and(|c| c.status == "True");
        NodeInfo {
            name: n.metadata.name.clone().unwrap_or_default(),
            labels: n.metadata.labels.clone().unwrap_or_default(),
            taints: n.spec.as_ref().and_then(|s| s.taints.clone()).unwrap_or_default(),
            ready,
            unschedulable: n.spec.as_ref().and_then(|s| s.unschedulable) == Some(true),
            allocatable: Resources {
                cpu_milli: q(alloc, "cpu").unwrap_or(0),
                memory: q(alloc, "memory").map_or(0, |m| m / 1000),
                pods: q(alloc, "pods").map_or(110, |p| i64::try_from(p / 1000).unwrap_or(i64::MAX)),
            },
        }
    }
}

/// What a pod asks of a node.
#[derive(Debug, Clone, Default)]
pub struct PodNeeds {
    /// Requests as declared (used to fit).
    pub requests: Resources,
    /// Requests with Kubernetes' non-zero defaults (100m CPU, 200Mi), used to score.
    pub score_requests: Resources,
    pub host_ports: Vec<(String, i32)>,
    pub node_selector: BTreeMap<String, String>,
    pub affinity: Option<NodeSelector>,
    pub tolerations: Vec<Toleration>,
    /// The controller owner (a hash of its uid), to spread replicas.
    pub owner: Option<u64>,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    /// `preferredDuringSchedulingIgnoredDuringExecution` node affinity.
    pub preferred: Vec<(i32, NodeSelectorTerm)>,
    /// Inter-pod (anti-)affinity and topology spread, when it has any.
    pub terms: Option<Box<interpod::PodTerms>>,
    /// Being deleted: still holds its resources, but no longer counts for
    /// topology spread.
    pub terminating: bool,
    /// The PersistentVolumeClaims it mounts (a claim's pods share a node
    /// until its volume is made there).
    pub claims: Vec<String>,
}

const DEFAULT_CPU_MILLI: i128 = 100;
const DEFAULT_MEMORY: i128 = 200 * 1024 * 1024;

impl PodNeeds {
    pub fn from_pod(p: &Pod) -> Self {
        let spec = p.spec.clone().unwrap_or_default();
        let (mut cpu, mut mem, mut scpu, mut smem) = (0i128, 0i128, 0i128, 0i128);
        let mut ports = Vec::new();
        for c in &spec.containers {
            let req = c.resources.as_ref().and_then(|r| r.requests.as_ref());
            let ccpu = q(req, "cpu");
            let cmem = q(req, "memory").map(|m| m / 1000);
            cpu += ccpu.unwrap_or(0);
            mem += cmem.unwrap_or(0);
            scpu += ccpu.filter(|v| *v > 0).unwrap_or(DEFAULT_CPU_MILLI);
            smem += cmem.filter(|v| *v > 0).unwrap_or(DEFAULT_MEMORY);
            for port in c.ports.iter().flatten() {
                if let Some(h) = port.host_port.filter(|h| *h > 0) {
                    ports.push((port.protocol.clone().unwrap_or_else(|| "TCP".into()), h));
                }
            }
        }
        // Init containers run one at a time before the others: the largest counts.
        for c in spec.init_containers.iter().flatten() {
            let req = c.resources.as_ref().and_then(|r| r.requests.as_ref());
            cpu = cpu.max(q(req, "cpu").unwrap_or(0));
            mem = mem.max(q(req, "memory").map_or(0, |m| m / 1000));
        }
        PodNeeds {
            requests: Resources { cpu_milli: cpu, memory: mem, pods: 1 },
            score_requests: Resources { cpu_milli: scpu, memory: smem, pods: 1 },
            host_ports: ports,
            node_selector: spec.node_selector.clone().unwrap_or_default(),
            affinity: spec
                .affinity
                .as_ref()
                .and_then(|a| a.node_affinity.as_ref())
                .and_then(|n| n.required_during_scheduling_ignored_during_execution.clone()),
            tolerations: spec.tolerations.clone().unwrap_or_default(),
            owner: crate::controllers::podutil::controller_ref(&p.metadata).map(|r| owner_key(&r.uid)),
            namespace: p.metadata.namespace.clone().unwrap_or_else(|| "default".into()),
            preferred: (spec.affinity.as_ref().and_then(|a| a.node_affinity.as_ref()))
                .and_then(|n| n.preferred_during_scheduling_ignored_during_execution.clone())
                .unwrap_or_default()
                .into_iter()
                .map(|t| (t.weight, t.preference))
                .collect(),
            terms: interpod::of_pod(p, p.metadata.labels.as_ref().unwrap_or(&BTreeMap::new())),
            labels: p.metadata.labels.clone().unwrap_or_default(),
            terminating: p.metadata.deletion_timestamp.is_some(),
            claims: crate::controllers::volume::claims_of(p).map(str::to_owned).collect(),
        }
    }
}

/// A cheap key for an owner uid (FNV-1a), so spreading compares integers.
pub fn owner_key(uid: &str) -> u64 {
    uid.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// What is already committed on a node.
#[derive(Debug, Clone, Default)]
pub struct NodeUsage {
    pub requested: Resources,
    pub score_requested: Resources,
    /// Host ports in use, with how many pods hold each (two can, on
    /// different host IPs or when bound without the scheduler).
    pub ports: HashMap<(String, i32), u32>,
    /// Pods per owner on this node (few owners per node: a short list).
    pub owners: Vec<(u64, u32)>,
}

impl NodeUsage {
    /// How many pods of `owner` this node holds.
    pub fn of_owner(&self, owner: u64) -> u32 {
        self.owners.iter().find(|(k, _)| *k == owner).map_or(0, |(_, n)| *n)
    }

    pub fn add(&mut self, p: &PodNeeds) {
        self.requested.cpu_milli += p.requests.cpu_milli;
        self.requested.memory += p.requests.memory;
        self.requested.pods += 1;
        self.score_requested.cpu_milli += p.score_requests.cpu_milli;
        self.score_requested.memory += p.score_requests.memory;
        for hp in &p.host_ports {
            *self.ports.entry(hp.clone()).or_insert(0) += 1;
        }
        if let Some(o) = p.owner {
            match self.owners.iter_mut().find(|(k, _)| *k == o) {
                Some((_, n)) => *n += 1,
                None => self.owners.push((o, 1)),
            }
        }
    }

    pub fn remove(&mut self, p: &PodNeeds) {
        self.requested.cpu_milli -= p.requests.cpu_milli;
        self.requested.memory -= p.requests.memory;
        self.requested.pods -= 1;
        self.score_requested.cpu_milli -= p.score_requests.cpu_milli;
        self.score_requested.memory -= p.score_requests.memory;
        for hp in &p.host_ports {
            if let Some(n) = self.ports.get_mut(hp) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.ports.remove(hp);
                }
            }
        }
        if let Some(o) = p.owner {
            if let Some(i) = self.owners.iter().position(|(k, _)| *k == o) {
                self.owners[i].1 = self.owners[i].1.saturating_sub(1);
                if self.owners[i].1 == 0 {
                    self.owners.swap_remove(i);
                }
            }
        }
    }
}

/// Does `t` tolerate taint `taint`?
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    let effect_ok = t.effect.as_deref().is_none_or(|e| e.is_empty() || e == taint.effect);
    let key_ok = match t.key.as_deref() {
        None | Some("") => t.operator.as_deref() == Some("Exists"),
        Some(k) => k == taint.key,
    };
    let value_ok = match t.operator.as_deref() {
        Some("Exists") => true,
        _ => t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
    };
    effect_ok && key_ok && value_ok
}

pub fn tolerated(ts: &[Toleration], taint: &Taint) -> bool {
    ts.iter().any(|t| tolerates(t, taint))
}

fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let vals = r.values.as_deref().unwrap_or_default();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| vals.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !vals.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), Some(x)) =
                (value.and_then(|v| v.parse::<i64>().ok()), vals.first().and_then(|x| x.parse::<i64>().ok()))
            else {
                return false;
            };
            if r.operator == "Gt" { v > x } else { v < x }
        }
        _ => false,
    }
}

fn term_matches(term: &NodeSelectorTerm, node: &NodeInfo) -> bool {
    let exprs = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    exprs.iter().all(|r| requirement_matches(r, node.labels.get(&r.key).map(String::as_str)))
        && fields.iter().all(|r| r.key == "metadata.name" && requirement_matches(r, Some(&node.name)))
}

pub fn affinity_matches(sel: &NodeSelector, node: &NodeInfo) -> bool {
    sel.node_selector_terms.iter().any(|term| term_matches(term, node))
}

/// kube-scheduler's `NodeAffinity` score before normalising: the weights of
/// the preferred terms the node matches.
pub fn preferred_node_affinity(node: &NodeInfo, pod: &PodNeeds) -> i64 {
    pod.preferred.iter().filter(|(_, t)| term_matches(t, node)).map(|(w, _)| i64::from(*w)).sum()
}

/// The taint a node carries while its Ready condition is not True.
pub fn not_ready_taint() -> Taint {
    Taint { key: "node.kubernetes.io/not-ready".into(), effect: "NoSchedule".into(), value: None, time_added: None }
}

fn taint_reason(t: &Taint) -> String {
    format!("node(s) had untolerated taint {{{}: {}}}", t.key, t.value.as_deref().unwrap_or(""))
}

/// Runs kube-scheduler's filters in its order; the first one that fails
/// gives the node's reasons.
pub fn filter(node: &NodeInfo, usage: &NodeUsage, pod: &PodNeeds) -> Result<(), Vec<String>> {
    if node.unschedulable {
        let t = Taint {
            key: "node.kubernetes.io/unschedulable".into(),
            effect: "NoSchedule".into(),
            value: None,
            time_added: None,
        };
        if !tolerated(&pod.tolerations, &t) {
            return Err(vec!["node(s) were unschedulable".into()]);
        }
    }
    if !node.ready && !tolerated(&pod.tolerations, &not_ready_taint()) {
        return Err(vec![taint_reason(&not_ready_taint())]);
    }
    for t in &node.taints {
        if (t.effect == "NoSchedule" || t.effect == "NoExecute") && !tolerated(&pod.tolerations, t) {
            return Err(vec![taint_reason(t)]);
        }
    }
    let selector_ok = pod.node_selector.iter().all(|(k, v)| node.labels.get(k) == Some(v));
    if !selector_ok || pod.affinity.as_ref().is_some_and(|a| !affinity_matches(a, node)) {
        return Err(vec!["node(s) didn't match Pod's node affinity/selector".into()]);
    }
    if pod.host_ports.iter().any(|p| usage.ports.contains_key(p)) {
        return Err(vec!["node(s) didn't have free ports for the requested pod ports".into()]);
    }
    let mut fit = Vec::new();
    if usage.requested.pods + 1 > node.allocatable.pods {
        fit.push("Too many pods".to_owned());
    }
    if pod.requests.cpu_milli > 0 && usage.requested.cpu_milli + pod.requests.cpu_milli > node.allocatable.cpu_milli {
        fit.push("Insufficient cpu".to_owned());
    }
    if pod.requests.memory > 0 && usage.requested.memory + pod.requests.memory > node.allocatable.memory {
        fit.push("Insufficient memory".to_owned());
    }
    if fit.is_empty() { Ok(()) } else { Err(fit) }
}

/// kube-scheduler's message: `0/4 nodes are available: 1 Insufficient memory,
/// 2 node(s) had untolerated taint {dedicated: x}.`
pub fn unschedulable_message(total: usize, reasons: &BTreeMap<String, usize>) -> String {
    let mut parts: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
    parts.sort();
    if parts.is_empty() {
        return format!("0/{total} nodes are available.");
    }
    format!("0/{total} nodes are available: {}.", parts.join(", "))
}

/// The scores of kube-scheduler's `NodeAffinity` (preferred terms),
/// `InterPodAffinity` (preferred terms) and `PodTopologySpread` (soft
/// constraints) plugins for each of `feasible`, each normalised to 0–100
/// over the feasible nodes as kube-scheduler normalises it, weighted 2 as
/// in its default profile (least-allocated weighs 1: a preferred node
/// affinity outweighs it).
pub fn weighted_scores(
    feasible: &[(&NodeInfo, &NodeUsage)],
    pod: &PodNeeds,
    v: Option<&interpod::Verdicts>,
) -> Vec<i64> {
    const WEIGHT: i64 = 2;
    let mut out = vec![0i64; feasible.len()];
    if !pod.preferred.is_empty() {
        let raw: Vec<i64> = feasible.iter().map(|(n, _)| preferred_node_affinity(n, pod)).collect();
        let max = raw.iter().copied().max().unwrap_or(0);
        if max > 0 {
            out.iter_mut().zip(&raw).for_each(|(o, r)| *o += WEIGHT * r * 100 / max);
        }
    }
    if let Some(v) = v {
        let raw: Vec<(i64, Option<i64>)> = feasible.iter().map(|(n, _)| v.raw_scores(n, pod)).collect();
        let (min, max) = raw.iter().fold((i64::MAX, i64::MIN), |(a, b), (p, _)| (a.min(*p), b.max(*p)));
        if max > min {
            out.iter_mut().zip(&raw).for_each(|(o, (p, _))| *o += WEIGHT * (p - min) * 100 / (max - min));
        }
        let counts: Vec<i64> = raw.iter().filter_map(|(_, s)| *s).collect();
        if counts.len() == raw.len() && !counts.is_empty() {
            let (min, max) = counts.iter().fold((i64::MAX, i64::MIN), |(a, b), c| (a.min(*c), b.max(*c)));
            for (o, c) in out.iter_mut().zip(&counts) {
                *o += WEIGHT * if max > min { (max - c) * 100 / (max - min) } else { 100 };
            }
        }
    }
    out
}

/// Higher is better: least-allocated CPU and memory (0–100 each, averaged)
/// plus spreading the replicas of one owner (0–100).
pub fn score(node: &NodeInfo, usage: &NodeUsage, pod: &PodNeeds, max_same_owner: u32) -> i64 {
    // i64 arithmetic: the amounts fit, and 128-bit division is slow here.
    let free = |alloc: i128, used: i128, req: i128| -> i64 {
        let (alloc, used, req) = (alloc as i64, used as i64, req as i64);
        if alloc <= 0 {
            return 0;
        }
        ((alloc - used - req).max(0)).saturating_mul(100) / alloc
    };
    let cpu = free(node.allocatable.cpu_milli, usage.score_requested.cpu_milli, pod.score_requests.cpu_milli);
    let mem = free(node.allocatable.memory, usage.score_requested.memory, pod.score_requests.memory);
    let least = (cpu + mem) / 2;
    let same = pod.owner.map_or(0, |o| usage.of_owner(o));
    let spread = (100 * (max_same_owner - same.min(max_same_owner))).checked_div(max_same_owner).map_or(100, i64::from);
    least + spread
}

pub mod interpod;

#[cfg(test)]
mod tests;
