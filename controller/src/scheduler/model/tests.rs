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
