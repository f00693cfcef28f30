//! Inter-pod affinity and anti-affinity and topology spread, as
//! kube-scheduler's `InterPodAffinity` and `PodTopologySpread` plugins
//! decide them: filters with their reason strings, and scores. They look at
//! the pods already placed (labels, namespace, node) — only for a pod that
//! has such terms, or when a placed pod's required anti-affinity could
//! refuse it, so pods without them cost nothing more.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{Pod, PodAffinityTerm, TopologySpreadConstraint};

use super::{NodeInfo, PodNeeds};
use crate::selector::LabelSelector;

pub const AFFINITY: &str = "node(s) didn't match pod affinity rules";
pub const ANTI_AFFINITY: &str = "node(s) didn't match pod anti-affinity rules";
pub const EXISTING_ANTI_AFFINITY: &str = "node(s) didn't satisfy existing pods anti-affinity rules";
pub const SPREAD: &str = "node(s) didn't match pod topology spread constraints";
pub const SPREAD_LABEL: &str = "node(s) didn't match pod topology spread constraints (missing required label)";

/// Which namespaces a term looks at.
#[derive(Debug, Clone)]
pub enum Namespaces {
    /// Listed (the pod's own when neither list nor selector is given).
    List(Vec<String>),
    /// By the namespaces' labels (`{}`: all).
    Selector(LabelSelector),
}

/// One pod (anti-)affinity term.
#[derive(Debug, Clone)]
pub struct Term {
    pub selector: LabelSelector,
    pub namespaces: Namespaces,
    /// Also listed when a selector is given (both count).
    pub listed: Vec<String>,
    pub topology_key: String,
}

/// One topology spread constraint.
#[derive(Debug, Clone)]
pub struct Spread {
    pub max_skew: i32,
    pub topology_key: String,
    /// `whenUnsatisfiable: DoNotSchedule`.
    pub hard: bool,
    pub selector: LabelSelector,
    pub min_domains: Option<i32>,
    /// `nodeAffinityPolicy: Honor` (the default): only nodes the pod's
    /// selector and required node affinity allow make domains.
    pub honor_affinity: bool,
    /// `nodeTaintsPolicy: Honor`: only nodes whose taints the pod tolerates.
    pub honor_taints: bool,
}

/// A pod's inter-pod terms and spread constraints.
#[derive(Debug, Clone, Default)]
pub struct PodTerms {
    pub affinity: Vec<Term>,
    pub anti_affinity: Vec<Term>,
    pub preferred_affinity: Vec<(i32, Term)>,
    pub preferred_anti_affinity: Vec<(i32, Term)>,
    pub spread: Vec<Spread>,
}

impl PodTerms {
    pub fn is_empty(&self) -> bool {
        self.affinity.is_empty()
            && self.anti_affinity.is_empty()
            && self.preferred_affinity.is_empty()
            && self.preferred_anti_affinity.is_empty()
            && self.spread.is_empty()
    }

    pub fn uses_namespace_selector(&self) -> bool {
        let sel = |t: &Term| matches!(t.namespaces, Namespaces::Selector(_));
        self.affinity.iter().chain(&self.anti_affinity).any(sel)
            || self.preferred_affinity.iter().chain(&self.preferred_anti_affinity).any(|(_, t)| sel(t))
    }
}

fn selector(s: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>) -> Option<LabelSelector> {
    // A term without a selector matches no pod (Kubernetes: nil selector).
    LabelSelector::from_k8s(s?).ok()
}

fn term(t: &PodAffinityTerm, ns: &str, labels: &BTreeMap<String, String>) -> Option<Term> {
    let mut sel = t.label_selector.clone()?;
    // matchLabelKeys / mismatchLabelKeys: the pod's own values join the selector.
    for (keys, op) in [(&t.match_label_keys, "In"), (&t.mismatch_label_keys, "NotIn")] {
        for k in keys.iter().flatten() {
            if let Some(v) = labels.get(k) {
                sel.match_expressions.get_or_insert_with(Vec::new).push(
                    k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement {
                        key: k.clone(),
                        operator: op.into(),
                        values: Some(vec![v.clone()]),
                    },
                );
            }
        }
    }
    let listed = t.namespaces.clone().unwrap_or_default();
    let namespaces = match &t.namespace_selector {
        Some(s) => Namespaces::Selector(LabelSelector::from_k8s(s).ok()?),
        None if listed.is_empty() => Namespaces::List(vec![ns.to_owned()]),
        None => Namespaces::List(listed.clone()),
    };
    Some(Term { selector: selector(Some(&sel))?, namespaces, listed, topology_key: t.topology_key.clone() })
}

fn spread(c: &TopologySpreadConstraint, labels: &BTreeMap<String, String>) -> Option<Spread> {
    let mut sel = c.label_selector.clone()?;
    for k in c.match_label_keys.iter().flatten() {
        if let Some(v) = labels.get(k) {
            sel.match_expressions.get_or_insert_with(Vec::new).push(
                k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement {
                    key: k.clone(),
                    operator: "In".into(),
                    values: Some(vec![v.clone()]),
                },
            );
        }
    }
    Some(Spread {
        max_skew: c.max_skew.max(1),
        topology_key: c.topology_key.clone(),
        hard: c.when_unsatisfiable == "DoNotSchedule",
        selector: selector(Some(&sel))?,
        min_domains: c.min_domains,
        honor_affinity: c.node_affinity_policy.as_deref() != Some("Ignore"),
        honor_taints: c.node_taints_policy.as_deref() == Some("Honor"),
    })
}

/// The inter-pod terms and spread constraints of `p` (None when it has none).
pub fn of_pod(p: &Pod, labels: &BTreeMap<String, String>) -> Option<Box<PodTerms>> {
    let spec = p.spec.as_ref()?;
    let ns = p.metadata.namespace.as_deref().unwrap_or("default");
    let mut t = PodTerms::default();
    if let Some(a) = spec.affinity.as_ref() {
        if let Some(pa) = &a.pod_affinity {
            t.affinity = pa
                .required_during_scheduling_ignored_during_execution
                .iter()
                .flatten()
                .filter_map(|x| term(x, ns, labels))
                .collect();
            t.preferred_affinity = pa
                .preferred_during_scheduling_ignored_during_execution
                .iter()
                .flatten()
                .filter_map(|w| Some((w.weight, term(&w.pod_affinity_term, ns, labels)?)))
                .collect();
        }
        if let Some(pa) = &a.pod_anti_affinity {
            t.anti_affinity = pa
                .required_during_scheduling_ignored_during_execution
                .iter()
                .flatten()
                .filter_map(|x| term(x, ns, labels))
                .collect();
            t.preferred_anti_affinity = pa
                .preferred_during_scheduling_ignored_during_execution
                .iter()
                .flatten()
                .filter_map(|w| Some((w.weight, term(&w.pod_affinity_term, ns, labels)?)))
                .collect();
        }
    }
    t.spread = spec.topology_spread_constraints.iter().flatten().filter_map(|c| spread(c, labels)).collect();
    (!t.is_empty()).then(|| Box::new(t))
}

/// Namespace labels, for terms with a `namespaceSelector`.
pub type NamespaceLabels = HashMap<String, BTreeMap<String, String>>;

impl Term {
    /// Whether `pod` (namespace and labels) is one this term selects.
    pub fn selects(&self, pod: &PodNeeds, ns_labels: &NamespaceLabels) -> bool {
        let ns_ok = match &self.namespaces {
            Namespaces::List(l) => l.contains(&pod.namespace),
            Namespaces::Selector(s) => {
                self.listed.contains(&pod.namespace)
                    || ns_labels.get(&pod.namespace).is_some_and(|l| s.matches_labels(l))
            }
        };
        ns_ok && self.selector.matches_labels(&pod.labels)
    }
}

/// A placed pod, its node and the labels of its node.
#[derive(Clone, Copy)]
pub struct Placed<'a> {
    pub node: &'a str,
    pub node_labels: &'a BTreeMap<String, String>,
    pub pod: &'a PodNeeds,
}

/// What the placed pods mean for one incoming pod, worked out once per
/// decision and then asked per node.
/// (Domain values are borrowed from the nodes' labels: nothing is copied
/// per placed pod.)
#[derive(Default)]
pub struct Verdicts<'a> {
    /// Per required affinity term: the domains (topology value) holding a
    /// placed pod that matches every required affinity term.
    affinity: Vec<std::collections::HashSet<&'a str>>,
    /// No placed pod matches all the terms and the pod matches them itself:
    /// the first of a group may go to any node that has the topology labels.
    affinity_first: bool,
    /// Per required anti-affinity term: the domains holding a selected pod.
    anti: Vec<std::collections::HashSet<&'a str>>,
    /// (topology key, value) pairs where a placed pod's required
    /// anti-affinity refuses the incoming pod.
    existing_anti: Vec<(&'a str, &'a str)>,
    /// Per spread constraint: matching pods per domain, and the smallest
    /// count over the eligible domains (0 when fewer than minDomains).
    spread: Vec<(HashMap<&'a str, i64>, i64)>,
    /// Preferred (anti-)affinity: weight per (key, value) domain.
    preferred: Vec<(&'a str, HashMap<&'a str, i64>)>,
}

/// Eligible nodes for a spread constraint (kube-scheduler's
/// `nodeAffinityPolicy`/`nodeTaintsPolicy`).
fn eligible(node: &NodeInfo, c: &Spread, pod: &PodNeeds) -> bool {
    if !node.labels.contains_key(&c.topology_key) {
        return false;
    }
    if c.honor_affinity {
        let selector_ok = pod.node_selector.iter().all(|(k, v)| node.labels.get(k) == Some(v));
        if !selector_ok || pod.affinity.as_ref().is_some_and(|a| !super::affinity_matches(a, node)) {
            return false;
        }
    }
    if c.honor_taints {
        let untolerated = node
            .taints
            .iter()
            .any(|t| (t.effect == "NoSchedule" || t.effect == "NoExecute") && !super::tolerated(&pod.tolerations, t));
        if untolerated {
            return false;
        }
    }
    true
}

impl<'a> Verdicts<'a> {
    /// `placed`: every placed pod (only walked when the pod has terms);
    /// `anti_holders`: the placed pods with required anti-affinity terms.
    pub fn new(
        pod: &'a PodNeeds,
        nodes: &[&'a NodeInfo],
        placed: impl Iterator<Item = Placed<'a>> + Clone,
        anti_holders: impl Iterator<Item = Placed<'a>>,
        ns_labels: &NamespaceLabels,
    ) -> Verdicts<'a> {
        let mut v = Verdicts::default();
        for e in anti_holders {
            for t in e.pod.terms.iter().flat_map(|t| &t.anti_affinity) {
                if let Some(val) = e.node_labels.get(&t.topology_key) {
                    if t.selects(pod, ns_labels) {
                        v.existing_anti.push((t.topology_key.as_str(), val.as_str()));
                    }
                }
            }
        }
        let Some(terms) = pod.terms.as_deref() else { return v };
        let domains_of = |t: &Term| -> std::collections::HashSet<&'a str> {
            placed
                .clone()
                .filter(|p| t.selects(p.pod, ns_labels))
                .filter_map(|p| p.node_labels.get(&t.topology_key).map(String::as_str))
                .collect()
        };
        // As kube-scheduler counts them: placed pods matching all the terms.
        if !terms.affinity.is_empty() {
            let all = |p: &PodNeeds| terms.affinity.iter().all(|t| t.selects(p, ns_labels));
            let mut group = placed.clone().filter(|p| all(p.pod)).peekable();
            v.affinity_first = group.peek().is_none() && all(pod);
            v.affinity = terms
                .affinity
                .iter()
                .map(|t| group.clone().filter_map(|p| p.node_labels.get(&t.topology_key).map(String::as_str)).collect())
                .collect();
        }
        v.anti = terms.anti_affinity.iter().map(domains_of).collect();
        for c in &terms.spread {
            let mut counts: HashMap<&'a str, i64> = HashMap::new();
            let eligible_nodes: Vec<&&NodeInfo> = nodes.iter().filter(|n| eligible(n, c, pod)).collect();
            for n in &eligible_nodes {
                if let Some(val) = n.labels.get(&c.topology_key) {
                    counts.entry(val.as_str()).or_insert(0);
                }
            }
            let eligible_names: std::collections::HashSet<&str> =
                eligible_nodes.iter().map(|n| n.name.as_str()).collect();
            for p in placed.clone() {
                let Some(val) = p.node_labels.get(&c.topology_key) else { continue };
                // Terminating pods are not counted (kube-scheduler #87621).
                if !p.pod.terminating
                    && p.pod.namespace == pod.namespace
                    && c.selector.matches_labels(&p.pod.labels)
                    && eligible_names.contains(p.node)
                {
                    *counts.entry(val.as_str()).or_insert(0) += 1;
                }
            }
            let fewer_domains = c.min_domains.is_some_and(|m| (counts.len() as i64) < i64::from(m));
            let min = if fewer_domains { 0 } else { counts.values().copied().min().unwrap_or(0) };
            v.spread.push((counts, min));
        }
        for (sign, list) in [(1i64, &terms.preferred_affinity), (-1, &terms.preferred_anti_affinity)] {
            for (w, t) in list {
                let mut by: HashMap<&'a str, i64> = HashMap::new();
                for p in placed.clone().filter(|p| t.selects(p.pod, ns_labels)) {
                    if let Some(val) = p.node_labels.get(&t.topology_key) {
                        *by.entry(val.as_str()).or_insert(0) += sign * i64::from(*w);
                    }
                }
                v.preferred.push((t.topology_key.as_str(), by));
            }
        }
        v
    }

    /// kube-scheduler's `PodTopologySpread` then `InterPodAffinity` filters.
    pub fn filter(&self, node: &NodeInfo, pod: &PodNeeds) -> Result<(), &'static str> {
        if let Some(terms) = pod.terms.as_deref() {
            let self_match = |c: &Spread| i64::from(c.selector.matches_labels(&pod.labels));
            for (c, (counts, min)) in terms.spread.iter().zip(&self.spread) {
                if !c.hard {
                    continue;
                }
                let Some(val) = node.labels.get(&c.topology_key) else { return Err(SPREAD_LABEL) };
                let here = counts.get(val.as_str()).copied().unwrap_or(0) + self_match(c);
                if here - min > i64::from(c.max_skew) {
                    return Err(SPREAD);
                }
            }
            let mut pods_exist = true;
            for (t, domains) in terms.affinity.iter().zip(&self.affinity) {
                match node.labels.get(&t.topology_key) {
                    // Every term's topology label must be on the node.
                    None => return Err(AFFINITY),
                    Some(v) => pods_exist &= domains.contains(v.as_str()),
                }
            }
            if !pods_exist && !self.affinity_first {
                return Err(AFFINITY);
            }
            for (t, domains) in terms.anti_affinity.iter().zip(&self.anti) {
                if node.labels.get(&t.topology_key).is_some_and(|v| domains.contains(v.as_str())) {
                    return Err(ANTI_AFFINITY);
                }
            }
        }
        if self.existing_anti.iter().any(|(k, v)| node.labels.get(*k).map(String::as_str) == Some(*v)) {
            return Err(EXISTING_ANTI_AFFINITY);
        }
        Ok(())
    }

    /// Raw scores before normalising: (inter-pod preference, soft spread
    /// count — lower is better, `None` without soft constraints).
    pub fn raw_scores(&self, node: &NodeInfo, pod: &PodNeeds) -> (i64, Option<i64>) {
        let pref = self
            .preferred
            .iter()
            .map(|(k, by)| node.labels.get(*k).and_then(|v| by.get(v.as_str())).copied().unwrap_or(0))
            .sum();
        let soft: Vec<i64> = pod
            .terms
            .iter()
            .flat_map(|t| t.spread.iter().zip(&self.spread))
            .filter(|(c, _)| !c.hard)
            .map(|(c, (counts, _))| {
                node.labels.get(&c.topology_key).and_then(|v| counts.get(v.as_str())).copied().unwrap_or(0)
            })
            .collect();
        (pref, (!soft.is_empty()).then(|| soft.iter().sum()))
    }
}
