//! OpenAPI v3 documents. kubectl 1.32 refuses `create`/`apply` with its
//! default validation unless it can download these; when the `patch`
//! operation of a kind lists the `fieldValidation` parameter, kubectl leaves
//! validation to the server and sends `fieldValidation=Strict`.
//!
//! The documents describe every path and operation with its
//! group-version-kind, and carry the object schemas (from `k8s-openapi`'s
//! schemars descriptions) that `kubectl explain` reads. They are built on
//! request and not kept: kubectl caches them by the `hash` the root hands
//! out, which changes only with the binary.

use serde_json::{Map, Value, json};

use crate::resources::{self, GROUPS, ResourceType};

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() { format!("api/{version}") } else { format!("apis/{group}/{version}") }
}

/// The `?hash=` the root hands out: the documents are a function of the
/// binary, so its version and the group-version name them.
fn hash(gv: &str) -> String {
    // FNV-1a: stable across runs and builds.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in format!("{}/{gv}", kedge_common::VERSION).bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016X}")
}

pub fn root() -> Value {
    let mut paths = Map::new();
    for (g, v) in GROUPS {
        let p = gv_path(g, v);
        paths.insert(p.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={}", hash(&p))}));
    }
    json!({"paths": paths})
}

fn param(name: &str) -> Value {
    json!({"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": true}})
}

fn op(rt: &ResourceType, action: &str, id: String, body: bool, params: &[&str]) -> Value {
    let gvk = json!({"group": rt.group, "version": rt.version, "kind": rt.kind});
    let schema = match schema_name(rt) {
        Some(n) => json!({"$ref": format!("#/components/schemas/{n}")}),
        None => json!({"type": "object"}),
    };
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
        let body_schema = if action == "patch" { json!({"type": "object"}) } else { schema.clone() };
        let content: Map<String, Value> =
            types.iter().map(|t| ((*t).to_owned(), json!({"schema": body_schema.clone()}))).collect();
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
        "components": {"schemas": schemas(group)},
    }))
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_uppercase().collect::<String>() + c.as_str()).unwrap_or_default()
}

/// The `k8s-openapi` type of each served kind, for schema generation.
macro_rules! for_each_kind {
    ($m:ident) => {
        $m!("", k8s_openapi::api::core::v1::Namespace);
        $m!("", k8s_openapi::api::core::v1::Node);
        $m!("", k8s_openapi::api::core::v1::Pod);
        $m!("", k8s_openapi::api::core::v1::Service);
        $m!("", k8s_openapi::api::core::v1::Endpoints);
        $m!("", k8s_openapi::api::core::v1::ConfigMap);
        $m!("", k8s_openapi::api::core::v1::Secret);
        $m!("", k8s_openapi::api::core::v1::Event);
        $m!("", k8s_openapi::api::core::v1::PersistentVolumeClaim);
        $m!("", k8s_openapi::api::core::v1::PersistentVolume);
        $m!("apps", k8s_openapi::api::apps::v1::Deployment);
        $m!("apps", k8s_openapi::api::apps::v1::ReplicaSet);
        $m!("apps", k8s_openapi::api::apps::v1::DaemonSet);
        $m!("apps", k8s_openapi::api::apps::v1::StatefulSet);
        $m!("apps", k8s_openapi::api::apps::v1::ControllerRevision);
        $m!("batch", k8s_openapi::api::batch::v1::Job);
        $m!("batch", k8s_openapi::api::batch::v1::CronJob);
        $m!("coordination.k8s.io", k8s_openapi::api::coordination::v1::Lease);
        $m!("policy", k8s_openapi::api::policy::v1::PodDisruptionBudget);
        $m!("storage.k8s.io", k8s_openapi::api::storage::v1::StorageClass);
    };
}

/// The component name of a kind's schema (`io.k8s.api.core.v1.Pod`).
fn schema_name(rt: &ResourceType) -> Option<String> {
    macro_rules! name {
        ($g:literal, $t:ty) => {
            if rt.group == $g && rt.kind == <$t as k8s_openapi::Resource>::KIND {
                return Some(<$t as schemars::JsonSchema>::schema_name().into_owned());
            }
        };
    }
    for_each_kind!(name);
    None
}

/// Every schema the kinds of `group` need, each kind's own schema marked
/// with its group-version-kind as Kubernetes marks them.
fn schemas(group: &str) -> Map<String, Value> {
    let mut generator = schemars::generate::SchemaSettings::openapi3().into_generator();
    let mut kinds: Vec<(&'static str, String)> = Vec::new();
    macro_rules! add {
        ($g:literal, $t:ty) => {
            if group == $g {
                let _ = generator.subschema_for::<$t>();
                kinds.push((
                    <$t as k8s_openapi::Resource>::KIND,
                    <$t as schemars::JsonSchema>::schema_name().into_owned(),
                ));
            }
        };
    }
    for_each_kind!(add);
    let mut defs = generator.take_definitions(true);
    for (schema, prop, key, strategy) in crate::patch::PATCH_TAGS {
        if let Some(Value::Object(p)) =
            defs.get_mut(*schema).and_then(|s| s.pointer_mut(&format!("/properties/{prop}")))
        {
            p.insert("x-kubernetes-patch-strategy".into(), json!(strategy));
            if let Some(k) = key {
                p.insert("x-kubernetes-patch-merge-key".into(), json!(k));
            }
        }
    }
    for (kind, name) in kinds {
        if let Some(Value::Object(s)) = defs.get_mut(&name) {
            s.insert(
                "x-kubernetes-group-version-kind".into(),
                json!([{"group": group, "version": "v1", "kind": kind}]),
            );
        }
    }
    defs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_carry_kinds_schemas_and_patch_tags() {
        let core = document("api/v1").expect("core document");
        let patch = &core["paths"]["/api/v1/namespaces/{namespace}/pods/{name}"]["patch"];
        assert_eq!(patch["x-kubernetes-group-version-kind"]["kind"], "Pod");
        assert!(patch["parameters"].as_array().is_some_and(|p| p.iter().any(|p| p["name"] == "fieldValidation")));
        let schemas = &core["components"]["schemas"];
        assert_eq!(schemas["io.k8s.api.core.v1.Pod"]["x-kubernetes-group-version-kind"][0]["kind"], "Pod");
        let containers = &schemas["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"];
        assert_eq!(containers["x-kubernetes-patch-merge-key"], "name");
        assert_eq!(containers["x-kubernetes-patch-strategy"], "merge");
        let apps = document("apis/apps/v1").expect("apps document");
        assert!(apps["components"]["schemas"]["io.k8s.api.apps.v1.Deployment"].is_object());
        assert!(
            document("apis/batch/v1")
                .is_some_and(|d| d["components"]["schemas"]["io.k8s.api.batch.v1.Job"].is_object())
        );
        assert!(
            document("apis/storage.k8s.io/v1")
                .is_some_and(|d| d["components"]["schemas"]["io.k8s.api.storage.v1.StorageClass"].is_object())
        );
        assert!(document("apis/networking.k8s.io/v1").is_none(), "a group not served");
        let root = root();
        assert!(
            root["paths"]["api/v1"]["serverRelativeURL"]
                .as_str()
                .is_some_and(|u| u.starts_with("/openapi/v3/api/v1?hash="))
        );
    }
}
