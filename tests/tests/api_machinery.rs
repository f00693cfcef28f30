//! The API machinery tools depend on, driven by clients we did not write:
//! kubectl 1.27 to 1.33 (OpenAPI v2 in protobuf for the older ones, v3 for
//! the newer), multi-document files with kinds the server does not serve,
//! `kubectl debug`, and the small things clients trip on (YAML and
//! metadata-only answers, exact-version lists, health checks).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use kedge_tests::{Kubectl, controller_and_kubectl, require, wait_for};
use serde_json::Value;

fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name).to_string_lossy().into_owned()
}

/// A versioned kubectl from the Cloud SDK, sharing `k`'s kubeconfig and
/// a cache of its own; `None` (after a loud skip, or a failure under CI)
/// when it is missing.
fn kubectl(k: &Kubectl, version: &str) -> Option<Kubectl> {
    let bin = PathBuf::from(format!("/usr/lib/google-cloud-sdk/bin/kubectl.{version}"));
    require(bin.exists(), &format!("kubectl {version} at {}", bin.display())).then(|| Kubectl {
        bin,
        kubeconfig: k.kubeconfig.clone(),
        cache: k.cache.with_extension(version),
    })
}

/// Two served kinds around two the server does not serve: an old version
/// of a served group's kind, and a custom kind with no definition.
const MIXED: &str = "\
apiVersion: v1
kind: ConfigMap
metadata: {name: first}
data: {a: \"1\"}
---
apiVersion: batch/v1beta1
kind: CronJob
metadata: {name: old-cron}
spec:
  schedule: \"* * * * *\"
  jobTemplate: {spec: {template: {spec: {restartPolicy: Never, containers: [{name: c, image: busybox}]}}}}
---
apiVersion: example.com/v1
kind: Widget
metadata: {name: w}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: second}
spec:
  selector: {matchLabels: {app: second}}
  template:
    metadata: {labels: {app: second}}
    spec: {containers: [{name: app, image: kedge.local/busybox:latest}]}
";

#[test]
fn every_kubectl_from_1_27_creates_applies_and_explains_with_validation() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let Some((_ctl, k)) = controller_and_kubectl(dir.path(), &[])? else {
        return Ok(());
    };
    let file = dir.path().join("mixed.yaml");
    std::fs::write(&file, MIXED)?;
    let file = file.to_string_lossy().into_owned();
    for version in ["1.27", "1.28", "1.32", "1.33"] {
        let Some(kv) = kubectl(&k, version) else { continue };
        let ns = format!("v{}", version.replace('.', ""));
        k.ok(&["create", "namespace", &ns])?;
        let ns_create = format!("{ns}-create");
        k.ok(&["create", "namespace", &ns_create])?;

        // create -f: the two served kinds are made, each unserved one gets
        // kubectl's own "no matches" and nothing else is skipped.
        let out = kv.run(&["create", "-n", &ns_create, "-f", &file])?;
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        ensure!(!out.status.success(), "kubectl {version} create: the unserved kinds fail it");
        for made in ["configmap/first created", "deployment.apps/second created"] {
            ensure!(stdout.contains(made), "kubectl {version} create: no {made:?}:\n{stdout}\n{stderr}");
        }
        for missing in [
            "no matches for kind \"CronJob\" in version \"batch/v1beta1\"",
            "no matches for kind \"Widget\" in version \"example.com/v1\"",
        ] {
            ensure!(stderr.contains(missing), "kubectl {version} create: no {missing:?} in:\n{stderr}");
        }
        ensure!(!stderr.contains("openapi"), "kubectl {version} could not use the OpenAPI documents:\n{stderr}");

        // apply -f twice: made, then unchanged.
        let out = kv.run(&["apply", "-n", &ns, "-f", &file])?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        for made in ["configmap/first created", "deployment.apps/second created"] {
            ensure!(stdout.contains(made), "kubectl {version} apply: no {made:?}:\n{stdout}");
        }
        let out = kv.run(&["apply", "-n", &ns, "-f", &file])?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        for same in ["configmap/first unchanged", "deployment.apps/second unchanged"] {
            ensure!(stdout.contains(same), "kubectl {version} apply again: no {same:?}:\n{stdout}");
        }
        ensure!(k.json(&["get", "configmap", "first", "-n", &ns])?["data"]["a"] == "1");

        // Default validation reaches the server: an unknown field is refused
        // with Kubernetes' strict-decoding message.
        let err = kv.fails(&["apply", "-f", &fixture("unknown-field.yaml")])?;
        ensure!(err.contains("unknown field \"spec.replicaz\""), "kubectl {version}: {err}");

        let explain = kv.ok(&["explain", "deployment.spec.strategy"])?;
        ensure!(explain.contains("FIELD: strategy") || explain.contains("FIELDS:"), "kubectl {version}: {explain}");
        ensure!(explain.contains("rollingUpdate"), "kubectl {version} explain lists the fields: {explain}");
    }
    Ok(())
}

#[test]
fn openapi_documents_are_tagged_for_caching_and_v2_speaks_protobuf() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let Some((ctl, _k)) = controller_and_kubectl(dir.path(), &[])? else {
        return Ok(());
    };
    let api = ctl.api()?;
    let (code, headers, body) = api.get_with("/openapi/v2", &[("Accept", "application/json")])?;
    ensure!(code == 200, "{code}");
    let doc: Value = serde_json::from_slice(&body)?;
    ensure!(doc["swagger"] == "2.0" && doc["definitions"]["io.k8s.api.core.v1.Pod"].is_object());
    let etag = headers.get("etag").context("an ETag on /openapi/v2")?.clone();
    let (code, _, body) = api.get_with("/openapi/v2", &[("If-None-Match", &etag)])?;
    ensure!(code == 304 && body.is_empty(), "an unchanged document is not sent again: {code}");

    let pb = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf";
    let (code, headers, body) = api.get_with("/openapi/v2", &[("Accept", pb)])?;
    ensure!(code == 200, "{code}");
    ensure!(
        headers.get("content-type").map(String::as_str)
            == Some("application/com.github.proto-openapi.spec.v2.v1.0+protobuf"),
        "{headers:?}"
    );
    // Document { swagger (1) = "2.0" } comes first.
    ensure!(body.starts_with(b"\x0a\x032.0"), "{:?}", &body[..body.len().min(16)]);

    let (_, _, root) = api.get_with("/openapi/v3", &[])?;
    let root: Value = serde_json::from_slice(&root)?;
    let url = root["paths"]["apis/apps/v1"]["serverRelativeURL"].as_str().context("apps/v1 in the v3 root")?;
    let (code, headers, _) = api.get_with(url, &[])?;
    ensure!(code == 200, "{code}");
    ensure!(headers.get("cache-control").map(String::as_str) == Some("public, immutable"), "{headers:?}");
    let etag = headers.get("etag").context("an ETag on a v3 document")?.clone();
    let (code, _, _) = api.get_with("/openapi/v3/apis/apps/v1", &[("If-None-Match", &etag)])?;
    ensure!(code == 304, "{code}");
    let (code, _, _) = api.get_with("/openapi/v3/apis/made.up/v1", &[])?;
    ensure!(code == 404, "{code}");
    Ok(())
}

#[test]
fn the_small_things_clients_trip_on() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // A short history, so that a version can fall out of it.
    let Some((ctl, k)) = controller_and_kubectl(dir.path(), &["--watch-history", "100"])? else {
        return Ok(());
    };
    let api = ctl.api()?;
    k.ok(&["create", "configmap", "one", "--from-literal=a=1"])?;
    k.ok(&["create", "configmap", "two", "--from-literal=b=2"])?;

    // kubectl debug of a pod needs ephemeral containers: a clean refusal,
    // not the nil-pointer panic a 404 without details gave.
    let node = "apiVersion: v1\nkind: Node\nmetadata: {name: n1, labels: {kubernetes.io/hostname: n1}}\n---\n\
                apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec: {containers: [{name: c, image: busybox}]}\n";
    let f = dir.path().join("node.yaml");
    std::fs::write(&f, node)?;
    k.ok(&["apply", "-f", &f.to_string_lossy()])?;
    let err = k.fails(&["debug", "pod/x", "--image=busybox"])?;
    ensure!(err.contains("ephemeral containers are disabled for this cluster"), "{err}");
    ensure!(!err.contains("panic"), "{err}");
    // kubectl debug node/… posts its pod in protobuf, with a hostPath volume.
    k.ok(&["debug", "node/n1", "--image=busybox"])?;
    let pods = k.json(&["get", "pods"])?;
    let debugger = pods["items"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["metadata"]["name"].as_str().is_some_and(|n| n.starts_with("node-debugger-n1-")))
        .context("the node debugger pod")?;
    ensure!(debugger["spec"]["nodeName"] == "n1", "{debugger}");
    ensure!(debugger["spec"]["volumes"][0]["hostPath"]["path"] == "/", "{debugger}");

    // YAML when asked for.
    let (code, headers, body) =
        api.get_with("/api/v1/namespaces/default/configmaps/one", &[("Accept", "application/yaml")])?;
    let yaml = String::from_utf8_lossy(&body);
    ensure!(code == 200 && headers.get("content-type").map(String::as_str) == Some("application/yaml"), "{headers:?}");
    ensure!(yaml.contains("kind: ConfigMap\n") && yaml.contains("name: one\n"), "{yaml}");

    // Metadata only, as client-go's metadata client asks for it.
    let accept = "application/vnd.kubernetes.protobuf;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,\
                  application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json";
    let (_, _, body) = api.get_with("/api/v1/namespaces/default/configmaps", &[("Accept", accept)])?;
    let list: Value = serde_json::from_slice(&body)?;
    ensure!(list["kind"] == "PartialObjectMetadataList" && list["apiVersion"] == "meta.k8s.io/v1", "{list}");
    let rv = list["metadata"]["resourceVersion"].as_str().context("the list's version")?.to_owned();
    let items = list["items"].as_array().context("items")?;
    ensure!(items.iter().all(|i| i["kind"] == "PartialObjectMetadata" && i.get("data").is_none()), "{list}");
    ensure!(items.iter().any(|i| i["metadata"]["name"] == "one"), "{list}");
    let (_, _, body) = api.get_with(
        "/api/v1/namespaces/default/configmaps/one",
        &[("Accept", "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1")],
    )?;
    let one: Value = serde_json::from_slice(&body)?;
    ensure!(one["kind"] == "PartialObjectMetadata" && one["metadata"]["name"] == "one", "{one}");

    // A list as of an earlier version, exactly.
    k.ok(&["create", "configmap", "three"])?;
    k.ok(&["delete", "configmap", "one"])?;
    k.ok(&["label", "configmap", "two", "changed=yes"])?;
    let then: Value = serde_json::from_str(&k.ok(&[
        "get",
        "--raw",
        &format!("/api/v1/namespaces/default/configmaps?resourceVersion={rv}&resourceVersionMatch=Exact"),
    ])?)?;
    let mine = |v: &Value| -> Vec<Value> {
        let items = v["items"].as_array().into_iter().flatten();
        items.filter(|i| i["metadata"]["name"] != "kube-root-ca.crt").cloned().collect()
    };
    let items = mine(&then);
    let names: Vec<&str> = items.iter().filter_map(|i| i["metadata"]["name"].as_str()).collect();
    ensure!(names == ["one", "two"], "the list at {rv}: {names:?}");
    ensure!(items[1]["metadata"].get("labels").is_none(), "two before its label: {then}");
    ensure!(then["metadata"]["resourceVersion"] == rv.as_str(), "{then}");
    // Once the history has moved past it, the version is gone (as after
    // an etcd compaction).
    let many: String =
        (0..120).map(|i| format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: m{i}}}\n---\n")).collect();
    let f = dir.path().join("many.yaml");
    std::fs::write(&f, many)?;
    k.ok(&["apply", "-f", &f.to_string_lossy()])?;
    let err = k.fails(&[
        "get",
        "--raw",
        &format!("/api/v1/namespaces/default/configmaps?resourceVersion={rv}&resourceVersionMatch=Exact"),
    ])?;
    ensure!(err.contains("Expired") && err.contains("too old"), "{err}");

    // A Service's status has its load balancer, even empty; an ExternalName
    // Service gets no Endpoints (a selector one does, meanwhile).
    k.ok(&["create", "service", "externalname", "ext", "--external-name", "example.com"])?;
    k.ok(&["create", "service", "clusterip", "web", "--tcp=80:8080"])?;
    let svc = k.json(&["get", "service", "ext"])?;
    ensure!(svc["status"] == serde_json::json!({"loadBalancer": {}}), "{svc}");
    wait_for("the web Service's Endpoints", Duration::from_secs(10), || {
        Ok(k.run(&["get", "endpoints", "web"])?.status.success().then_some(()))
    })?;
    ensure!(k.fails(&["get", "endpoints", "ext"])?.contains("NotFound"));

    // Health, verbose and one check at a time.
    let ready = k.ok(&["get", "--raw", "/readyz?verbose"])?;
    ensure!(ready.contains("[+]etcd ok\n") && ready.ends_with("readyz check passed\n"), "{ready}");
    ensure!(k.ok(&["get", "--raw", "/livez/etcd"])? == "ok");
    let ready = k.ok(&["get", "--raw", "/readyz?verbose&exclude=etcd"])?;
    ensure!(ready.contains("[+]etcd excluded: ok"), "{ready}");
    ensure!(k.fails(&["get", "--raw", "/livez/nope"])?.contains("NotFound"));
    Ok(())
}

/// The official Python client, as `python3 tests/python/k8s_machinery.py
/// KUBECONFIG ARGS…`; `None` (after a loud skip, or a failure under CI)
/// without it.
fn python(kubeconfig: &Path, args: &[&str]) -> Result<Option<String>> {
    let root = kedge_tests::workspace_root();
    let path = root.join("target/python");
    let has = std::process::Command::new("python3").args(["-c", "import kubernetes"]).env("PYTHONPATH", &path).output();
    if !require(has.is_ok_and(|o| o.status.success()), "the Python kubernetes client (scripts/packages.sh)") {
        return Ok(None);
    }
    let o = std::process::Command::new("python3")
        .arg(root.join("tests/python/k8s_machinery.py"))
        .arg(kubeconfig)
        .args(args)
        .env("PYTHONPATH", &path)
        .output()?;
    ensure!(o.status.success(), "python client {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    Ok(Some(String::from_utf8_lossy(&o.stdout).into_owned()))
}

#[test]
fn service_accounts_tokens_and_rbac() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let Some((ctl, k)) = controller_and_kubectl(dir.path(), &[])? else {
        return Ok(());
    };
    // Every namespace gets its default ServiceAccount and the cluster CA.
    k.ok(&["create", "namespace", "team"])?;
    wait_for("team's default ServiceAccount and CA", Duration::from_secs(10), || {
        let sa = k.run(&["get", "serviceaccount", "default", "-n", "team"])?.status.success();
        let cm = k.run(&["get", "configmap", "kube-root-ca.crt", "-n", "team"])?.status.success();
        Ok((sa && cm).then_some(()))
    })?;
    let ca = k.json(&["get", "configmap", "kube-root-ca.crt", "-n", "team"])?;
    let on_disk = std::fs::read_to_string(dir.path().join("data/tls/ca.crt"))?;
    ensure!(ca["data"]["ca.crt"] == on_disk.as_str(), "{ca}");
    // Deleted, they come back.
    k.ok(&["delete", "serviceaccount", "default", "-n", "team"])?;
    wait_for("team's default ServiceAccount again", Duration::from_secs(10), || {
        Ok(k.run(&["get", "serviceaccount", "default", "-n", "team"])?.status.success().then_some(()))
    })?;

    // Pods get their account's token mounted in every container, unless
    // the pod or its account says no; an account that does not exist is
    // refused.
    let pods = "apiVersion: v1\nkind: Pod\nmetadata: {name: mounted}\n\
                spec: {initContainers: [{name: i, image: busybox}], containers: [{name: a, image: busybox}, {name: b, image: busybox}]}\n---\n\
                apiVersion: v1\nkind: Pod\nmetadata: {name: unmounted}\n\
                spec: {automountServiceAccountToken: false, containers: [{name: a, image: busybox}]}\n---\n\
                apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: quiet}\nautomountServiceAccountToken: false\n---\n\
                apiVersion: v1\nkind: Pod\nmetadata: {name: quiet}\n\
                spec: {serviceAccountName: quiet, containers: [{name: a, image: busybox}]}\n";
    let f = dir.path().join("pods.yaml");
    std::fs::write(&f, pods)?;
    k.ok(&["apply", "-f", &f.to_string_lossy()])?;
    let mounted = k.json(&["get", "pod", "mounted"])?;
    ensure!(mounted["spec"]["serviceAccountName"] == "default", "{mounted}");
    let volume = &mounted["spec"]["volumes"][0];
    let vname = volume["name"].as_str().unwrap_or_default();
    ensure!(vname.starts_with("kube-api-access-"), "{mounted}");
    let sources = volume["projected"]["sources"].as_array().context("projected sources")?;
    ensure!(sources[0]["serviceAccountToken"]["path"] == "token", "{volume}");
    ensure!(sources[1]["configMap"]["name"] == "kube-root-ca.crt", "{volume}");
    ensure!(sources[2]["downwardAPI"]["items"][0]["fieldRef"]["fieldPath"] == "metadata.namespace", "{volume}");
    for list in ["initContainers", "containers"] {
        for c in mounted["spec"][list].as_array().into_iter().flatten() {
            let m = &c["volumeMounts"][0];
            ensure!(
                m["name"] == vname
                    && m["mountPath"] == "/var/run/secrets/kubernetes.io/serviceaccount"
                    && m["readOnly"] == true,
                "{c}"
            );
        }
    }
    for pod in ["unmounted", "quiet"] {
        let p = k.json(&["get", "pod", pod])?;
        ensure!(p["spec"].get("volumes").is_none_or(|v| v.as_array().is_some_and(|v| v.is_empty())), "{p}");
    }
    let orphan = "apiVersion: v1\nkind: Pod\nmetadata: {name: orphan}\nspec: {serviceAccountName: nobody, containers: [{name: a, image: busybox}]}\n";
    std::fs::write(&f, orphan)?;
    let err = k.fails(&["apply", "-f", &f.to_string_lossy()])?;
    ensure!(
        err.contains("error looking up service account default/nobody: serviceaccount \"nobody\" not found"),
        "{err}"
    );

    // The admin is the admin.
    let me = k.ok(&["auth", "whoami", "-o", "json"])?;
    ensure!(me.contains("\"username\": \"system:admin\"") && me.contains("system:masters"), "{me}");

    // A ServiceAccount's token: who it is, and nothing allowed until bound.
    k.ok(&["create", "serviceaccount", "build"])?;
    let token = k.ok(&["create", "token", "build", "--duration=1h"])?.trim().to_owned();
    let who = k.ok(&["--token", &token, "auth", "whoami", "-o", "json"])?;
    ensure!(who.contains("\"username\": \"system:serviceaccount:default:build\""), "{who}");
    ensure!(who.contains("system:serviceaccounts:default"), "{who}");
    let err = k.fails(&["--token", &token, "get", "pods"])?;
    ensure!(
        err.contains("pods is forbidden: User \"system:serviceaccount:default:build\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""),
        "{err}"
    );
    let sa = "--as=system:serviceaccount:default:build";
    ensure!(k.run(&["auth", "can-i", "list", "pods", sa])?.status.code() == Some(1), "no before the binding");

    // A Role that lists pods, bound to it.
    k.ok(&["create", "role", "pod-reader", "--verb=get,list,watch", "--resource=pods"])?;
    k.ok(&["create", "rolebinding", "build-reads", "--role=pod-reader", "--serviceaccount=default:build"])?;
    ensure!(k.ok(&["auth", "can-i", "list", "pods", sa])?.trim() == "yes");
    ensure!(k.run(&["auth", "can-i", "delete", "pods", sa])?.status.code() == Some(1));
    ensure!(k.run(&["auth", "can-i", "list", "pods", "-n", "team", sa])?.status.code() == Some(1), "other namespace");
    let list = k.ok(&["auth", "can-i", "--list", sa])?;
    ensure!(list.lines().any(|l| l.starts_with("pods ") && l.ends_with("[get list watch]")), "{list}");
    k.ok(&["--token", &token, "get", "pods"])?;
    let err = k.fails(&["--token", &token, "get", "configmaps"])?;
    ensure!(err.contains("cannot list resource \"configmaps\""), "{err}");
    if let Some(out) = python(&k.kubeconfig, &["rbac", &token])? {
        let got: Value = serde_json::from_str(&out)?;
        ensure!(got["configmaps"]["status"] == 403, "{got}");
        ensure!(
            got["configmaps"]["message"].as_str().is_some_and(|m| m.contains("cannot list resource \"configmaps\""))
        );
    }

    // Granting what one does not hold is refused (Kubernetes' escalation
    // check); granting what one holds is not.
    k.ok(&["create", "role", "binder", "--verb=create", "--resource=roles,rolebindings"])?;
    k.ok(&["create", "rolebinding", "build-binds", "--role=binder", "--serviceaccount=default:build"])?;
    let err = k.fails(&[
        "--token",
        &token,
        "create",
        "rolebinding",
        "self-admin",
        "--clusterrole=cluster-admin",
        "--serviceaccount=default:build",
    ])?;
    ensure!(err.contains("is attempting to grant RBAC permissions not currently held"), "{err}");
    let err = k.fails(&["--token", &token, "create", "role", "sneaky", "--verb=get", "--resource=secrets"])?;
    ensure!(err.contains("is attempting to grant RBAC permissions not currently held"), "{err}");
    k.ok(&["--token", &token, "create", "role", "fine", "--verb=get", "--resource=pods"])?;
    // Nor may it act as someone else, or mint itself tokens.
    let err = k.fails(&["--token", &token, "get", "pods", "--as=system:admin"])?;
    ensure!(
        err.contains("users \"system:admin\" is forbidden: User \"system:serviceaccount:default:build\" cannot impersonate resource \"users\" in API group \"\" at the cluster scope"),
        "{err}"
    );
    let err = k.fails(&["--token", &token, "create", "token", "build"])?;
    ensure!(err.contains("cannot create resource \"serviceaccounts/token\""), "{err}");

    // Aggregation: a ClusterRole labelled for `view` extends it.
    let agg = "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\n\
               metadata: {name: lease-viewer, labels: {rbac.authorization.k8s.io/aggregate-to-view: \"true\"}}\n\
               rules: [{apiGroups: [coordination.k8s.io], resources: [leases], verbs: [get, list]}]\n";
    let f = dir.path().join("agg.yaml");
    std::fs::write(&f, agg)?;
    k.ok(&["apply", "-f", &f.to_string_lossy()])?;
    wait_for("view to gather the lease rule", Duration::from_secs(10), || {
        let view = k.json(&["get", "clusterrole", "view"])?;
        let rules = view["rules"].as_array().cloned().unwrap_or_default();
        Ok(rules.iter().any(|r| r["resources"] == serde_json::json!(["leases"])).then_some(()))
    })?;
    let admin = k.json(&["get", "clusterrole", "admin"])?;
    ensure!(
        admin["rules"].as_array().is_some_and(|r| r.iter().any(|r| r["resources"] == serde_json::json!(["leases"]))),
        "admin aggregates edit, which aggregates view: {admin}"
    );

    // A forged token — its claims changed under the same signature — and
    // the token of a deleted ServiceAccount are refused.
    let parts: Vec<&str> = token.split('.').collect();
    let forged_claims = {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let claims = String::from_utf8(b64.decode(parts[1])?)?;
        b64.encode(claims.replace("default:build", "kube-system:default"))
    };
    let forged = format!("{}.{forged_claims}.{}", parts[0], parts[2]);
    ensure!(k.fails(&["--token", &forged, "get", "pods"])?.contains("Unauthorized"));
    k.ok(&["delete", "serviceaccount", "build"])?;
    ensure!(k.fails(&["--token", &token, "get", "pods"])?.contains("Unauthorized"));
    // The admin token still works, and an unknown one does not.
    ensure!(k.fails(&["--token", "not-a-token", "get", "pods"])?.contains("Unauthorized"));
    drop(ctl);
    Ok(())
}

#[test]
fn server_side_apply_with_kubectl_and_the_python_client() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let Some((ctl, k)) = controller_and_kubectl(dir.path(), &[])? else {
        return Ok(());
    };
    let write = |name: &str, text: &str| -> Result<String> {
        let f = dir.path().join(name);
        std::fs::write(&f, text)?;
        Ok(f.to_string_lossy().into_owned())
    };
    let v1 = write(
        "v1.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: s, labels: {app: a}}\ndata: {one: \"1\", two: \"2\"}\n",
    )?;
    // Made by the first apply; the second changes nothing at all.
    ensure!(k.ok(&["apply", "--server-side", "-f", &v1])?.contains("configmap/s serverside-applied"));
    let first = k.json(&["get", "configmap", "s", "--show-managed-fields"])?;
    k.ok(&["apply", "--server-side", "-f", &v1])?;
    let second = k.json(&["get", "configmap", "s", "--show-managed-fields"])?;
    ensure!(first["metadata"]["resourceVersion"] == second["metadata"]["resourceVersion"], "a no-op: {second}");
    let mf = &second["metadata"]["managedFields"];
    ensure!(mf.as_array().map(Vec::len) == Some(1), "{mf}");
    ensure!(
        mf[0]["manager"] == "kubectl" && mf[0]["operation"] == "Apply" && mf[0]["fieldsType"] == "FieldsV1",
        "{mf}"
    );
    ensure!(
        mf[0]["fieldsV1"]
            == serde_json::json!({"f:data": {"f:one": {}, "f:two": {}}, "f:metadata": {"f:labels": {"f:app": {}}}}),
        "Kubernetes' FieldsV1: {mf}"
    );

    // Another manager changing an owned field: Kubernetes' conflict.
    let v2 = write("v2.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: s}\ndata: {one: \"changed\"}\n")?;
    let err = k.fails(&["apply", "--server-side", "--field-manager=other", "-f", &v2])?;
    ensure!(err.contains("Apply failed with 1 conflict: conflict with \"kubectl\": .data.one"), "{err}");
    k.ok(&["apply", "--server-side", "--field-manager=other", "--force-conflicts", "-f", &v2])?;
    let taken = k.json(&["get", "configmap", "s", "--show-managed-fields"])?;
    ensure!(taken["data"] == serde_json::json!({"one": "changed", "two": "2"}), "{taken}");
    let by: std::collections::BTreeMap<String, Value> = taken["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| (e["manager"].as_str().unwrap_or_default().to_owned(), e["fieldsV1"].clone()))
        .collect();
    ensure!(by["other"] == serde_json::json!({"f:data": {"f:one": {}}}), "{by:?}");
    ensure!(by["kubectl"]["f:data"] == serde_json::json!({"f:two": {}}), "kubectl lost .data.one: {by:?}");
    // Dropping a field from one's apply removes it.
    let v3 = write("v3.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: s, labels: {app: a}}\ndata: {}\n")?;
    k.ok(&["apply", "--server-side", "-f", &v3])?;
    ensure!(k.json(&["get", "configmap", "s"])?["data"] == serde_json::json!({"one": "changed"}));
    // An update by another manager takes the fields it changes.
    k.ok(&["label", "configmap", "s", "app=b", "--overwrite"])?;
    let labelled = k.json(&["get", "configmap", "s", "--show-managed-fields"])?;
    let label_owner = labelled["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["manager"] == "kubectl-label")
        .cloned()
        .context("kubectl-label's entry")?;
    ensure!(
        label_owner["operation"] == "Update" && label_owner["fieldsV1"]["f:metadata"]["f:labels"]["f:app"].is_object()
    );

    // Client-side apply hands over to server-side apply and back.
    let h1 = write("h1.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: h}\ndata: {a: \"1\", b: \"1\"}\n")?;
    let h2 = write("h2.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: h}\ndata: {a: \"2\", b: \"1\"}\n")?;
    let h3 = write("h3.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: h}\ndata: {a: \"3\"}\n")?;
    k.ok(&["apply", "-f", &h1])?;
    let csa = k.json(&["get", "configmap", "h", "--show-managed-fields"])?;
    ensure!(csa["metadata"]["managedFields"][0]["manager"] == "kubectl-client-side-apply", "{csa}");
    ensure!(
        k.ok(&["apply", "--server-side", "-f", &h2])?.contains("serverside-applied"),
        "no conflict with client-side apply"
    );
    ensure!(k.json(&["get", "configmap", "h"])?["data"] == serde_json::json!({"a": "2", "b": "1"}));
    ensure!(k.ok(&["apply", "-f", &h3])?.contains("configmap/h configured"));
    ensure!(
        k.json(&["get", "configmap", "h"])?["data"] == serde_json::json!({"a": "3"}),
        "client-side apply still works"
    );

    // Bad applies are refused, naming the problem, and change nothing.
    let api = ctl.api()?;
    let path = "/api/v1/namespaces/default/configmaps/s";
    let before = k.json(&["get", "configmap", "s", "--show-managed-fields"])?;
    let apply = "application/apply-patch+yaml";
    let (code, body) = api.request("PATCH", &format!("{path}?fieldManager=x"), apply, "data: [unclosed")?;
    ensure!(code == 400 && body.contains("error decoding YAML"), "{code} {body}");
    let (code, body) = api.request("PATCH", path, apply, "apiVersion: v1\nkind: ConfigMap\ndata: {one: x}\n")?;
    ensure!(code == 422 && body.contains("fieldManager: Required value"), "{code} {body}");
    let (code, body) =
        api.request("PATCH", &format!("{path}?fieldManager=x"), apply, "apiVersion: v1\nkind: Secret\n")?;
    ensure!(code == 400 && body.contains("not a v1 ConfigMap"), "{code} {body}");
    let bogus = "apiVersion: v1\nkind: ConfigMap\nbogus: 1\n";
    let (code, body) = api.request("PATCH", &format!("{path}?fieldManager=x&fieldValidation=Strict"), apply, bogus)?;
    ensure!(code == 400 && body.contains(r#"unknown field \"bogus\""#), "{code} {body}");
    // Under the default (Warn) an unknown field is dropped: neither stored
    // nor owned, so this apply owns nothing and changes nothing.
    let (code, body) = api.request("PATCH", &format!("{path}?fieldManager=x"), apply, bogus)?;
    ensure!(code == 200 && !body.contains("bogus"), "{code} {body}");
    ensure!(k.json(&["get", "configmap", "s", "--show-managed-fields"])? == before, "nothing changed");

    // The official Python client's dynamic server_side_apply.
    if let Some(out) = python(&k.kubeconfig, &["ssa", "py"])? {
        let got: Value = serde_json::from_str(&out)?;
        ensure!(got["rv"][0] == got["rv"][1], "the second apply is a no-op: {got}");
        ensure!(got["conflict"]["status"] == 409, "{got}");
        ensure!(
            got["conflict"]["message"].as_str().is_some_and(|m| m.contains("conflict with \"python\": .data.key")),
            "{got}"
        );
        ensure!(
            got["value"] == "2" && got["managers"]["other"] == serde_json::json!({"f:data": {"f:key": {}}}),
            "{got}"
        );
    }
    Ok(())
}

/// A custom resource of the widgets CRD, as YAML.
fn widget(name: &str, spec: &str) -> String {
    format!("apiVersion: example.com/v1\nkind: Widget\nmetadata: {{name: {name}}}\nspec: {spec}\n")
}

/// CustomResourceDefinitions as operators use them, with kubectl: the
/// definition is established and its kind served (discovery, OpenAPI for
/// `kubectl explain` and the old kubectl's validation); valid objects are
/// defaulted, invalid ones refused with the schema's reasons, unknown
/// fields refused under kubectl's strict validation; `get` prints the
/// printer columns and `get -w` streams changes; status and scale
/// subresources; two served versions; RBAC on the new group, forged
/// tokens refused; the kinds are served again after a restart; deleting
/// the definition deletes its objects.
#[test]
fn custom_resources_with_kubectl() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let Some((mut ctl, k)) = controller_and_kubectl(dir.path(), &[])? else {
        return Ok(());
    };
    let write = |name: &str, text: &str| -> Result<String> {
        let f = dir.path().join(name);
        std::fs::write(&f, text)?;
        Ok(f.to_string_lossy().into_owned())
    };
    k.ok(&["apply", "-f", &fixture("widgets-crd.yaml")])?;
    k.ok(&["wait", "--for=condition=Established", "crd/widgets.example.com", "--timeout=20s"])?;
    let crds = k.ok(&["get", "crd"])?;
    ensure!(crds.lines().nth(1).is_some_and(|l| l.starts_with("widgets.example.com")), "{crds}");
    let crd = k.json(&["get", "crd", "widgets.example.com"])?;
    ensure!(crd["status"]["acceptedNames"]["listKind"] == "WidgetList", "{}", crd["status"]);
    ensure!(crd["status"]["storedVersions"] == serde_json::json!(["v1"]), "{}", crd["status"]);
    ensure!(crd["metadata"]["finalizers"][0] == "customresourcecleanup.apiextensions.k8s.io", "{}", crd["metadata"]);
    let resources = k.ok(&["api-resources", "--api-group=example.com"])?;
    ensure!(
        resources
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["widgets", "wd", "example.com/v1", "true", "Widget"]),
        "{resources}"
    );

    // Valid: defaulted; invalid: the schema's reasons; unknown fields refused.
    k.ok(&["apply", "-f", &write("w1.yaml", &widget("w1", "{color: red, ports: [{name: http, port: 80}]}"))?])?;
    ensure!(k.ok(&["get", "wd", "w1", "-o", "jsonpath={.spec.size}"])? == "3", "defaulted size");
    let err =
        k.fails(&["apply", "-f", &write("bad.yaml", &widget("bad", "{color: green, size: \"big\", replicas: -1}"))?])?;
    for want in [
        "The Widget \"bad\" is invalid",
        "spec.color: Unsupported value: \"green\": supported values: \"red\", \"blue\"",
        "spec.size: Invalid value: \"string\": spec.size in body must be of type integer: \"string\"",
        "spec.replicas: Invalid value: -1: spec.replicas in body should be greater than or equal to 0",
    ] {
        ensure!(err.contains(want), "{want:?} not in: {err}");
    }
    let err = k.fails(&["apply", "-f", &write("missing.yaml", &widget("missing", "{size: 2}"))?])?;
    ensure!(err.contains("spec.color: Required value"), "{err}");
    let err = k.fails(&["apply", "-f", &write("typo.yaml", &widget("typo", "{color: red, colour: red}"))?])?;
    ensure!(err.contains("unknown field \"spec.colour\""), "{err}");
    let err =
        k.fails(&["apply", "-f", &write("dup.yaml", &widget("dup", "{color: red, ports: [{name: a}, {name: a}]}"))?])?;
    ensure!(err.contains("spec.ports[1]: Duplicate value"), "{err}");
    ensure!(k.run(&["get", "wd", "bad"])?.status.code() == Some(1), "nothing invalid was stored");
    // kubectl 1.27 validates with OpenAPI v2, where the kind is described.
    if let Some(old) = kubectl(&k, "1.27") {
        old.ok(&["apply", "-f", &write("w2.yaml", &widget("w2", "{color: blue, size: 5}"))?])?;
        let err = old.fails(&["apply", "-f", &write("bad2.yaml", &widget("bad2", "{color: red, size: 0}"))?])?;
        ensure!(err.contains("spec.size in body should be greater than or equal to 1"), "{err}");
    }
    let explain = k.ok(&["explain", "widget.spec.color"])?;
    ensure!(
        explain.contains("The widget's color.") && explain.contains("ENUM:") && explain.contains("blue"),
        "{explain}"
    );

    // The printer columns, the wide one with -o wide, and `kubectl get all`.
    k.ok(&[
        "patch",
        "widget",
        "w1",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"conditions":[{"type":"Ready","status":"True"}],"replicas":1}}"#,
    ])?;
    let table = k.ok(&["get", "widgets"])?;
    let rows: Vec<Vec<&str>> = table.lines().map(|l| l.split_whitespace().collect()).collect();
    ensure!(rows[0] == ["NAME", "COLOR", "SIZE", "READY", "AGE"], "{table}");
    ensure!(rows.iter().any(|r| r[..4] == ["w1", "red", "3", "True"]), "{table}");
    let wide = k.ok(&["get", "widget", "w1", "-o", "wide"])?;
    ensure!(wide.lines().next().is_some_and(|h| h.contains("PORTS")) && wide.contains("http"), "{wide}");
    ensure!(k.ok(&["get", "all"])?.contains("widget.example.com/w1"), "the all category");

    // The status subresource owns the status; spec changes bump the generation.
    let before = k.json(&["get", "widget", "w1"])?;
    k.ok(&["patch", "widget", "w1", "--type=merge", "-p", r#"{"status":{"replicas":9}}"#])?;
    let after = k.json(&["get", "widget", "w1"])?;
    ensure!(after["status"]["replicas"] == 1, "the main resource ignores status: {}", after["status"]);
    ensure!(after["metadata"]["generation"] == before["metadata"]["generation"], "status is not the spec");
    // Scale, and a watch that sees it.
    let watch = k
        .command(&["get", "widgets", "-w", "--output-watch-events", "--request-timeout=10s"])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    std::thread::sleep(Duration::from_secs(1));
    k.ok(&["scale", "widget", "w1", "--replicas=4"])?;
    k.ok(&["patch", "widget", "w1", "--type=merge", "-p", r#"{"spec":{"size":6}}"#])?;
    let err = k.fails(&["patch", "widget", "w1", "--type=strategic", "-p", r#"{"spec":{"size":7}}"#])?;
    ensure!(
        err.contains("application/strategic-merge-patch+json"),
        "custom resources take no strategic merge patch: {err}"
    );
    let w = k.json(&["get", "widget", "w1"])?;
    ensure!(w["spec"]["replicas"] == 4 && w["spec"]["size"] == 6, "{}", w["spec"]);
    ensure!(w["metadata"]["generation"].as_i64() > before["metadata"]["generation"].as_i64(), "{}", w["metadata"]);
    let out = watch.wait_with_output()?;
    let streamed = String::from_utf8_lossy(&out.stdout);
    ensure!(
        streamed.lines().any(|l| l.starts_with("MODIFIED") && l.split_whitespace().nth(3) == Some("6")),
        "kubectl get -w streamed: {streamed}"
    );

    // Two served versions, one stored: an object is shown in the version asked.
    k.ok(&[
        "apply",
        "-f",
        &write("beta.yaml", &widget("beta", "{color: blue}").replace("example.com/v1", "example.com/v1beta1"))?,
    ])?;
    ensure!(k.ok(&["get", "widgets.v1.example.com", "beta", "-o", "jsonpath={.apiVersion}"])? == "example.com/v1");
    ensure!(
        k.ok(&["get", "widgets.v1beta1.example.com", "beta", "-o", "jsonpath={.apiVersion}"])? == "example.com/v1beta1"
    );

    // RBAC covers the new group; a forged token gets nothing.
    k.ok(&["create", "serviceaccount", "robot"])?;
    let token = k.ok(&["create", "token", "robot"])?.trim().to_owned();
    let err = k.fails(&["--token", &token, "get", "widgets"])?;
    ensure!(err.contains("widgets.example.com is forbidden"), "{err}");
    k.ok(&["create", "role", "widget-reader", "--verb=get,list", "--resource=widgets.example.com"])?;
    k.ok(&["create", "rolebinding", "robot-reads", "--role=widget-reader", "--serviceaccount=default:robot"])?;
    ensure!(k.ok(&["--token", &token, "get", "widgets", "-o", "name"])?.contains("widget.example.com/w1"));
    let err = k.fails(&["--token", &token, "delete", "widget", "w1"])?;
    ensure!(err.contains("forbidden"), "{err}");
    let mut forged = token.clone();
    forged.pop();
    forged.push(if token.ends_with('A') { 'B' } else { 'A' });
    let err = k.fails(&["--token", &forged, "get", "widgets"])?;
    ensure!(err.contains("Unauthorized") || err.contains("provide credentials"), "a forged token: {err}");

    // What operators rely on: objects owned by a custom resource go with
    // it, and a namespace's custom resources go with the namespace.
    k.ok(&["create", "namespace", "team"])?;
    k.ok(&["apply", "-n", "team", "-f", &write("t1.yaml", &widget("t1", "{color: red}"))?])?;
    let uid = k.ok(&["get", "widget", "t1", "-n", "team", "-o", "jsonpath={.metadata.uid}"])?;
    let owned = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: owned\n  namespace: team\n  \
         ownerReferences: [{{apiVersion: example.com/v1, kind: Widget, name: t1, uid: {uid}}}]\ndata: {{a: b}}\n"
    );
    k.ok(&["apply", "-f", &write("owned.yaml", &owned)?])?;
    k.ok(&["delete", "widget", "t1", "-n", "team"])?;
    wait_for("the owned ConfigMap to go with its Widget", Duration::from_secs(20), || {
        Ok((k.run(&["get", "configmap", "owned", "-n", "team"])?.status.code() == Some(1)).then_some(()))
    })?;
    k.ok(&["apply", "-n", "team", "-f", &write("t2.yaml", &widget("t2", "{color: red}"))?])?;
    k.ok(&["delete", "namespace", "team", "--timeout=60s"])?;
    ensure!(!k.ok(&["get", "widgets", "-A", "-o", "name"])?.contains("t2"), "the namespace's widgets went with it");

    // Served again after a restart, before anything else happens.
    ctl.terminate()?;
    let ctl = kedge_tests::Controller::start_on(&dir.path().join("data"), &ctl.addr)?;
    ensure!(k.ok(&["get", "widget", "w1", "-o", "jsonpath={.spec.size}"])? == "6", "after a restart");

    // Deleting the definition deletes its objects; a new one starts empty.
    k.ok(&["delete", "crd", "widgets.example.com", "--timeout=30s"])?;
    let (code, _) = ctl.api()?.request("GET", "/apis/example.com/v1/widgets", "application/json", "")?;
    ensure!(code == 404, "the kind is no longer served: {code}");
    k.ok(&["apply", "-f", &fixture("widgets-crd.yaml")])?;
    k.ok(&["wait", "--for=condition=Established", "crd/widgets.example.com", "--timeout=20s"])?;
    let left = k.ok(&["get", "widgets", "-A", "-o", "name"])?;
    ensure!(left.trim().is_empty(), "the old objects went with their definition: {left}");

    // A definition Kubernetes would refuse is refused, saying why.
    let bad = "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {name: gizmos.example.com}\n\
               spec:\n  group: example.com\n  scope: Namespaced\n  names: {plural: gadgets, kind: Gadget}\n  versions:\n  \
               - {name: v1, served: true, storage: true, schema: {openAPIV3Schema: {type: object, properties: {spec: {properties: {n: {type: string, pattern: \"(\"}}}}}}}\n";
    let err = k.fails(&["apply", "-f", &write("badcrd.yaml", bad)?])?;
    for want in [
        "metadata.name: Invalid value: \"gizmos.example.com\": must be spec.names.plural+\".\"+spec.group",
        "openAPIV3Schema.properties[spec].type: Required value",
        "pattern: Invalid value: \"(\": must be a valid regular expression",
    ] {
        ensure!(err.contains(want), "{want:?} not in: {err}");
    }
    Ok(())
}

/// The official Python client's typed apiextensions API and its custom
/// objects API against a CRD: established, valid and invalid objects,
/// patches of the object and its status, a watch, and deletion.
#[test]
fn custom_resources_with_the_python_client() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let Some((_ctl, k)) = controller_and_kubectl(dir.path(), &[])? else {
        return Ok(());
    };
    let Some(out) = python(&k.kubeconfig, &["crd", &fixture("widgets-crd.yaml")])? else { return Ok(()) };
    let got: Value = serde_json::from_str(&out).with_context(|| out.clone())?;
    ensure!(got["conditions"]["Established"] == "True" && got["accepted"] == "Widget", "{got}");
    ensure!(got["invalid"]["status"] == 422, "{got}");
    ensure!(
        got["invalid"]["message"]
            == "Widget.example.com \"py2\" is invalid: spec.size: Invalid value: 99: spec.size in body should be less than or equal to 10",
        "{got}"
    );
    ensure!(got["events"] == serde_json::json!([["MODIFIED", 7, null], ["MODIFIED", 7, 2]]), "{got}");
    ensure!(got["listed"] == serde_json::json!({"py1": 7}), "{got}");
    ensure!(got["after_delete"] == 404, "{got}");
    Ok(())
}
