use k8s_openapi::api::core::v1::{Node, Pod, Taint, Toleration};
use serde_json::json;

use super::*;

fn node(name: &str, cpu: &str, mem: &str, ready: bool) -> NodeInfo {
    let n: Node = serde_json::from_value(json!({"metadata": {"name": name, "labels": {"zone": "a"}},
        "status": {"allocatable": {"cpu": cpu, "memory": mem, "pods": "110"},
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}}))
    .expect("node");
    NodeInfo::from_node(&n)
}

fn needs(cpu: &str, mem: &str) -> PodNeeds {
    let p: Pod = serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": {"containers": [
        {"name": "c", "image": "x", "resources": {"requests": {"cpu": cpu, "memory": mem}}}]}}))
    .expect("pod");
    PodNeeds::from_pod(&p)
}

#[test]
fn resources_fit_and_report_what_is_short() {
    let n = node("n1", "2", "1Gi", true);
    let mut used = NodeUsage::default();
    assert!(filter(&n, &used, &needs("1500m", "512Mi")).is_ok());
    used.add(&needs("1500m", "512Mi"));
    assert_eq!(
        filter(&n, &used, &needs("1", "600Mi")),
        Err(vec!["Insufficient cpu".to_owned(), "Insufficient memory".to_owned()])
    );
    used.remove(&needs("1500m", "512Mi"));
    assert!(filter(&n, &used, &needs("1", "600Mi")).is_ok(), "removal frees the resources");
}

#[test]
fn taints_readiness_and_selectors() {
    let mut n = node("n1", "4", "4Gi", true);
    n.taints =
        vec![Taint { key: "dedicated".into(), value: Some("x".into()), effect: "NoSchedule".into(), time_added: None }];
    let mut p = needs("100m", "10Mi");
    let used = NodeUsage::default();
    assert_eq!(filter(&n, &used, &p), Err(vec!["node(s) had untolerated taint {dedicated: x}".to_owned()]));
    p.tolerations = vec![Toleration {
        key: Some("dedicated".into()),
        operator: Some("Equal".into()),
        value: Some("x".into()),
        effect: Some("NoSchedule".into()),
        toleration_seconds: None,
    }];
    assert!(filter(&n, &used, &p).is_ok());
    p.node_selector.insert("zone".into(), "b".into());
    assert_eq!(filter(&n, &used, &p), Err(vec!["node(s) didn't match Pod's node affinity/selector".to_owned()]));
    let down = node("n2", "4", "4Gi", false);
    assert_eq!(
        filter(&down, &used, &needs("1m", "1Mi")),
        Err(vec!["node(s) had untolerated taint {node.kubernetes.io/not-ready: }".to_owned()])
    );
    let mut cordoned = node("n3", "4", "4Gi", true);
    cordoned.unschedulable = true;
    assert_eq!(filter(&cordoned, &used, &needs("1m", "1Mi")), Err(vec!["node(s) were unschedulable".to_owned()]));
}

#[test]
fn exists_toleration_without_key_tolerates_everything() {
    let t = Toleration { operator: Some("Exists".into()), ..Default::default() };
    let taint = Taint { key: "anything".into(), value: Some("v".into()), effect: "NoExecute".into(), time_added: None };
    assert!(tolerates(&t, &taint));
    let wrong_effect = Toleration {
        key: Some("anything".into()),
        operator: Some("Exists".into()),
        effect: Some("NoSchedule".into()),
        ..Default::default()
    };
    assert!(!tolerates(&wrong_effect, &taint));
}

#[test]
fn required_node_affinity() {
    let mut p = needs("1m", "1Mi");
    p.affinity = serde_json::from_value(json!({"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]},
        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}]}))
    .ok();
    let used = NodeUsage::default();
    assert!(filter(&node("n1", "1", "1Gi", true), &used, &p).is_ok(), "the second term matches by name");
    assert!(filter(&node("n2", "1", "1Gi", true), &used, &p).is_err());
}

#[test]
fn message_reads_like_kube_scheduler() {
    let mut r = BTreeMap::new();
    r.insert("node(s) had untolerated taint {dedicated: x}".to_owned(), 1);
    r.insert("Insufficient memory".to_owned(), 2);
    r.insert("Insufficient cpu".to_owned(), 1);
    assert_eq!(
        unschedulable_message(4, &r),
        "0/4 nodes are available: 1 Insufficient cpu, 1 node(s) had untolerated taint {dedicated: x}, 2 Insufficient memory."
    );
    assert_eq!(unschedulable_message(0, &BTreeMap::new()), "0/0 nodes are available.");
}

#[test]
fn scoring_prefers_free_nodes_and_spreads_owners() {
    let big = node("big", "8", "16Gi", true);
    let small = node("small", "2", "2Gi", true);
    let p = needs("500m", "256Mi");
    let used = NodeUsage::default();
    assert!(score(&big, &used, &p, 1) > score(&small, &used, &p, 1));
    let mut p = p;
    p.owner = Some(owner_key("rs-1"));
    let mut crowded = NodeUsage::default();
    let mut sibling = p.clone();
    sibling.requests = Resources::default();
    sibling.score_requests = Resources::default();
    crowded.add(&sibling);
    crowded.add(&sibling);
    assert!(score(&big, &crowded, &p, 3) < score(&big, &used, &p, 3), "a node with siblings scores lower");
}

// ---------------------------------------------- inter-pod affinity, spread

fn zoned(name: &str, zone: Option<&str>) -> NodeInfo {
    let mut labels = serde_json::Map::new();
    labels.insert("kubernetes.io/hostname".into(), json!(name));
    if let Some(z) = zone {
        labels.insert("topology.kubernetes.io/zone".into(), json!(z));
    }
    let n: Node = serde_json::from_value(json!({"metadata": {"name": name, "labels": labels},
        "status": {"allocatable": {"cpu": "4", "memory": "4Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True"}]}}))
    .expect("node");
    NodeInfo::from_node(&n)
}

fn pod_with(labels: serde_json::Value, spec: serde_json::Value) -> PodNeeds {
    let mut s = json!({"containers": [{"name": "c", "image": "x"}]});
    if let (Some(s), Some(extra)) = (s.as_object_mut(), spec.as_object()) {
        s.extend(extra.clone());
    }
    let p: Pod =
        serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "default", "labels": labels}, "spec": s}))
            .expect("pod");
    PodNeeds::from_pod(&p)
}

fn anti(key: &str) -> serde_json::Value {
    json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": key}]}}})
}

/// The verdicts for `pod` with `placed` pods at (node index, needs), and
/// each node's filter result.
fn judge(nodes: &[NodeInfo], placed: &[(usize, PodNeeds)], pod: &PodNeeds) -> Vec<Result<(), &'static str>> {
    use interpod::{Placed, Verdicts};
    let refs: Vec<&NodeInfo> = nodes.iter().collect();
    let all: Vec<Placed<'_>> =
        placed.iter().map(|(i, p)| Placed { node: &nodes[*i].name, node_labels: &nodes[*i].labels, pod: p }).collect();
    let holders: Vec<Placed<'_>> =
        all.iter().copied().filter(|p| p.pod.terms.as_ref().is_some_and(|t| !t.anti_affinity.is_empty())).collect();
    let v = Verdicts::new(pod, &refs, all.iter().copied(), holders.into_iter(), &Default::default());
    nodes.iter().map(|n| v.filter(n, pod)).collect()
}

#[test]
fn required_anti_affinity_keeps_replicas_apart_and_existing_terms_bind_newcomers() {
    let nodes = [zoned("n1", Some("a")), zoned("n2", Some("a")), zoned("n3", Some("b"))];
    let web = |_: ()| pod_with(json!({"app": "web"}), anti("kubernetes.io/hostname"));
    let placed = vec![(0, web(())), (1, web(()))];
    assert_eq!(judge(&nodes, &placed, &web(())), [Err(interpod::ANTI_AFFINITY), Err(interpod::ANTI_AFFINITY), Ok(())]);
    let placed = vec![(0, web(())), (1, web(())), (2, web(()))];
    let verdict = judge(&nodes, &placed, &web(()));
    assert!(verdict.iter().all(|r| *r == Err(interpod::ANTI_AFFINITY)), "{verdict:?}");
    let mut reasons = BTreeMap::new();
    reasons.insert(interpod::ANTI_AFFINITY.to_owned(), 3);
    assert_eq!(
        unschedulable_message(3, &reasons),
        "0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules."
    );
    // A plain app=web pod (no terms of its own) is kept off by theirs.
    let plain = pod_with(json!({"app": "web"}), json!({}));
    assert_eq!(judge(&nodes, &placed[..1], &plain)[0], Err(interpod::EXISTING_ANTI_AFFINITY));
    // By zone: n1 holds one, so the whole zone a is out.
    let by_zone = pod_with(json!({"app": "web"}), anti("topology.kubernetes.io/zone"));
    assert_eq!(
        judge(&nodes, &placed[..1], &by_zone),
        [Err(interpod::ANTI_AFFINITY), Err(interpod::ANTI_AFFINITY), Ok(())]
    );
}

#[test]
fn required_affinity_follows_the_pods_it_names_except_for_the_first_of_a_group() {
    let nodes = [zoned("n1", Some("a")), zoned("n2", Some("b"))];
    let near_db = json!({"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "topology.kubernetes.io/zone"}]}}});
    let db = pod_with(json!({"app": "db"}), json!({}));
    let client = pod_with(json!({"app": "client"}), near_db.clone());
    assert_eq!(judge(&nodes, &[(1, db)], &client), [Err(interpod::AFFINITY), Ok(())]);
    assert_eq!(judge(&nodes, &[], &client), [Err(interpod::AFFINITY), Err(interpod::AFFINITY)], "no db anywhere");
    // A pod that matches its own term may start the group anywhere.
    let first_db = pod_with(json!({"app": "db"}), near_db);
    assert_eq!(judge(&nodes, &[], &first_db), [Ok(()), Ok(())]);
}

#[test]
fn topology_spread_keeps_the_skew_and_needs_the_label() {
    let nodes = [zoned("n1", Some("a")), zoned("n2", Some("a")), zoned("n3", Some("b")), zoned("n4", None)];
    let spread = json!({"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
        "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "web"}}}]});
    let web = |_: ()| pod_with(json!({"app": "web"}), spread.clone());
    // Zone a holds 1, b holds 0: another in a would make the skew 2.
    let verdict = judge(&nodes, &[(0, web(()))], &web(()));
    assert_eq!(verdict, [Err(interpod::SPREAD), Err(interpod::SPREAD), Ok(()), Err(interpod::SPREAD_LABEL)]);
    // 1 and 1: either zone.
    let verdict = judge(&nodes, &[(0, web(())), (2, web(()))], &web(()));
    assert_eq!(&verdict[..3], [Ok(()), Ok(()), Ok(())]);
    // A terminating pod in b does not count: b is still the emptier zone.
    let mut leaving = web(());
    leaving.terminating = true;
    let verdict = judge(&nodes, &[(0, web(())), (2, leaving)], &web(()));
    assert_eq!(&verdict[..3], [Err(interpod::SPREAD), Err(interpod::SPREAD), Ok(())]);
    // minDomains 3 with two zones: the minimum counts as 0, so a zone already holding one is out.
    let min3 = json!({"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "minDomains": 3,
        "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "web"}}}]});
    let p = pod_with(json!({"app": "web"}), min3);
    assert_eq!(
        &judge(&nodes, &[(0, web(())), (2, web(()))], &p)[..3],
        [Err(interpod::SPREAD), Err(interpod::SPREAD), Err(interpod::SPREAD)]
    );
}

#[test]
fn preferred_node_affinity_outweighs_least_allocated() {
    let busy = zoned("busy", Some("a"));
    let idle = zoned("idle", Some("b"));
    let mut used = NodeUsage::default();
    for _ in 0..30 {
        used.add(&needs("100m", "100Mi"));
    }
    let free = NodeUsage::default();
    let p = pod_with(
        json!({}),
        json!({"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 10, "preference": {"matchExpressions": [{"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["a"]}]}}]}}}),
    );
    let feasible = [(&busy, &used), (&idle, &free)];
    let extra = weighted_scores(&feasible, &p, None);
    let total: Vec<i64> = feasible.iter().zip(&extra).map(|((n, u), x)| score(n, u, &p, 0) + x).collect();
    assert!(score(&idle, &free, &p, 0) > score(&busy, &used, &p, 0), "least-allocated alone prefers idle");
    assert!(total[0] > total[1], "the preferred zone wins: {total:?}");
}
