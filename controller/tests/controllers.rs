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
