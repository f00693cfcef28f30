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

use crate::resources::{GROUPS, Registry, ResourceType};

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() { format!("api/{version}") } else { format!("apis/{group}/{version}") }
}

/// The `?hash=` the root hands out: the built-in documents are a function
/// of the binary, so its version and the group-version name them; a custom
/// group's also of what its CRDs say of it.
fn hash(kinds: &Registry, gv: &str) -> String {
    // FNV-1a: stable across runs and builds.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    feed(format!("{}/{gv}", kedge_common::VERSION).as_bytes());
    for rt in kinds.all().into_iter().filter(|r| r.custom.is_some()) {
        if gv == "v2" || gv_path(rt.group, rt.version) == gv {
            feed(format!("{rt:?}").as_bytes());
        }
    }
    format!("{h:016X}")
}

pub fn root(kinds: &Registry) -> Value {
    let mut paths = Map::new();
    for (g, vs) in kinds.groups() {
        for v in vs {
            let p = gv_path(g, v);
            let url = format!("/openapi/v3/{p}?hash={}", hash(kinds, &p));
            paths.insert(p, json!({"serverRelativeURL": url}));
        }
    }
    json!({"paths": paths})
}

/// Whether `gv` (`api/v1`, `apis/apps/v1`) has a v3 document.
pub fn serves(kinds: &Registry, gv: &str) -> bool {
    kinds.groups().iter().any(|(g, vs)| vs.iter().any(|v| gv_path(g, v) == gv))
}

/// The entity tag of a document: its hash, quoted (`/openapi/v2` is named
/// `v2`, the v3 documents by their group-version path).
pub fn etag(kinds: &Registry, name: &str) -> String {
    format!("\"{}\"", hash(kinds, name))
}

/// What a body carries.
#[derive(Clone, Copy, PartialEq, Eq)]
enum BodyKind {
    None,
    Object,
    Patch,
}

/// One operation of a path, before it is written as v2 or v3.
struct Operation {
    method: &'static str,
    action: &'static str,
    id: String,
    body: BodyKind,
    params: &'static [&'static str],
}

/// A path and its operations; `path_params` are the `{…}` in it.
struct PathOps {
    path: String,
    path_params: &'static [&'static str],
    ops: Vec<Operation>,
}

const WRITE: &[&str] = &["dryRun", "fieldManager", "fieldValidation", "pretty"];
const READ: &[&str] =
    &["labelSelector", "fieldSelector", "limit", "continue", "resourceVersion", "watch", "timeoutSeconds"];
const PATCH: &[&str] = &["dryRun", "fieldManager", "fieldValidation", "force", "pretty"];
const PATCH_TYPES: &[&str] = &[
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
    "application/apply-patch+yaml",
];
/// Custom resources take no strategic merge patch (kubectl then sends a
/// JSON merge patch).
const CUSTOM_PATCH_TYPES: &[&str] =
    &["application/json-patch+json", "application/merge-patch+json", "application/apply-patch+yaml"];

fn patch_types(rt: &ResourceType) -> &'static [&'static str] {
    if rt.custom.is_some() { CUSTOM_PATCH_TYPES } else { PATCH_TYPES }
}

/// Every path of a kind, as Kubernetes lists them.
fn paths_of(rt: &ResourceType) -> Vec<PathOps> {
    let gv = gv_path(rt.group, rt.version);
    let (base, scope_params, named_params): (String, &'static [&'static str], &'static [&'static str]) =
        if rt.namespaced {
            (format!("/{gv}/namespaces/{{namespace}}/{}", rt.plural), &["namespace"], &["name", "namespace"])
        } else {
            (format!("/{gv}/{}", rt.plural), &[], &["name"])
        };
    let id = |verb: &str| {
        let g = if rt.group.is_empty() { "Core".to_owned() } else { camel(rt.group) };
        let scope = if rt.namespaced { "Namespaced" } else { "" };
        format!("{verb}{g}{}{scope}{}", capitalize(rt.version), rt.kind)
    };
    let o = |method, action, id: String, body, params| Operation { method, action, id, body, params };
    let mut out = vec![
        PathOps {
            path: base.clone(),
            path_params: scope_params,
            ops: vec![
                o("get", "list", id("list"), BodyKind::None, READ),
                o("post", "post", id("create"), BodyKind::Object, WRITE),
                o(
                    "delete",
                    "deletecollection",
                    id("deleteCollection"),
                    BodyKind::None,
                    &["labelSelector", "fieldSelector"],
                ),
            ],
        },
        PathOps {
            path: format!("{base}/{{name}}"),
            path_params: named_params,
            ops: vec![
                o("get", "get", id("read"), BodyKind::None, &["pretty"]),
                o("put", "put", id("replace"), BodyKind::Object, WRITE),
                o("patch", "patch", id("patch"), BodyKind::Patch, PATCH),
                o(
                    "delete",
                    "delete",
                    id("delete"),
                    BodyKind::None,
                    &["dryRun", "gracePeriodSeconds", "propagationPolicy"],
                ),
            ],
        },
    ];
    if rt.status {
        out.push(PathOps {
            path: format!("{base}/{{name}}/status"),
            path_params: named_params,
            ops: vec![
                o("get", "get", id("read") + "Status", BodyKind::None, &["pretty"]),
                o("put", "put", id("replace") + "Status", BodyKind::Object, WRITE),
                o("patch", "patch", id("patch") + "Status", BodyKind::Patch, PATCH),
            ],
        });
    }
    if rt.scale && rt.custom.is_some() {
        out.push(PathOps {
            path: format!("{base}/{{name}}/scale"),
            path_params: named_params,
            ops: vec![
                o("get", "get", id("read") + "Scale", BodyKind::None, &["pretty"]),
                o("put", "put", id("replace") + "Scale", BodyKind::Object, WRITE),
                o("patch", "patch", id("patch") + "Scale", BodyKind::Patch, PATCH),
            ],
        });
    }
    out
}

fn gvk(rt: &ResourceType) -> Value {
    json!({"group": rt.group, "version": rt.version, "kind": rt.kind})
}

/// The OpenAPI v3 document of one group-version (`api/v1`, `apis/apps/v1`).
pub fn document(kinds: &Registry, gv: &str) -> Option<Value> {
    let groups = kinds.groups();
    let (group, version) =
        groups.iter().find_map(|(g, vs)| vs.iter().find(|v| gv_path(g, v) == gv).map(|v| (*g, *v)))?;
    let builtin = GROUPS.contains(&(group, version));
    let mut paths = Map::new();
    for rt in kinds.in_group(group, version) {
        let schema = match schema_name(rt) {
            Some(n) => json!({"$ref": format!("#/components/schemas/{n}")}),
            None => json!({"type": "object"}),
        };
        for p in paths_of(rt) {
            let mut item = Map::new();
            for op in &p.ops {
                let mut o = json!({
                    "operationId": op.id,
                    "parameters": op.params.iter().map(|n| json!({"name": n, "in": "query", "schema": {"type": "string", "uniqueItems": true}})).collect::<Vec<_>>(),
                    "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": schema}}}},
                    "x-kubernetes-action": op.action,
                    "x-kubernetes-group-version-kind": gvk(rt),
                });
                if op.body != BodyKind::None {
                    let (types, body_schema): (&[&str], Value) = match op.body {
                        BodyKind::Patch => (patch_types(rt), json!({"type": "object"})),
                        _ => (&["application/json"], schema.clone()),
                    };
                    let content: Map<String, Value> =
                        types.iter().map(|t| ((*t).to_owned(), json!({"schema": body_schema.clone()}))).collect();
                    o["requestBody"] = json!({"content": content, "required": true});
                }
                item.insert(op.method.to_owned(), o);
            }
            item.insert("parameters".into(), json!(p.path_params.iter().map(|n| json!({"name": n, "in": "path", "required": true, "schema": {"type": "string", "uniqueItems": true}})).collect::<Vec<_>>()));
            paths.insert(p.path, Value::Object(item));
        }
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": format!("v1.{}.0", super::discovery::KUBE_MINOR)},
        "paths": paths,
        "components": {"schemas": if builtin { schemas(group, version) } else { custom_schemas(kinds, group, version) }},
    }))
}

/// `example.com` → `com.example`, as Kubernetes names a custom kind's schema.
fn reversed(group: &str) -> String {
    group.split('.').rev().collect::<Vec<_>>().join(".")
}

/// The schemas of a custom group-version: each kind's (its CRD's schema
/// with `apiVersion`, `kind` and `metadata` added) and its list's, with
/// the object and list metadata they refer to.
fn custom_schemas(kinds: &Registry, group: &str, version: &str) -> Map<String, Value> {
    let mut generator = schemars::generate::SchemaSettings::openapi3().into_generator();
    let _ = generator.subschema_for::<k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>();
    let _ = generator.subschema_for::<k8s_openapi::apimachinery::pkg::apis::meta::v1::ListMeta>();
    let mut defs = generator.take_definitions(true);
    let meta_ref = |name: &str, what: &str| json!({"description": what, "allOf": [{"$ref": format!("#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.{name}")}]});
    let type_meta = |s: &mut Value| {
        s["properties"]["apiVersion"] = json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."});
        s["properties"]["kind"] = json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents."});
    };
    for rt in kinds.in_group(group, version) {
        let Some(name) = schema_name(rt) else { continue };
        let mut s = rt.custom.as_ref().and_then(|c| c.schema.clone()).unwrap_or_else(|| json!({"type": "object"}));
        if !s["properties"].is_object() {
            s["properties"] = json!({});
        }
        type_meta(&mut s);
        s["properties"]["metadata"] = meta_ref(
            "ObjectMeta",
            "Standard object's metadata. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata",
        );
        s["x-kubernetes-group-version-kind"] = json!([gvk(rt)]);
        let mut list = json!({
            "type": "object",
            "required": ["items"],
            "description": format!("{} is a list of {}", rt.list_kind(), rt.kind),
            "properties": {"items": {"type": "array", "items": {"$ref": format!("#/components/schemas/{name}")}}},
            "x-kubernetes-group-version-kind": [{"group": rt.group, "version": rt.version, "kind": rt.list_kind()}],
        });
        type_meta(&mut list);
        list["properties"]["metadata"] = meta_ref("ListMeta", "Standard list metadata.");
        defs.insert(format!("{name}List"), list);
        defs.insert(name, s);
    }
    defs
}

/// The OpenAPI v2 (Swagger 2.0) document of everything served, as
/// `GET /openapi/v2` answers it: what kubectl 1.27 and 1.28 validate with,
/// and what kubectl falls back to for a kind no v3 document names.
pub fn v2(kinds: &Registry) -> Value {
    let mut paths = Map::new();
    let mut definitions = Map::new();
    let mut all = all_schemas();
    for (g, vs) in kinds.groups() {
        for v in vs.iter().filter(|v| !GROUPS.contains(&(g, **v))) {
            all.extend(custom_schemas(kinds, g, v));
        }
    }
    for (name, mut schema) in all {
        to_v2(&mut schema);
        if name == "io.k8s.apimachinery.pkg.api.resource.Quantity" {
            schema["type"] = json!("string");
        }
        definitions.insert(name, schema);
    }
    for (group, versions) in kinds.groups() {
        for rt in versions.iter().flat_map(|v| kinds.in_group(group, v)) {
            let schema = match schema_name(rt) {
                Some(n) => json!({"$ref": format!("#/definitions/{n}")}),
                None => json!({"type": "object"}),
            };
            for p in paths_of(rt) {
                let mut item = Map::new();
                for op in &p.ops {
                    let mut params: Vec<Value> = op
                        .params
                        .iter()
                        .map(|n| json!({"name": n, "in": "query", "type": "string", "uniqueItems": true}))
                        .collect();
                    let consumes: &[&str] = match op.body {
                        BodyKind::None => &[],
                        BodyKind::Object => {
                            &["application/json", "application/yaml", "application/vnd.kubernetes.protobuf"]
                        }
                        BodyKind::Patch => patch_types(rt),
                    };
                    if op.body != BodyKind::None {
                        let body_schema =
                            if op.body == BodyKind::Patch { json!({"type": "object"}) } else { schema.clone() };
                        params
                            .insert(0, json!({"name": "body", "in": "body", "required": true, "schema": body_schema}));
                    }
                    let mut o = json!({
                        "operationId": op.id,
                        "schemes": ["https"],
                        "produces": ["application/json", "application/yaml", "application/vnd.kubernetes.protobuf"],
                        "parameters": params,
                        "responses": {"200": {"description": "OK", "schema": schema}, "401": {"description": "Unauthorized"}},
                        "x-kubernetes-action": op.action,
                        "x-kubernetes-group-version-kind": gvk(rt),
                    });
                    if !consumes.is_empty() {
                        o["consumes"] = json!(consumes);
                    }
                    item.insert(op.method.to_owned(), o);
                }
                item.insert(
                    "parameters".into(),
                    json!(p.path_params.iter().map(|n| json!({"name": n, "in": "path", "required": true, "type": "string", "uniqueItems": true})).collect::<Vec<_>>()),
                );
                paths.insert(p.path, Value::Object(item));
            }
        }
    }
    json!({
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": format!("v1.{}.0", super::discovery::KUBE_MINOR)},
        "paths": paths,
        "definitions": definitions,
        "securityDefinitions": {"BearerToken": {"type": "apiKey", "name": "authorization", "in": "header",
            "description": "Bearer Token authentication"}},
        "security": [{"BearerToken": []}],
    })
}

/// The v3 schemas of every served group in one map.
pub(crate) fn all_schemas() -> Map<String, Value> {
    let mut all = Map::new();
    for (group, version) in GROUPS {
        for (name, schema) in schemas(group, version) {
            // Shared definitions come with every group; the kind's own
            // carries its group-version-kind, so it wins.
            let marked = |s: &Value| s.get("x-kubernetes-group-version-kind").is_some();
            if all.get(&name).is_none_or(|old| !marked(old) || marked(&schema)) {
                all.insert(name, schema);
            }
        }
    }
    all
}

/// Rewrites a v3 schema as Swagger 2.0 writes it: references point at
/// `#/definitions/`, a described reference is a `$ref` with a description
/// (v3 needs `allOf` for that), `nullable` goes, and int-or-string and
/// quantity are typed strings as in Kubernetes' own v2 document.
fn to_v2(schema: &mut Value) {
    let Value::Object(m) = schema else {
        if let Value::Array(a) = schema {
            a.iter_mut().for_each(to_v2);
        }
        return;
    };
    if let Some(Value::Array(all)) = m.get("allOf")
        && let [one] = all.as_slice()
        && let Some(r) = one.get("$ref").cloned()
    {
        m.remove("allOf");
        m.insert("$ref".into(), r);
    }
    if let Some(Value::String(r)) = m.get_mut("$ref")
        && let Some(name) = r.strip_prefix("#/components/schemas/")
    {
        *r = format!("#/definitions/{name}");
    }
    m.remove("nullable");
    if m.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) && !m.contains_key("type") {
        m.insert("type".into(), json!("string"));
        m.insert("format".into(), json!("int-or-string"));
    }
    for (k, v) in m.iter_mut() {
        match k.as_str() {
            // Named schemas: a property may be called `enum` or `default`.
            "properties" | "definitions" | "patternProperties" => {
                if let Value::Object(named) = v {
                    named.values_mut().for_each(to_v2);
                }
            }
            // Extensions and defaults are data, not schemas.
            k if k.starts_with("x-") || k == "default" || k == "enum" || k == "example" => {}
            _ => to_v2(v),
        }
    }
}

/// `storage.k8s.io` → `Storage`, `stable.example.com` →
/// `StableExampleCom`, as Kubernetes' operation ids spell a group.
fn camel(s: &str) -> String {
    s.strip_suffix(".k8s.io").unwrap_or(s).split('.').map(capitalize).collect()
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
        $m!("", k8s_openapi::api::core::v1::ServiceAccount);
        $m!("rbac.authorization.k8s.io", k8s_openapi::api::rbac::v1::Role);
        $m!("rbac.authorization.k8s.io", k8s_openapi::api::rbac::v1::ClusterRole);
        $m!("rbac.authorization.k8s.io", k8s_openapi::api::rbac::v1::RoleBinding);
        $m!("rbac.authorization.k8s.io", k8s_openapi::api::rbac::v1::ClusterRoleBinding);
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
        $m!(
            "apiextensions.k8s.io",
            k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition
        );
    };
}

/// The component name of a kind's schema (`io.k8s.api.core.v1.Pod`,
/// `com.example.v1.Widget`).
pub(crate) fn schema_name(rt: &ResourceType) -> Option<String> {
    if rt.custom.is_some() {
        return Some(format!("{}.{}.{}", reversed(rt.group), rt.version, rt.kind));
    }
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
pub(crate) fn schemas(group: &str, version: &str) -> Map<String, Value> {
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
                json!([{"group": group, "version": version, "kind": kind}]),
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
        let kinds = Registry::default();
        let document = |gv| super::document(&kinds, gv);
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
        assert!(core["paths"]["/api/v1/namespaces/{namespace}/pods/{name}"]["parameters"][0]["in"] == "path");
        let sc = document("apis/storage.k8s.io/v1").expect("storage document");
        assert_eq!(
            sc["paths"]["/apis/storage.k8s.io/v1/storageclasses"]["get"]["operationId"], "listStorageV1StorageClass",
            "Kubernetes' operation ids"
        );
        let root = root(&kinds);
        assert!(
            root["paths"]["api/v1"]["serverRelativeURL"]
                .as_str()
                .is_some_and(|u| u.starts_with("/openapi/v3/api/v1?hash="))
        );
    }

    /// Every reference of a schema, and what kube-openapi's v2 parser (that
    /// kubectl 1.27/1.28 validate with) refuses: a type list, an array
    /// without items.
    fn check_v2(s: &Value, defs: &Map<String, Value>, at: &str) {
        let Some(m) = s.as_object() else { return };
        if let Some(r) = m.get("$ref").and_then(Value::as_str) {
            let name = r.strip_prefix("#/definitions/").unwrap_or_else(|| panic!("{at}: reference {r}"));
            assert!(defs.contains_key(name), "{at}: {name} is not defined");
        }
        assert!(!m.contains_key("allOf") && !m.contains_key("nullable"), "{at}: not Swagger 2.0: {s}");
        assert!(!m.get("type").is_some_and(Value::is_array), "{at}: a type list");
        if m.get("type").and_then(Value::as_str) == Some("array") {
            assert!(m.get("items").is_some_and(Value::is_object), "{at}: an array without items");
        }
        for (k, sub) in m.get("properties").and_then(Value::as_object).into_iter().flatten() {
            check_v2(sub, defs, &format!("{at}.{k}"));
        }
        for k in ["items", "additionalProperties"] {
            if let Some(sub) = m.get(k) {
                check_v2(sub, defs, &format!("{at}[{k}]"));
            }
        }
    }

    #[test]
    fn the_v2_document_has_every_kind_and_resolves_every_reference() {
        let kinds = Registry::default();
        let doc = v2(&kinds);
        assert_eq!(doc["swagger"], "2.0");
        let defs = doc["definitions"].as_object().expect("definitions");
        for (name, s) in defs {
            check_v2(s, defs, name);
        }
        for (g, v) in GROUPS {
            for rt in kinds.in_group(g, v) {
                let name = schema_name(rt).expect("every kind has a schema");
                assert_eq!(
                    defs[&name]["x-kubernetes-group-version-kind"][0]["kind"], rt.kind,
                    "{name} is marked with its kind (not a group's copy without it)"
                );
            }
        }
        let patch = &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert_eq!(patch["x-kubernetes-group-version-kind"]["kind"], "Deployment");
        let params = patch["parameters"].as_array().expect("parameters");
        assert!(params.iter().any(|p| p["name"] == "fieldValidation" && p["in"] == "query"));
        assert!(params.iter().any(|p| p["in"] == "body"));
        assert_eq!(defs["io.k8s.apimachinery.pkg.util.intstr.IntOrString"]["format"], "int-or-string");
        assert_eq!(defs["io.k8s.apimachinery.pkg.api.resource.Quantity"]["type"], "string");
        let spec = &defs["io.k8s.api.apps.v1.Deployment"]["properties"]["spec"];
        assert_eq!(spec["$ref"], "#/definitions/io.k8s.api.apps.v1.DeploymentSpec");
        assert!(spec["description"].is_string(), "a described reference keeps its description");
    }
}
