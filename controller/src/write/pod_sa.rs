//! Kubernetes' ServiceAccount admission, on a pod being created: its
//! `serviceAccountName` (default `default`) must name an account of its
//! namespace, and unless the pod or the account says
//! `automountServiceAccountToken: false`, the pod gets the
//! `kube-api-access-…` projected volume — a token bound to the pod, the
//! cluster CA (`kube-root-ca.crt`) and the namespace — mounted read-only
//! at `/var/run/secrets/kubernetes.io/serviceaccount` in every container.
//! Mirror pods (static pods on a node) are left alone, as Kubernetes does.

use serde_json::{Value, json};

use super::WriteError;
use crate::meta;
use crate::store::{Key, Store};

pub const MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// What the token source asks for, as Kubernetes injects it; the fleet
/// stretches it to a year when it mints the token.
pub const INJECTED_TOKEN_SECONDS: i64 = 3607;

/// Admits `pod` (JSON, after validation); `mount`: whether tokens can be
/// mounted at all (not without TLS, where there is no CA to trust).
pub(super) fn admit(store: &Store, pod: &mut Value, mount: bool) -> Result<(), WriteError> {
    if pod.pointer("/metadata/annotations/kubernetes.io~1config.mirror").is_some() {
        return Ok(());
    }
    let ns = meta::get_str(pod, "namespace").unwrap_or_default().to_owned();
    let spec = pod.get_mut("spec").and_then(Value::as_object_mut).ok_or(WriteError::NotAnObject)?;
    let name = spec
        .get("serviceAccountName")
        .or_else(|| spec.get("serviceAccount"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or("default")
        .to_owned();
    spec.insert("serviceAccountName".into(), json!(name));
    spec.insert("serviceAccount".into(), json!(name));
    let id = crate::resources::by_kind("", "ServiceAccount").map_or("core/serviceaccounts", |r| r.id);
    let account = store.get(&Key::new(id, &ns, &name))?;
    // `default` is made with its namespace, moments later: a pod that
    // races it is admitted, and its token follows once the account exists.
    if account.is_none() && name != "default" {
        return Err(WriteError::NoServiceAccount { namespace: ns, name });
    }
    let automount = spec
        .get("automountServiceAccountToken")
        .and_then(Value::as_bool)
        .or_else(|| account.as_ref().and_then(|a| a.get("automountServiceAccountToken")).and_then(Value::as_bool))
        .unwrap_or(true);
    if !mount || !automount {
        return Ok(());
    }
    let mounted = |c: &Value| {
        c.get("volumeMounts").and_then(Value::as_array).is_some_and(|m| {
            m.iter().any(|m| {
                m.get("mountPath").and_then(Value::as_str).map(|p| p.trim_end_matches('/')) == Some(MOUNT_PATH)
            })
        })
    };
    let lists = ["containers", "initContainers"];
    let all: Vec<&Value> = lists.iter().filter_map(|l| spec.get(*l).and_then(Value::as_array)).flatten().collect();
    if all.iter().any(|c| mounted(c)) {
        return Ok(());
    }
    let volume = format!("kube-api-access-{}", meta::random_suffix());
    let source = json!({
        "name": volume,
        "projected": {
            "defaultMode": 0o644,
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": INJECTED_TOKEN_SECONDS, "path": "token"}},
                {"configMap": {"name": crate::controllers::serviceaccount::ROOT_CA, "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
            ],
        },
    });
    match spec.get_mut("volumes").and_then(Value::as_array_mut) {
        Some(v) => v.push(source),
        None => {
            spec.insert("volumes".into(), json!([source]));
        }
    }
    for list in lists {
        for c in spec.get_mut(list).and_then(Value::as_array_mut).into_iter().flatten() {
            let mount = json!({"name": volume, "readOnly": true, "mountPath": MOUNT_PATH});
            match c.get_mut("volumeMounts").and_then(Value::as_array_mut) {
                Some(m) => m.push(mount),
                None => c["volumeMounts"] = json!([mount]),
            }
        }
    }
    Ok(())
}
