use serde_json::json;

use super::*;

fn deployment() -> Value {
    json!({
        "metadata": {"name": "web", "labels": {"app": "web"}, "finalizers": ["a"]},
        "spec": {"replicas": 2, "template": {"spec": {"containers": [
            {"name": "app", "image": "img:1", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
             "ports": [{"containerPort": 80, "protocol": "TCP"}]},
            {"name": "sidecar", "image": "side:1"}
        ], "tolerations": [{"key": "x"}]}}}
    })
}

#[test]
fn strategic_merges_lists_by_key() {
    let mut d = deployment();
    let patch = json!({"spec": {"template": {"spec": {"containers": [
        {"name": "app", "image": "img:2", "env": [{"name": "B", "value": "3"}, {"name": "C", "value": "4"}]}
    ]}}}});
    apply("Deployment", &mut d, patch, PatchType::Strategic).expect("patch");
    let c = &d["spec"]["template"]["spec"]["containers"];
    assert_eq!(c.as_array().map(Vec::len), Some(2), "sidecar kept: {c}");
    assert_eq!(c[0]["image"], "img:2");
    assert_eq!(
        c[0]["env"],
        json!([{"name": "A", "value": "1"}, {"name": "B", "value": "3"}, {"name": "C", "value": "4"}])
    );
    assert_eq!(c[0]["ports"], json!([{"containerPort": 80, "protocol": "TCP"}]));
    assert_eq!(c[1]["image"], "side:1");
}

#[test]
fn strategic_replaces_lists_without_a_key_and_deletes_with_null() {
    let mut d = deployment();
    let patch = json!({"metadata": {"labels": {"app": null, "tier": "x"}},
        "spec": {"template": {"spec": {"tolerations": [{"key": "y"}]}}}});
    apply("Deployment", &mut d, patch, PatchType::Strategic).expect("patch");
    assert_eq!(d["metadata"]["labels"], json!({"tier": "x"}));
    assert_eq!(d["spec"]["template"]["spec"]["tolerations"], json!([{"key": "y"}]));
}

#[test]
fn strategic_directives_as_kubectl_apply_sends_them() {
    let mut d = deployment();
    // What kubectl apply sends when a container and an env var are removed.
    let patch = json!({"spec": {"template": {"spec": {
        "$setElementOrder/containers": [{"name": "app"}],
        "containers": [
            {"name": "app", "$setElementOrder/env": [{"name": "B"}], "env": [{"name": "A", "$patch": "delete"}]},
            {"name": "sidecar", "$patch": "delete"}
        ]}}},
        "metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}});
    apply("Deployment", &mut d, patch, PatchType::Strategic).expect("patch");
    let c = &d["spec"]["template"]["spec"]["containers"];
    assert_eq!(c.as_array().map(Vec::len), Some(1));
    assert_eq!(c[0]["env"], json!([{"name": "B", "value": "2"}]));
    assert_eq!(d["metadata"]["finalizers"], json!([]));
}

#[test]
fn strategic_set_element_order_reorders() {
    let mut d = deployment();
    let patch = json!({"spec": {"template": {"spec": {
        "$setElementOrder/containers": [{"name": "sidecar"}, {"name": "app"}]}}}});
    apply("Deployment", &mut d, patch, PatchType::Strategic).expect("patch");
    assert_eq!(d["spec"]["template"]["spec"]["containers"][0]["name"], "sidecar");
}

#[test]
fn strategic_replace_directive_and_service_ports() {
    let mut s = json!({"spec": {"ports": [{"port": 80, "targetPort": 8080}, {"port": 443}]}});
    apply("Service", &mut s, json!({"spec": {"ports": [{"port": 80, "targetPort": 9090}]}}), PatchType::Strategic)
        .expect("patch");
    assert_eq!(s["spec"]["ports"], json!([{"port": 80, "targetPort": 9090}, {"port": 443}]));
    apply("Service", &mut s, json!({"spec": {"$patch": "replace", "ports": [{"port": 1}]}}), PatchType::Strategic)
        .expect("patch");
    assert_eq!(s["spec"], json!({"ports": [{"port": 1}]}));
    assert!(apply("Service", &mut s, json!({"spec": {"$bogus": 1}}), PatchType::Strategic).is_err());
    assert!(apply("Service", &mut s, json!([1]), PatchType::Strategic).is_err());
}

#[test]
fn merge_patch_replaces_lists() {
    let mut d = deployment();
    let patch =
        json!({"spec": {"replicas": 5, "template": {"spec": {"containers": [{"name": "only", "image": "x"}]}}}});
    apply("Deployment", &mut d, patch, PatchType::Merge).expect("patch");
    assert_eq!(d["spec"]["replicas"], 5);
    assert_eq!(d["spec"]["template"]["spec"]["containers"], json!([{"name": "only", "image": "x"}]));
}

#[test]
fn json_patch_ops_and_failures() {
    let mut d = deployment();
    let patch = json!([
        {"op": "replace", "path": "/spec/replicas", "value": 3},
        {"op": "add", "path": "/metadata/labels/new", "value": "y"},
        {"op": "test", "path": "/metadata/name", "value": "web"}
    ]);
    apply("Deployment", &mut d, patch, PatchType::Json).expect("patch");
    assert_eq!(d["spec"]["replicas"], 3);
    assert_eq!(d["metadata"]["labels"]["new"], "y");
    let before = d.clone();
    let bad = json!([{"op": "test", "path": "/metadata/name", "value": "other"}]);
    assert!(matches!(apply("Deployment", &mut d, bad, PatchType::Json), Err(PatchError::JsonPatch(_))));
    assert_eq!(d, before, "a failed json patch leaves the document unchanged");
    assert!(matches!(
        apply("Deployment", &mut d, json!({"op": "x"}), PatchType::Json),
        Err(PatchError::InvalidJsonPatch(_))
    ));
}

#[test]
fn content_types() {
    assert_eq!(PatchType::from_content_type("application/strategic-merge-patch+json"), Some(PatchType::Strategic));
    assert_eq!(PatchType::from_content_type("application/merge-patch+json; charset=utf-8"), Some(PatchType::Merge));
    assert_eq!(PatchType::from_content_type("application/json-patch+json"), Some(PatchType::Json));
    assert_eq!(PatchType::from_content_type("application/apply-patch+yaml"), None);
}

#[test]
fn published_patch_tags_agree_with_the_applied_strategies() {
    // Where each tagged schema sits in an object of some kind.
    let places: &[(&str, &str, &str)] = &[
        ("io.k8s.api.core.v1.PodSpec", "Pod", "spec"),
        ("io.k8s.api.core.v1.PodSpec", "Deployment", "spec.template.spec"),
        ("io.k8s.api.core.v1.PodSpec", "StatefulSet", "spec.template.spec"),
        ("io.k8s.api.core.v1.PodSpec", "Job", "spec.template.spec"),
        ("io.k8s.api.core.v1.PodSpec", "CronJob", "spec.jobTemplate.spec.template.spec"),
        ("io.k8s.api.core.v1.Container", "StatefulSet", "spec.template.spec.containers[]"),
        ("io.k8s.api.core.v1.Container", "Pod", "spec.containers[]"),
        ("io.k8s.api.core.v1.Container", "DaemonSet", "spec.template.spec.initContainers[]"),
        ("io.k8s.api.core.v1.EphemeralContainer", "Pod", "spec.ephemeralContainers[]"),
        ("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta", "Pod", "metadata"),
        ("io.k8s.api.core.v1.PodStatus", "Pod", "status"),
        ("io.k8s.api.core.v1.NodeStatus", "Node", "status"),
        ("io.k8s.api.core.v1.NodeSpec", "Node", "spec"),
        ("io.k8s.api.core.v1.NamespaceStatus", "Namespace", "status"),
        ("io.k8s.api.core.v1.ServiceSpec", "Service", "spec"),
        ("io.k8s.api.core.v1.ServiceStatus", "Service", "status"),
        ("io.k8s.api.apps.v1.DeploymentStatus", "Deployment", "status"),
        ("io.k8s.api.apps.v1.ReplicaSetStatus", "ReplicaSet", "status"),
        ("io.k8s.api.apps.v1.DaemonSetStatus", "DaemonSet", "status"),
    ];
    for (schema, prop, key, _) in PATCH_TAGS {
        let mut checked = false;
        for (s, kind, at) in places.iter().filter(|(s, _, _)| s == schema) {
            let _ = s;
            let want = match key {
                Some(k) => ListStrategy::Key(k),
                None => ListStrategy::Set,
            };
            assert_eq!(strategy(kind, &format!("{at}.{prop}")), want, "{schema}.{prop} in {kind} at {at}");
            checked = true;
        }
        assert!(checked, "no place known for {schema}");
    }
    // And an untagged list is replaced whole.
    assert_eq!(strategy("Pod", "spec.tolerations"), ListStrategy::Replace);
    assert_eq!(strategy("Pod", "spec.containers[].resizePolicy"), ListStrategy::Replace);
}

#[test]
fn json_patch_copy_bombs_are_refused() {
    let mut doc = json!({"a": [0]});
    let mut ops = vec![json!({"op": "add", "path": "/b", "value": [0]})];
    for _ in 0..40 {
        ops.push(json!({"op": "copy", "from": "/a", "path": "/a/-"}));
        ops.push(json!({"op": "copy", "from": "/a", "path": "/b/-"}));
    }
    let r = apply("ConfigMap", &mut doc, Value::Array(ops), PatchType::Json);
    assert!(matches!(r, Err(PatchError::TooLarge(_))), "{r:?}");

    let mut doc = json!({"x": {"y": 1}});
    let mut ops = Vec::new();
    let mut path = String::from("/x");
    for _ in 0..120 {
        ops.push(json!({"op": "copy", "from": "/x", "path": format!("{path}/z")}));
        path.push_str("/z");
    }
    let r = apply("ConfigMap", &mut doc, Value::Array(ops), PatchType::Json);
    assert!(r.is_err(), "deep copies are refused before they overflow anything");
    let too_many: Vec<Value> = (0..10_001).map(|_| json!({"op": "test", "path": "/x/y", "value": 1})).collect();
    assert!(matches!(
        apply("ConfigMap", &mut doc, Value::Array(too_many), PatchType::Json),
        Err(PatchError::TooLarge(_))
    ));
}
