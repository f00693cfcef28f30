//! End to end with the real kubectl: scheduling, rollouts, DaemonSets and
//! node loss (the control-loop issue's "done when"). Nodes are registered
//! through the API and kept alive by heartbeats from the test, as agents
//! will do over MQTT; pods turn Ready the same way.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use kedge_tests::{Api, Kubectl, controller_and_kubectl, heartbeat, jiff_now, pod_ready};
use serde_json::{Value, json};

fn node(name: &str, cpu: &str, mem: &str, labels: Value, taints: Value) -> Value {
    let now = jiff_now();
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}, "spec": {"taints": taints},
        "status": {"capacity": {"cpu": cpu, "memory": mem, "pods": "110"}, "allocatable": {"cpu": cpu, "memory": mem, "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "lastHeartbeatTime": now, "lastTransitionTime": now}]}})
}

/// Keeps nodes alive and makes every bound pod Ready, like the agents would.
struct FakeAgents {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl FakeAgents {
    fn start(api: Api, nodes: Arc<std::sync::Mutex<Vec<String>>>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let alive: Vec<String> = nodes.lock().map(|n| n.clone()).unwrap_or_default();
                for n in &alive {
                    let _ = heartbeat(&api, n);
                }
                if let Ok((200, body)) = api.request("GET", "/api/v1/pods", "application/json", "") {
                    let list: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                    for p in list["items"].as_array().into_iter().flatten() {
                        let on = p["spec"]["nodeName"].as_str().unwrap_or_default();
                        let (ns, name) = (
                            p["metadata"]["namespace"].as_str().unwrap_or(""),
                            p["metadata"]["name"].as_str().unwrap_or(""),
                        );
                        if alive.iter().any(|n| n == on) && p["metadata"].get("deletionTimestamp").is_some() {
                            // As a kubelet that has stopped the pod: the last delete, grace 0, this uid.
                            let body = json!({"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0,
                                "preconditions": {"uid": p["metadata"]["uid"]}});
                            let path = format!("/api/v1/namespaces/{ns}/pods/{name}");
                            let _ = api.request("DELETE", &path, "application/json", &body.to_string());
                        } else if alive.iter().any(|n| n == on) && p["status"]["phase"] != "Running" {
                            let _ = pod_ready(&api, ns, name);
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(300));
            }
        });
        FakeAgents { stop, handle: Some(handle) }
    }
}

impl Drop for FakeAgents {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn apply_json(k: &Kubectl, dir: &Path, name: &str, v: &Value) -> Result<String> {
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, v.to_string())?;
    k.ok(&["apply", "-f", &path.to_string_lossy()])
}

fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f()? {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!("timed out waiting for {what}")
}

#[test]
fn schedule_roll_out_and_undo() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let Some((ctl, k)) = controller_and_kubectl(dir.path(), &[])? else { return Ok(()) };
    let alive =
        Arc::new(std::sync::Mutex::new(vec!["big".to_owned(), "mid".to_owned(), "small".to_owned(), "gpu".to_owned()]));
    for n in [
        node("big", "4", "8Gi", json!({"disk": "ssd"}), json!([])),
        node("mid", "2", "4Gi", json!({}), json!([])),
        node("small", "1", "2Gi", json!({}), json!([])),
        node("gpu", "8", "16Gi", json!({}), json!([{"key": "dedicated", "value": "x", "effect": "NoSchedule"}])),
    ] {
        let name = n["metadata"]["name"].as_str().unwrap_or_default().to_owned();
        apply_json(&k, dir.path(), &name, &n)?;
    }
    let _agents = FakeAgents::start(ctl.api()?, alive.clone());
    let nodes = k.ok(&["get", "nodes"])?;
    assert_eq!(nodes.lines().filter(|l| l.contains(" Ready ")).count(), 4, "{nodes}");

    let deploy = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "default"},
        "spec": {"replicas": 6, "selector": {"matchLabels": {"app": "web"}}, "template": {"metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "web", "image": "kedge.local/busybox:1", "resources": {"requests": {"cpu": "500m", "memory": "256Mi"}}}]}}}});
    apply_json(&k, dir.path(), "web", &deploy)?;
    let out = k.ok(&["rollout", "status", "deployment/web", "--timeout=60s"])?;
    assert!(out.contains("successfully rolled out"), "{out}");
    let pods = k.json(&["get", "pods", "-l", "app=web"])?;
    let mut cpu: std::collections::BTreeMap<String, u32> = Default::default();
    for p in pods["items"].as_array().into_iter().flatten() {
        *cpu.entry(p["spec"]["nodeName"].as_str().unwrap_or_default().to_owned()).or_default() += 500;
    }
    assert!(!cpu.contains_key("gpu") && cpu.len() >= 3, "spread over the eligible nodes: {cpu:?}");
    assert!(cpu.get("small").copied().unwrap_or(0) <= 1000 && cpu.get("mid").copied().unwrap_or(0) <= 2000, "{cpu:?}");
    let wide = k.ok(&["get", "pods", "-o", "wide"])?;
    assert!(wide.contains("NODE") && wide.contains("big"), "{wide}");

    // Too big for anything untainted: kube-scheduler's reason in describe.
    let huge = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "huge", "namespace": "default"},
        "spec": {"containers": [{"name": "c", "image": "kedge.local/busybox:1", "resources": {"requests": {"cpu": "3", "memory": "12Gi"}}}]}});
    apply_json(&k, dir.path(), "huge", &huge)?;
    wait_for("FailedScheduling", 10, || Ok(k.ok(&["describe", "pod", "huge"])?.contains("FailedScheduling")))?;
    let desc = k.ok(&["describe", "pod", "huge"])?;
    assert!(
        desc.contains("0/4 nodes are available:") && desc.contains("1 node(s) had untolerated taint {dedicated: x}"),
        "{desc}"
    );
    assert!(desc.contains("Insufficient memory"), "{desc}");
    alive.lock().map_err(|_| anyhow::anyhow!("lock"))?.push("roomy".into());
    apply_json(&k, dir.path(), "roomy", &node("roomy", "16", "64Gi", json!({}), json!([])))?;
    wait_for("huge bound to roomy", 10, || {
        Ok(k.ok(&["get", "pod", "huge", "-o", "jsonpath={.spec.nodeName}"])? == "roomy")
    })?;

    // A new image rolls; rollout status follows it; undo brings the old one back.
    k.ok(&["set", "image", "deployment/web", "web=kedge.local/busybox:2"])?;
    let out = k.ok(&["rollout", "status", "deployment/web", "--timeout=60s"])?;
    assert!(out.contains("successfully rolled out"), "{out}");
    let hist = k.ok(&["rollout", "history", "deployment/web"])?;
    assert!(hist.contains("1 ") && hist.contains("2 "), "{hist}");
    k.ok(&["rollout", "undo", "deployment/web"])?;
    let out = k.ok(&["rollout", "status", "deployment/web", "--timeout=60s"])?;
    assert!(out.contains("successfully rolled out"), "{out}");
    let image = k.ok(&["get", "deployment", "web", "-o", "jsonpath={.spec.template.spec.containers[0].image}"])?;
    assert_eq!(image, "kedge.local/busybox:1");
    let rs = k.ok(&["get", "rs", "-l", "app=web"])?;
    assert_eq!(rs.lines().count(), 3, "two ReplicaSets: {rs}");

    // Deleting the Deployment takes its ReplicaSets and pods; orphaning keeps them.
    k.ok(&["delete", "deployment", "web", "--cascade=orphan"])?;
    assert_eq!(k.json(&["get", "rs", "-l", "app=web"])?["items"].as_array().map(Vec::len), Some(2));
    k.ok(&["delete", "rs", "-l", "app=web"])?;
    wait_for("pods collected", 10, || {
        Ok(k.json(&["get", "pods", "-l", "app=web"])?["items"].as_array().is_some_and(Vec::is_empty))
    })?;
    Ok(())
}

/// Scaling a Deployment in the middle of a rolling update spreads the
/// change over its ReplicaSets in proportion to their sizes, as Kubernetes
/// does: the rollout is held (the new pods fit no node), 10 old and 3 new
/// (maxSurge 3) become 18 and 5 at 20 replicas — not 10 and 13.
#[test]
fn scaling_mid_rollout_is_proportional() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let Some((ctl, k)) = controller_and_kubectl(dir.path(), &[])? else { return Ok(()) };
    let alive = Arc::new(std::sync::Mutex::new(vec!["n1".to_owned(), "n2".to_owned()]));
    for name in ["n1", "n2"] {
        apply_json(&k, dir.path(), name, &node(name, "4", "8Gi", json!({}), json!([])))?;
    }
    let _agents = FakeAgents::start(ctl.api()?, alive);
    let deploy = |cpu: &str| {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "prop", "namespace": "default"},
            "spec": {"replicas": 10, "selector": {"matchLabels": {"app": "prop"}},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 3, "maxUnavailable": 0}},
                "template": {"metadata": {"labels": {"app": "prop"}},
                    "spec": {"containers": [{"name": "c", "image": "kedge.local/busybox:1", "resources": {"requests": {"cpu": cpu}}}]}}}})
    };
    apply_json(&k, dir.path(), "prop", &deploy("10m"))?;
    let out = k.ok(&["rollout", "status", "deployment/prop", "--timeout=60s"])?;
    assert!(out.contains("successfully rolled out"), "{out}");
    // A template whose pods fit nowhere: the new ReplicaSet stops at the surge.
    apply_json(&k, dir.path(), "prop", &deploy("100"))?;
    let sizes = |k: &Kubectl| -> Result<Vec<i64>> {
        let l = k.json(&["get", "rs", "-l", "app=prop"])?;
        let mut by_age: Vec<(String, i64)> = l["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|rs| {
                let created = rs["metadata"]["creationTimestamp"].as_str().unwrap_or_default().to_owned();
                let rev = rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"]
                    .as_str()
                    .unwrap_or("0")
                    .to_owned();
                (format!("{rev:0>4}{created}"), rs["spec"]["replicas"].as_i64().unwrap_or(0))
            })
            .collect();
        by_age.sort();
        Ok(by_age.into_iter().map(|(_, n)| n).collect())
    };
    wait_for("old 10, new 3", 20, || Ok(sizes(&k)? == [10, 3]))?;
    k.ok(&["scale", "deployment/prop", "--replicas=20"])?;
    wait_for("old 18, new 5", 20, || Ok(sizes(&k)? == [18, 5]))?;
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(sizes(&k)?, [18, 5], "and it stays so while the new pods cannot run");
    Ok(())
}

#[test]
fn daemonsets_and_node_loss() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let Some((ctl, k)) = controller_and_kubectl(dir.path(), &["--node-monitor-grace-period", "3s"])? else {
        return Ok(());
    };
    let alive = Arc::new(std::sync::Mutex::new(vec!["n1".to_owned(), "n2".to_owned()]));
    for name in ["n1", "n2"] {
        apply_json(&k, dir.path(), name, &node(name, "2", "2Gi", json!({"kedge.io/edge": "true"}), json!([])))?;
    }
    apply_json(&k, dir.path(), "other", &node("other", "2", "2Gi", json!({}), json!([])))?;
    alive.lock().map_err(|_| anyhow::anyhow!("lock"))?.push("other".into());
    let _agents = FakeAgents::start(ctl.api()?, alive.clone());

    let ds = json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "logger", "namespace": "default"},
        "spec": {"selector": {"matchLabels": {"app": "logger"}}, "template": {"metadata": {"labels": {"app": "logger"}},
            "spec": {"nodeSelector": {"kedge.io/edge": "true"}, "containers": [{"name": "c", "image": "kedge.local/busybox:1"}]}}}});
    apply_json(&k, dir.path(), "ds", &ds)?;
    let on_nodes = |k: &Kubectl| -> Result<Vec<String>> {
        let l = k.json(&["get", "pods", "-l", "app=logger"])?;
        let mut v: Vec<String> = l["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["metadata"].get("deletionTimestamp").is_none())
            .map(|p| p["spec"]["nodeName"].as_str().unwrap_or_default().to_owned())
            .collect();
        v.sort();
        Ok(v)
    };
    wait_for("one logger on n1 and n2", 10, || Ok(on_nodes(&k)? == ["n1", "n2"]))?;
    alive.lock().map_err(|_| anyhow::anyhow!("lock"))?.push("n3".into());
    apply_json(&k, dir.path(), "n3", &node("n3", "2", "2Gi", json!({"kedge.io/edge": "true"}), json!([])))?;
    wait_for("a logger on the new node", 10, || Ok(on_nodes(&k)? == ["n1", "n2", "n3"]))?;
    let victim = k.ok(&["get", "pods", "-l", "app=logger", "-o", "jsonpath={.items[0].metadata.name}"])?;
    k.ok(&["delete", "pod", &victim])?;
    wait_for("logger recreated", 10, || {
        Ok(on_nodes(&k)?.len() == 3 && !k.ok(&["get", "pods", "-l", "app=logger"])?.contains(&victim))
    })?;
    let out = k.ok(&["rollout", "status", "daemonset/logger", "--timeout=30s"])?;
    assert!(out.contains("successfully rolled out"), "{out}");

    // A surge update (maxSurge 1, maxUnavailable 0): each node gets its new
    // pod beside the old one, which goes only once the new is available, so
    // no node is ever without a logger.
    let patch = r#"{"spec": {"updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
        "template": {"spec": {"containers": [{"name": "c", "image": "kedge.local/busybox:2"}]}}}}"#;
    k.ok(&["patch", "daemonset", "logger", "--type=strategic", "-p", patch])?;
    let images = |k: &Kubectl| -> Result<Vec<(String, String)>> {
        let l = k.json(&["get", "pods", "-l", "app=logger"])?;
        Ok(l["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["metadata"].get("deletionTimestamp").is_none())
            .map(|p| {
                let node = p["spec"]["nodeName"].as_str().unwrap_or_default().to_owned();
                (node, p["spec"]["containers"][0]["image"].as_str().unwrap_or_default().to_owned())
            })
            .collect())
    };
    wait_for("every logger on the new image", 30, || {
        let now = images(&k)?;
        for n in ["n1", "n2", "n3"] {
            assert!(now.iter().any(|(node, _)| node == n), "{n} without a logger mid-rollout: {now:?}");
        }
        Ok(now.len() == 3 && now.iter().all(|(_, i)| i == "kedge.local/busybox:2"))
    })?;
    let out = k.ok(&["rollout", "status", "daemonset/logger", "--timeout=30s"])?;
    assert!(out.contains("successfully rolled out"), "{out}");

    // n1 stops reporting: NotReady with the taint after the grace period;
    // the pod tolerating `unreachable` for 3 s moves, the others stay.
    let app = |name: &str, tolerations: Value| {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": "default"},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}}, "template": {"metadata": {"labels": {"app": name}},
                "spec": {"nodeSelector": {"kubernetes.io/hostname-hint": "n1"}, "tolerations": tolerations,
                    "containers": [{"name": "c", "image": "kedge.local/busybox:1"}]}}}})
    };
    // Pin both to n1 through a label only n1 has, then drop the pin.
    k.ok(&["label", "node", "n1", "kubernetes.io/hostname-hint=n1"])?;
    apply_json(
        &k,
        dir.path(),
        "mover",
        &app(
            "mover",
            json!([{"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 3}]),
        ),
    )?;
    apply_json(&k, dir.path(), "stayer", &app("stayer", json!([])))?;
    for a in ["mover", "stayer"] {
        k.ok(&["rollout", "status", &format!("deployment/{a}"), "--timeout=30s"])?;
    }
    k.ok(&["label", "node", "n1", "n2", "n3", "kubernetes.io/hostname-hint=n1", "--overwrite"])?;
    alive.lock().map_err(|_| anyhow::anyhow!("lock"))?.retain(|n| n != "n1");
    wait_for("n1 NotReady", 15, || Ok(k.ok(&["get", "node", "n1"])?.contains("NotReady")))?;
    let taints = k.ok(&["get", "node", "n1", "-o", "jsonpath={.spec.taints[*].key}"])?;
    assert!(taints.contains("node.kubernetes.io/unreachable"), "{taints}");
    // Replaced elsewhere; the evicted one waits as Terminating for its node
    // (nothing is force-removed from a node that may come back).
    wait_for("mover replaced off n1", 20, || {
        let l = k.json(&["get", "pods", "-l", "app=mover"])?;
        let items = l["items"].as_array().cloned().unwrap_or_default();
        let live: Vec<&Value> = items.iter().filter(|p| p["metadata"].get("deletionTimestamp").is_none()).collect();
        let evicted =
            items.iter().any(|p| p["metadata"]["deletionTimestamp"].is_string() && p["spec"]["nodeName"] == "n1");
        Ok(live.len() == 1 && live[0]["spec"]["nodeName"] != "n1" && evicted)
    })?;
    let stayer = k.ok(&["get", "pods", "-l", "app=stayer", "-o", "jsonpath={.items[*].spec.nodeName}"])?;
    assert_eq!(stayer, "n1", "no toleration, no eviction");
    assert!(on_nodes(&k)?.contains(&"n1".to_owned()), "DaemonSet pods tolerate unreachable forever");
    Ok(())
}
