//! Mirror pods: each static pod a node reports is shown in the API as a pod
//! of the same name, bound to the node, owned by its Node, annotated
//! `kubernetes.io/config.mirror` (the static pod's uid) — as the kubelet
//! makes them. They are read-only (`validate/kinds.rs`), never sent back to
//! a node (`desired.rs` skips them), deleted at once when deleted (nothing
//! to stop: the static pod runs on; the next report makes the mirror again),
//! and removed when the node no longer reports the static pod.
//!
//! What a node may make here is bounded as Kubernetes' NodeRestriction
//! bounds a kubelet: only pods bound to itself, named `…-NODE` (as the
//! agent names static pods), never over a pod that is not its own mirror.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Node, Pod};
use kedge_common::pod::Pod as StaticPod;
use serde_json::{Value, json};

use crate::client::{Client, Kind};
use crate::controllers::ControllerError;
use crate::validate::FieldValidation;
use crate::write::WriteOpts;

pub const MIRROR: &str = "kubernetes.io/config.mirror";
pub const HASH: &str = "kubernetes.io/config.hash";
pub const SOURCE: &str = "kubernetes.io/config.source";

/// Whether a stored pod (JSON) is a mirror pod.
pub fn is_mirror(obj: &Value) -> bool {
    obj.pointer("/metadata/annotations").and_then(|a| a.get(MIRROR)).is_some()
}

fn mirror_of(p: &Pod) -> Option<&str> {
    p.metadata.annotations.as_ref()?.get(MIRROR).map(String::as_str)
}

/// The API pod shown for `s`, a static pod of `node`.
fn mirror_pod(s: &StaticPod, node: &Node) -> Value {
    let mut spec = serde_json::to_value(&s.spec).unwrap_or_else(|_| json!({}));
    spec["nodeName"] = json!(node.metadata.name);
    // Inline files stay on the node: their volumes show by name.
    if let Some(vols) = spec.get_mut("volumes").and_then(Value::as_array_mut) {
        for v in vols {
            if let Some(cm) = v.get("configMap").cloned() {
                v["configMap"] = json!({"name": cm.get("name"), "defaultMode": cm.get("defaultMode")});
            }
            if let Some(sec) = v.get("secret").cloned() {
                v["secret"] = json!({"secretName": sec.get("name"), "defaultMode": sec.get("defaultMode")});
            }
        }
    }
    let uid = s.metadata.uid.clone().unwrap_or_default();
    let mut annotations = s.metadata.annotations.clone();
    annotations.insert(MIRROR.into(), uid.clone());
    annotations.insert(HASH.into(), uid);
    annotations.insert(SOURCE.into(), "file".into());
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": s.metadata.name,
            "namespace": s.namespace(),
            "labels": s.metadata.labels,
            "annotations": annotations,
            "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": node.metadata.name,
                "uid": node.metadata.uid, "controller": true}],
        },
        "spec": spec,
    })
}

/// The static pods each node last reported, and which were mirrored: the
/// fleet ingest fills it, the [`MirrorController`] puts back a mirror pod
/// deleted through the API at once (not at the node's next report).
#[derive(Default)]
pub struct Mirrors {
    state: std::sync::Mutex<MirrorState>,
}

#[derive(Default)]
struct MirrorState {
    statics: BTreeMap<String, Vec<StaticPod>>,
    known: BTreeMap<String, BTreeSet<String>>,
}

impl Mirrors {
    fn state(&self) -> std::sync::MutexGuard<'_, MirrorState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A node's report: its static pods, mirrored.
    pub fn report(&self, client: &Client, node: &Node, statics: Vec<StaticPod>) -> Result<(), ControllerError> {
        let mut st = self.state();
        let name = node.metadata.name.clone().unwrap_or_default();
        let st = &mut *st;
        let list = st.statics.entry(name).or_default();
        *list = statics;
        sync(client, node, list, &mut st.known)
    }

    /// The mirrors of `node` again, from what it last reported.
    fn resync(&self, client: &Client, node: &str) -> Result<(), ControllerError> {
        let Some(n) = client.get::<Node>("", node)? else {
            let mut st = self.state();
            st.statics.remove(node);
            st.known.remove(node);
            return Ok(());
        };
        let mut st = self.state();
        let st = &mut *st;
        let Some(list) = st.statics.get(node) else { return Ok(()) };
        sync(client, &n, list, &mut st.known)
    }
}

/// Puts back a mirror pod deleted through the API (Kubernetes' kubelet
/// makes it again; the static pod never stopped).
pub struct MirrorController {
    client: Client,
    mirrors: std::sync::Arc<Mirrors>,
    pod_id: &'static str,
}

impl MirrorController {
    pub fn new(client: Client, mirrors: std::sync::Arc<Mirrors>) -> Result<Self, ControllerError> {
        Ok(MirrorController { client, mirrors, pod_id: Pod::rt()?.id })
    }
}

impl crate::controllers::runner::Reconcile for MirrorController {
    fn name(&self) -> &'static str {
        "mirror-pods"
    }

    fn keys_for(&mut self, ev: &crate::store::WatchEvent, out: &mut Vec<crate::store::Key>) {
        if ev.resource == self.pod_id && ev.kind == crate::store::EventType::Deleted && is_mirror(&ev.object) {
            if let Some(node) = ev.object.pointer("/spec/nodeName").and_then(Value::as_str) {
                out.push(crate::store::Key::new("core/nodes", "", node));
            }
        }
    }

    fn all_keys(&mut self) -> Result<Vec<crate::store::Key>, ControllerError> {
        Ok(Vec::new())
    }

    fn reconcile(&mut self, key: &crate::store::Key) -> Result<crate::controllers::runner::Action, ControllerError> {
        self.mirrors.resync(&self.client, &key.name)?;
        Ok(crate::controllers::runner::Action::Done)
    }
}

/// Keeps the mirror pods of `node` in step with the static pods it reports.
/// `known` is what was last synced for the node (static uid per pod key):
/// stale mirrors are looked for only when it changes.
pub fn sync(
    client: &Client,
    node: &Node,
    statics: &[StaticPod],
    known: &mut BTreeMap<String, BTreeSet<String>>,
) -> Result<(), ControllerError> {
    let name = node.metadata.name.clone().unwrap_or_default();
    let rt = Pod::rt()?;
    let mut uids = BTreeSet::new();
    let mut seen = BTreeSet::new();
    for s in statics {
        let (ns, pod_name) = (s.namespace().to_owned(), s.metadata.name.clone());
        // Two static pods of one name (two files, or a node that says so):
        // the first is mirrored, or they would replace each other forever.
        if !seen.insert((ns.clone(), pod_name.clone())) {
            tracing::warn!(node = %name, pod = %format!("{ns}/{pod_name}"), "two static pods of one name: the second is not mirrored");
            continue;
        }
        let uid = s.metadata.uid.clone().unwrap_or_default();
        if !pod_name.ends_with(&format!("-{name}")) || uid.is_empty() {
            tracing::warn!(node = %name, pod = %format!("{ns}/{pod_name}"), "static pod not mirrored: its name must end with -{name}");
            continue;
        }
        uids.insert(uid.clone());
        match client.get::<Pod>(&ns, &pod_name)? {
            Some(p) if mirror_of(&p) == Some(uid.as_str()) => continue,
            Some(p) => {
                let ours = mirror_of(&p).is_some()
                    && p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(name.as_str());
                if !ours {
                    tracing::warn!(node = %name, pod = %format!("{ns}/{pod_name}"), "static pod not mirrored: another pod has its name");
                    continue;
                }
                // The static pod changed: a new mirror, as the kubelet does.
                super::super::controllers::ignore_not_found(client.delete_now::<Pod>(
                    &ns,
                    &pod_name,
                    p.metadata.uid.as_deref(),
                ))?;
            }
            None => {}
        }
        let opts = WriteOpts { mode: FieldValidation::Ignore, dry_run: false, fields: crate::write::Fields::Internal };
        match client.create_raw(rt, &ns, mirror_pod(s, node), opts) {
            Ok(_) => tracing::info!(node = %name, pod = %format!("{ns}/{pod_name}"), "mirror pod created"),
            Err(ControllerError::Conflict(_)) => {}
            Err(e) => {
                tracing::warn!(node = %name, pod = %format!("{ns}/{pod_name}"), error = %e, "mirror pod not created");
            }
        }
    }
    if known.get(&name) != Some(&uids) {
        for p in client.list::<Pod>(None)? {
            let on_node = p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(name.as_str());
            if let Some(m) = mirror_of(&p).filter(|m| on_node && !uids.contains(*m)) {
                tracing::info!(node = %name, pod = p.metadata.name.as_deref().unwrap_or_default(), mirror = m, "static pod gone: mirror pod removed");
                let ns = p.metadata.namespace.as_deref().unwrap_or_default();
                super::super::controllers::ignore_not_found(client.delete_now::<Pod>(
                    ns,
                    p.metadata.name.as_deref().unwrap_or_default(),
                    p.metadata.uid.as_deref(),
                ))?;
            }
        }
        known.insert(name, uids);
    }
    Ok(())
}
