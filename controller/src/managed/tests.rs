use serde_json::json;

use super::*;

fn cm() -> &'static ResourceType {
    crate::resources::by_kind("", "ConfigMap").expect("served")
}

fn deploy() -> &'static ResourceType {
    crate::resources::by_kind("apps", "Deployment").expect("served")
}

fn owners(obj: &Value) -> Vec<(String, String, Value)> {
    entries(obj).into_iter().map(|e| (e.manager, e.operation, e.fields.to_json())).collect()
}

fn base() -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "default"}})
}

#[test]
fn an_apply_owns_its_fields_and_a_second_one_changes_nothing() {
    let applied = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "labels": {"app": "a"}}, "data": {"x": "1"}});
    let once = apply(cm(), false, &base(), &applied, "kubectl", false).expect("applies");
    assert_eq!(once["data"]["x"], "1");
    assert_eq!(
        owners(&once),
        vec![(
            "kubectl".into(),
            "Apply".into(),
            json!({"f:data": {"f:x": {}}, "f:metadata": {"f:labels": {"f:app": {}}}})
        )]
    );
    let twice = apply(cm(), false, &once, &applied, "kubectl", false).expect("applies");
    assert_eq!(twice, once, "the same apply again is no change at all (not even the time)");
}

#[test]
fn another_manager_changing_an_owned_field_conflicts_unless_forced() {
    let mine =
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"x": "1", "y": "1"}});
    let live = apply(cm(), false, &base(), &mine, "kubectl", false).expect("applies");
    let theirs = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"x": "2"}});
    let err = apply(cm(), false, &live, &theirs, "other", false).expect_err("conflicts");
    assert_eq!(
        err,
        vec![Conflict { manager: "kubectl".into(), using: None, path: vec!["f:data".into(), "f:x".into()] }]
    );
    assert_eq!(conflict_message(&err), "Apply failed with 1 conflict: conflict with \"kubectl\": .data.x");
    // The same value is no conflict: both own it.
    let same = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"x": "1"}});
    let shared = apply(cm(), false, &live, &same, "other", false).expect("no conflict");
    assert_eq!(owners(&shared).len(), 2);
    // Forced, it takes the field over.
    let forced = apply(cm(), false, &live, &theirs, "other", true).expect("forced");
    assert_eq!(forced["data"], json!({"x": "2", "y": "1"}));
    assert_eq!(
        owners(&forced),
        vec![
            ("kubectl".into(), "Apply".into(), json!({"f:data": {"f:y": {}}})),
            ("other".into(), "Apply".into(), json!({"f:data": {"f:x": {}}})),
        ]
    );
}

#[test]
fn what_an_apply_no_longer_has_goes_unless_someone_else_owns_it() {
    let both =
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"x": "1", "y": "1"}});
    let live = apply(cm(), false, &base(), &both, "kubectl", false).expect("applies");
    let only_x = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"x": "1"}});
    let after = apply(cm(), false, &live, &only_x, "kubectl", false).expect("applies");
    assert_eq!(after["data"], json!({"x": "1"}));
    let y = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"y": "1"}});
    let shared = apply(cm(), false, &live, &y, "other", false).expect("shared");
    let after = apply(cm(), false, &shared, &only_x, "kubectl", false).expect("applies");
    assert_eq!(after["data"], json!({"x": "1", "y": "1"}), "y stays: other owns it too");
}

#[test]
fn keyed_lists_merge_item_by_item() {
    let d = |image: &str, extra: bool| {
        let mut containers = vec![json!({"name": "web", "image": image})];
        if extra {
            containers.push(json!({"name": "side", "image": "s"}));
        }
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
               "spec": {"template": {"spec": {"containers": containers}}}})
    };
    let live = apply(deploy(), false, &json!({}), &d("a", false), "kubectl", false).expect("applies");
    let key = "k:{\"name\":\"web\"}";
    assert_eq!(
        entries(&live)[0].fields.to_json()["f:spec"]["f:template"]["f:spec"]["f:containers"][key],
        json!({".": {}, "f:image": {}, "f:name": {}})
    );
    // Another manager adds a container: no conflict, the list keeps both.
    let side = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
        "spec": {"template": {"spec": {"containers": [{"name": "side", "image": "s"}]}}}});
    let both = apply(deploy(), false, &live, &side, "other", false).expect("no conflict");
    assert_eq!(both["spec"]["template"]["spec"]["containers"].as_array().map(Vec::len), Some(2));
    let err = apply(deploy(), false, &both, &d("b", true), "third", false).expect_err("conflicts");
    let shown: Vec<String> = err.iter().map(|c| fieldset::display(&c.path)).collect();
    assert!(shown.contains(&".spec.template.spec.containers[name=\"web\"].image".to_owned()), "{shown:?}");
}

#[test]
fn an_update_takes_the_fields_it_changes() {
    let mine =
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"x": "1", "y": "1"}});
    let live = apply(cm(), false, &base(), &mine, "kubectl", false).expect("applies");
    let mut edited = live.clone();
    edited["data"]["x"] = json!("2");
    on_update(cm(), false, &live, &mut edited, Some("kubectl-edit"));
    assert_eq!(
        owners(&edited),
        vec![
            ("kubectl".into(), "Apply".into(), json!({"f:data": {"f:y": {}}})),
            ("kubectl-edit".into(), "Update".into(), json!({"f:data": {"f:x": {}}})),
        ]
    );
    // The apply of the same field again conflicts with that update.
    let again =
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"x": "1", "y": "1"}});
    let err = apply(cm(), false, &edited, &again, "kubectl", false).expect_err("conflicts");
    assert_eq!(
        conflict_message(&err),
        "Apply failed with 1 conflict: conflict with \"kubectl-edit\" using v1: .data.x"
    );
    // The control loops' writes leave ownership alone.
    let mut looped = edited.clone();
    looped["data"]["y"] = json!("3");
    on_update(cm(), false, &edited, &mut looped, None);
    assert_eq!(owners(&looped), owners(&edited));
}

#[test]
fn kubectl_takes_over_what_client_side_apply_last_applied() {
    let record = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "annotations": {}}, "data": {"x": "1"}});
    let mut live = base();
    live["data"] = json!({"x": "1"});
    live["metadata"]["annotations"] = json!({LAST_APPLIED: record.to_string()});
    on_create(cm(), &mut live, "kubectl-client-side-apply");
    let ssa = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"x": "2"}});
    assert!(apply(cm(), false, &live, &ssa, "someone", false).is_err(), "others conflict");
    let taken = apply(cm(), false, &live, &ssa, KUBECTL, false).expect("kubectl may");
    assert_eq!(taken["data"]["x"], "2");
    let annotation = taken["metadata"]["annotations"][LAST_APPLIED].as_str().expect("kept");
    let annotation: Value = serde_json::from_str(annotation).expect("json");
    assert_eq!(annotation["data"]["x"], "2", "client-side apply's record follows");
}
