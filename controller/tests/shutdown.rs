//! Shutdown: every control loop and fleet task has stopped, and the store
//! is closed, when the server says it has stopped.

mod common;

use std::time::Duration;

use common::{eventually, get, post, start_with};
use kedge_controller::store::Store;
use serde_json::{Value, json};

/// A Deployment keeps the loops busy (ReplicaSet, pods, scheduler, events).
async fn busy(a: std::net::SocketAddr) {
    let d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "x"}]}}}});
    assert_eq!(post(a, "/apis/apps/v1/namespaces/default/deployments", &d).await.status, 201);
    eventually("the deployment's pods", || async {
        let pods = get(a, "/api/v1/namespaces/default/pods").await.json();
        (pods["items"].as_array().map_or(0, Vec::len) == 3).then_some(())
    })
    .await;
}

#[tokio::test]
async fn shutdown_waits_for_every_loop_and_closes_the_store() {
    let (srv, dir) = start_with(|o| {
        o.fleet = Some(kedge_controller::fleet::FleetOptions {
            mqtt_listen: "127.0.0.1:0".parse().expect("addr"),
            ..Default::default()
        })
    })
    .await;
    assert!(srv.broker.is_some(), "the fleet link runs too");
    busy(srv.addr).await;
    tokio::time::timeout(Duration::from_secs(10), srv.shutdown())
        .await
        .expect("shutdown within 10 s")
        .expect("clean shutdown");
    // redb refuses a second open of a database this process still holds: it
    // opens only if no loop or fleet task kept the store.
    let store = Store::open(&dir.path().join("state.redb"), 10).expect("the store is closed after shutdown");
    let (items, _) = store.list("apps/deployments", Some("default"), None).expect("list");
    assert_eq!(items.iter().filter_map(|d| d["metadata"]["name"].as_str()).collect::<Vec<_>>(), ["web"]);
}

#[test]
fn sigterm_stops_the_controller_cleanly() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // Plain HTTP (the test's client is a bare HTTP/1.1 one): what is tested
    // is the shutdown, not the authentication.
    let mut ctl = kedge_tests::Controller::start_with(dir.path(), "127.0.0.1:0", &["--insecure-http"])?;
    let addr = ctl.addr.clone();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(busy(addr.parse()?));
    let status = ctl.terminate()?;
    assert!(status.success(), "SIGTERM is a clean exit: {status}");
    let store = Store::open(&dir.path().join("state.redb"), 10).expect("the store reopens");
    let (items, _): (Vec<Value>, _) = store.list("apps/deployments", Some("default"), None).expect("list");
    assert_eq!(items.len(), 1, "what was written before SIGTERM is there");
    Ok(())
}
