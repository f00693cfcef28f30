//! Desired snapshots: for each node, the pods bound to it, translated into
//! the node's wire form with everything they reference from the API
//! (ConfigMap and Secret data for volumes, `env` and `envFrom`, the pod's own
//! fields) resolved, so the node needs nothing else. Published retained at
//! QoS 1 on `nodes/{node}/desired` when the content changed, and all of them
//! again after every (re)connect to the broker (it may have forgotten them).
//!
//! The generation is the store revision the snapshot was built from: it is
//! persisted with every write and only grows, so a restarted controller never
//! publishes a lower one, and per node it grows strictly because content only
//! changes through writes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Secret};
use kedge_common::topics::{self, NodeTopic};
use kedge_common::wire::NodeDesired;
use rumqttc::{AsyncClient, QoS};
use serde_json::{Value, json};

use super::FleetState;
use crate::client::{Client, Kind};
use crate::controllers::ControllerError;
use crate::controllers::events;
use crate::controllers::runner::{Action, Reconcile};
use crate::store::{Key, WatchEvent};

pub struct DesiredPublisher {
    client: Client,
    mqtt: AsyncClient,
    prefix: String,
    max_payload: usize,
    state: Arc<FleetState>,
    node_id: &'static str,
    pod_id: &'static str,
    cm_id: &'static str,
    secret_id: &'static str,
    /// Node → (content hash, connection epoch) of the last publish.
    published: HashMap<String, (u64, u64)>,
    /// Pods already reported as not translatable (uid → message), so a
    /// rebuild does not repeat the event.
    failing: HashMap<String, String>,
}

/// The ConfigMaps and Secrets of the namespaces in play.
struct Refs {
    config_maps: HashMap<(String, String), ConfigMap>,
    secrets: HashMap<(String, String), Secret>,
}

impl Refs {
    fn data(&self, ns: &str, kind: &str, name: &str) -> Option<BTreeMap<String, String>> {
        let key = (ns.to_string(), name.to_string());
        if kind == "secret" {
            let s = self.secrets.get(&key)?;
            let mut out = BTreeMap::new();
            for (k, v) in s.data.iter().flatten() {
                out.insert(k.clone(), String::from_utf8_lossy(&v.0).into_owned());
            }
            for (k, v) in s.string_data.iter().flatten() {
                out.insert(k.clone(), v.clone());
            }
            Some(out)
        } else {
            let c = self.config_maps.get(&key)?;
            let mut out: BTreeMap<String, String> = c.data.clone().unwrap_or_default();
            for (k, v) in c.binary_data.iter().flatten() {
                out.insert(k.clone(), String::from_utf8_lossy(&v.0).into_owned());
            }
            Some(out)
        }
    }
}

fn optional(v: &Value) -> bool {
    v.get("optional").and_then(Value::as_bool).unwrap_or(false)
}

/// Resolves `envFrom` and `env[].valueFrom` of one container in place.
fn resolve_env(c: &mut Value, ns: &str, pod: &Pod, node: &str, refs: &Refs) -> Result<(), String> {
    let mut env: Vec<(String, String)> = Vec::new();
    for from in c.get("envFrom").and_then(Value::as_array).cloned().unwrap_or_default() {
        let prefix = from.get("prefix").and_then(Value::as_str).unwrap_or_default().to_string();
        let (kind, r) = match (from.get("configMapRef"), from.get("secretRef")) {
            (Some(r), _) => ("configmap", r),
            (None, Some(r)) => ("secret", r),
            _ => continue,
        };
        let name = r.get("name").and_then(Value::as_str).unwrap_or_default();
        match refs.data(ns, kind, name) {
            Some(data) => env.extend(data.into_iter().map(|(k, v)| (format!("{prefix}{k}"), v))),
            None if optional(r) => {}
            None => return Err(format!("{kind} {ns}/{name} not found")),
        }
    }
    for e in c.get("env").and_then(Value::as_array).cloned().unwrap_or_default() {
        let name = e.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
        let value = match e.get("valueFrom") {
            None => e.get("value").and_then(Value::as_str).unwrap_or_default().to_string(),
            Some(from) => {
                if let Some(r) = from.get("configMapKeyRef").or_else(|| from.get("secretKeyRef")) {
                    let kind = if from.get("configMapKeyRef").is_some() { "configmap" } else { "secret" };
                    let obj = r.get("name").and_then(Value::as_str).unwrap_or_default();
                    let key = r.get("key").and_then(Value::as_str).unwrap_or_default();
                    match refs.data(ns, kind, obj).and_then(|d| d.get(key).cloned()) {
                        Some(v) => v,
                        None if optional(r) => continue,
                        None => return Err(format!("key {key:?} of {kind} {ns}/{obj} not found (env {name})")),
                    }
                } else if let Some(path) = from.pointer("/fieldRef/fieldPath").and_then(Value::as_str) {
                    let m = &pod.metadata;
                    match path {
                        "metadata.name" => m.name.clone().unwrap_or_default(),
                        "metadata.namespace" => ns.to_string(),
                        "metadata.uid" => m.uid.clone().unwrap_or_default(),
                        "spec.nodeName" => node.to_string(),
                        "spec.serviceAccountName" => {
                            pod.spec.as_ref().and_then(|s| s.service_account_name.clone()).unwrap_or_default()
                        }
                        p if p.starts_with("metadata.labels['") => {
                            let k = p.trim_start_matches("metadata.labels['").trim_end_matches("']");
                            m.labels.as_ref().and_then(|l| l.get(k).cloned()).unwrap_or_default()
                        }
                        p if p.starts_with("metadata.annotations['") => {
                            let k = p.trim_start_matches("metadata.annotations['").trim_end_matches("']");
                            m.annotations.as_ref().and_then(|l| l.get(k).cloned()).unwrap_or_default()
                        }
                        // Known only on the node (status.podIP, status.hostIP): left empty.
                        _ => String::new(),
                    }
                } else {
                    String::new()
                }
            }
        };
        env.retain(|(k, _)| *k != name);
        env.push((name, value));
    }
    if let Some(obj) = c.as_object_mut() {
        obj.remove("envFrom");
        obj.insert(
            "env".into(),
            json!(env.into_iter().map(|(n, v)| json!({"name": n, "value": v})).collect::<Vec<_>>()),
        );
    }
    Ok(())
}

/// Inlines the data of ConfigMap and Secret volumes.
fn resolve_volumes(spec: &mut Value, ns: &str, refs: &Refs) -> Result<(), String> {
    let Some(vols) = spec.get_mut("volumes").and_then(Value::as_array_mut) else { return Ok(()) };
    for v in vols {
        for (field, kind, name_field) in [("configMap", "configmap", "name"), ("secret", "secret", "secretName")] {
            let Some(src) = v.get_mut(field) else { continue };
            let name = src.get(name_field).and_then(Value::as_str).unwrap_or_default().to_string();
            let data = match refs.data(ns, kind, &name) {
                Some(d) => d,
                None if optional(src) => BTreeMap::new(),
                None => return Err(format!("{kind} {ns}/{name} not found (volume)")),
            };
            let items = src.get("items").and_then(Value::as_array).cloned();
            let files: BTreeMap<String, String> = match items {
                Some(items) => {
                    let mut files = BTreeMap::new();
                    for it in items {
                        let key = it.get("key").and_then(Value::as_str).unwrap_or_default();
                        let path = it.get("path").and_then(Value::as_str).unwrap_or(key);
                        match data.get(key) {
                            Some(val) => {
                                files.insert(path.to_string(), val.clone());
                            }
                            None if optional(src) => {}
                            None => return Err(format!("key {key:?} of {kind} {ns}/{name} not found (volume)")),
                        }
                    }
                    files
                }
                None => data,
            };
            if let Some(o) = src.as_object_mut() {
                o.remove("items");
                o.remove("secretName");
                o.insert("name".into(), json!(name));
                o.insert("data".into(), json!(files));
            }
        }
    }
    Ok(())
}

/// One API pod as its node runs it.
fn node_pod(pod: &Pod, node: &str, refs: &Refs) -> Result<kedge_common::pod::Pod, String> {
    let ns = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let mut v = serde_json::to_value(pod).map_err(|e| e.to_string())?;
    if let Some(spec) = v.get_mut("spec") {
        for list in ["containers", "initContainers"] {
            if let Some(cs) = spec.get_mut(list).and_then(Value::as_array_mut) {
                for c in cs {
                    resolve_env(c, &ns, pod, node, refs)?;
                }
            }
        }
        resolve_volumes(spec, &ns, refs)?;
    }
    if let Some(o) = v.as_object_mut() {
        o.remove("status");
    }
    let mut out: kedge_common::pod::Pod = serde_json::from_value(v).map_err(|e| e.to_string())?;
    out.metadata.namespace = Some(ns);
    out.api_version = None;
    out.kind = None;
    // What the agent does not use stays off the wire.
    out.metadata.annotations.clear();
    Ok(out)
}

fn node_of(v: &Value) -> Option<&str> {
    v.pointer("/spec/nodeName").and_then(Value::as_str).filter(|n| !n.is_empty())
}

impl DesiredPublisher {
    pub fn new(
        client: Client,
        mqtt: AsyncClient,
        prefix: String,
        max_payload: usize,
        state: Arc<FleetState>,
    ) -> Result<Self, ControllerError> {
        Ok(DesiredPublisher {
            client,
            mqtt,
            prefix,
            max_payload,
            state,
            node_id: Node::rt()?.id,
            pod_id: Pod::rt()?.id,
            cm_id: ConfigMap::rt()?.id,
            secret_id: Secret::rt()?.id,
            published: HashMap::new(),
            failing: HashMap::new(),
        })
    }

    fn nodes_with_pods_in(&self, ns: &str) -> Result<Vec<String>, ControllerError> {
        let pods = self.client.list::<Pod>(Some(ns))?;
        let set: HashSet<String> =
            pods.iter().filter_map(|p| p.spec.as_ref().and_then(|s| s.node_name.clone())).collect();
        Ok(set.into_iter().collect())
    }

    fn publish(&mut self, nodes: &[String]) -> Result<(), ControllerError> {
        let wanted: HashSet<&str> = nodes.iter().map(String::as_str).collect();
        let revision = self.client.store().revision();
        let pods = self.client.list::<Pod>(None)?;
        let mut by_node: BTreeMap<&str, Vec<&Pod>> = nodes.iter().map(|n| (n.as_str(), Vec::new())).collect();
        let mut namespaces = HashSet::new();
        for p in &pods {
            let Some(n) = p.spec.as_ref().and_then(|s| s.node_name.as_deref()) else { continue };
            if wanted.contains(n) {
                if let Some(list) = by_node.get_mut(n) {
                    list.push(p);
                    namespaces.insert(p.metadata.namespace.clone().unwrap_or_default());
                }
            }
        }
        let mut refs = Refs { config_maps: HashMap::new(), secrets: HashMap::new() };
        for ns in &namespaces {
            for c in self.client.list::<ConfigMap>(Some(ns))? {
                refs.config_maps.insert((ns.clone(), c.metadata.name.clone().unwrap_or_default()), c);
            }
            for s in self.client.list::<Secret>(Some(ns))? {
                refs.secrets.insert((ns.clone(), s.metadata.name.clone().unwrap_or_default()), s);
            }
        }
        let epoch = self.state.epoch();
        for (node, pods) in by_node {
            let mut wire = Vec::with_capacity(pods.len());
            for p in pods {
                let uid = p.metadata.uid.clone().unwrap_or_default();
                match node_pod(p, node, &refs) {
                    Ok(w) => {
                        self.failing.remove(&uid);
                        wire.push(w);
                    }
                    Err(msg) => {
                        if self.failing.get(&uid) != Some(&msg) {
                            tracing::warn!(pod = %format!("{}/{}", p.metadata.namespace.as_deref().unwrap_or_default(), p.metadata.name.as_deref().unwrap_or_default()), %node, error = %msg, "pod not sent to its node");
                            events::record(
                                &self.client,
                                "kedge-fleet",
                                ("v1", "Pod", &p.metadata),
                                true,
                                "CreateContainerConfigError",
                                &msg,
                            );
                            self.failing.insert(uid, msg);
                        }
                    }
                }
            }
            let count = wire.len();
            let mut h = std::collections::hash_map::DefaultHasher::new();
            let content = kedge_common::envelope::encode(&wire)
                .map_err(|source| ControllerError::Snapshot { node: node.to_owned(), source })?;
            content.hash(&mut h);
            let hash = h.finish();
            if self.published.get(node) == Some(&(hash, epoch)) {
                continue;
            }
            // A new generation only for new content; a republish after a
            // reconnect keeps the generation the node may already have.
            let generation = match self.state.desired_generation(node) {
                Some((g, old_hash)) if old_hash == hash => g,
                _ => revision,
            };
            let snapshot = NodeDesired { node: node.to_string(), generation, pods: wire };
            let bytes = kedge_common::envelope::encode(&snapshot)
                .map_err(|source| ControllerError::Snapshot { node: node.to_owned(), source })?;
            if bytes.len() > self.max_payload {
                tracing::error!(%node, bytes = bytes.len(), cap = self.max_payload, "snapshot over the payload cap; not published");
                continue;
            }
            if !self.state.connected() {
                // Published after the (re)connect, when every node is resynced.
                continue;
            }
            self.mqtt
                .try_publish(topics::node_topic(&self.prefix, node, NodeTopic::Desired), QoS::AtLeastOnce, true, bytes)
                .map_err(|source| ControllerError::Publish { node: node.to_owned(), source })?;
            tracing::debug!(%node, generation, pods = count, "published desired snapshot");
            self.state.set_desired(node, generation, hash, count);
            self.published.insert(node.to_string(), (hash, epoch));
        }
        Ok(())
    }
}

impl Reconcile for DesiredPublisher {
    fn name(&self) -> &'static str {
        "fleet-desired"
    }

    fn keys_for(&mut self, ev: &WatchEvent, out: &mut Vec<Key>) {
        let node_key = |n: &str| Key::new("fleet/nodes", "", n);
        if ev.resource == self.pod_id {
            for v in [Some(&ev.object), ev.prev.as_ref()].into_iter().flatten() {
                if let Some(n) = node_of(v) {
                    out.push(node_key(n));
                }
            }
        } else if ev.resource == self.node_id {
            out.push(node_key(&ev.name));
        } else if ev.resource == self.cm_id || ev.resource == self.secret_id {
            match self.nodes_with_pods_in(&ev.namespace) {
                Ok(nodes) => out.extend(nodes.iter().map(|n| node_key(n))),
                Err(e) => tracing::warn!(error = %e, "cannot list the pods a changed ConfigMap/Secret may feed"),
            }
        }
    }

    fn all_keys(&mut self) -> Result<Vec<Key>, ControllerError> {
        let mut nodes: HashSet<String> =
            self.client.list::<Node>(None)?.into_iter().filter_map(|n| n.metadata.name).collect();
        for p in self.client.list::<Pod>(None)? {
            if let Some(n) = p.spec.and_then(|s| s.node_name) {
                nodes.insert(n);
            }
        }
        Ok(nodes.into_iter().map(|n| Key::new("fleet/nodes", "", &n)).collect())
    }

    fn batch(&self) -> usize {
        512
    }

    fn reconcile(&mut self, key: &Key) -> Result<Action, ControllerError> {
        self.publish(std::slice::from_ref(&key.name)).map(|()| Action::Done)
    }

    fn reconcile_batch(&mut self, keys: &[Key]) -> Vec<Result<Action, ControllerError>> {
        let nodes: Vec<String> = keys.iter().map(|k| k.name.clone()).collect();
        match self.publish(&nodes) {
            Ok(()) => keys.iter().map(|_| Ok(Action::Done)).collect(),
            Err(e) => {
                let e = Arc::new(e);
                keys.iter().map(|_| Err(ControllerError::Batch(e.clone()))).collect()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs() -> Refs {
        let cm: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": "cfg", "namespace": "default"},
            "data": {"greeting": "hello", "file.txt": "contents"}
        }))
        .expect("cm");
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": "pw", "namespace": "default"},
            "data": {"password": "aHVudGVyMg=="}
        }))
        .expect("secret");
        Refs {
            config_maps: HashMap::from([(("default".into(), "cfg".into()), cm)]),
            secrets: HashMap::from([(("default".into(), "pw".into()), secret)]),
        }
    }

    fn pod(spec: Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "default", "uid": "u-1", "labels": {"app": "web"}},
            "spec": spec
        }))
        .expect("pod")
    }

    #[test]
    fn env_and_volumes_are_resolved_for_the_node() {
        let p = pod(json!({
            "nodeName": "n1",
            "containers": [{"name": "c", "image": "i",
                "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"}],
                "env": [
                    {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "greeting"}}},
                    {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "pw", "key": "password"}}},
                    {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                    {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                    {"name": "CFG_greeting", "value": "env wins"}
                ]}],
            "volumes": [
                {"name": "a", "configMap": {"name": "cfg", "items": [{"key": "file.txt", "path": "renamed.txt"}]}},
                {"name": "b", "secret": {"secretName": "pw"}}
            ]
        }));
        let w = node_pod(&p, "n1", &refs()).expect("translated");
        let env: BTreeMap<&str, &str> =
            w.spec.containers[0].env.iter().map(|e| (e.name.as_str(), e.value.as_str())).collect();
        assert_eq!(env.get("GREETING"), Some(&"hello"));
        assert_eq!(env.get("PW"), Some(&"hunter2"));
        assert_eq!(env.get("NODE"), Some(&"n1"));
        assert_eq!(env.get("APP"), Some(&"web"));
        assert_eq!(env.get("CFG_file.txt"), Some(&"contents"));
        assert_eq!(env.get("CFG_greeting"), Some(&"env wins"));
        let a = w.spec.volumes[0].config_map.as_ref().expect("configMap");
        assert_eq!(a.data, BTreeMap::from([("renamed.txt".to_string(), "contents".to_string())]));
        let b = w.spec.volumes[1].secret.as_ref().expect("secret");
        assert_eq!((b.name.as_deref(), b.data.get("password").map(String::as_str)), (Some("pw"), Some("hunter2")));
        assert_eq!(w.metadata.uid.as_deref(), Some("u-1"));
    }

    #[test]
    fn a_missing_reference_names_what_is_missing_unless_optional() {
        let p = pod(json!({"containers": [{"name": "c", "image": "i",
            "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "k"}}}]}]}));
        let err = node_pod(&p, "n1", &refs()).expect_err("missing configmap");
        assert!(err.contains("configmap default/nope"), "{err}");
        let p = pod(json!({"containers": [{"name": "c", "image": "i",
            "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "k", "optional": true}}}]}],
            "volumes": [{"name": "v", "secret": {"secretName": "gone", "optional": true}}]}));
        let w = node_pod(&p, "n1", &refs()).expect("optional references may be missing");
        assert!(w.spec.containers[0].env.is_empty());
    }
}
