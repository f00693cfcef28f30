//! The control loops seen through the API, as a client would: objects go in,
//! the loops' results come out.

mod common;

use common::{call, eventually, get, patch, post, start, until};
use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

const PODS: &str = "/api/v1/namespaces/default/pods";
const RSS: &str = "/apis/apps/v1/namespaces/default/replicasets";

fn rs(name: &str, replicas: i64) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "c", "image": "busybox:1"}]}}}})
}

fn pod(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": "c", "image": "busybox:1"}]}})
}

fn items(v: &Value) -> Vec<Value> {
    v["items"].as_array().cloned().unwrap_or_default()
}

fn owned_by(p: &Value, uid: &Value) -> bool {
    p["metadata"]["ownerReferences"]
        .as_array()
        .is_some_and(|r| r.iter().any(|r| &r["uid"] == uid && r["controller"] == true))
}

#[tokio::test]
async fn replicaset_keeps_its_count_adopts_and_releases() {
    let (srv, _dir) = start(1000).await;
    let a = srv.addr;
    let created = post(a, RSS, &rs("web", 3)).await.json();
    let uid = created["metadata"]["uid"].clone();

    let pods = eventually("3 pods", || async {
        let l = items(&get(a, &format!("{PODS}?labelSelector=app%3Dweb")).await.json());
        (l.len() == 3).then_some(l)
    })
    .await;
    assert!(pods.iter().all(|p| owned_by(p, &uid)), "every pod has the ReplicaSet as controller");
    assert!(pods.iter().all(|p| p["metadata"]["name"].as_str().is_some_and(|n| n.starts_with("web-"))));
    let status = eventually("status", || async {
        let s = get(a, &format!("{RSS}/web")).await.json()["status"].clone();
        (s["replicas"] == 3 && s["observedGeneration"] == 1).then_some(s)
    })
    .await;
    assert_eq!(status["readyReplicas"], 0);

    // A deleted pod is replaced.
    let victim = pods[0]["metadata"]["name"].as_str().unwrap_or_default().to_owned();
    call(a, "DELETE", &format!("{PODS}/{victim}"), "application/json", b"").await;
    eventually("replacement", || async {
        let l = items(&get(a, &format!("{PODS}?labelSelector=app%3Dweb")).await.json());
        (l.len() == 3 && l.iter().all(|p| p["metadata"]["name"] != victim.as_str())).then_some(())
    })
    .await;

    // An orphan with matching labels is adopted, and the surplus goes:
    // the unscheduled orphan before the pods bound to a node.
    for p in items(&get(a, &format!("{PODS}?labelSelector=app%3Dweb")).await.json()) {
        let name = p["metadata"]["name"].as_str().unwrap_or_default().to_owned();
        let b = post(a, &format!("{PODS}/{name}/binding"), &json!({"target": {"name": "n1"}})).await;
        assert_eq!(b.status, 201);
    }
    assert_eq!(post(a, PODS, &pod("stray", json!({"app": "web"}))).await.status, 201);
    eventually("back to 3 after adopting", || async {
        let l = items(&get(a, &format!("{PODS}?labelSelector=app%3Dweb")).await.json());
        (l.len() == 3 && l.iter().all(|p| owned_by(p, &uid))).then_some(())
    })
    .await;
    assert_eq!(get(a, &format!("{PODS}/stray")).await.status, 404, "the unscheduled pod went first");

    // A pod relabelled out of the selector is released, and replaced.
    let keep = items(&get(a, &format!("{PODS}?labelSelector=app%3Dweb")).await.json())[0]["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    patch(a, &format!("{PODS}/{keep}"), "application/merge-patch+json", r#"{"metadata":{"labels":{"app":"debug"}}}"#)
        .await;
    let released = eventually("released", || async {
        let p = get(a, &format!("{PODS}/{keep}")).await.json();
        (!owned_by(&p, &uid)).then_some(p)
    })
    .await;
    assert_eq!(released["metadata"]["labels"]["app"], "debug");
    eventually("replaced the released pod", || async {
        (items(&get(a, &format!("{PODS}?labelSelector=app%3Dweb")).await.json()).len() == 3).then_some(())
    })
    .await;

    // Scale down to 1 and up to 2.
    patch(a, &format!("{RSS}/web/scale"), "application/merge-patch+json", r#"{"spec":{"replicas":1}}"#).await;
    eventually("scaled to 1", || async {
        (live(items(&get(a, &format!("{PODS}?labelSelector=app%3Dweb")).await.json())).len() == 1).then_some(())
    })
    .await;
    srv.shutdown().await.expect("shutdown");
}

/// The pods of `app` not being deleted: with no node agent here, a deleted
/// pod bound to a node stays Terminating (its node would stop it), as
/// `kubectl get pods` would show it.
async fn pods_of(a: std::net::SocketAddr, app: &str) -> Vec<Value> {
    live(items(&get(a, &format!("{PODS}?labelSelector=app%3D{app}")).await.json()))
}

fn live(pods: Vec<Value>) -> Vec<Value> {
    pods.into_iter().filter(|p| p["metadata"].get("deletionTimestamp").is_none()).collect()
}

#[tokio::test]
async fn garbage_collection_background_orphan_and_foreground() {
    let (srv, _dir) = start(1000).await;
    let a = srv.addr;
    for name in ["bg", "orph", "fg"] {
        post(a, RSS, &rs(name, 2)).await;
    }
    for name in ["bg", "orph", "fg"] {
        eventually("pods", || async { (pods_of(a, name).await.len() == 2).then_some(()) }).await;
    }

    // Background (kubectl's default): the owner goes at once, its pods after.
    let body = br#"{"kind":"DeleteOptions","apiVersion":"v1","propagationPolicy":"Background"}"#;
    assert_eq!(call(a, "DELETE", &format!("{RSS}/bg"), "application/json", body).await.status, 200);
    assert_eq!(get(a, &format!("{RSS}/bg")).await.status, 404);
    eventually("bg pods collected", || async { pods_of(a, "bg").await.is_empty().then_some(()) }).await;

    // Orphan: the pods stay and lose their owner reference.
    let body = br#"{"propagationPolicy":"Orphan"}"#;
    call(a, "DELETE", &format!("{RSS}/orph"), "application/json", body).await;
    eventually("orphaning owner gone", || async { (get(a, &format!("{RSS}/orph")).await.status == 404).then_some(()) })
        .await;
    let left = pods_of(a, "orph").await;
    assert_eq!(left.len(), 2);
    assert!(left.iter().all(|p| p["metadata"].get("ownerReferences").is_none_or(|r| r == &json!([]))), "{left:?}");

    // Foreground: the owner waits, marked, until its pods are gone.
    let body = br#"{"propagationPolicy":"Foreground"}"#;
    let marked = call(a, "DELETE", &format!("{RSS}/fg"), "application/json", body).await.json();
    assert!(marked["metadata"]["deletionTimestamp"].is_string());
    assert!(marked["metadata"]["finalizers"].as_array().is_some_and(|f| f.iter().any(|x| x == "foregroundDeletion")));
    eventually("foreground owner gone after its pods", || async {
        (get(a, &format!("{RSS}/fg")).await.status == 404).then_some(())
    })
    .await;
    assert!(pods_of(a, "fg").await.is_empty());

    // A pod naming an owner that does not exist is collected.
    let mut p = pod("dangling", json!({"app": "none"}));
    p["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "ghost", "uid": "00000000-0000-0000-0000-000000000000"}]);
    assert_eq!(post(a, PODS, &p).await.status, 201);
    eventually("dangling pod collected", || async {
        (get(a, &format!("{PODS}/dangling")).await.status == 404).then_some(())
    })
    .await;
    srv.shutdown().await.expect("shutdown");
}

const DEPLOYS: &str = "/apis/apps/v1/namespaces/default/deployments";

fn deployment(name: &str, replicas: i64, image: &str, strategy: Value) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"replicas": replicas, "strategy": strategy, "revisionHistoryLimit": 1, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "c", "image": image}]}}}})
}

/// Changes the image of container `c` in the pod template at `path`.
async fn set_image(a: std::net::SocketAddr, path: &str, image: &str) {
    let body = json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": image}]}}}});
    assert_eq!(patch(a, path, "application/strategic-merge-patch+json", &body.to_string()).await.status, 200);
}

/// Stands in for the kubelets: marks every pending pod of `app` Running and Ready.
async fn make_ready(a: std::net::SocketAddr, app: &str) {
    for p in pods_of(a, app).await {
        if p["status"]["phase"] == "Running" || p["metadata"].get("deletionTimestamp").is_some() {
            continue;
        }
        let name = p["metadata"]["name"].as_str().unwrap_or_default();
        let status = r#"{"status":{"phase":"Running","conditions":[{"type":"Ready","status":"True","lastTransitionTime":"2020-01-01T00:00:00Z"}]}}"#;
        patch(a, &format!("{PODS}/{name}/status"), "application/merge-patch+json", status).await;
    }
}

fn ready_count(pods: &[Value]) -> usize {
    pods.iter().filter(|p| p["status"]["phase"] == "Running").count()
}

/// All 4 replicas of the Deployment's current generation are updated and available.
fn rolled_out(d: &Value) -> bool {
    let st = &d["status"];
    st["updatedReplicas"] == 4
        && st["replicas"] == 4
        && st["availableReplicas"] == 4
        && st["observedGeneration"] == d["metadata"]["generation"]
}

#[tokio::test]
async fn deployment_rolls_within_surge_and_unavailability() {
    let (srv, _dir) = start(5000).await;
    let a = srv.addr;
    let strategy = json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 1}});
    post(a, DEPLOYS, &deployment("web", 4, "img:1", strategy.clone())).await;
    eventually("4 pods", || async { (pods_of(a, "web").await.len() == 4).then_some(()) }).await;
    make_ready(a, "web").await;
    let d = eventually("rolled out", || async {
        let d = get(a, &format!("{DEPLOYS}/web")).await.json();
        (d["status"]["availableReplicas"] == 4 && d["status"]["updatedReplicas"] == 4).then_some(d)
    })
    .await;
    assert_eq!(d["metadata"]["annotations"]["deployment.kubernetes.io/revision"], "1");
    let rs1 = items(&get(a, RSS).await.json());
    assert_eq!(rs1.len(), 1);
    let hash = rs1[0]["metadata"]["labels"]["pod-template-hash"].as_str().expect("hash").to_owned();
    assert!(rs1[0]["metadata"]["name"].as_str().is_some_and(|n| n == format!("web-{hash}")));

    // minReadySeconds follows the Deployment onto its current ReplicaSet.
    patch(a, &format!("{DEPLOYS}/web"), "application/merge-patch+json", r#"{"spec":{"minReadySeconds":1}}"#).await;
    eventually("minReadySeconds on the ReplicaSet", || async {
        let l = items(&get(a, RSS).await.json());
        (l.len() == 1 && l[0]["spec"]["minReadySeconds"] == 1).then_some(())
    })
    .await;
    patch(a, &format!("{DEPLOYS}/web"), "application/merge-patch+json", r#"{"spec":{"minReadySeconds":0}}"#).await;
    set_image(a, &format!("{DEPLOYS}/web"), "img:2").await;
    // Drive the rollout as kubelets would, checking the invariants at each step.
    until("the rollout to img:2", Duration::from_secs(10), || async {
        let pods: Vec<Value> =
            pods_of(a, "web").await.into_iter().filter(|p| p["metadata"].get("deletionTimestamp").is_none()).collect();
        assert!(pods.len() <= 5, "never more than replicas + maxSurge pods: {}", pods.len());
        assert!(ready_count(&pods) >= 3, "never fewer than replicas - maxUnavailable ready");
        let d = get(a, &format!("{DEPLOYS}/web")).await.json();
        if rolled_out(&d) {
            return Ok(());
        }
        make_ready(a, "web").await;
        Err(format!("deployment status {}", d["status"]))
    })
    .await;
    let d = get(a, &format!("{DEPLOYS}/web")).await.json();
    assert_eq!(d["metadata"]["annotations"]["deployment.kubernetes.io/revision"], "2");
    let conds = d["status"]["conditions"].as_array().cloned().unwrap_or_default();
    assert!(conds.iter().any(|c| c["type"] == "Progressing" && c["reason"] == "NewReplicaSetAvailable"), "{conds:?}");
    assert!(pods_of(a, "web").await.iter().all(|p| p["spec"]["containers"][0]["image"] == "img:2"));
    let rss = items(&get(a, RSS).await.json());
    assert_eq!(rss.len(), 2, "the old ReplicaSet is kept as history (limit 1)");

    // A third template: the oldest history entry is pruned past the limit.
    set_image(a, &format!("{DEPLOYS}/web"), "img:3").await;
    until("the rollout to img:3", Duration::from_secs(10), || async {
        make_ready(a, "web").await;
        let d = get(a, &format!("{DEPLOYS}/web")).await.json();
        if rolled_out(&d) { Ok(()) } else { Err(format!("deployment status {}", d["status"])) }
    })
    .await;
    let names: Vec<String> = eventually("pruned to limit", || async {
        let l = items(&get(a, RSS).await.json());
        (l.len() == 2)
            .then(|| l.iter().map(|r| r["metadata"]["name"].as_str().unwrap_or_default().to_owned()).collect())
    })
    .await;
    assert!(!names.contains(&format!("web-{hash}")), "revision 1 pruned: {names:?}");

    // Deleting the Deployment removes its ReplicaSets and pods.
    call(a, "DELETE", &format!("{DEPLOYS}/web"), "application/json", br#"{"propagationPolicy":"Background"}"#).await;
    eventually("all gone", || async {
        (items(&get(a, RSS).await.json()).is_empty() && pods_of(a, "web").await.is_empty()).then_some(())
    })
    .await;
    srv.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn recreate_replaces_all_pods_at_once() {
    let (srv, _dir) = start(5000).await;
    let a = srv.addr;
    post(a, DEPLOYS, &deployment("rc", 3, "img:1", json!({"type": "Recreate"}))).await;
    eventually("3 pods", || async { (pods_of(a, "rc").await.len() == 3).then_some(()) }).await;
    make_ready(a, "rc").await;
    set_image(a, &format!("{DEPLOYS}/rc"), "img:2").await;
    let mixed = std::cell::Cell::new(false);
    until("3 pods of img:2", Duration::from_secs(10), || async {
        let pods = pods_of(a, "rc").await;
        let images: std::collections::BTreeSet<String> =
            pods.iter().map(|p| p["spec"]["containers"][0]["image"].as_str().unwrap_or_default().to_owned()).collect();
        mixed.set(mixed.get() || images.len() > 1);
        if pods.len() == 3 && images.len() == 1 && images.contains("img:2") {
            Ok(())
        } else {
            Err(format!("{} pods with images {images:?}", pods.len()))
        }
    })
    .await;
    assert!(!mixed.get(), "old and new pods never ran together");
    srv.shutdown().await.expect("shutdown");
}

const NODES: &str = "/api/v1/nodes";

fn node(name: &str, cpu: &str, mem: &str, labels: Value, taints: Value) -> Value {
    let now = jiff::Timestamp::now().to_string();
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels},
        "spec": {"taints": taints},
        "status": {"capacity": {"cpu": cpu, "memory": mem, "pods": "110"}, "allocatable": {"cpu": cpu, "memory": mem, "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "lastHeartbeatTime": now, "lastTransitionTime": now}]}})
}

fn cpu_milli(q: &str) -> i64 {
    q.strip_suffix('m').map_or_else(|| q.parse::<i64>().unwrap_or(0) * 1000, |m| m.parse().unwrap_or(0))
}

#[tokio::test]
async fn scheduler_spreads_fits_and_waits_for_room() {
    let (srv, _dir) = start(5000).await;
    let a = srv.addr;
    let nodes = [
        node("big", "4", "8Gi", json!({"disk": "ssd"}), json!([])),
        node("mid", "2", "4Gi", json!({"disk": "ssd"}), json!([])),
        node("small", "1", "2Gi", json!({"disk": "hdd"}), json!([])),
        node(
            "gpu",
            "8",
            "16Gi",
            json!({"disk": "ssd"}),
            json!([{"key": "dedicated", "value": "x", "effect": "NoSchedule"}]),
        ),
    ];
    for n in &nodes {
        assert_eq!(post(a, NODES, n).await.status, 201);
    }
    let mut d = deployment("app", 6, "img:1", json!({"type": "RollingUpdate"}));
    d["spec"]["template"]["spec"]["containers"][0]["resources"] =
        json!({"requests": {"cpu": "500m", "memory": "512Mi"}});
    post(a, DEPLOYS, &d).await;
    let pods = eventually("6 bound pods", || async {
        let l = pods_of(a, "app").await;
        (l.len() == 6 && l.iter().all(|p| p["spec"]["nodeName"].is_string())).then_some(l)
    })
    .await;
    let mut per: BTreeMap<String, i64> = BTreeMap::new();
    for p in &pods {
        *per.entry(p["spec"]["nodeName"].as_str().unwrap_or_default().to_owned()).or_default() += 500;
        let cond = p["status"]["conditions"].as_array().cloned().unwrap_or_default();
        assert!(cond.iter().any(|c| c["type"] == "PodScheduled" && c["status"] == "True"), "{cond:?}");
    }
    assert!(!per.contains_key("gpu"), "the tainted node gets nothing: {per:?}");
    assert!(per.len() >= 3, "spread over the eligible nodes: {per:?}");
    for (n, cpu) in &per {
        let alloc = nodes
            .iter()
            .find(|x| x["metadata"]["name"] == n.as_str())
            .map(|x| x["status"]["allocatable"]["cpu"].as_str().unwrap_or("0"))
            .unwrap_or("0");
        assert!(*cpu <= cpu_milli(alloc), "{n} over its cpu: {per:?}");
    }

    // A pod too big for every untainted node: kube-scheduler's reason.
    let huge = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "huge", "labels": {"app": "huge"}},
        "spec": {"containers": [{"name": "c", "image": "x", "resources": {"requests": {"cpu": "3", "memory": "10Gi"}}}]}});
    post(a, PODS, &huge).await;
    let cond = eventually("unschedulable condition", || async {
        let p = get(a, &format!("{PODS}/huge")).await.json();
        p["status"]["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "PodScheduled" && c["status"] == "False").cloned())
    })
    .await;
    assert_eq!(cond["reason"], "Unschedulable");
    let msg = cond["message"].as_str().unwrap_or_default();
    assert!(msg.starts_with("0/4 nodes are available: "), "{msg}");
    assert!(msg.contains("1 node(s) had untolerated taint {dedicated: x}"), "{msg}");
    assert!(msg.contains("Insufficient memory"), "{msg}");
    let events =
        items(&get(a, "/api/v1/namespaces/default/events?fieldSelector=involvedObject.name%3Dhuge").await.json());
    assert!(events.iter().any(|e| e["reason"] == "FailedScheduling"), "{events:?}");

    // A node with room appears: the pod is bound to it, without polling.
    post(a, NODES, &node("roomy", "16", "64Gi", json!({}), json!([]))).await;
    let bound = eventually("huge bound", || async {
        let p = get(a, &format!("{PODS}/huge")).await.json();
        p["spec"]["nodeName"].as_str().map(str::to_owned)
    })
    .await;
    assert_eq!(bound, "roomy");
    srv.shutdown().await.expect("shutdown");
}

async fn heartbeat(a: std::net::SocketAddr, node: &str) {
    let now = jiff::Timestamp::now().to_string();
    let body = json!({"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
        "lastHeartbeatTime": now, "lastTransitionTime": now}]}});
    patch(a, &format!("{NODES}/{node}/status"), "application/merge-patch+json", &body.to_string()).await;
}

fn taint_keys(n: &Value) -> Vec<String> {
    n["spec"]["taints"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|t| format!("{}:{}", t["key"].as_str().unwrap_or(""), t["effect"].as_str().unwrap_or("")))
        .collect()
}

#[tokio::test]
async fn silent_nodes_turn_not_ready_and_only_tolerating_pods_move() {
    let (srv, _dir) = common::start_with_grace(std::time::Duration::from_secs(2)).await;
    let a = srv.addr;
    post(a, NODES, &node("n1", "4", "8Gi", json!({}), json!([]))).await;
    for (name, tolerations) in [
        (
            "tolerant",
            json!([{"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 2}]),
        ),
        ("stubborn", json!([])),
    ] {
        let mut d = deployment(name, 1, "img:1", json!({"type": "RollingUpdate"}));
        d["spec"]["template"]["spec"]["tolerations"] = tolerations;
        post(a, DEPLOYS, &d).await;
    }
    for name in ["tolerant", "stubborn"] {
        eventually("bound to n1", || async {
            pods_of(a, name).await.first().filter(|p| p["spec"]["nodeName"] == "n1").map(|_| ())
        })
        .await;
    }
    post(a, NODES, &node("n2", "4", "8Gi", json!({}), json!([]))).await;
    let cidrs: Vec<String> = eventually("pod CIDRs", || async {
        let l = items(&get(a, NODES).await.json());
        let c: Vec<String> = l.iter().filter_map(|n| n["spec"]["podCIDR"].as_str().map(str::to_owned)).collect();
        (c.len() == 2).then_some(c)
    })
    .await;
    assert_eq!(cidrs, vec!["10.42.0.0/24".to_owned(), "10.42.1.0/24".to_owned()]);

    // n2 keeps reporting (a heartbeat every 300 ms, as a kubelet would), n1
    // goes silent. (When exactly, against the grace period and the
    // toleration, is checked on a test clock in nodelifecycle's unit tests.)
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let mut n1_down = false;
    loop {
        heartbeat(a, "n2").await;
        let n1 = get(a, &format!("{NODES}/n1")).await.json();
        let ready = n1["status"]["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "Ready").cloned())
            .unwrap_or_default();
        if ready["status"] == "Unknown" && !n1_down {
            n1_down = true;
            assert!(taint_keys(&n1).contains(&"node.kubernetes.io/unreachable:NoExecute".to_owned()), "{n1}");
        }
        let tolerant = pods_of(a, "tolerant").await;
        if tolerant.len() == 1 && tolerant[0]["spec"]["nodeName"] == "n2" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the tolerating pod did not move to n2; last seen: n1 {n1}, tolerant pods {tolerant:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(n1_down, "n1 turned NotReady before its pod moved");
    let tolerant = pods_of(a, "tolerant").await;
    assert_eq!(tolerant.len(), 1);
    assert_eq!(tolerant[0]["spec"]["nodeName"], "n2", "the tolerating pod was replaced on n2");
    let stubborn = pods_of(a, "stubborn").await;
    assert_eq!(stubborn.len(), 1);
    assert_eq!(stubborn[0]["spec"]["nodeName"], "n1", "a pod without the toleration stays bound");
    let ready = stubborn[0]["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready").cloned())
        .unwrap_or_default();
    assert_eq!(ready["status"], "False", "its pods are not ready");

    // n1 comes back: Ready, taints gone.
    heartbeat(a, "n1").await;
    eventually("n1 untainted", || async {
        let n1 = get(a, &format!("{NODES}/n1")).await.json();
        taint_keys(&n1).iter().all(|t| !t.starts_with("node.kubernetes.io/")).then_some(())
    })
    .await;
    srv.shutdown().await.expect("shutdown");
}

const DSS: &str = "/apis/apps/v1/namespaces/default/daemonsets";

#[tokio::test]
async fn daemonset_one_pod_per_eligible_node() {
    let (srv, _dir) = start(5000).await;
    let a = srv.addr;
    post(a, NODES, &node("e1", "2", "2Gi", json!({"role": "edge"}), json!([]))).await;
    post(
        a,
        NODES,
        &node(
            "e2",
            "2",
            "2Gi",
            json!({"role": "edge"}),
            json!([{"key": "dedicated", "value": "x", "effect": "NoSchedule"}]),
        ),
    )
    .await;
    post(a, NODES, &node("core", "2", "2Gi", json!({"role": "core"}), json!([]))).await;
    let ds = json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "agent"},
        "spec": {"selector": {"matchLabels": {"app": "agent"}}, "template": {"metadata": {"labels": {"app": "agent"}},
            "spec": {"nodeSelector": {"role": "edge"}, "containers": [{"name": "c", "image": "img:1"}]}}}});
    assert_eq!(post(a, DSS, &ds).await.status, 201);
    let on = |pods: &[Value]| -> Vec<String> {
        let mut v: Vec<String> =
            pods.iter().map(|p| p["spec"]["nodeName"].as_str().unwrap_or_default().to_owned()).collect();
        v.sort();
        v
    };
    eventually("a pod on e1 only (e2 tainted, core not selected)", || async {
        (on(&pods_of(a, "agent").await) == ["e1"]).then_some(())
    })
    .await;
    let pods = pods_of(a, "agent").await;
    let tols = pods[0]["spec"]["tolerations"].as_array().cloned().unwrap_or_default();
    assert!(
        tols.iter().any(|t| t["key"] == "node.kubernetes.io/unreachable" && t.get("tolerationSeconds").is_none()),
        "{tols:?}"
    );

    // A node that appears later gets one.
    post(a, NODES, &node("e3", "2", "2Gi", json!({"role": "edge"}), json!([]))).await;
    eventually("e1 and e3", || async { (on(&pods_of(a, "agent").await) == ["e1", "e3"]).then_some(()) }).await;
    // A deleted pod is recreated once it is gone (no node agent here to stop
    // it: forced, so it goes at once; until then its node holds it).
    let victim = pods_of(a, "agent").await[0]["metadata"]["name"].as_str().unwrap_or_default().to_owned();
    call(a, "DELETE", &format!("{PODS}/{victim}?gracePeriodSeconds=0"), "application/json", b"").await;
    eventually("recreated", || async {
        let p = pods_of(a, "agent").await;
        (on(&p) == ["e1", "e3"] && p.iter().all(|x| x["metadata"]["name"] != victim.as_str())).then_some(())
    })
    .await;
    let status = eventually("status", || async {
        let s = get(a, &format!("{DSS}/agent")).await.json()["status"].clone();
        (s["desiredNumberScheduled"] == 2 && s["currentNumberScheduled"] == 2).then_some(s)
    })
    .await;
    assert_eq!(status["numberMisscheduled"], 0);

    // A new template rolls one node at a time as pods become ready.
    make_ready(a, "agent").await;
    set_image(a, &format!("{DSS}/agent"), "img:2").await;
    until("the daemon set rolled to img:2", Duration::from_secs(10), || async {
        let pods = pods_of(a, "agent").await;
        let live: Vec<&Value> = pods.iter().filter(|p| p["metadata"].get("deletionTimestamp").is_none()).collect();
        assert!(!live.is_empty(), "maxUnavailable 1 of 2 keeps one running");
        if live.len() == 2 && live.iter().all(|p| p["spec"]["containers"][0]["image"] == "img:2") {
            return Ok(());
        }
        make_ready(a, "agent").await;
        // As the nodes' agents would: pods being deleted stop, and go.
        for p in items(&get(a, &format!("{PODS}?labelSelector=app%3Dagent")).await.json()) {
            if p["metadata"].get("deletionTimestamp").is_some() {
                let name = p["metadata"]["name"].as_str().unwrap_or_default();
                call(a, "DELETE", &format!("{PODS}/{name}?gracePeriodSeconds=0"), "application/json", b"").await;
            }
        }
        let images: Vec<&Value> = live.iter().map(|p| &p["spec"]["containers"][0]["image"]).collect();
        Err(format!("live pods' images {images:?}"))
    })
    .await;
    srv.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn endpoints_follow_ready_pods_and_resolve_named_ports() {
    let (srv, _dir) = start(5000).await;
    let a = srv.addr;
    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}});
    post(a, "/api/v1/namespaces/default/services", &svc).await;
    for (name, ip, ready) in [("w1", "10.42.0.5", true), ("w2", "10.42.1.7", false), ("w3", "", true)] {
        let p = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "x", "ports": [{"name": "http", "containerPort": 8080}]}]}});
        post(a, PODS, &p).await;
        let status = json!({"status": {"phase": "Running", "podIP": ip,
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}});
        patch(a, &format!("{PODS}/{name}/status"), "application/merge-patch+json", &status.to_string()).await;
    }
    let ep = eventually("endpoints", || async {
        let e = get(a, "/api/v1/namespaces/default/endpoints/web").await;
        let v = e.json();
        (e.status == 200 && v["subsets"][0]["notReadyAddresses"].is_array()).then_some(v)
    })
    .await;
    let s = &ep["subsets"][0];
    assert_eq!(
        s["addresses"],
        json!([{"ip": "10.42.0.5", "nodeName": "n1", "targetRef": {"kind": "Pod", "name": "w1", "namespace": "default", "uid": get(a, &format!("{PODS}/w1")).await.json()["metadata"]["uid"]}}])
    );
    assert_eq!(s["notReadyAddresses"][0]["ip"], "10.42.1.7");
    assert_eq!(s["ports"], json!([{"name": "http", "port": 8080, "protocol": "TCP"}]), "named targetPort resolved");
    // The pod turning ready moves it; a deleted service takes its endpoints along.
    patch(
        a,
        &format!("{PODS}/w2/status"),
        "application/merge-patch+json",
        r#"{"status":{"conditions":[{"type":"Ready","status":"True"}]}}"#,
    )
    .await;
    eventually("both ready", || async {
        let v = get(a, "/api/v1/namespaces/default/endpoints/web").await.json();
        (v["subsets"][0]["addresses"].as_array().map(Vec::len) == Some(2)).then_some(())
    })
    .await;
    call(a, "DELETE", "/api/v1/namespaces/default/services/web", "application/json", b"").await;
    eventually("endpoints gone", || async {
        (get(a, "/api/v1/namespaces/default/endpoints/web").await.status == 404).then_some(())
    })
    .await;
    srv.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn events_expire_after_their_ttl() {
    let (srv, _dir) = common::start_with(|o| o.event_ttl = std::time::Duration::from_secs(2)).await;
    let a = srv.addr;
    const EVENTS: &str = "/api/v1/namespaces/default/events";
    let ev = |name: &str, last: &str| {
        json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": name}, "type": "Normal", "reason": "Test",
            "involvedObject": {"kind": "Pod", "name": "p", "namespace": "default"}, "lastTimestamp": last})
    };
    assert_eq!(post(a, EVENTS, &ev("old", "2020-01-01T00:00:00Z")).await.status, 201);
    assert_eq!(post(a, EVENTS, &ev("new", &jiff::Timestamp::now().to_string())).await.status, 201);
    eventually("old event expired", || async { (get(a, &format!("{EVENTS}/old")).await.status == 404).then_some(()) })
        .await;
    assert_eq!(get(a, &format!("{EVENTS}/new")).await.status, 200, "a fresh event stays for its ttl");
    until("the fresh event to expire after its ttl", Duration::from_secs(10), || async {
        let r = get(a, &format!("{EVENTS}/new")).await;
        if r.status == 404 { Ok(()) } else { Err(format!("{} {}", r.status, r.json())) }
    })
    .await;
    srv.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn foreground_deletion_spares_dependents_with_another_owner_and_manual_endpoints_stay() {
    let (srv, _dir) = start(5000).await;
    let a = srv.addr;
    let ua = post(a, RSS, &rs("owner-a", 0)).await.json()["metadata"]["uid"].clone();
    let ub = post(a, RSS, &rs("owner-b", 0)).await.json()["metadata"]["uid"].clone();
    let shared = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "shared", "ownerReferences": [
        {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "owner-a", "uid": ua},
        {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "owner-b", "uid": ub}]}, "data": {"k": "v"}});
    assert_eq!(post(a, "/api/v1/namespaces/default/configmaps", &shared).await.status, 201);
    call(a, "DELETE", &format!("{RSS}/owner-a"), "application/json", br#"{"propagationPolicy":"Foreground"}"#).await;
    eventually("owner-a gone", || async { (get(a, &format!("{RSS}/owner-a")).await.status == 404).then_some(()) })
        .await;
    let cm = get(a, "/api/v1/namespaces/default/configmaps/shared").await;
    assert_eq!(cm.status, 200, "owner-b still owns it");
    assert_eq!(cm.json()["metadata"]["ownerReferences"].as_array().map(Vec::len), Some(1));

    // Endpoints written by hand for a Service that does not exist (yet) stay.
    let ep = json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "external"},
        "subsets": [{"addresses": [{"ip": "192.0.2.10"}], "ports": [{"port": 5432}]}]});
    assert_eq!(post(a, "/api/v1/namespaces/default/endpoints", &ep).await.status, 201);
    // The endpoints controller takes changes in order: once it has answered
    // a Service created after, it has looked at the hand-written Endpoints.
    let probe = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "probe"},
        "spec": {"selector": {"app": "probe"}, "ports": [{"port": 80}]}});
    assert_eq!(post(a, "/api/v1/namespaces/default/services", &probe).await.status, 201);
    eventually("the probe's endpoints", || async {
        (get(a, "/api/v1/namespaces/default/endpoints/probe").await.status == 200).then_some(())
    })
    .await;
    assert_eq!(get(a, "/api/v1/namespaces/default/endpoints/external").await.status, 200);
    srv.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn pods_of_a_deleted_node_are_replaced_and_gated_pods_wait() {
    let (srv, _dir) = start(5000).await;
    let a = srv.addr;
    post(a, NODES, &node("doomed", "4", "8Gi", json!({}), json!([]))).await;
    post(a, DEPLOYS, &deployment("mover", 1, "img:1", json!({"type": "RollingUpdate"}))).await;
    eventually("on doomed", || async {
        pods_of(a, "mover").await.first().filter(|p| p["spec"]["nodeName"] == "doomed").map(|_| ())
    })
    .await;
    post(a, NODES, &node("spare", "4", "8Gi", json!({}), json!([]))).await;
    call(a, "DELETE", &format!("{NODES}/doomed"), "application/json", b"").await;
    eventually("replaced on spare", || async {
        let l = pods_of(a, "mover").await;
        (l.len() == 1 && l[0]["spec"]["nodeName"] == "spare").then_some(())
    })
    .await;

    let gated = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "gated", "labels": {"app": "gated"}},
        "spec": {"schedulingGates": [{"name": "example.com/wait"}], "containers": [{"name": "c", "image": "x"}]}});
    post(a, PODS, &gated).await;
    // The scheduler takes pods in order: once it has bound one created
    // after, it has looked at the gated one.
    post(a, PODS, &pod("probe", json!({"app": "probe"}))).await;
    eventually("the probe pod bound", || async {
        get(a, &format!("{PODS}/probe")).await.json()["spec"]["nodeName"].as_str().map(|_| ())
    })
    .await;
    assert!(
        get(a, &format!("{PODS}/gated")).await.json()["spec"].get("nodeName").is_none(),
        "a gated pod is not scheduled"
    );
    srv.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_failing_daemon_pod_is_recreated_with_backoff() {
    let (srv, _dir) = start(5000).await;
    let a = srv.addr;
    post(a, NODES, &node("edge", "2", "2Gi", json!({}), json!([]))).await;
    let ds = json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "flaky"},
        "spec": {"selector": {"matchLabels": {"app": "flaky"}}, "template": {"metadata": {"labels": {"app": "flaky"}},
            "spec": {"containers": [{"name": "c", "image": "img:1"}]}}}});
    post(a, DSS, &ds).await;
    let first = eventually("daemon pod", || async {
        pods_of(a, "flaky").await.first().and_then(|p| p["metadata"]["name"].as_str().map(str::to_owned))
    })
    .await;
    // The agent reports it Failed.
    patch(a, &format!("{PODS}/{first}/status"), "application/merge-patch+json", r#"{"status":{"phase":"Failed"}}"#)
        .await;
    // The reconcile that removes the failed pod counts what is left: none.
    eventually("the failed pod removed and counted", || async {
        let s = get(a, &format!("{DSS}/flaky")).await.json()["status"].clone();
        (s["desiredNumberScheduled"] == 1 && s["currentNumberScheduled"] == 0).then_some(())
    })
    .await;
    let gone_at = std::time::Instant::now();
    assert!(pods_of(a, "flaky").await.is_empty(), "not recreated at once");
    eventually("recreated after the backoff", || async { (!pods_of(a, "flaky").await.is_empty()).then_some(()) }).await;
    assert!(
        gone_at.elapsed() >= std::time::Duration::from_millis(900),
        "waited about a second: {:?}",
        gone_at.elapsed()
    );
    srv.shutdown().await.expect("shutdown");
}

const PVCS: &str = "/api/v1/namespaces/default/persistentvolumeclaims";
const PVS: &str = "/api/v1/persistentvolumes";

fn claim(name: &str, class: Option<&str>, size: &str) -> Value {
    let mut c = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}}});
    if let Some(class) = class {
        c["spec"]["storageClassName"] = json!(class);
    }
    c
}

fn pod_with_claim(name: &str, claim: &str, node_selector: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"nodeSelector": node_selector, "containers": [{"name": "c", "image": "busybox:1",
            "volumeMounts": [{"name": "d", "mountPath": "/data"}]}],
            "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": claim}}]}})
}

async fn node_of_pod(a: std::net::SocketAddr, name: &str) -> String {
    eventually(&format!("{name} bound"), || async {
        get(a, &format!("{PODS}/{name}")).await.json()["spec"]["nodeName"].as_str().map(str::to_owned)
    })
    .await
}

async fn finish(a: std::net::SocketAddr, pod: &str) {
    let body = r#"{"status":{"phase":"Succeeded"}}"#;
    assert_eq!(patch(a, &format!("{PODS}/{pod}/status"), "application/merge-patch+json", body).await.status, 200);
}

/// Claims and volumes through the API: the default `local-path` class, a
/// volume provisioned on the node the claim's first pod was scheduled to
/// (and every later pod of the claim sent there), kube-scheduler's message
/// for a missing claim, protection while a pod runs, `Delete` and `Retain`.
#[tokio::test]
async fn claims_bind_provision_pin_and_release() {
    let (srv, _dir) = start(5000).await;
    let a = srv.addr;
    for (n, cpu) in [("n1", "16"), ("n2", "1")] {
        let body = node(n, cpu, "8Gi", json!({"kubernetes.io/hostname": n}), json!([]));
        assert_eq!(post(a, NODES, &body).await.status, 201);
    }
    let sc = get(a, "/apis/storage.k8s.io/v1/storageclasses/local-path").await.json();
    assert_eq!(sc["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"], "true", "{sc}");
    assert_eq!(sc["volumeBindingMode"], "WaitForFirstConsumer");
    assert_eq!(sc["reclaimPolicy"], "Delete");

    assert_eq!(post(a, PVCS, &claim("data", None, "64Mi")).await.status, 201);
    let c = eventually("the default class and protection", || async {
        let c = get(a, &format!("{PVCS}/data")).await.json();
        (c["spec"]["storageClassName"] == "local-path" && c["status"]["phase"] == "Pending").then_some(c)
    })
    .await;
    assert_eq!(c["metadata"]["finalizers"], json!(["kubernetes.io/pvc-protection"]));
    assert!(c["spec"].get("volumeName").is_none(), "waits for its first consumer: {c}");

    // The first pod lands on n2 (by its selector): the volume is made there.
    post(a, PODS, &pod_with_claim("first", "data", json!({"kubernetes.io/hostname": "n2"}))).await;
    assert_eq!(node_of_pod(a, "first").await, "n2");
    let c = eventually("the claim bound", || async {
        let c = get(a, &format!("{PVCS}/data")).await.json();
        (c["status"]["phase"] == "Bound").then_some(c)
    })
    .await;
    let pv_name = c["spec"]["volumeName"].as_str().unwrap_or_default().to_owned();
    assert_eq!(pv_name, format!("pvc-{}", c["metadata"]["uid"].as_str().unwrap_or_default()));
    assert_eq!(c["status"]["capacity"]["storage"], "64Mi");
    let pv = eventually("the volume Bound", || async {
        let v = get(a, &format!("{PVS}/{pv_name}")).await.json();
        (v["status"]["phase"] == "Bound").then_some(v)
    })
    .await;
    assert_eq!(pv["spec"]["csi"]["driver"], "kedge.io/local-path");
    assert_eq!(pv["spec"]["claimRef"]["name"], "data");
    assert_eq!(pv["spec"]["persistentVolumeReclaimPolicy"], "Delete");
    assert_eq!(
        pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]["values"],
        json!(["n2"])
    );

    // A second pod of the claim goes to n2 too, though n1 has far more room.
    post(a, PODS, &pod_with_claim("second", "data", json!({}))).await;
    assert_eq!(node_of_pod(a, "second").await, "n2", "the volume's node");
    // And one that cannot go there waits, with kube-scheduler's reason.
    post(a, PODS, &pod_with_claim("elsewhere", "data", json!({"kubernetes.io/hostname": "n1"}))).await;
    let msg = eventually("elsewhere unschedulable", || async {
        let p = get(a, &format!("{PODS}/elsewhere")).await.json();
        let conds = p["status"]["conditions"].as_array().cloned().unwrap_or_default();
        conds.iter().find(|c| c["type"] == "PodScheduled" && c["status"] == "False").map(|c| c["message"].clone())
    })
    .await;
    assert_eq!(
        msg,
        "0/2 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, 1 node(s) had volume node affinity conflict."
    );
    call(a, "DELETE", &format!("{PODS}/elsewhere"), "application/json", b"").await;

    // A pod whose claim does not exist yet waits, and goes once it does.
    post(a, PODS, &pod_with_claim("later", "later", json!({}))).await;
    let msg = eventually("later unschedulable", || async {
        let p = get(a, &format!("{PODS}/later")).await.json();
        let conds = p["status"]["conditions"].as_array().cloned().unwrap_or_default();
        conds.iter().find(|c| c["type"] == "PodScheduled" && c["status"] == "False").map(|c| c["message"].clone())
    })
    .await;
    assert_eq!(msg, "0/2 nodes are available: persistentvolumeclaim \"later\" not found.");
    post(a, PVCS, &claim("later", None, "1Mi")).await;
    node_of_pod(a, "later").await;

    // Two new pods of one new claim, one of them held to n2: the other
    // follows it, though n1 has more room (the volume will be made on n2).
    post(a, PVCS, &claim("shared", None, "1Mi")).await;
    post(a, PODS, &pod_with_claim("s1", "shared", json!({"kubernetes.io/hostname": "n2"}))).await;
    post(a, PODS, &pod_with_claim("s2", "shared", json!({}))).await;
    assert_eq!((node_of_pod(a, "s1").await, node_of_pod(a, "s2").await), ("n2".to_owned(), "n2".to_owned()));

    // Deleting the claim waits for its pods (protection), then its volume goes.
    assert_eq!(call(a, "DELETE", &format!("{PVCS}/data"), "application/json", b"").await.status, 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let c = get(a, &format!("{PVCS}/data")).await.json();
    assert!(c["metadata"]["deletionTimestamp"].is_string(), "protected while used: {c}");
    finish(a, "first").await;
    finish(a, "second").await;
    // The volume waits for its node to remove the data (n2 has no agent here)…
    let pv = eventually("the claim gone, its volume released and deleting", || async {
        let v = get(a, &format!("{PVS}/{pv_name}")).await.json();
        let waiting = v["metadata"]["deletionTimestamp"].is_string() && v["status"]["phase"] == "Released";
        (get(a, &format!("{PVCS}/data")).await.status == 404 && waiting).then_some(v)
    })
    .await;
    assert_eq!(pv["metadata"]["finalizers"], json!(["kedge.io/local-path-data"]));
    // …and goes with the node (nothing left to remove it from).
    call(a, "DELETE", &format!("{NODES}/n2"), "application/json", b"").await;
    eventually("the volume gone with its node", || async {
        (get(a, &format!("{PVS}/{pv_name}")).await.status == 404).then_some(())
    })
    .await;

    // A volume made by hand binds to a claim of its class that fits, and
    // (Retain) stays Released when the claim goes.
    let manual = json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "manual-1"},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": "manual",
            "hostPath": {"path": "/srv/manual-1"}}});
    assert_eq!(post(a, PVS, &manual).await.status, 201);
    assert_eq!(post(a, PVCS, &claim("too-big", Some("manual"), "2Gi")).await.status, 201);
    assert_eq!(post(a, PVCS, &claim("fits", Some("manual"), "500Mi")).await.status, 201);
    eventually("fits bound to manual-1", || async {
        let c = get(a, &format!("{PVCS}/fits")).await.json();
        (c["spec"]["volumeName"] == "manual-1" && c["status"]["phase"] == "Bound").then_some(())
    })
    .await;
    assert_eq!(get(a, &format!("{PVCS}/too-big")).await.json()["status"]["phase"], "Pending");
    call(a, "DELETE", &format!("{PVCS}/fits"), "application/json", b"").await;
    eventually("manual-1 Released", || async {
        (get(a, &format!("{PVS}/manual-1")).await.json()["status"]["phase"] == "Released").then_some(())
    })
    .await;
    srv.shutdown().await.expect("shutdown");
}

const STSS: &str = "/apis/apps/v1/namespaces/default/statefulsets";

async fn sts_pods(a: std::net::SocketAddr) -> Vec<String> {
    let mut names: Vec<String> =
        live(pods_of(a, "db").await).iter().filter_map(|p| p["metadata"]["name"].as_str().map(str::to_owned)).collect();
    names.sort();
    names
}

/// A StatefulSet through the API, kubelets stood in for: pods made in
/// order, each once the one before is Ready, with their claims; surplus
/// removed from the highest ordinal; a rolling update held at a partition.
#[tokio::test]
async fn statefulset_makes_pods_in_order_with_their_claims() {
    let (srv, _dir) = start(5000).await;
    let a = srv.addr;
    let sts = json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db"},
        "spec": {"serviceName": "db", "replicas": 3, "selector": {"matchLabels": {"app": "db"}},
            "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [{"name": "c", "image": "busybox:1",
                "volumeMounts": [{"name": "data", "mountPath": "/data"}]}]}},
            "volumeClaimTemplates": [{"metadata": {"name": "data"},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]}});
    let r = post(a, STSS, &sts).await;
    assert_eq!(r.status, 201, "{:?}", r.json());
    eventually("db-0 alone", || async { (sts_pods(a).await == ["db-0"]).then_some(()) }).await;
    let claim = get(a, &format!("{PVCS}/data-db-0")).await.json();
    assert_eq!(claim["metadata"]["labels"]["app"], "db", "{claim}");
    let p0 = get(a, &format!("{PODS}/db-0")).await.json();
    assert_eq!(p0["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"], "data-db-0");
    assert_eq!(p0["metadata"]["labels"]["apps.kubernetes.io/pod-index"], "0");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sts_pods(a).await, ["db-0"], "db-1 waits for db-0 to be Ready");
    for want in [vec!["db-0", "db-1"], vec!["db-0", "db-1", "db-2"]] {
        make_ready(a, "db").await;
        eventually("the next ordinal", || async { (sts_pods(a).await == want).then_some(()) }).await;
    }
    make_ready(a, "db").await;
    let st = eventually("status", || async {
        let s = get(a, &format!("{STSS}/db")).await.json()["status"].clone();
        (s["readyReplicas"] == 3 && s["currentRevision"] == s["updateRevision"]).then_some(s)
    })
    .await;
    let first_rev = st["updateRevision"].clone();
    let revs = items(&get(a, "/apis/apps/v1/namespaces/default/controllerrevisions").await.json());
    assert_eq!(revs.len(), 1);
    assert_eq!(revs[0]["revision"], 1);
    assert_eq!(revs[0]["data"]["spec"]["template"]["$patch"], "replace");

    // A new template with partition 2: only db-2 is renewed.
    let body = json!({"spec": {"updateStrategy": {"rollingUpdate": {"partition": 2}},
        "template": {"spec": {"containers": [{"name": "c", "image": "busybox:2"}]}}}});
    assert_eq!(
        patch(a, &format!("{STSS}/db"), "application/strategic-merge-patch+json", &body.to_string()).await.status,
        200
    );
    let renewed = eventually("db-2 renewed", || async {
        make_ready(a, "db").await;
        let p = get(a, &format!("{PODS}/db-2")).await.json();
        (p["spec"]["containers"][0]["image"] == "busybox:2" && p["status"]["phase"] == "Running").then_some(p)
    })
    .await;
    let st = eventually("partitioned status", || async {
        let s = get(a, &format!("{STSS}/db")).await.json()["status"].clone();
        (s["updatedReplicas"] == 1 && s["readyReplicas"] == 3).then_some(s)
    })
    .await;
    assert_eq!(st["currentRevision"], first_rev);
    assert_eq!(renewed["metadata"]["labels"]["controller-revision-hash"], st["updateRevision"]);
    for p in ["db-0", "db-1"] {
        let pod = get(a, &format!("{PODS}/{p}")).await.json();
        assert_eq!(pod["spec"]["containers"][0]["image"], "busybox:1", "{p} below the partition");
    }

    // Scaled to 1: db-2, then db-1 go; the claims stay.
    assert_eq!(
        patch(a, &format!("{STSS}/db"), "application/merge-patch+json", r#"{"spec":{"replicas":1}}"#).await.status,
        200
    );
    eventually("down to db-0", || async {
        // Stand in for the kubelet: a deleted pod's node confirms it stopped.
        for p in pods_of(a, "db").await {
            if p["metadata"].get("deletionTimestamp").is_some() {
                let name = p["metadata"]["name"].as_str().unwrap_or_default().to_owned();
                call(a, "DELETE", &format!("{PODS}/{name}?gracePeriodSeconds=0"), "application/json", b"").await;
            }
        }
        (sts_pods(a).await == ["db-0"]).then_some(())
    })
    .await;
    assert_eq!(get(a, &format!("{PVCS}/data-db-2")).await.status, 200, "claims are retained");
    srv.shutdown().await.expect("shutdown");
}

/// `podManagementPolicy: Parallel`: every ordinal at once, not waiting for
/// readiness; scaled down, all surplus pods at once.
#[tokio::test]
async fn a_parallel_statefulset_makes_and_removes_pods_at_once() {
    let (srv, _dir) = start(5000).await;
    let a = srv.addr;
    let sts = json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db"},
        "spec": {"podManagementPolicy": "Parallel", "replicas": 3, "selector": {"matchLabels": {"app": "db"}},
            "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [{"name": "c", "image": "busybox:1"}]}}}});
    assert_eq!(post(a, STSS, &sts).await.status, 201);
    eventually("all three at once", || async { (sts_pods(a).await == ["db-0", "db-1", "db-2"]).then_some(()) }).await;
    assert_eq!(
        patch(a, &format!("{STSS}/db"), "application/merge-patch+json", r#"{"spec":{"replicas":1}}"#).await.status,
        200
    );
    eventually("db-1 and db-2 deleted together", || async {
        let deleting: Vec<String> = pods_of(a, "db")
            .await
            .iter()
            .filter(|p| p["metadata"].get("deletionTimestamp").is_some() || p["metadata"]["name"] == "db-0")
            .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_owned))
            .collect();
        (deleting.len() == 3 || sts_pods(a).await == ["db-0"]).then_some(())
    })
    .await;
    srv.shutdown().await.expect("shutdown");
}
