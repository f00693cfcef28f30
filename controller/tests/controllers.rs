//! The control loops seen through the API, as a client would: objects go in,
//! the loops' results come out.

mod common;

use common::{call, eventually, get, patch, post, start};
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
        (items(&get(a, &format!("{PODS}?labelSelector=app%3Dweb")).await.json()).len() == 1).then_some(())
    })
    .await;
    srv.shutdown().await.expect("shutdown");
}

async fn pods_of(a: std::net::SocketAddr, app: &str) -> Vec<Value> {
    items(&get(a, &format!("{PODS}?labelSelector=app%3D{app}")).await.json())
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
