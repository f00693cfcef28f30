//! `/version` and the legacy discovery documents (`APIVersions`,
//! `APIGroupList`, `APIResourceList`) kubectl uses to map kinds to resources.

use serde_json::{Value, json};

use crate::resources::Registry;

/// The Kubernetes API version this server mirrors.
pub const KUBE_MINOR: &str = "33";

pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": KUBE_MINOR,
        "gitVersion": format!("v1.{KUBE_MINOR}.0+kedge-{}", kedge_common::VERSION),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "",
        "goVersion": "",
        "compiler": "rustc",
        "platform": format!("linux/{}", std::env::consts::ARCH),
    })
}

pub fn api_versions() -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}],
    })
}

fn group_doc(name: &str, versions: &[&str]) -> Value {
    let gvs: Vec<Value> =
        versions.iter().map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v})).collect();
    json!({"name": name, "preferredVersion": gvs.first().cloned().unwrap_or(Value::Null), "versions": gvs})
}

pub fn api_groups(kinds: &Registry) -> Value {
    let mut groups: Vec<Value> =
        kinds.groups().iter().filter(|(g, _)| !g.is_empty()).map(|(g, vs)| group_doc(g, vs)).collect();
    // What kubectl top looks for (served from the nodes through the fleet link).
    groups.push(group_doc(super::metrics::GROUP, &[super::metrics::VERSION]));
    // Asked, not stored: access reviews and who-am-I.
    groups.push(group_doc(super::reviews::AUTHZ, &["v1"]));
    groups.push(group_doc(super::reviews::AUTHN, &["v1"]));
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// The `APIGroup` document of a group served outside the object store.
pub fn group_of(name: &str, version: &str) -> Value {
    let mut d = group_doc(name, &[version]);
    d["kind"] = json!("APIGroup");
    d["apiVersion"] = json!("v1");
    d
}

pub fn group(kinds: &Registry, name: &str) -> Option<Value> {
    kinds.groups().iter().find(|(g, _)| !g.is_empty() && *g == name).map(|(g, vs)| {
        let mut d = group_doc(g, vs);
        d["kind"] = json!("APIGroup");
        d["apiVersion"] = json!("v1");
        d
    })
}

pub fn resource_list(kinds: &Registry, group: &str, version: &str) -> Value {
    let gv = if group.is_empty() { version.to_owned() } else { format!("{group}/{version}") };
    let mut list = Vec::new();
    for rt in kinds.in_group(group, version) {
        let verbs: &[&str] = if rt.kind == "Namespace" {
            &["create", "delete", "get", "list", "patch", "update", "watch"]
        } else {
            &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
        };
        let mut r = json!({
            "name": rt.plural,
            "singularName": rt.singular,
            "namespaced": rt.namespaced,
            "kind": rt.kind,
            "verbs": verbs,
        });
        if !rt.short_names.is_empty() {
            r["shortNames"] = json!(rt.short_names);
        }
        match &rt.custom {
            Some(c) if !c.categories.is_empty() => r["categories"] = json!(c.categories),
            Some(_) => {}
            None if rt.in_all => r["categories"] = json!(["all"]),
            None => {}
        }
        list.push(r);
        if rt.status {
            list.push(json!({"name": format!("{}/status", rt.plural), "singularName": "", "namespaced": rt.namespaced,
                "kind": rt.kind, "verbs": ["get", "patch", "update"]}));
        }
        if rt.scale {
            list.push(json!({"name": format!("{}/scale", rt.plural), "singularName": "", "namespaced": rt.namespaced,
                "group": "autoscaling", "version": "v1", "kind": "Scale", "verbs": ["get", "patch", "update"]}));
        }
        if rt.kind == "ServiceAccount" {
            list.push(json!({"name": "serviceaccounts/token", "singularName": "", "namespaced": true,
                "group": "authentication.k8s.io", "version": "v1", "kind": "TokenRequest", "verbs": ["create"]}));
        }
        if rt.kind == "Pod" {
            list.push(json!({"name": "pods/binding", "singularName": "", "namespaced": true, "kind": "Binding", "verbs": ["create"]}));
            list.push(json!({"name": "pods/eviction", "singularName": "", "namespaced": true, "group": "policy",
                "version": "v1", "kind": "Eviction", "verbs": ["create"]}));
        }
    }
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": list})
}
