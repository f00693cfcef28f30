//! CustomResourceDefinitions: the kinds a definition adds to the registry,
//! and what its objects look like at the API (a stored object is kept in
//! the CRD's storage version and shown in the version asked for: the
//! `None` conversion, the only one served).

use serde_json::{Value, json};

use crate::resources::{Custom, Registry, ResourceType, ScalePaths};
use crate::store::Store;

/// The group CRDs are served in.
pub const GROUP: &str = "apiextensions.k8s.io";

/// Where CRDs are stored.
pub const ID: &str = "apiextensions.k8s.io/customresourcedefinitions";

/// The finalizer that holds a deleted CRD until its objects are gone.
pub const CLEANUP_FINALIZER: &str = "customresourcecleanup.apiextensions.k8s.io";

fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or_default()
}

fn strings(v: &Value, ptr: &str) -> Vec<String> {
    v.pointer(ptr)
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

/// The served versions of `crd` as resource types (the CRD controller
/// serves them once their names are accepted, and until the CRD's objects
/// are gone after its deletion).
pub fn types(kinds: &Registry, crd: &Value) -> Vec<ResourceType> {
    let name = s(crd, "/metadata/name");
    let spec = &crd["spec"];
    let (group, kind, plural) = (s(spec, "/group"), s(spec, "/names/kind"), s(spec, "/names/plural"));
    if name.is_empty() || group.is_empty() || kind.is_empty() || plural.is_empty() {
        return Vec::new();
    }
    let versions = spec["versions"].as_array().cloned().unwrap_or_default();
    let Some(storage) = versions.iter().find(|v| v["storage"] == true).map(|v| s(v, "/name").to_owned()) else {
        return Vec::new();
    };
    let singular = match s(spec, "/names/singular") {
        "" => kind.to_lowercase(),
        other => other.to_owned(),
    };
    versions
        .iter()
        .filter(|v| v["served"] == true)
        .map(|v| {
            let scale = v.pointer("/subresources/scale").map(|sc| ScalePaths {
                spec_replicas: s(sc, "/specReplicasPath").to_owned(),
                status_replicas: s(sc, "/statusReplicasPath").to_owned(),
                label_selector: sc.get("labelSelectorPath").and_then(Value::as_str).map(str::to_owned),
            });
            let custom = Custom {
                crd: name.to_owned(),
                storage_version: storage.clone(),
                schema: v.pointer("/schema/openAPIV3Schema").cloned(),
                columns: v["additionalPrinterColumns"].as_array().cloned().unwrap_or_default(),
                scale: scale.clone(),
                categories: strings(spec, "/names/categories"),
            };
            let categories = &custom.categories;
            ResourceType {
                group: kinds.intern(group),
                version: kinds.intern(s(v, "/name")),
                kind: kinds.intern(kind),
                plural: kinds.intern(plural),
                singular: kinds.intern(&singular),
                short_names: kinds.intern_list(&strings(spec, "/names/shortNames")),
                namespaced: s(spec, "/scope") != "Cluster",
                id: kinds.intern(&format!("{group}/{plural}")),
                status: v.pointer("/subresources/status").is_some(),
                scale: scale.is_some(),
                generation: true,
                in_all: categories.iter().any(|c| c == "all"),
                fields: &[],
                custom: Some(Box::new(custom)),
            }
        })
        .collect()
}

/// A CRD as admitted, tidied: the typed schema holds bounds as floats,
/// which Kubernetes writes as the integers they were (`maximum: 10`).
pub fn tidy(crd: &mut Value) {
    fn walk(v: &mut Value) {
        match v {
            Value::Object(m) => {
                for (k, x) in m.iter_mut() {
                    match k.as_str() {
                        "minimum" | "maximum" | "multipleOf" if x.is_number() => {
                            if let Some(f) = x.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15) {
                                *x = json!(f as i64);
                            }
                        }
                        // (Data, unless a property has that name.)
                        "default" | "enum" | "example" if !x.is_object() => {}
                        _ => walk(x),
                    }
                }
            }
            Value::Array(a) => a.iter_mut().for_each(walk),
            _ => {}
        }
    }
    for v in crd.pointer_mut("/spec/versions").and_then(Value::as_array_mut).into_iter().flatten() {
        if let Some(s) = v.pointer_mut("/schema/openAPIV3Schema") {
            walk(s);
        }
    }
}

/// The status a new CRD starts with, as Kubernetes writes it: no names
/// accepted yet, the storage version recorded.
pub fn initial_status(crd: &mut Value) {
    crd["status"] = json!({"acceptedNames": {"plural": "", "kind": ""}, "storedVersions": []});
    record_storage_version(crd);
}

/// Adds the storage version to `status.storedVersions` (versions objects
/// may be stored in; never removed but by an edit of the status).
pub fn record_storage_version(crd: &mut Value) {
    let storage = crd["spec"]["versions"]
        .as_array()
        .and_then(|vs| vs.iter().find(|v| v["storage"] == true))
        .and_then(|v| v["name"].as_str())
        .map(str::to_owned);
    let Some(storage) = storage else { return };
    if !crd["status"].is_object() {
        crd["status"] = json!({"acceptedNames": {"plural": "", "kind": ""}});
    }
    let stored = &mut crd["status"]["storedVersions"];
    match stored.as_array_mut() {
        Some(list) if list.iter().any(|v| v == storage.as_str()) => {}
        Some(list) => list.push(json!(storage)),
        None => *stored = json!([storage]),
    }
}

/// Whether the CRD is established (its kinds are served).
pub fn established(crd: &Value) -> bool {
    crd.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Established" && c["status"] == "True"))
}

/// Serves the kinds of every established CRD in the store (at start, before
/// the API answers).
pub fn load(store: &Store) -> Result<(), crate::store::StoreError> {
    let (crds, _) = store.list(ID, None, None)?;
    for crd in crds.iter().filter(|c| established(c)) {
        store.kinds().set(s(crd, "/metadata/name"), types(store.kinds(), crd));
    }
    Ok(())
}

/// `obj` as the version `rt` serves (stored objects carry the storage
/// version's `apiVersion`; the `None` conversion changes only that).
pub fn present(rt: &ResourceType, obj: &mut Value) {
    if rt.custom.is_some() && obj.is_object() {
        let av = rt.api_version();
        if obj["apiVersion"].as_str() != Some(&av) {
            obj["apiVersion"] = json!(av);
        }
    }
}

/// `obj` as it is stored: in its CRD's storage version.
pub fn to_storage(rt: &ResourceType, obj: &mut Value) {
    if let Some(c) = &rt.custom {
        if c.storage_version != rt.version && obj.is_object() {
            obj["apiVersion"] = json!(format!("{}/{}", rt.group, c.storage_version));
        }
    }
}

/// The value at a CRD's simple JSON path (`.spec.replicas`).
pub fn at_path<'a>(obj: &'a Value, path: &str) -> Option<&'a Value> {
    let ptr: String = path.split('.').filter(|p| !p.is_empty()).map(|p| format!("/{p}")).collect();
    obj.pointer(&ptr)
}

/// Sets the value at a CRD's simple JSON path, making the objects on the way.
pub fn set_path(obj: &mut Value, path: &str, v: Value) {
    let mut cur = obj;
    let parts: Vec<&str> = path.split('.').filter(|p| !p.is_empty()).collect();
    for (i, p) in parts.iter().enumerate() {
        if !cur.is_object() {
            *cur = json!({});
        }
        if i + 1 == parts.len() {
            cur[*p] = v;
            return;
        }
        cur = &mut cur[*p];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crd(schema_note: &str) -> Value {
        json!({
            "metadata": {"name": "widgets.example.com"},
            "spec": {
                "group": "example.com", "scope": "Namespaced",
                "names": {"plural": "widgets", "kind": "Widget", "shortNames": ["wd"], "categories": ["all"]},
                "versions": [
                    {"name": "v1beta1", "served": true, "storage": false,
                     "schema": {"openAPIV3Schema": {"type": "object", "description": schema_note}}},
                    {"name": "v1", "served": true, "storage": true,
                     "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas"}},
                     "schema": {"openAPIV3Schema": {"type": "object", "description": schema_note}}},
                    {"name": "v0", "served": false, "storage": false},
                ],
            },
        })
    }

    #[test]
    fn a_crd_serves_its_versions_once_per_change() {
        let kinds = Registry::default();
        kinds.set("widgets.example.com", types(&kinds, &crd("a")));
        let v1 = kinds.find("example.com", "v1", "widgets").expect("v1 served");
        assert!(v1.namespaced && v1.status && v1.scale && v1.in_all && v1.short_names == ["wd"]);
        assert_eq!((v1.id, v1.singular), ("example.com/widgets", "widget"));
        assert!(kinds.find("example.com", "v0", "widgets").is_none(), "not served");
        assert_eq!(kinds.by_kind("example.com", "Widget").map(|r| r.version), Some("v1"), "the storage version");
        assert_eq!(kinds.stored().iter().filter(|r| r.group == "example.com").count(), 1);
        assert!(kinds.groups().contains(&("example.com", vec!["v1", "v1beta1"])), "preferred first");
        // The same definition again (a status update) keeps the same types.
        let changes = kinds.changes();
        kinds.set("widgets.example.com", types(&kinds, &crd("a")));
        assert!(std::ptr::eq(v1, kinds.find("example.com", "v1", "widgets").expect("v1")));
        assert_eq!(kinds.changes(), changes);
        kinds.set("widgets.example.com", types(&kinds, &crd("b")));
        assert!(kinds.changes() > changes, "a changed schema is a change");
        kinds.set("widgets.example.com", Vec::new());
        assert!(kinds.find("example.com", "v1", "widgets").is_none() && !kinds.serves("example.com", "v1"));
        assert!(kinds.find("", "v1", "pods").is_some(), "the built-in kinds stay");
    }

    #[test]
    fn objects_are_stored_in_the_storage_version_and_shown_in_the_one_asked() {
        let kinds = Registry::default();
        kinds.set("widgets.example.com", types(&kinds, &crd("a")));
        let beta = kinds.find("example.com", "v1beta1", "widgets").expect("beta");
        let mut o = json!({"apiVersion": "example.com/v1beta1", "kind": "Widget"});
        to_storage(beta, &mut o);
        assert_eq!(o["apiVersion"], "example.com/v1");
        present(beta, &mut o);
        assert_eq!(o["apiVersion"], "example.com/v1beta1");
    }

    #[test]
    fn paths_and_status() {
        let mut o = json!({"spec": {}});
        set_path(&mut o, ".spec.scale.replicas", json!(3));
        assert_eq!(at_path(&o, ".spec.scale.replicas"), Some(&json!(3)));
        let mut c = crd("a");
        c["spec"]["versions"][1]["schema"]["openAPIV3Schema"]["maximum"] = json!(10.0);
        tidy(&mut c);
        assert_eq!(c["spec"]["versions"][1]["schema"]["openAPIV3Schema"]["maximum"].to_string(), "10");
        initial_status(&mut c);
        assert_eq!(c["status"], json!({"acceptedNames": {"plural": "", "kind": ""}, "storedVersions": ["v1"]}));
        c["spec"]["versions"][0]["storage"] = json!(true);
        c["spec"]["versions"][1]["storage"] = json!(false);
        record_storage_version(&mut c);
        assert_eq!(c["status"]["storedVersions"], json!(["v1", "v1beta1"]));
    }
}
