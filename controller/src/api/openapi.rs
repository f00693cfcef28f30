//! OpenAPI v3 documents. kubectl 1.32 refuses `create`/`apply` with its
//! default validation unless it can download these; when the `patch`
//! operation of a kind lists the `fieldValidation` parameter, kubectl leaves
//! validation to the server and sends `fieldValidation=Strict`.
//!
//! The documents describe every path and operation with its
//! group-version-kind; the object schemas themselves are not generated yet
//! (so `kubectl explain` has nothing to show).

use serde_json::{Map, Value, json};

use crate::resources::{self, GROUPS, ResourceType};

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() { format!("api/{version}") } else { format!("apis/{group}/{version}") }
}

/// A stable hash of a document, for the `?hash=` the root hands out.
fn hash(doc: &Value) -> String {
    // FNV-1a over the serialized document: stable across runs and builds.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in doc.to_string().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016X}")
}

pub fn root() -> Value {
    let mut paths = Map::new();
    for (g, v) in GROUPS {
        let p = gv_path(g, v);
        if let Some(doc) = document(&p) {
            paths.insert(p.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={}", hash(&doc))}));
        }
    }
    json!({"paths": paths})
}

fn param(name: &str) -> Value {
    json!({"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": true}})
}

fn op(rt: &ResourceType, action: &str, id: String, body: bool, params: &[&str]) -> Value {
    let gvk = json!({"group": rt.group, "version": rt.version, "kind": rt.kind});
    let schema = json!({"type": "object"});
    let mut o = json!({
        "operationId": id,
        "parameters": params.iter().map(|p| param(p)).collect::<Vec<_>>(),
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": schema}}}},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": gvk,
    });
    if body {
        let types: &[&str] = if action == "patch" {
            &["application/json-patch+json", "application/merge-patch+json", "application/strategic-merge-patch+json"]
        } else {
            &["application/json"]
        };
        let content: Map<String, Value> =
            types.iter().map(|t| ((*t).to_owned(), json!({"schema": {"type": "object"}}))).collect();
        o["requestBody"] = json!({"content": content, "required": true});
    }
    o
}

pub fn document(gv: &str) -> Option<Value> {
    let (group, version) = GROUPS.iter().find(|(g, v)| gv_path(g, v) == gv)?;
    let write = ["dryRun", "fieldManager", "fieldValidation", "pretty"];
    let read = ["labelSelector", "fieldSelector", "limit", "continue", "resourceVersion", "watch", "timeoutSeconds"];
    let mut paths = Map::new();
    for rt in resources::in_group(group, version) {
        let base = if rt.namespaced {
            format!("/{gv}/namespaces/{{namespace}}/{}", rt.plural)
        } else {
            format!("/{gv}/{}", rt.plural)
        };
        let id = |verb: &str| {
            let g = if rt.group.is_empty() { "Core".to_owned() } else { capitalize(rt.group) };
            let scope = if rt.namespaced { "Namespaced" } else { "" };
            format!("{verb}{g}V1{scope}{}", rt.kind)
        };
        paths.insert(
            base.clone(),
            json!({
                "get": op(rt, "list", id("list"), false, &read),
                "post": op(rt, "post", id("create"), true, &write),
                "delete": op(rt, "deletecollection", id("deleteCollection"), false, &["labelSelector", "fieldSelector"]),
            }),
        );
        paths.insert(
            format!("{base}/{{name}}"),
            json!({
                "get": op(rt, "get", id("read"), false, &["pretty"]),
                "put": op(rt, "put", id("replace"), true, &write),
                "patch": op(rt, "patch", id("patch"), true, &["dryRun", "fieldManager", "fieldValidation", "force", "pretty"]),
                "delete": op(rt, "delete", id("delete"), false, &["dryRun", "gracePeriodSeconds", "propagationPolicy"]),
            }),
        );
        if rt.status {
            paths.insert(
                format!("{base}/{{name}}/status"),
                json!({
                    "get": op(rt, "get", id("read") + "Status", false, &["pretty"]),
                    "put": op(rt, "put", id("replace") + "Status", true, &write),
                    "patch": op(rt, "patch", id("patch") + "Status", true, &["dryRun", "fieldManager", "fieldValidation", "force"]),
                }),
            );
        }
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": format!("v1.{}.0", super::discovery::KUBE_MINOR)},
        "paths": paths,
        "components": {"schemas": {}},
    }))
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_uppercase().collect::<String>() + c.as_str()).unwrap_or_default()
}
