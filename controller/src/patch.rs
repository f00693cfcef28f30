//! The three PATCH forms kubectl sends: JSON patch (RFC 6902), JSON merge
//! patch (RFC 7386) and Kubernetes strategic merge patch, where lists such as
//! containers, ports, env and volumes merge by their key instead of being
//! replaced, and `$patch`, `$setElementOrder/…`, `$retainKeys` and
//! `$deleteFromPrimitiveList/…` directives are honoured.

use serde_json::{Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    Json,
    Merge,
    Strategic,
}

impl PatchType {
    pub fn from_content_type(ct: &str) -> Option<Self> {
        match ct.split(';').next().map(str::trim)? {
            "application/json-patch+json" => Some(PatchType::Json),
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/strategic-merge-patch+json" => Some(PatchType::Strategic),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    #[error("invalid json patch: {0}")]
    InvalidJsonPatch(#[source] serde_json::Error),
    #[error("json patch could not be applied: {0}")]
    JsonPatch(#[source] json_patch::PatchError),
    #[error("strategic merge patch must be a json object")]
    NotObject,
    #[error("unknown patch directive {0:?}")]
    Directive(String),
    #[error("patch result too large: {0}")]
    TooLarge(String),
}

/// Most operations one JSON patch may hold (as Kubernetes).
pub const MAX_JSON_PATCH_OPS: usize = 10_000;
/// Most JSON values a patched object may hold.
pub const MAX_PATCHED_VALUES: usize = 1_000_000;
/// Deepest nesting a patched object may have.
pub const MAX_PATCHED_DEPTH: usize = 100;

/// Walks `doc` without recursion, refusing it when it holds too many values
/// or nests too deep (which would also make dropping it recurse too far).
fn check_bounds(doc: &Value) -> Result<(), PatchError> {
    let mut stack = vec![(doc, 1usize)];
    let mut count = 0usize;
    while let Some((v, depth)) = stack.pop() {
        count += 1;
        if count > MAX_PATCHED_VALUES {
            return Err(PatchError::TooLarge(format!("more than {MAX_PATCHED_VALUES} values")));
        }
        if depth > MAX_PATCHED_DEPTH {
            return Err(PatchError::TooLarge(format!("nested deeper than {MAX_PATCHED_DEPTH} levels")));
        }
        match v {
            Value::Array(a) => stack.extend(a.iter().map(|c| (c, depth + 1))),
            Value::Object(o) => stack.extend(o.values().map(|c| (c, depth + 1))),
            _ => {}
        }
    }
    Ok(())
}

/// Applies `patch` to `doc` (a whole object of `kind`) in place.
pub fn apply(kind: &str, doc: &mut Value, patch: Value, ty: PatchType) -> Result<(), PatchError> {
    match ty {
        PatchType::Json => {
            let p: json_patch::Patch = serde_json::from_value(patch).map_err(PatchError::InvalidJsonPatch)?;
            if p.0.len() > MAX_JSON_PATCH_OPS {
                return Err(PatchError::TooLarge(format!("more than {MAX_JSON_PATCH_OPS} operations")));
            }
            // One op at a time, checking growth after each: `copy` can double
            // the document (or its depth) per op.
            for op in p.0 {
                json_patch::patch(doc, &json_patch::Patch(vec![op])).map_err(PatchError::JsonPatch)?;
                check_bounds(doc)?;
            }
            Ok(())
        }
        PatchType::Merge => {
            json_patch::merge(doc, &patch);
            Ok(())
        }
        PatchType::Strategic => {
            let Value::Object(p) = patch else {
                return Err(PatchError::NotObject);
            };
            if !doc.is_object() {
                *doc = Value::Object(Map::new());
            }
            if let Value::Object(o) = doc {
                merge_map(kind, "", o, p)?;
            }
            Ok(())
        }
    }
}

/// The patch tags of the Kubernetes types (`patchMergeKey`/`patchStrategy`)
/// as the OpenAPI documents publish them: (schema, property, merge key,
/// strategy). kubectl computes its apply patches from these, so they must
/// agree with [`strategy`], which applies patches here (a test checks it).
pub const PATCH_TAGS: &[(&str, &str, Option<&str>, &str)] = &[
    ("io.k8s.api.core.v1.PodSpec", "containers", Some("name"), "merge"),
    ("io.k8s.api.core.v1.PodSpec", "initContainers", Some("name"), "merge"),
    ("io.k8s.api.core.v1.PodSpec", "ephemeralContainers", Some("name"), "merge"),
    ("io.k8s.api.core.v1.PodSpec", "volumes", Some("name"), "merge,retainKeys"),
    ("io.k8s.api.core.v1.PodSpec", "imagePullSecrets", Some("name"), "merge"),
    ("io.k8s.api.core.v1.PodSpec", "resourceClaims", Some("name"), "merge,retainKeys"),
    ("io.k8s.api.core.v1.PodSpec", "schedulingGates", Some("name"), "merge"),
    ("io.k8s.api.core.v1.PodSpec", "hostAliases", Some("ip"), "merge"),
    ("io.k8s.api.core.v1.PodSpec", "topologySpreadConstraints", Some("topologyKey"), "merge"),
    ("io.k8s.api.core.v1.Container", "ports", Some("containerPort"), "merge"),
    ("io.k8s.api.core.v1.Container", "env", Some("name"), "merge"),
    ("io.k8s.api.core.v1.Container", "volumeMounts", Some("mountPath"), "merge"),
    ("io.k8s.api.core.v1.Container", "volumeDevices", Some("devicePath"), "merge"),
    ("io.k8s.api.core.v1.EphemeralContainer", "ports", Some("containerPort"), "merge"),
    ("io.k8s.api.core.v1.EphemeralContainer", "env", Some("name"), "merge"),
    ("io.k8s.api.core.v1.EphemeralContainer", "volumeMounts", Some("mountPath"), "merge"),
    ("io.k8s.api.core.v1.EphemeralContainer", "volumeDevices", Some("devicePath"), "merge"),
    ("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta", "finalizers", None, "merge"),
    ("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta", "ownerReferences", Some("uid"), "merge"),
    ("io.k8s.api.core.v1.PodStatus", "conditions", Some("type"), "merge"),
    ("io.k8s.api.core.v1.PodStatus", "podIPs", Some("ip"), "merge"),
    ("io.k8s.api.core.v1.PodStatus", "hostIPs", Some("ip"), "merge"),
    ("io.k8s.api.core.v1.NodeStatus", "conditions", Some("type"), "merge"),
    ("io.k8s.api.core.v1.NodeStatus", "addresses", Some("type"), "merge"),
    ("io.k8s.api.core.v1.NodeSpec", "podCIDRs", None, "merge"),
    ("io.k8s.api.core.v1.NamespaceStatus", "conditions", Some("type"), "merge"),
    ("io.k8s.api.core.v1.ServiceSpec", "ports", Some("port"), "merge"),
    ("io.k8s.api.core.v1.ServiceStatus", "conditions", Some("type"), "merge"),
    ("io.k8s.api.apps.v1.DeploymentStatus", "conditions", Some("type"), "merge"),
    ("io.k8s.api.apps.v1.ReplicaSetStatus", "conditions", Some("type"), "merge"),
    ("io.k8s.api.apps.v1.DaemonSetStatus", "conditions", Some("type"), "merge"),
];

/// How a list field merges under a strategic merge patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ListStrategy {
    /// Items are objects merged by this key.
    Key(&'static str),
    /// Items are scalars; the patch adds missing ones.
    Set,
    /// The patch's list replaces the whole list.
    Replace,
}

/// The strategy of the list at `path` (`spec.template.spec.containers[].env`)
/// in an object of `kind`, from the Kubernetes types' patch tags.
fn strategy(kind: &str, path: &str) -> ListStrategy {
    use ListStrategy::*;
    let pod_prefix = match kind {
        "Pod" => "spec.",
        "Deployment" | "ReplicaSet" | "DaemonSet" | "StatefulSet" | "Job" => "spec.template.spec.",
        "CronJob" => "spec.jobTemplate.spec.template.spec.",
        _ => "\u{0}",
    };
    if let Some(p) = path.strip_prefix(pod_prefix) {
        for c in ["containers[].", "initContainers[].", "ephemeralContainers[]."] {
            if let Some(field) = p.strip_prefix(c) {
                return match field {
                    "ports" => Key("containerPort"),
                    "env" => Key("name"),
                    "volumeMounts" => Key("mountPath"),
                    "volumeDevices" => Key("devicePath"),
                    _ => Replace,
                };
            }
        }
        return match p {
            "containers"
            | "initContainers"
            | "ephemeralContainers"
            | "volumes"
            | "imagePullSecrets"
            | "resourceClaims"
            | "schedulingGates" => Key("name"),
            "hostAliases" => Key("ip"),
            "topologySpreadConstraints" => Key("topologyKey"),
            _ => Replace,
        };
    }
    match path {
        "metadata.finalizers" | "spec.template.metadata.finalizers" => Set,
        "metadata.ownerReferences" | "spec.template.metadata.ownerReferences" => Key("uid"),
        "status.conditions" => Key("type"),
        "status.podIPs" | "status.hostIPs" => Key("ip"),
        "status.addresses" if kind == "Node" => Key("type"),
        "spec.podCIDRs" if kind == "Node" => Set,
        "spec.ports" if kind == "Service" => Key("port"),
        _ => Replace,
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_owned() } else { format!("{path}.{key}") }
}

/// Removes directives and nulls from patch content that is inserted as new.
fn clean(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter().filter(|(k, v)| !k.starts_with('$') && !v.is_null()).map(|(k, v)| (k, clean(v))).collect(),
        ),
        Value::Array(a) => Value::Array(
            a.into_iter().filter(|v| v.get("$patch").and_then(Value::as_str) != Some("delete")).map(clean).collect(),
        ),
        other => other,
    }
}

fn merge_map(
    kind: &str,
    path: &str,
    orig: &mut Map<String, Value>,
    mut patch: Map<String, Value>,
) -> Result<(), PatchError> {
    match patch.remove("$patch").as_ref().and_then(Value::as_str) {
        None | Some("merge") => {}
        Some("replace") => {
            *orig = match clean(Value::Object(patch)) {
                Value::Object(m) => m,
                _ => Map::new(),
            };
            return Ok(());
        }
        Some("delete") => {
            orig.clear();
            return Ok(());
        }
        Some(other) => return Err(PatchError::Directive(other.to_owned())),
    }
    let retain = patch.remove("$retainKeys");
    let mut orders = Vec::new();
    for (k, pv) in patch {
        if let Some(field) = k.strip_prefix("$setElementOrder/") {
            orders.push((field.to_owned(), pv));
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Value::Array(del)) = (orig.get_mut(field), pv) {
                list.retain(|item| !del.contains(item));
            }
            continue;
        }
        if k.starts_with('$') {
            return Err(PatchError::Directive(k));
        }
        let child = join(path, &k);
        if pv.is_null() {
            orig.remove(&k);
            continue;
        }
        match (orig.get_mut(&k), pv) {
            (Some(Value::Object(o)), Value::Object(p)) => merge_map(kind, &child, o, p)?,
            (Some(Value::Array(o)), Value::Array(p)) => merge_list(kind, &child, o, p)?,
            (_, pv) => {
                orig.insert(k, clean(pv));
            }
        }
    }
    for (field, order) in orders {
        if let (Some(Value::Array(list)), Value::Array(order)) = (orig.get_mut(&field), order) {
            reorder(kind, &join(path, &field), list, &order);
        }
    }
    if let Some(Value::Array(keep)) = retain {
        orig.retain(|k, _| keep.iter().any(|r| r.as_str() == Some(k)));
    }
    Ok(())
}

fn merge_list(kind: &str, path: &str, orig: &mut Vec<Value>, patch: Vec<Value>) -> Result<(), PatchError> {
    match strategy(kind, path) {
        ListStrategy::Replace => *orig = clean(Value::Array(patch)).as_array().cloned().unwrap_or_default(),
        ListStrategy::Set => {
            for item in patch {
                if !orig.contains(&item) {
                    orig.push(item);
                }
            }
        }
        ListStrategy::Key(key) => {
            if patch.iter().any(|p| p.get("$patch").and_then(Value::as_str) == Some("replace")) {
                *orig = patch
                    .into_iter()
                    .filter(|p| p.get("$patch").and_then(Value::as_str) != Some("replace"))
                    .map(clean)
                    .collect();
                return Ok(());
            }
            let item_path = format!("{path}[]");
            for item in patch {
                let Value::Object(mut p) = item else {
                    orig.push(item);
                    continue;
                };
                let k = p.get(key).cloned();
                let pos = k.as_ref().and_then(|k| orig.iter().position(|o| o.get(key) == Some(k)));
                if p.get("$patch").and_then(Value::as_str) == Some("delete") {
                    if let Some(k) = &k {
                        orig.retain(|o| o.get(key) != Some(k));
                    }
                    continue;
                }
                match pos {
                    Some(i) => {
                        if let Some(Value::Object(o)) = orig.get_mut(i) {
                            merge_map(kind, &item_path, o, p)?;
                        }
                    }
                    None => {
                        p.remove("$patch");
                        orig.push(clean(Value::Object(p)));
                    }
                }
            }
        }
    }
    Ok(())
}

/// `$setElementOrder`: items named in `order` come first, in that order;
/// the rest keep their relative order after them.
fn reorder(kind: &str, path: &str, list: &mut Vec<Value>, order: &[Value]) {
    let pos_of = |item: &Value| -> Option<usize> {
        match strategy(kind, path) {
            ListStrategy::Key(key) => order.iter().position(|o| o.get(key).is_some() && o.get(key) == item.get(key)),
            _ => order.iter().position(|o| o == item),
        }
    };
    let mut indexed: Vec<(usize, usize, Value)> =
        list.drain(..).enumerate().map(|(i, v)| (pos_of(&v).unwrap_or(usize::MAX), i, v)).collect();
    indexed.sort_by_key(|(p, i, _)| (*p, *i));
    list.extend(indexed.into_iter().map(|(_, _, v)| v));
}

#[cfg(test)]
mod tests;
