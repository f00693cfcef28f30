//! The shape structured-merge-diff needs of each kind: which fields are
//! structs (owned field by field), maps (key by key), lists keyed by some
//! of their items' fields, sets, or atomic (owned whole). Built once, on
//! first use, from the same `k8s-openapi` schemas as the OpenAPI documents;
//! lists follow Kubernetes' list types, which for the built-in kinds come
//! from their patch tags (a merge key makes a keyed list, a merge without
//! one a set, anything else is atomic), with the few keys of several
//! fields written out. Fields of no known kind are taken from the value:
//! objects field by field, lists whole.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListKind {
    Atomic,
    Set,
    /// Keyed by these fields of the items.
    Map(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ty {
    /// A struct, by definition name.
    Struct(String),
    Map(Box<Ty>),
    List(ListKind, Box<Ty>),
    /// A scalar, or anything owned whole.
    Leaf,
    /// Not known: objects field by field, lists whole.
    Any,
    /// An object of a custom resource's schema, by its schema (lists of
    /// it follow `x-kubernetes-list-type`, atomic when not given).
    Schema(&'static Value),
}

const OBJECT_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";

/// The type a custom resource's schema node stands for.
fn from_schema(s: &'static Value) -> Ty {
    match s.get("type").and_then(Value::as_str) {
        Some("array") => {
            let kind = match s.get("x-kubernetes-list-type").and_then(Value::as_str) {
                Some("map") => ListKind::Map(
                    s.get("x-kubernetes-list-map-keys")
                        .and_then(Value::as_array)
                        .map(|k| k.iter().filter_map(|k| k.as_str().map(str::to_owned)).collect())
                        .unwrap_or_default(),
                ),
                Some("set") => ListKind::Set,
                _ => ListKind::Atomic,
            };
            Ty::List(kind, Box::new(s.get("items").map_or(Ty::Any, from_schema)))
        }
        _ if s.get("x-kubernetes-map-type").and_then(Value::as_str) == Some("atomic") => Ty::Leaf,
        Some("object") | None if s.get("properties").is_some() => Ty::Schema(s),
        Some("object") => match s.get("additionalProperties") {
            Some(ap) if ap.is_object() => Ty::Map(Box::new(from_schema(ap))),
            _ => Ty::Any,
        },
        None if s.get("x-kubernetes-preserve-unknown-fields").is_some() => Ty::Any,
        _ => Ty::Leaf,
    }
}

/// Structs Kubernetes marks `+structType=atomic`.
const ATOMIC_STRUCTS: &[&str] = &[
    "io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelector",
    "io.k8s.api.core.v1.NodeSelector",
    "io.k8s.api.core.v1.LocalObjectReference",
    "io.k8s.api.core.v1.ObjectReference",
    "io.k8s.api.core.v1.TypedLocalObjectReference",
    "io.k8s.api.core.v1.TypedObjectReference",
    "io.k8s.api.core.v1.ConfigMapKeySelector",
    "io.k8s.api.core.v1.SecretKeySelector",
    "io.k8s.api.core.v1.ObjectFieldSelector",
    "io.k8s.api.core.v1.ResourceFieldSelector",
];

/// Lists keyed by more than their patch merge key (`+listMapKey` twice).
const MULTI_KEYS: &[(&str, &str, &[&str])] = &[
    ("io.k8s.api.core.v1.Container", "ports", &["containerPort", "protocol"]),
    ("io.k8s.api.core.v1.EphemeralContainer", "ports", &["containerPort", "protocol"]),
    ("io.k8s.api.core.v1.ServiceSpec", "ports", &["port", "protocol"]),
    ("io.k8s.api.core.v1.PodSpec", "topologySpreadConstraints", &["topologyKey", "whenUnsatisfiable"]),
];

pub struct Table {
    /// Struct → its fields.
    structs: HashMap<String, HashMap<String, Ty>>,
    /// (group, kind) → its root struct.
    roots: HashMap<(String, String), String>,
}

fn list_kind(owner: &str, prop: &str) -> ListKind {
    if let Some((_, _, keys)) = MULTI_KEYS.iter().find(|(o, p, _)| *o == owner && *p == prop) {
        return ListKind::Map(keys.iter().map(|k| (*k).to_owned()).collect());
    }
    match crate::patch::PATCH_TAGS.iter().find(|(o, p, _, _)| *o == owner && *p == prop) {
        Some((_, _, Some(key), _)) => ListKind::Map(vec![(*key).to_owned()]),
        Some((_, _, None, _)) => ListKind::Set,
        None => ListKind::Atomic,
    }
}

fn reference(s: &Value) -> Option<&str> {
    let r = s.get("$ref").or_else(|| s.pointer("/allOf/0/$ref"))?.as_str()?;
    r.strip_prefix("#/components/schemas/")
}

fn convert(defs: &serde_json::Map<String, Value>, s: &Value, owner: &str, prop: &str) -> Ty {
    if let Some(name) = reference(s) {
        if ATOMIC_STRUCTS.contains(&name) {
            return Ty::Leaf;
        }
        return match defs.get(name) {
            Some(d) if d.get("properties").is_some() => Ty::Struct(name.to_owned()),
            Some(d) if d.get("additionalProperties").is_some_and(Value::is_object) => {
                Ty::Map(Box::new(convert(defs, &d["additionalProperties"], name, "")))
            }
            _ => Ty::Leaf,
        };
    }
    match s.get("type").and_then(Value::as_str) {
        Some("array") => {
            let elem = s.get("items").map_or(Ty::Any, |i| convert(defs, i, owner, prop));
            Ty::List(list_kind(owner, prop), Box::new(elem))
        }
        Some("object") => match s.get("additionalProperties") {
            Some(ap) if ap.is_object() => Ty::Map(Box::new(convert(defs, ap, owner, prop))),
            _ => Ty::Any,
        },
        _ => Ty::Leaf,
    }
}

impl Table {
    fn build() -> Table {
        let mut structs = HashMap::new();
        // A group at a time: each group's schemas hold every definition its
        // kinds refer to, and only one group's are in memory at once.
        for (group, version) in crate::resources::GROUPS {
            let defs = crate::api::openapi::schemas(group, version);
            for (name, d) in &defs {
                if structs.contains_key(name) {
                    continue;
                }
                if let Some(props) = d.get("properties").and_then(Value::as_object) {
                    let fields: HashMap<String, Ty> =
                        props.iter().map(|(p, s)| (p.clone(), convert(&defs, s, name, p))).collect();
                    structs.insert(name.clone(), fields);
                }
            }
        }
        let roots = crate::resources::RESOURCES
            .iter()
            .filter_map(|rt| Some(((rt.group.to_owned(), rt.kind.to_owned()), crate::api::openapi::schema_name(rt)?)))
            .collect();
        Table { structs, roots }
    }

    /// The table, made on first use.
    pub fn get() -> &'static Table {
        static TABLE: OnceLock<Table> = OnceLock::new();
        TABLE.get_or_init(Table::build)
    }

    /// The root type of a kind (`Any` for one not known).
    pub fn root(&self, rt: &'static crate::resources::ResourceType) -> Ty {
        if let Some(c) = &rt.custom {
            return c.schema.as_ref().map_or(Ty::Any, from_schema);
        }
        self.roots.get(&(rt.group.to_owned(), rt.kind.to_owned())).map_or(Ty::Any, |n| Ty::Struct(n.clone()))
    }

    /// Whether `ty` may have a field `name` (a known struct only its own;
    /// a map or an unknown shape any).
    pub fn has_field(&self, ty: &Ty, name: &str) -> bool {
        match ty {
            Ty::Struct(s) => self.structs.get(s).is_none_or(|f| f.contains_key(name)),
            Ty::Schema(s) => {
                s.pointer(&format!("/properties/{}", name.replace('~', "~0").replace('/', "~1"))).is_some()
                    || s.get("x-kubernetes-preserve-unknown-fields").is_some_and(|p| p == true)
                    || matches!(name, "apiVersion" | "kind" | "metadata")
            }
            _ => true,
        }
    }

    /// The type of field `name` of `ty`.
    pub fn field(&self, ty: &Ty, name: &str) -> Ty {
        match ty {
            Ty::Struct(s) => self.structs.get(s).and_then(|f| f.get(name)).cloned().unwrap_or(Ty::Any),
            Ty::Schema(s) => match s.get("properties").and_then(|p| p.get(name)) {
                Some(sub) => from_schema(sub),
                // (A custom resource's metadata is any object's.)
                None if name == "metadata" => Ty::Struct(OBJECT_META.to_owned()),
                None => Ty::Any,
            },
            Ty::Map(elem) => (**elem).clone(),
            _ => Ty::Any,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_have_kubernetes_list_types() {
        let t = Table::get();
        let rt = |g, k| crate::resources::by_kind(g, k).expect("served");
        let pod = t.root(rt("", "Pod"));
        let spec = t.field(&pod, "spec");
        let containers = t.field(&spec, "containers");
        assert!(matches!(&containers, Ty::List(ListKind::Map(k), _) if k == &["name"]), "{containers:?}");
        let Ty::List(_, container) = containers else { unreachable!() };
        assert!(
            matches!(t.field(&container, "ports"), Ty::List(ListKind::Map(k), _) if k == ["containerPort", "protocol"])
        );
        assert_eq!(t.field(&container, "args"), Ty::List(ListKind::Atomic, Box::new(Ty::Leaf)));
        let meta = t.field(&pod, "metadata");
        assert_eq!(t.field(&meta, "labels"), Ty::Map(Box::new(Ty::Leaf)));
        assert!(matches!(t.field(&meta, "finalizers"), Ty::List(ListKind::Set, _)));
        let deploy = t.root(rt("apps", "Deployment"));
        assert_eq!(t.field(&t.field(&deploy, "spec"), "selector"), Ty::Leaf, "selectors are atomic");
    }
}
