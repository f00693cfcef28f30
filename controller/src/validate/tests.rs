use serde_json::{Value, json};

use super::*;
use crate::api::ApiError;
use crate::resources::find;

fn admit_new(plural: &str, body: Value) -> Result<Admitted, ApiError> {
    let group = if ["deployments", "replicasets", "daemonsets"].contains(&plural) { "apps" } else { "" };
    let rt = find(group, "v1", plural).expect("resource");
    // As a client sees it: the `Status` the API answers.
    admit(rt, body, &[], FieldValidation::Strict, None).map_err(ApiError::from)
}

fn messages(e: &ApiError) -> Vec<String> {
    e.details
        .as_ref()
        .and_then(|d| d["causes"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .map(|c| format!("{}: {}", c["field"].as_str().unwrap_or_default(), c["message"].as_str().unwrap_or_default()))
        .collect()
}

fn deployment(labels: Value, selector: Value) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"selector": {"matchLabels": selector}, "template": {"metadata": {"labels": labels},
            "spec": {"containers": [{"name": "app", "image": "busybox"}]}}}})
}

#[test]
fn pod_defaults_follow_kubernetes() {
    let a = admit_new(
        "pods",
        json!({"metadata": {"name": "p"}, "spec": {"containers": [
        {"name": "a", "image": "busybox", "ports": [{"containerPort": 80}]},
        {"name": "b", "image": "busybox:1.36"}]}}),
    )
    .expect("valid");
    let o = a.object;
    assert_eq!(o["spec"]["restartPolicy"], "Always");
    assert_eq!(o["spec"]["dnsPolicy"], "ClusterFirst");
    assert_eq!(o["spec"]["terminationGracePeriodSeconds"], 30);
    assert_eq!(o["spec"]["containers"][0]["imagePullPolicy"], "Always", "untagged means latest");
    assert_eq!(o["spec"]["containers"][1]["imagePullPolicy"], "IfNotPresent");
    assert_eq!(o["spec"]["containers"][0]["ports"][0]["protocol"], "TCP");
    assert_eq!(o["status"]["phase"], "Pending");
    assert_eq!(o["status"]["qosClass"], "BestEffort");
    assert_eq!(o["kind"], "Pod");
}

#[test]
fn pod_errors_name_the_field() {
    let e = admit_new(
        "pods",
        json!({"metadata": {"name": "Bad_Name"}, "spec": {"containers": [
        {"name": "a"}, {"name": "a", "image": "x", "ports": [{"containerPort": 70000, "protocol": "TCPX"}]}],
        "restartPolicy": "Sometimes"}}),
    )
    .expect_err("invalid");
    assert_eq!(e.code.as_u16(), 422);
    let m = messages(&e);
    let has = |s: &str| m.iter().any(|x| x.starts_with(s));
    assert!(has("metadata.name: Invalid value"), "{m:?}");
    assert!(has("spec.containers[0].image: Required value"), "{m:?}");
    assert!(has("spec.containers[1].name: Duplicate value"), "{m:?}");
    assert!(has("spec.containers[1].ports[0].containerPort: Invalid value"), "{m:?}");
    assert!(has("spec.containers[1].ports[0].protocol: Unsupported value"), "{m:?}");
    assert!(has("spec.restartPolicy: Unsupported value"), "{m:?}");
    assert!(e.message.starts_with("Pod \"Bad_Name\" is invalid: ["), "{}", e.message);
}

#[test]
fn missing_required_fields_are_422_not_400() {
    let e = admit_new("pods", json!({"metadata": {"name": "p"}, "spec": {}})).expect_err("invalid");
    assert_eq!(e.code.as_u16(), 422);
    assert!(e.message.contains("spec.containers: Required value"), "{}", e.message);
    let e = admit_new("pods", json!({"metadata": {"name": "p"}, "spec": {"containers": [{"image": "x"}]}}))
        .expect_err("invalid");
    assert!(e.message.contains("spec.containers[0].name: Required value"), "{}", e.message);
}

#[test]
fn wrong_types_are_400_naming_the_field() {
    let e = admit_new("deployments", json!({"metadata": {"name": "d"}, "spec": {"replicas": "three"}}))
        .expect_err("bad type");
    assert_eq!(e.code.as_u16(), 400);
    assert!(e.message.contains("spec.replicas"), "{}", e.message);
}

#[test]
fn strict_warn_and_ignore_unknown_and_duplicate_fields() {
    let rt = find("apps", "v1", "deployments").expect("rt");
    let mut body = deployment(json!({"app": "web"}), json!({"app": "web"}));
    body["spec"]["replicaz"] = json!(3);
    let dups = vec!["metadata.name".to_owned()];
    let e = admit(rt, body.clone(), &dups, FieldValidation::Strict, None).map_err(ApiError::from).expect_err("strict");
    assert_eq!(e.code.as_u16(), 400);
    assert_eq!(e.message, "strict decoding error: unknown field \"spec.replicaz\", duplicate field \"metadata.name\"");
    let a = admit(rt, body.clone(), &dups, FieldValidation::Warn, None).expect("warn");
    assert_eq!(a.warnings.len(), 2);
    assert!(a.object["spec"].get("replicaz").is_none(), "unknown fields are dropped");
    let a = admit(rt, body, &dups, FieldValidation::Ignore, None).expect("ignore");
    assert!(a.warnings.is_empty());
    assert_eq!(a.object["spec"]["replicas"], 1);
}

#[test]
fn deployment_selector_must_match_template_and_is_immutable() {
    let e = admit_new("deployments", deployment(json!({"app": "web"}), json!({"app": "db"}))).expect_err("mismatch");
    assert!(e.message.contains("spec.template.metadata.labels: Invalid value"), "{}", e.message);
    assert!(e.message.contains("`selector` does not match template `labels`"), "{}", e.message);
    let e = admit_new("deployments", deployment(json!({"app": "web"}), json!({}))).expect_err("empty");
    assert!(e.message.contains("spec.selector: Required value"), "{}", e.message);
    let ok = admit_new("deployments", deployment(json!({"app": "web", "v": "1"}), json!({"app": "web"}))).expect("ok");
    assert_eq!(ok.object["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
    assert_eq!(ok.object["spec"]["revisionHistoryLimit"], 10);
    let rt = find("apps", "v1", "deployments").expect("rt");
    let changed = deployment(json!({"app": "web", "v": "1"}), json!({"app": "web", "v": "1"}));
    let e = admit(rt, changed, &[], FieldValidation::Strict, Some(&ok.object))
        .map_err(ApiError::from)
        .expect_err("immutable");
    assert!(e.message.contains("spec.selector: Invalid value: \"\": field is immutable"), "{}", e.message);
}

#[test]
fn service_defaults_and_port_rules() {
    let a = admit_new(
        "services",
        json!({"metadata": {"name": "web"}, "spec": {"selector": {"app": "web"},
        "ports": [{"port": 80}]}}),
    )
    .expect("ok");
    assert_eq!(a.object["spec"]["type"], "ClusterIP");
    assert_eq!(a.object["spec"]["ports"][0]["protocol"], "TCP");
    assert_eq!(a.object["spec"]["ports"][0]["targetPort"], 80);
    let e = admit_new(
        "services",
        json!({"metadata": {"name": "1web"}, "spec": {"ports": [
        {"port": 80, "name": "a"}, {"port": 81}], "type": "Magic"}}),
    )
    .expect_err("invalid");
    let m = messages(&e);
    assert!(m.iter().any(|x| x.starts_with("metadata.name: Invalid value")), "{m:?}");
    assert!(m.iter().any(|x| x.starts_with("spec.ports[1].name: Required value")), "{m:?}");
    assert!(m.iter().any(|x| x.starts_with("spec.type: Unsupported value")), "{m:?}");
}

#[test]
fn secrets_fold_string_data_and_config_keys_are_checked() {
    let a = admit_new("secrets", json!({"metadata": {"name": "s"}, "stringData": {"pw": "hunter2"}})).expect("ok");
    assert_eq!(a.object["data"]["pw"], "aHVudGVyMg==");
    assert!(a.object.get("stringData").is_none());
    assert_eq!(a.object["type"], "Opaque");
    let e = admit_new("configmaps", json!({"metadata": {"name": "c"}, "data": {"a/b": "x"}})).expect_err("bad key");
    assert!(e.message.contains("data: Invalid value: \"a/b\""), "{}", e.message);
    let e = admit_new("secrets", json!({"metadata": {"name": "s"}, "data": {"k": "not base64!"}})).expect_err("b64");
    assert_eq!(e.code.as_u16(), 400);
}

#[test]
fn pod_spec_is_immutable_except_images() {
    let rt = find("", "v1", "pods").expect("rt");
    let old =
        admit_new("pods", json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a", "image": "x:1"}]}}))
            .expect("ok")
            .object;
    let mut new = old.clone();
    new["spec"]["containers"][0]["image"] = json!("x:2");
    new["spec"]["nodeName"] = json!("n1");
    assert!(
        admit(rt, new.clone(), &[], FieldValidation::Strict, Some(&old)).is_ok(),
        "image and first binding may change"
    );
    new["spec"]["restartPolicy"] = json!("Never");
    let e = admit(rt, new, &[], FieldValidation::Strict, Some(&old)).map_err(ApiError::from).expect_err("immutable");
    assert!(e.message.contains("spec: Forbidden: pod updates may not change fields"), "{}", e.message);
}

#[test]
fn field_validation_parameter() {
    assert_eq!(FieldValidation::parse(None), Some(FieldValidation::Warn));
    assert_eq!(FieldValidation::parse(Some("Strict")), Some(FieldValidation::Strict));
    assert_eq!(FieldValidation::parse(Some("Loose")), None);
}

#[test]
fn limits_without_requests_request_the_limit() {
    let a = admit_new("pods", json!({"metadata": {"name": "p"}, "spec": {"containers": [
        {"name": "a", "image": "x", "resources": {"limits": {"cpu": "2", "memory": "1Gi"}, "requests": {"cpu": "1"}}}]}}))
    .expect("valid");
    let r = &a.object["spec"]["containers"][0]["resources"]["requests"];
    assert_eq!(r["cpu"], "1", "an explicit request stays");
    assert_eq!(r["memory"], "1Gi", "a missing one takes the limit");
}

#[test]
fn rollout_bounds_are_checked() {
    let with = |surge: Value, unavailable: Value| {
        let mut d = deployment(json!({"app": "web"}), json!({"app": "web"}));
        d["spec"]["strategy"] =
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}});
        admit_new("deployments", d)
    };
    assert!(with(json!(1), json!(0)).is_ok());
    assert!(with(json!("50%"), json!("0%")).is_ok());
    let e = with(json!(-1), json!(1)).expect_err("negative");
    assert!(e.message.contains("spec.strategy.rollingUpdate.maxSurge: Invalid value"), "{}", e.message);
    let e = with(json!("150%"), json!(1)).expect_err("over 100%");
    assert!(e.message.contains("must not be greater than 100%"), "{}", e.message);
    let e = with(json!("x"), json!(1)).expect_err("not a percent");
    assert!(e.message.contains("valid percent string"), "{}", e.message);
    let e = with(json!(0), json!(0)).expect_err("both zero");
    assert!(e.message.contains("may not be 0 when `maxSurge` is 0"), "{}", e.message);
}
