//! Scheduler throughput: `cargo bench -p kedge-controller --bench scheduler`.
//!
//! Method (also in BENCHMARKS.md): a store on the local disk holds NODES
//! ready nodes (4 CPU, 8 GiB, 110 pods each) and PODS unbound pods of one
//! ReplicaSet-like owner requesting 100m/128Mi. The scheduler is built as the
//! controller builds it, its cache loaded from the store, and then asked to
//! place every pod, in the batches its work queue hands it (decisions one
//! by one, then one transaction binding the batch). Reported:
//! pods bound per second of wall time, including every durable write
//! (binding, PodScheduled condition, Scheduled event), and the same for the
//! decision alone (filters and scores over all nodes, no writes). A third
//! run does the same with pods that each carry a `topologySpreadConstraint`
//! (maxSkew 1 over 10 zones, DoNotSchedule) and a preferred pod
//! anti-affinity on the hostname, on nodes labelled with their zone: the
//! inter-pod plugins' cost (every placed pod looked at per decision).

use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::api::core::v1::{Node, Pod};
use kedge_controller::client::Client;
use kedge_controller::controllers::runner::Reconcile;
use kedge_controller::scheduler::Scheduler;
use kedge_controller::scheduler::model::{self, NodeInfo, NodeUsage, PodNeeds};
use kedge_controller::store::Store;
use kedge_controller::write::{DEFAULT_SERVICE_CIDR, Writer};
use serde_json::json;

const NODES: usize = 1000;
const PODS: usize = 5000;

fn main() {
    let (decide, full) = run(false);
    let (_, constrained) = run(true);
    println!("| measure | value |");
    println!("|---|---|");
    println!("| scheduling decisions, {NODES} nodes ({PODS} pods, no writes) | {decide:.0} pods/s |");
    println!("| scheduler with durable binding writes, {NODES} nodes ({PODS} pods) | {full:.0} pods/s |");
    println!("| same, each pod with zone spread and hostname anti-affinity (preferred) | {constrained:.0} pods/s |");
}

/// (decisions alone, with durable writes) in pods per second.
fn run(constrained: bool) -> (f64, f64) {
    let dir = tempfile::tempdir().expect("tmp");
    let store = Arc::new(Store::open(&dir.path().join("s.redb"), 1000).expect("store"));
    let writer = Writer::new(store, DEFAULT_SERVICE_CIDR);
    writer.system_namespaces().expect("system namespaces");
    let client = Client::new(writer);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
    rt.block_on(async {
        let now = jiff::Timestamp::now().to_string();
        for i in 0..NODES {
            let zone = format!("zone-{}", i % 10);
            let n: Node = serde_json::from_value(json!({"metadata": {"name": format!("node-{i:04}"),
                    "labels": {"kubernetes.io/hostname": format!("node-{i:04}"), "topology.kubernetes.io/zone": zone}},
                "status": {"allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"},
                    "conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": now}]}}))
            .expect("node");
            client.create(&n).expect("create node");
        }
        let terms = json!({
            "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "web"}}}],
            "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100,
                "podAffinityTerm": {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "kubernetes.io/hostname"}}]}}});
        for i in 0..PODS {
            let mut spec = json!({"containers": [{"name": "c", "image": "x", "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}]});
            if constrained {
                if let (Some(s), Some(t)) = (spec.as_object_mut(), terms.as_object()) {
                    s.extend(t.clone());
                }
            }
            let p: Pod = serde_json::from_value(json!({"metadata": {"name": format!("pod-{i:05}"), "namespace": "default",
                "labels": {"app": "web"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "rs-uid", "controller": true}]},
                "spec": spec}))
            .expect("pod");
            client.create(&p).expect("create pod");
        }

        // The decision alone.
        let nodes: Vec<NodeInfo> = client.list::<Node>(None).expect("nodes").iter().map(NodeInfo::from_node).collect();
        let pods = client.list::<Pod>(Some("default")).expect("pods");
        let mut usage: Vec<NodeUsage> = vec![NodeUsage::default(); nodes.len()];
        let started = Instant::now();
        for p in &pods {
            let needs = PodNeeds::from_pod(p);
            let best = nodes
                .iter()
                .enumerate()
                .filter(|(i, n)| model::filter(n, &usage[*i], &needs).is_ok())
                .max_by_key(|(i, n)| model::score(n, &usage[*i], &needs, 5))
                .map(|(i, _)| i)
                .expect("a node fits");
            usage[best].add(&needs);
        }
        let decide = PODS as f64 / started.elapsed().as_secs_f64();

        // The scheduler as it runs: decisions plus durable binding writes.
        let mut s = Scheduler::new(client.clone()).expect("scheduler");
        let keys = s.all_keys().expect("keys");
        assert_eq!(keys.len(), PODS);
        let started = Instant::now();
        for chunk in keys.chunks(s.batch()) {
            for r in s.reconcile_batch(chunk) {
                r.expect("reconcile");
            }
        }
        let full = PODS as f64 / started.elapsed().as_secs_f64();
        let bound = client.list::<Pod>(Some("default")).expect("pods").iter().filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some()).count();
        assert_eq!(bound, PODS, "every pod bound");

        (decide, full)
    })
}
