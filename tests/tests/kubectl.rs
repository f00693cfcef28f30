//! End to end: the real kubectl against a started `kedge-controller`.
//! Covers the "done when" list of the API issue: apply/edit/unchanged, the
//! read commands, watch, describe, scale/label/annotate/patch, delete -f,
//! field errors, server-side unknown-field validation, and `kill -9`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result};
use kedge_tests::{Controller, Kubectl, controller_and_kubectl};
use serde_json::Value;

fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name).to_string_lossy().into_owned()
}

#[test]
fn apply_edit_and_read_back() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let Some((_ctl, k)) = controller_and_kubectl(dir.path(), &[])? else {
        return Ok(());
    };

    let out = k.ok(&["apply", "-f", &fixture("app.yaml")])?;
    for line in [
        "namespace/demo created",
        "configmap/web-config created",
        "secret/web-secret created",
        "deployment.apps/web created",
        "service/web created",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }

    // A server-side dry run reports the change and stores nothing; diff shows it.
    let out = k.ok(&["apply", "--dry-run=server", "-f", &fixture("app-edited.yaml")])?;
    assert!(out.contains("deployment.apps/web configured (server dry run)"), "{out}");
    assert_eq!(k.json(&["get", "deployment", "web", "-n", "demo"])?["spec"]["replicas"], 2);
    let diff = k.run(&["diff", "-f", &fixture("app-edited.yaml")])?;
    let diff_out = String::from_utf8_lossy(&diff.stdout);
    assert_eq!(diff.status.code(), Some(1), "kubectl diff exits 1 when there are differences: {diff_out}");
    assert!(diff_out.contains("-  replicas: 2") && diff_out.contains("+  replicas: 3"), "{diff_out}");

    let out = k.ok(&["apply", "-f", &fixture("app-edited.yaml")])?;
    assert!(out.contains("deployment.apps/web configured"), "{out}");
    assert!(out.contains("configmap/web-config unchanged"), "{out}");
    let d = k.json(&["get", "deployment", "web", "-n", "demo"])?;
    assert_eq!(d["spec"]["replicas"], 3);
    assert_eq!(d["metadata"]["labels"]["tier"], "front");
    let c = &d["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["image"], "kedge.local/busybox:1.1");
    assert_eq!(c["env"][0]["name"], "MODE");
    assert_eq!(c["env"][1]["name"], "GREETING", "env merged by name, order from the file");
    assert_eq!(d["metadata"]["generation"], 2);
    let yaml = k.ok(&["get", "deployment", "web", "-n", "demo", "-o", "yaml"])?;
    assert!(yaml.contains("image: kedge.local/busybox:1.1") && yaml.contains("value: fast"), "{yaml}");

    let out = k.ok(&["apply", "-f", &fixture("app-edited.yaml")])?;
    assert_eq!(out.matches("unchanged").count(), 5, "{out}");

    // Tables with kubectl's usual columns.
    let table = k.ok(&["get", "deployments", "-n", "demo"])?;
    let header: Vec<&str> = table.lines().next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(header, ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]);
    assert!(table.lines().nth(1).is_some_and(|l| l.starts_with("web ") && l.contains("0/3")), "{table}");
    let wide = k.ok(&["get", "deployments", "-n", "demo", "-o", "wide"])?;
    assert!(wide.contains("IMAGES") && wide.contains("kedge.local/busybox:1.1") && wide.contains("app=web"), "{wide}");
    let svc = k.ok(&["get", "svc", "-n", "demo"])?;
    assert!(svc.contains("CLUSTER-IP") && svc.contains("80/TCP"), "{svc}");
    let all = k.ok(&["get", "all", "-A"])?;
    assert!(all.contains("deployment.apps/web") && all.contains("service/web"), "{all}");
    let jp =
        k.ok(&["get", "deploy", "-n", "demo", "-o", "jsonpath={.items[0].metadata.name}:{.items[0].spec.replicas}"])?;
    assert_eq!(jp, "web:3");
    let secret = k.ok(&["get", "secret", "web-secret", "-n", "demo", "-o", "jsonpath={.data.password}"])?;
    assert_eq!(secret, "czNjcjN0");
    let ns = k.ok(&["get", "ns"])?;
    for n in ["default", "kube-system", "demo"] {
        assert!(ns.lines().any(|l| l.starts_with(n) && l.contains("Active")), "{ns}");
    }

    let explain = k.ok(&["explain", "deployment.spec.replicas"])?;
    assert!(explain.contains("FIELD: replicas <integer>"), "{explain}");

    let desc = k.ok(&["describe", "deployment", "web", "-n", "demo"])?;
    assert!(desc.contains("Replicas:") && desc.contains("3 desired") && desc.contains("MODE:"), "{desc}");
    let desc = k.ok(&["describe", "service", "web", "-n", "demo"])?;
    assert!(desc.contains("TargetPort:") && desc.contains("http/TCP"), "{desc}");
    Ok(())
}

#[test]
fn watch_and_the_write_commands() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let Some((_ctl, k)) = controller_and_kubectl(dir.path(), &[])? else {
        return Ok(());
    };
    k.ok(&["apply", "-f", &fixture("app.yaml")])?;

    // `get -w` prints changes as they happen.
    let mut watch = k
        .command(&["get", "deployment", "web", "-n", "demo", "-w"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let (tx, rx) = mpsc::channel();
    let stdout = watch.stdout.take().context("watch stdout")?;
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let first = rx.recv_timeout(Duration::from_secs(10))?;
    assert!(first.starts_with("NAME"), "{first}");
    let initial = rx.recv_timeout(Duration::from_secs(10))?;
    assert!(initial.contains("0/2"), "{initial}");

    assert!(k.ok(&["scale", "deployment", "web", "-n", "demo", "--replicas=5"])?.contains("scaled"));
    let seen = rx.recv_timeout(Duration::from_secs(10))?;
    assert!(seen.starts_with("web") && seen.contains("0/5"), "watch printed {seen:?}");
    let _ = watch.kill();
    let _ = watch.wait();

    assert!(k.ok(&["label", "deployment", "web", "-n", "demo", "env=prod"])?.contains("labeled"));
    assert!(k.ok(&["annotate", "deployment", "web", "-n", "demo", "owner=ops"])?.contains("annotated"));
    k.ok(&[
        "patch",
        "deployment",
        "web",
        "-n",
        "demo",
        "-p",
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"web","image":"kedge.local/busybox:2"}]}}}}"#,
    ])?;
    k.ok(&["patch", "deployment", "web", "-n", "demo", "--type=merge", "-p", r#"{"spec":{"minReadySeconds":3}}"#])?;
    k.ok(&[
        "patch",
        "deployment",
        "web",
        "-n",
        "demo",
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/spec/replicas","value":4}]"#,
    ])?;
    let d = k.json(&["get", "deployment", "web", "-n", "demo"])?;
    assert_eq!(d["metadata"]["labels"]["env"], "prod");
    assert_eq!(d["metadata"]["annotations"]["owner"], "ops");
    let c = &d["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["image"], "kedge.local/busybox:2", "strategic patch merged the container by name");
    assert_eq!(c["command"][0], "httpd", "other container fields kept");
    assert_eq!(d["spec"]["minReadySeconds"], 3);
    assert_eq!(d["spec"]["replicas"], 4);

    let out = k.ok(&["delete", "-f", &fixture("app.yaml")])?;
    assert_eq!(out.matches("deleted").count(), 5, "{out}");
    let err = k.fails(&["get", "namespace", "demo"])?;
    assert!(err.contains("NotFound"), "{err}");
    Ok(())
}

#[test]
fn invalid_objects_are_refused_with_field_errors() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let Some((_ctl, k)) = controller_and_kubectl(dir.path(), &[])? else {
        return Ok(());
    };

    let err = k.fails(&["create", "-f", &fixture("invalid-pod.yaml")])?;
    assert!(err.contains("spec.containers[0].image: Required value"), "{err}");
    assert!(k.fails(&["get", "pod", "broken"])?.contains("NotFound"));

    // describe finds a pod's events through the involvedObject field selectors.
    k.ok(&["run", "probe", "--image=kedge.local/busybox:1", "--restart=Never"])?;
    let pod = k.json(&["get", "pod", "probe"])?;
    let event = serde_json::json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": "probe.1", "namespace": "default"},
        "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": "probe", "namespace": "default",
            "uid": pod["metadata"]["uid"]},
        "reason": "Pulled", "message": "image already present on the node", "type": "Normal",
        "source": {"component": "kedge-agent"}, "count": 1,
    });
    let ev_path = dir.path().join("event.json");
    std::fs::write(&ev_path, event.to_string())?;
    k.ok(&["create", "-f", &ev_path.to_string_lossy()])?;
    let desc = k.ok(&["describe", "pod", "probe"])?;
    assert!(desc.contains("Pulled") && desc.contains("image already present on the node"), "{desc}");
    assert!(desc.contains("QoS Class:") && desc.contains("BestEffort"), "{desc}");

    let err = k.fails(&["apply", "-f", &fixture("unknown-field.yaml")])?;
    assert!(err.contains("unknown field \"spec.replicaz\""), "{err}");
    assert!(k.fails(&["get", "deployment", "typo"])?.contains("NotFound"));
    let out = k.ok(&["apply", "--validate=false", "-f", &fixture("unknown-field.yaml")])?;
    assert!(out.contains("deployment.apps/typo created"), "{out}");
    Ok(())
}

#[test]
fn apply_removes_what_the_file_no_longer_has() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let Some((_ctl, k)) = controller_and_kubectl(dir.path(), &[])? else { return Ok(()) };
    k.ok(&["apply", "-f", &fixture("two-containers.yaml")])?;
    k.ok(&["apply", "-f", &fixture("one-container.yaml")])?;
    let d = k.json(&["get", "deployment", "pair"])?;
    let containers = d["spec"]["template"]["spec"]["containers"].as_array().cloned().unwrap_or_default();
    assert_eq!(containers.len(), 1, "the sidecar is gone: {containers:?}");
    assert_eq!(containers[0]["env"], serde_json::json!([{"name": "KEEP", "value": "1"}]));
    Ok(())
}

#[test]
fn create_subcommands_send_protobuf_and_work() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let Some((_ctl, k)) = controller_and_kubectl(dir.path(), &[])? else { return Ok(()) };
    for args in [
        &["create", "namespace", "team"][..],
        &["create", "configmap", "cfg", "--from-literal=a=b", "-n", "team"],
        &["create", "secret", "generic", "sec", "--from-literal=pw=hunter2", "-n", "team"],
        &["create", "service", "nodeport", "web", "--tcp=80:8080", "-n", "team"],
        &["create", "deployment", "web", "--image=kedge.local/busybox:1", "--replicas=3", "--port=8080", "-n", "team"],
        &["create", "deployment", "idle", "--image=kedge.local/busybox:1", "--replicas=0", "-n", "team"],
        &["create", "deployment", "cmd", "--image=kedge.local/busybox:1", "-n", "team", "--", "sleep", "3600"],
    ] {
        let out = k.ok(args)?;
        assert!(out.contains("created"), "{args:?}: {out}");
    }
    assert_eq!(k.ok(&["get", "configmap", "cfg", "-n", "team", "-o", "jsonpath={.data.a}"])?, "b");
    assert_eq!(k.ok(&["get", "secret", "sec", "-n", "team", "-o", "jsonpath={.data.pw}"])?, "aHVudGVyMg==");
    let svc = k.json(&["get", "service", "web", "-n", "team"])?;
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], 8080);
    assert!(svc["spec"]["ports"][0]["nodePort"].as_i64().is_some_and(|p| p >= 30000));
    let d = k.json(&["get", "deployment", "web", "-n", "team"])?;
    assert_eq!(d["spec"]["replicas"], 3);
    assert_eq!(d["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"], 8080);
    assert!(d["spec"]["template"]["metadata"].get("creationTimestamp").is_none_or(Value::is_null));
    assert_eq!(k.json(&["get", "deployment", "idle", "-n", "team"])?["spec"]["replicas"], 0, "an explicit 0 stays 0");
    let cmd = k.json(&["get", "deployment", "cmd", "-n", "team"])?;
    assert_eq!(cmd["spec"]["template"]["spec"]["containers"][0]["command"], serde_json::json!(["sleep", "3600"]));
    Ok(())
}

/// `kubectl create job` and `kubectl create poddisruptionbudget` (typed
/// clients: protobuf bodies) and what the server makes of them: a Job with
/// Kubernetes' defaults and a selector generated from its uid, shown by
/// `kubectl get job`; a budget whose status the disruption controller
/// keeps, and an eviction it refuses with 429 while no disruption is allowed.
#[test]
fn jobs_budgets_and_evictions_through_kubectl() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let Some((ctl, k)) = controller_and_kubectl(dir.path(), &[])? else { return Ok(()) };
    let out = k.ok(&["create", "job", "once", "--image=kedge.local/busybox:1", "--", "echo", "hi"])?;
    assert!(out.contains("job.batch/once created"), "{out}");
    let j = k.json(&["get", "job", "once"])?;
    let uid = j["metadata"]["uid"].as_str().context("uid")?;
    assert_eq!(j["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"], uid);
    assert_eq!(j["spec"]["template"]["metadata"]["labels"]["job-name"], "once");
    assert_eq!((j["spec"]["completions"].clone(), j["spec"]["parallelism"].clone()), (1.into(), 1.into()));
    assert_eq!(j["spec"]["backoffLimit"], 6);
    assert_eq!(j["spec"]["template"]["spec"]["restartPolicy"], "Never", "kubectl create job sets Never");
    // No node: its one pod waits, owned by the Job, with the tracking finalizer.
    let pods = wait_json(&k, &["get", "pods", "-l", "job-name=once"], |l| {
        l["items"].as_array().is_some_and(|i| i.len() == 1)
    })?;
    let pod = &pods["items"][0];
    assert_eq!(pod["metadata"]["ownerReferences"][0]["kind"], "Job");
    assert_eq!(pod["metadata"]["finalizers"][0], "batch.kubernetes.io/job-tracking");
    let row = k.ok(&["get", "job", "once", "--no-headers"])?;
    assert_eq!(row.split_whitespace().take(3).collect::<Vec<_>>(), ["once", "Running", "0/1"], "{row}");
    // A pod template that would restart forever is not a Job's.
    let bad = r#"{"apiVersion":"batch/v1","kind":"Job","metadata":{"name":"bad"},"spec":{"template":{"spec":{"restartPolicy":"Always","containers":[{"name":"c","image":"x"}]}}}}"#;
    let api = ctl.api()?;
    let (code, body) = api.request("POST", "/apis/batch/v1/namespaces/default/jobs", "application/json", bad)?;
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("spec.template.spec.restartPolicy"), "{body}");
    // Deleting the Job deletes its pod (the finalizer is released).
    k.ok(&["delete", "job", "once"])?;
    wait_json(&k, &["get", "pods"], |l| l["items"].as_array().is_some_and(Vec::is_empty))?;

    // CronJobs: kubectl create cronjob (protobuf), a bad schedule refused
    // naming the field, and a Job made from one by hand.
    let out = k.ok(&[
        "create",
        "cronjob",
        "every",
        "--image=kedge.local/busybox:1",
        "--schedule=*/5 * * * *",
        "--",
        "echo",
        "hi",
    ])?;
    assert!(out.contains("cronjob.batch/every created"), "{out}");
    let row = k.ok(&["get", "cronjob", "every", "--no-headers"])?;
    assert!(row.starts_with("every") && row.contains("*/5 * * * *") && row.contains("false"), "{row}");
    let err = k.fails(&["create", "cronjob", "bad", "--image=x", "--schedule=0 0 L * *"])?;
    assert!(err.contains("spec.schedule") && err.contains("not standard cron"), "{err}");
    let err = k.fails(&["create", "cronjob", "bad", "--image=x", "--schedule=61 * * * *"])?;
    assert!(err.contains("spec.schedule"), "{err}");
    let out = k.ok(&["create", "job", "by-hand", "--from=cronjob/every"])?;
    assert!(out.contains("job.batch/by-hand created"), "{out}");
    let j = k.json(&["get", "job", "by-hand"])?;
    assert_eq!(j["metadata"]["ownerReferences"][0]["kind"], "CronJob");
    assert_eq!(j["metadata"]["annotations"]["cronjob.kubernetes.io/instantiate"], "manual");
    k.ok(&["delete", "cronjob", "every"])?;
    wait_json(&k, &["get", "jobs"], |l| l["items"].as_array().is_some_and(Vec::is_empty))?;

    let out = k.ok(&["create", "poddisruptionbudget", "web", "--selector=app=web", "--min-available=1"])?;
    assert!(out.contains("poddisruptionbudget.policy/web created"), "{out}");
    let b = wait_json(&k, &["get", "pdb", "web"], |b| b["status"]["observedGeneration"] == 1)?;
    assert_eq!(b["status"]["disruptionsAllowed"], 0);
    assert_eq!(b["status"]["conditions"][0]["reason"], "InsufficientPods");
    // A running, ready pod the budget covers (bound and marked by hand: no agent here).
    let pod = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"web-1","labels":{"app":"web"}},"spec":{"nodeName":"nowhere","containers":[{"name":"c","image":"x"}]}}"#;
    assert_eq!(api.request("POST", "/api/v1/namespaces/default/pods", "application/json", pod)?.0, 201);
    let status = r#"{"status":{"phase":"Running","conditions":[{"type":"Ready","status":"True"}]}}"#;
    let (code, body) =
        api.request("PATCH", "/api/v1/namespaces/default/pods/web-1/status", "application/merge-patch+json", status)?;
    assert_eq!(code, 200, "{body}");
    wait_json(&k, &["get", "pdb", "web"], |b| b["status"]["currentHealthy"] == 1)?;
    let eviction = r#"{"apiVersion":"policy/v1","kind":"Eviction","metadata":{"name":"web-1","namespace":"default"}}"#;
    let path = "/api/v1/namespaces/default/pods/web-1/eviction";
    let (code, body) = api.request("POST", path, "application/json", eviction)?;
    assert_eq!(code, 429, "{body}");
    assert!(body.contains("Cannot evict pod as it would violate the pod's disruption budget"), "{body}");
    assert!(body.contains("needs 1 healthy pods and has 1 currently"), "{body}");
    // With maxUnavailable instead, over a pod no controller owns: nothing can be allowed.
    k.ok(&["patch", "pdb", "web", "--type=merge", "-p", r#"{"spec":{"minAvailable":null,"maxUnavailable":1}}"#])?;
    let b = wait_json(&k, &["get", "pdb", "web"], |b| b["status"]["observedGeneration"] == 2)?;
    assert_eq!(b["status"]["conditions"][0]["reason"], "SyncFailed", "{}", b["status"]);
    // minAvailable 0 lets it go: evicted, so marked for deletion on its node.
    k.ok(&["patch", "pdb", "web", "--type=merge", "-p", r#"{"spec":{"minAvailable":0,"maxUnavailable":null}}"#])?;
    wait_json(&k, &["get", "pdb", "web"], |b| b["status"]["disruptionsAllowed"] == 1)?;
    let (code, body) = api.request("POST", path, "application/json", eviction)?;
    assert_eq!(code, 201, "{body}");
    let p = k.json(&["get", "pod", "web-1"])?;
    assert!(p["metadata"]["deletionTimestamp"].is_string(), "graceful: Terminating until its node stops it");
    // Terminating, it no longer counts as healthy (nor as disrupted: it is going).
    wait_json(&k, &["get", "pdb", "web"], |b| {
        b["status"]["currentHealthy"] == 0 && b["status"]["disruptionsAllowed"] == 0
    })?;
    // Its node never reports; the force delete kubectl offers removes it.
    k.ok(&["delete", "pod", "web-1", "--grace-period=0", "--force"])?;
    assert!(k.run(&["get", "pod", "web-1"])?.status.code() == Some(1));
    Ok(())
}

/// Polls `kubectl get … -o json` until `ok` holds (10 s at most).
fn wait_json(k: &Kubectl, args: &[&str], ok: impl Fn(&Value) -> bool) -> Result<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let v = k.json(args)?;
        if ok(&v) {
            return Ok(v);
        }
        anyhow::ensure!(std::time::Instant::now() < deadline, "timed out waiting on {args:?}: {v}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Chaos: `kill -9` of the controller in the middle of a write load (the
/// official Python client creating ConfigMaps one after another, as fast as
/// they are answered): after a restart on the same data every create the API
/// acknowledged is there, with the uid and resourceVersion it was given.
/// The process dies, the machine does not: what this shows is that nothing
/// is acknowledged before it is written (a lost fsync would need a power cut).
#[test]
fn kill_dash_nine_under_a_write_load_loses_no_acknowledged_write() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let Some((mut ctl, k)) = controller_and_kubectl(dir.path(), &[])? else {
        return Ok(());
    };
    let root = kedge_tests::workspace_root();
    let python = root.join("target/python");
    let has =
        std::process::Command::new("python3").args(["-c", "import kubernetes"]).env("PYTHONPATH", &python).output();
    if !kedge_tests::require(
        has.is_ok_and(|o| o.status.success()),
        "the Python kubernetes client (scripts/packages.sh)",
    ) {
        return Ok(());
    }
    let errors = dir.path().join("write_load.err");
    let mut writer = std::process::Command::new("python3")
        .arg(root.join("tests/python/write_load.py"))
        .arg(&k.kubeconfig)
        .env("PYTHONPATH", &python)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&errors)?)
        .spawn()?;
    let mut lines = BufReader::new(writer.stdout.take().context("stdout")?).lines();
    let mut acked: Vec<(String, String, String)> = Vec::new();
    let mut take = |line: String| -> Result<()> {
        let mut f = line.split_whitespace().map(str::to_owned);
        acked.push((f.next().context("name")?, f.next().context("uid")?, f.next().context("rv")?));
        Ok(())
    };
    // Killed mid-stream, after a few hundred acknowledged creates.
    for _ in 0..300 {
        take(lines.next().context("the writer stopped before the kill")??)?;
    }
    ctl.kill();
    // What it acknowledged before the writer noticed is in the pipe still.
    for line in lines {
        take(line?)?;
    }
    writer.wait()?;
    let why = std::fs::read_to_string(&errors)?;
    assert!(why.contains("write_load: stopped at"), "the writer stopped on the kill: {why}");
    let (addr, data) = (ctl.addr.clone(), ctl.data_dir.clone());
    drop(ctl);
    let mut ctl = Controller::start_on(&data, &addr)?;
    let list = k.json(&["get", "configmaps", "-n", "default"])?;
    let stored: BTreeMap<String, (String, String)> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let md = &c["metadata"];
            let s = |f: &str| md[f].as_str().unwrap_or_default().to_owned();
            (s("name"), (s("uid"), s("resourceVersion")))
        })
        .collect();
    for (name, uid, rv) in &acked {
        assert_eq!(stored.get(name), Some(&(uid.clone(), rv.clone())), "{name} was acknowledged (uid {uid}, rv {rv})");
    }
    eprintln!("kill -9 under load: {} acknowledged creates, all kept", acked.len());
    let status = ctl.terminate()?;
    assert!(status.success(), "SIGTERM is a clean shutdown: {status}");
    Ok(())
}

#[test]
fn kill_dash_nine_loses_nothing() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let Some((mut ctl, k)) = controller_and_kubectl(dir.path(), &[])? else {
        return Ok(());
    };
    k.ok(&["apply", "-f", &fixture("app.yaml")])?;
    k.ok(&["scale", "deployment", "web", "-n", "demo", "--replicas=7"])?;
    let snapshot = |k: &Kubectl| -> Result<BTreeMap<String, (String, String)>> {
        let mut m = BTreeMap::new();
        for kind in ["namespaces", "configmaps", "secrets", "deployments", "services"] {
            let list = k.json(&["get", kind, "-A"])?;
            for it in list["items"].as_array().cloned().unwrap_or_default() {
                let md = &it["metadata"];
                let key =
                    format!("{kind}/{}/{}", md["namespace"].as_str().unwrap_or(""), md["name"].as_str().unwrap_or(""));
                m.insert(
                    key,
                    (
                        md["uid"].as_str().unwrap_or("").to_owned(),
                        md["resourceVersion"].as_str().unwrap_or("").to_owned(),
                    ),
                );
            }
        }
        Ok(m)
    };
    // Let the control loops settle (they write status): two listings in a
    // row the same, or the test fails.
    let mut last = snapshot(&k)?;
    let before = kedge_tests::wait_for("the control loops to settle", Duration::from_secs(10), || {
        let again = snapshot(&k)?;
        if again == last {
            return Ok(Some(again));
        }
        last = again;
        Ok(None)
    })?;
    assert!(before.len() >= 9, "{before:?}");
    let max_rv = before.values().filter_map(|(_, rv)| rv.parse::<u64>().ok()).max().unwrap_or(0);

    ctl.kill();
    let addr = ctl.addr.clone();
    let data = ctl.data_dir.clone();
    drop(ctl);
    let mut ctl = Controller::start_on(&data, &addr)?;
    let after = snapshot(&k)?;
    assert_eq!(before, after, "same objects, uids and resourceVersions after kill -9");
    let d = k.json(&["get", "deployment", "web", "-n", "demo"])?;
    assert_eq!(d["spec"]["replicas"], 7);

    k.ok(&["label", "configmap", "web-config", "-n", "demo", "after=restart"])?;
    let cm = k.json(&["get", "configmap", "web-config", "-n", "demo"])?;
    let rv: u64 = cm["metadata"]["resourceVersion"].as_str().unwrap_or("0").parse()?;
    assert!(rv > max_rv, "revision {rv} continues above {max_rv}");

    let status = ctl.terminate()?;
    assert!(status.success(), "SIGTERM is a clean shutdown: {status}");
    Ok(())
}
