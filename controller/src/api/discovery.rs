//! `/version` and the legacy discovery documents (`APIVersions`,
//! `APIGroupList`, `APIResourceList`) kubectl uses to map kinds to resources.

use serde_json::{Value, json};

use crate::resources::{self, GROUPS};

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

fn group_doc(name: &str, version: &str) -> Value {
    let gv = json!({"groupVersion": format!("{name}/{version}"), "version": version});
    json!({"name": name, "versions": [gv.clone()], "preferredVersion": gv})
}

pub fn api_groups() -> Value {
    let mut groups: Vec<Value> = GROUPS.iter().filter(|(g, _)| !g.is_empty()).map(|(g, v)| group_doc(g, v)).collect();
    // What kubectl top looks for (served from the nodes through the fleet link).
    groups.push(group_doc(super::metrics::GROUP, super::metrics::VERSION));
    // Asked, not stored: access reviews and who-am-I.
    groups.push(group_doc(super::reviews::AUTHZ, "v1"));
    groups.push(group_doc(super::reviews::AUTHN, "v1"));
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// The `APIGroup` document of a group served outside the object store.
pub fn group_of(name: &str, version: &str) -> Value {
    let mut d = group_doc(name, version);
    d["kind"] = json!("APIGroup");
    d["apiVersion"] = json!("v1");
    d
}

pub fn group(name: &str) -> Option<Value> {
    GROUPS.iter().find(|(g, _)| !g.is_empty() && *g == name).map(|(g, v)| {
        let mut d = group_doc(g, v);
        d["kind"] = json!("APIGroup");
        d["apiVersion"] = json!("v1");
        d
    })
}

pub fn resource_list(group: &str, version: &str) -> Value {
    let gv = if group.is_empty() { version.to_owned() } else { format!("{group}/{version}") };
    let mut list = Vec::new();
    for rt in resources::in_group(group, version) {
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
        if rt.in_all {
            r["categories"] = json!(["all"]);
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
