//! The HTTP API as a client sees it: status codes, conflicts, watches,
//! subresources, selectors. Each test starts a real server on 127.0.0.1:0.

mod common;

use std::net::SocketAddr;

use common::{call, get, patch, post, put, start};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CMS: &str = "/api/v1/namespaces/default/configmaps";
const DEPLOYS: &str = "/apis/apps/v1/namespaces/default/deployments";
const PODS: &str = "/api/v1/namespaces/default/pods";

fn bound_pod(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "busybox:1"}]}})
}

fn cm(name: &str, v: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"k": v}})
}

fn deployment(name: &str, replicas: i64) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "labels": {"app": name}},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "c", "image": "busybox:1"}]}}}})
}

fn rv(v: &Value) -> String {
    v["metadata"]["resourceVersion"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn stale_writes_conflict_and_fresh_ones_win() {
    let (srv, _dir) = start(100).await;
    let a = srv.addr;
    let created = post(a, CMS, &cm("c", "1")).await;
    assert_eq!(created.status, 201);
    let v1 = created.json();
    assert_eq!(v1["metadata"]["uid"].as_str().map(str::len), Some(36));
    assert!(v1["metadata"]["creationTimestamp"].is_string());

    let mut upd = v1.clone();
    upd["data"]["k"] = json!("2");
    let ok = put(a, &format!("{CMS}/c"), &upd).await;
    assert_eq!(ok.status, 200);
    assert!(rv(&ok.json()).parse::<u64>().expect("rv") > rv(&v1).parse::<u64>().expect("rv"));

    // The same update again carries a stale resourceVersion now.
    upd["data"]["k"] = json!("3");
    let stale = put(a, &format!("{CMS}/c"), &upd).await;
    assert_eq!(stale.status, 409);
    assert_eq!(stale.json()["reason"], "Conflict");
    assert_eq!(get(a, &format!("{CMS}/c")).await.json()["data"]["k"], "2", "the stale write stored nothing");

    let dup = post(a, CMS, &cm("c", "x")).await;
    assert_eq!(dup.status, 409);
    assert_eq!(dup.json()["reason"], "AlreadyExists");
    srv.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn generation_moves_with_spec_only() {
    // A bound pod: no control loop writes to it, so every change here is ours.
    let (srv, _dir) = start(100).await;
    let a = srv.addr;
    let p = post(a, PODS, &bound_pod("p")).await.json();
    assert_eq!(p["metadata"]["generation"], 1);
    let path = format!("{PODS}/p");
    let label = patch(a, &path, "application/merge-patch+json", r#"{"metadata":{"labels":{"x":"y"}}}"#).await;
    assert_eq!(label.status, 200);
    assert_eq!(label.json()["metadata"]["generation"], 1);
    let image = r#"{"spec":{"containers":[{"name":"c","image":"busybox:2"}]}}"#;
    let spec = patch(a, &path, "application/strategic-merge-patch+json", image).await;
    assert_eq!(spec.json()["metadata"]["generation"], 2);
    // A no-op patch writes nothing: same resourceVersion.
    let again = patch(a, &path, "application/strategic-merge-patch+json", image).await;
    assert_eq!(rv(&again.json()), rv(&spec.json()));
    srv.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn bad_requests_get_status_objects_and_store_nothing() {
    let (srv, _dir) = start(100).await;
    let a = srv.addr;
    let before = get(a, CMS).await.json();

    let garbage = call(a, "POST", CMS, "application/json", b"{not json").await;
    assert_eq!(garbage.status, 400);
    assert_eq!(garbage.json()["kind"], "Status");
    assert!(garbage.json()["message"].as_str().unwrap_or_default().contains("not valid JSON"));

    let big = vec![b' '; 4 * 1024 * 1024];
    let too_large = call(a, "POST", CMS, "application/json", &big).await;
    assert_eq!(too_large.status, 413);

    let wrong_kind = post(a, CMS, &json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}})).await;
    assert_eq!(wrong_kind.status, 400);

    let invalid = post(
        a,
        "/api/v1/namespaces/default/pods",
        &json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}]}}),
    )
    .await;
    assert_eq!(invalid.status, 422);
    let st = invalid.json();
    assert_eq!(st["reason"], "Invalid");
    assert_eq!(st["details"]["causes"][0]["field"], "spec.containers[0].image");
    assert_eq!(get(a, "/api/v1/namespaces/default/pods/p").await.status, 404);

    assert_eq!(get(a, "/api/v1/namespaces/default/widgets").await.status, 404);
    let missing = get(a, &format!("{CMS}/nope")).await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["message"], "configmaps \"nope\" not found");
    assert_eq!(post(a, "/api/v1/namespaces/nowhere/configmaps", &cm("x", "1")).await.status, 404);

    let unknown = call(
        a,
        "POST",
        &format!("{CMS}?fieldValidation=Strict"),
        "application/json",
        br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"u","name":"u"},"dta":{}}"#,
    )
    .await;
    assert_eq!(unknown.status, 400);
    assert!(unknown.json()["message"].as_str().unwrap_or_default().contains("duplicate field \"metadata.name\""));
    let warned = call(
        a,
        "POST",
        CMS,
        "application/json",
        br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"w"},"dta":{"a":"b"}}"#,
    )
    .await;
    assert_eq!(warned.status, 201);
    assert!(
        warned.headers.iter().any(|(k, v)| k == "warning" && v.contains("unknown field \\\"dta\\\"")),
        "{:?}",
        warned.headers
    );

    let after = get(a, CMS).await.json();
    assert_eq!(after["items"].as_array().map(Vec::len), Some(before["items"].as_array().map_or(0, Vec::len) + 1));
    srv.shutdown().await.expect("shutdown");
}

/// Reads a watch stream until `n` events arrived (or the server ends it).
async fn watch_events(addr: SocketAddr, path: &str, n: usize) -> Vec<Value> {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    let mut events = Vec::new();
    loop {
        let read = tokio::time::timeout(std::time::Duration::from_secs(10), s.read(&mut buf)).await;
        let Ok(Ok(k)) = read else { break };
        if k == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..k]);
        events = String::from_utf8_lossy(&raw)
            .lines()
            .filter(|l| l.starts_with('{'))
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .collect();
        if events.len() >= n {
            break;
        }
    }
    events
}

#[tokio::test]
async fn watch_resumes_filters_and_expires() {
    let (srv, _dir) = start(8).await;
    let a = srv.addr;
    let first = post(a, CMS, &cm("a", "1")).await.json();
    let from = rv(&first);
    let mut upd = first.clone();
    upd["data"]["k"] = json!("2");
    put(a, &format!("{CMS}/a"), &upd).await;
    post(a, CMS, &cm("b", "1")).await;
    call(a, "DELETE", &format!("{CMS}/a"), "application/json", b"").await;

    let evs = watch_events(a, &format!("{CMS}?watch=true&resourceVersion={from}&timeoutSeconds=2"), 3).await;
    let seen: Vec<(String, String)> = evs
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap_or_default().to_owned(),
                e["object"]["metadata"]["name"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![("MODIFIED".into(), "a".into()), ("ADDED".into(), "b".into()), ("DELETED".into(), "a".into())]
    );

    // A field-selected watch without a resourceVersion starts with the current state.
    let evs = watch_events(a, &format!("{CMS}?watch=true&fieldSelector=metadata.name%3Db&timeoutSeconds=1"), 1).await;
    assert_eq!(evs.len(), 1);
    assert_eq!(evs[0]["type"], "ADDED");
    assert_eq!(evs[0]["object"]["metadata"]["name"], "b");

    // Push the first revision out of the 8-event history.
    for i in 0..10 {
        post(a, CMS, &cm(&format!("f{i}"), "1")).await;
    }
    let evs = watch_events(a, &format!("{CMS}?watch=true&resourceVersion={from}"), 1).await;
    assert_eq!(evs[0]["type"], "ERROR");
    assert_eq!(evs[0]["object"]["code"], 410);
    assert_eq!(evs[0]["object"]["reason"], "Expired");
    srv.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn status_and_scale_subresources() {
    let (srv, _dir) = start(100).await;
    let a = srv.addr;
    let mut given = bound_pod("p");
    given["status"] = json!({"phase": "Running"});
    let p = post(a, PODS, &given).await.json();
    assert_eq!(p["status"]["phase"], "Pending", "status is not taken on create");

    let mut with_status = p.clone();
    with_status["status"]["phase"] = json!("Running");
    with_status["metadata"]["labels"] = json!({"changed": "yes"});
    let s = put(a, &format!("{PODS}/p/status"), &with_status).await.json();
    assert_eq!(s["status"]["phase"], "Running");
    assert!(s["metadata"].get("labels").is_none(), "the status subresource ignores everything but status");

    let mut main = s.clone();
    main["status"]["phase"] = json!("Failed");
    let m = put(a, &format!("{PODS}/p"), &main).await.json();
    assert_eq!(m["status"]["phase"], "Running", "the main resource ignores status");

    post(a, DEPLOYS, &deployment("web", 2)).await;
    let scale = get(a, &format!("{DEPLOYS}/web/scale")).await.json();
    assert_eq!(scale["kind"], "Scale");
    assert_eq!(scale["spec"]["replicas"], 2);
    assert_eq!(scale["status"]["selector"], "app=web");
    let scaled =
        patch(a, &format!("{DEPLOYS}/web/scale"), "application/merge-patch+json", r#"{"spec":{"replicas":5}}"#).await;
    assert_eq!(scaled.status, 200);
    assert_eq!(get(a, &format!("{DEPLOYS}/web")).await.json()["spec"]["replicas"], 5);
    srv.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn selectors_and_binding() {
    let (srv, _dir) = start(100).await;
    let a = srv.addr;
    for (name, app) in [("p1", "web"), ("p2", "db")] {
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": app}},
            "spec": {"containers": [{"name": "c", "image": "busybox:1"}]}});
        assert_eq!(post(a, "/api/v1/namespaces/default/pods", &pod).await.status, 201);
    }
    let bind = post(
        a,
        "/api/v1/namespaces/default/pods/p1/binding",
        &json!({"apiVersion": "v1", "kind": "Binding",
        "metadata": {"name": "p1"}, "target": {"kind": "Node", "name": "n1"}}),
    )
    .await;
    assert_eq!(bind.status, 201);
    let again = post(a, "/api/v1/namespaces/default/pods/p1/binding", &json!({"target": {"name": "n2"}})).await;
    assert_eq!(again.status, 409);

    let names = |v: Value| -> Vec<String> {
        v["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    assert_eq!(names(get(a, "/api/v1/pods?labelSelector=app%3Dweb").await.json()), vec!["p1"]);
    assert_eq!(names(get(a, "/api/v1/pods?labelSelector=app%20in%20(web,db)").await.json()), vec!["p1", "p2"]);
    assert_eq!(names(get(a, "/api/v1/pods?fieldSelector=spec.nodeName%3Dn1").await.json()), vec!["p1"]);
    assert_eq!(names(get(a, "/api/v1/pods?fieldSelector=spec.nodeName%3D").await.json()), vec!["p2"]);
    assert_eq!(get(a, "/api/v1/pods?fieldSelector=spec.bogus%3Dx").await.status, 400);

    let page = get(a, "/api/v1/namespaces/default/pods?limit=1").await.json();
    assert_eq!(names(page.clone()), vec!["p1"]);
    let token = page["metadata"]["continue"].as_str().expect("continue token").to_owned();
    assert_eq!(
        names(get(a, &format!("/api/v1/namespaces/default/pods?limit=1&continue={token}")).await.json()),
        vec!["p2"]
    );

    let ev = json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "p1.1"}, "type": "Normal", "reason": "Scheduled",
        "message": "bound", "involvedObject": {"kind": "Pod", "name": "p1", "namespace": "default"}});
    assert_eq!(post(a, "/api/v1/namespaces/default/events", &ev).await.status, 201);
    let sel = "involvedObject.name%3Dp1,involvedObject.namespace%3Ddefault,involvedObject.kind%3DPod";
    // (The scheduler records events about these pods too.)
    let evs = get(a, &format!("/api/v1/namespaces/default/events?fieldSelector={sel}")).await.json();
    assert!(names(evs.clone()).contains(&"p1.1".to_owned()));
    assert!(evs["items"].as_array().is_some_and(|l| l.iter().all(|e| e["involvedObject"]["name"] == "p1")));
    srv.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn namespaces_terminate_then_vanish_with_their_contents() {
    let (srv, _dir) = start(100).await;
    let a = srv.addr;
    post(a, "/api/v1/namespaces", &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "tmp"}})).await;
    assert_eq!(post(a, "/api/v1/namespaces/tmp/configmaps", &cm("c", "1")).await.status, 201);
    let del = call(a, "DELETE", "/api/v1/namespaces/tmp", "application/json", b"").await;
    assert_eq!(del.status, 200);
    assert_eq!(del.json()["status"]["phase"], "Terminating");
    assert_eq!(post(a, "/api/v1/namespaces/tmp/configmaps", &cm("d", "1")).await.status, 403);
    let mut gone = false;
    for _ in 0..50 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        if get(a, "/api/v1/namespaces/tmp").await.status == 404 {
            gone = true;
            break;
        }
    }
    assert!(gone, "namespace removed after its contents");
    assert_eq!(get(a, "/api/v1/namespaces/tmp/configmaps/c").await.status, 404);
    assert_eq!(call(a, "DELETE", "/api/v1/namespaces/default", "application/json", b"").await.status, 403);
    srv.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn dry_run_checks_everything_and_stores_nothing() {
    let (srv, _dir) = start(100).await;
    let a = srv.addr;
    // The start's own writes (default ServiceAccounts, aggregated roles) first.
    let mut rev0 = get(a, CMS).await.json()["metadata"]["resourceVersion"].clone();
    for _ in 0..50 {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let now = get(a, CMS).await.json()["metadata"]["resourceVersion"].clone();
        if now == rev0 {
            break;
        }
        rev0 = now;
    }
    let created = post(a, &format!("{CMS}?dryRun=All"), &cm("dry", "1")).await;
    assert_eq!(created.status, 201);
    assert_eq!(created.json()["data"]["k"], "1");
    assert_eq!(get(a, &format!("{CMS}/dry")).await.status, 404);
    let invalid = post(a, &format!("{CMS}?dryRun=All"), &cm("Not_Valid", "1")).await;
    assert_eq!(invalid.status, 422, "a dry run still validates");

    post(a, CMS, &cm("real", "1")).await;
    let patched =
        patch(a, &format!("{CMS}/real?dryRun=All"), "application/merge-patch+json", r#"{"data":{"k":"2"}}"#).await;
    assert_eq!(patched.status, 200);
    assert_eq!(patched.json()["data"]["k"], "2");
    assert_eq!(get(a, &format!("{CMS}/real")).await.json()["data"]["k"], "1");
    let deleted = call(a, "DELETE", &format!("{CMS}/real?dryRun=All"), "application/json", b"").await;
    assert_eq!(deleted.status, 200);
    assert_eq!(get(a, &format!("{CMS}/real")).await.status, 200);
    assert_eq!(call(a, "POST", &format!("{CMS}?dryRun=Some"), "application/json", b"{}").await.status, 400);
    let rev1: u64 =
        get(a, CMS).await.json()["metadata"]["resourceVersion"].as_str().unwrap_or("0").parse().expect("rv");
    let rev0: u64 = rev0.as_str().unwrap_or("0").parse().expect("rv");
    assert_eq!(rev1, rev0 + 1, "only the one real create used a revision");
    srv.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn watch_list_mode_and_future_revisions() {
    let (srv, _dir) = start(100).await;
    let a = srv.addr;
    post(a, CMS, &cm("one", "1")).await;
    let evs = watch_events(
        a,
        &format!("{CMS}?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&resourceVersion=1&timeoutSeconds=1"),
        2,
    )
    .await;
    assert_eq!(evs[0]["type"], "ADDED");
    assert_eq!(evs[0]["object"]["metadata"]["name"], "one");
    assert_eq!(evs[1]["type"], "BOOKMARK");
    assert_eq!(evs[1]["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"], "true");

    // A revision the store never reached (its data was replaced): re-list.
    let evs = watch_events(a, &format!("{CMS}?watch=true&resourceVersion=999999"), 1).await;
    assert_eq!(evs[0]["type"], "ERROR");
    assert_eq!(evs[0]["object"]["code"], 410);
    // A huge timeout is not a crash.
    let evs = watch_events(a, &format!("{CMS}?watch=true&timeoutSeconds=18446744073709551615"), 1).await;
    assert_eq!(evs[0]["type"], "ADDED");
    srv.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn services_get_unique_ips_and_node_ports_on_create_and_update() {
    let (srv, _dir) = start(100).await;
    let a = srv.addr;
    const SVCS: &str = "/api/v1/namespaces/default/services";
    let svc = |name: &str, ty: &str, node_port: Option<i64>| {
        let mut port = json!({"port": 80});
        if let Some(n) = node_port {
            port["nodePort"] = json!(n);
        }
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": {"type": ty, "ports": [port]}})
    };
    let first = post(a, SVCS, &svc("first", "NodePort", Some(30080))).await;
    assert_eq!(first.status, 201);
    let clash = post(a, SVCS, &svc("second", "NodePort", Some(30080))).await;
    assert_eq!(clash.status, 422, "{}", clash.json());
    let second = post(a, SVCS, &svc("second", "ClusterIP", None)).await.json();
    assert_ne!(second["spec"]["clusterIP"], first.json()["spec"]["clusterIP"]);
    assert!(second["spec"]["ports"][0].get("nodePort").is_none());
    // ClusterIP → NodePort on update gets a node port.
    let changed =
        patch(a, &format!("{SVCS}/second"), "application/merge-patch+json", r#"{"spec":{"type":"NodePort"}}"#).await;
    assert_eq!(changed.status, 200);
    let np = changed.json()["spec"]["ports"][0]["nodePort"].as_i64().expect("node port");
    assert!((30000..=32767).contains(&np) && np != 30080);
    assert_eq!(changed.json()["spec"]["clusterIP"], second["spec"]["clusterIP"], "the cluster IP stays");
    srv.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_terminating_namespace_is_not_dropped_by_an_update() {
    let (srv, _dir) = start(100).await;
    let a = srv.addr;
    post(a, "/api/v1/namespaces", &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "busy"}}))
        .await;
    let mut held = cm("held", "1");
    held["metadata"]["finalizers"] = json!(["example.com/hold"]);
    assert_eq!(post(a, "/api/v1/namespaces/busy/configmaps", &held).await.status, 201);
    call(a, "DELETE", "/api/v1/namespaces/busy", "application/json", b"").await;
    let labelled =
        patch(a, "/api/v1/namespaces/busy", "application/merge-patch+json", r#"{"metadata":{"labels":{"x":"y"}}}"#)
            .await;
    assert_eq!(labelled.status, 200);
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(get(a, "/api/v1/namespaces/busy").await.status, 200, "still terminating: content holds a finalizer");
    let cmv = get(a, "/api/v1/namespaces/busy/configmaps/held").await.json();
    assert!(cmv["metadata"]["deletionTimestamp"].is_string());
    // Releasing the finalizer lets the content and then the namespace go.
    patch(
        a,
        "/api/v1/namespaces/busy/configmaps/held",
        "application/merge-patch+json",
        r#"{"metadata":{"finalizers":null}}"#,
    )
    .await;
    let mut gone = false;
    for _ in 0..50 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        if get(a, "/api/v1/namespaces/busy").await.status == 404 {
            gone = true;
            break;
        }
    }
    assert!(gone);
    srv.shutdown().await.expect("shutdown");
}
