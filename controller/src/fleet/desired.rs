//! Desired snapshots: for each node, the pods bound to it, translated into
//! the node's wire form with everything they reference from the API
//! (ConfigMap and Secret data for volumes, `env` and `envFrom`, the pod's own
//! fields) resolved, so the node needs nothing else (`node_pod.rs`, on the
//! typed API structs; Secret and `binaryData` values stay bytes). Published retained at
//! QoS 1 on `nodes/{node}/desired` when the content changed, and all of them
//! again after every (re)connect to the broker (it may have forgotten them).
//!
//! The generation is the store revision the snapshot was built from: it is
//! persisted with every write and only grows, so a restarted controller never
//! publishes a lower one, and per node it grows strictly because content only
//! changes through writes.

mod node_pod;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Node, PersistentVolume, PersistentVolumeClaim, Pod, Secret};
use kedge_common::sign::{Purpose, SigningKey};
use kedge_common::topics::{self, NodeTopic};
use kedge_common::wire::NodeDesired;
use rumqttc::{AsyncClient, QoS};
use serde_json::Value;

use self::node_pod::{Refs, node_pod};
use super::FleetState;
use crate::client::{Client, Kind};
use crate::controllers::ControllerError;
use crate::controllers::events;
use crate::controllers::runner::{Action, Reconcile};
use crate::store::{Key, WatchEvent};

pub struct DesiredPublisher {
    /// The controller's fleet signing key.
    key: Arc<SigningKey>,
    client: Client,
    mqtt: AsyncClient,
    prefix: String,
    max_payload: usize,
    state: Arc<FleetState>,
    node_id: &'static str,
    pod_id: &'static str,
    cm_id: &'static str,
    secret_id: &'static str,
    pvc_id: &'static str,
    pv_id: &'static str,
    /// ServiceAccounts: a pod's token waits for its account.
    sa_id: &'static str,
    /// Node → (content hash, connection epoch) of the last publish.
    published: HashMap<String, (u64, u64)>,
    /// Pods already reported as not translatable (uid → message), so a
    /// rebuild does not repeat the event.
    failing: HashMap<String, String>,
    /// Signs the projected ServiceAccount tokens.
    issuer: Arc<crate::auth::token::Issuer>,
    /// Tokens minted, with when to mint them again.
    tokens: HashMap<node_pod::TokenKey, (String, i64)>,
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
        key: Arc<SigningKey>,
        issuer: Arc<crate::auth::token::Issuer>,
    ) -> Result<Self, ControllerError> {
        Ok(DesiredPublisher {
            key,
            client,
            mqtt,
            prefix,
            max_payload,
            state,
            node_id: Node::rt()?.id,
            pod_id: Pod::rt()?.id,
            cm_id: ConfigMap::rt()?.id,
            secret_id: Secret::rt()?.id,
            pvc_id: PersistentVolumeClaim::rt()?.id,
            pv_id: PersistentVolume::rt()?.id,
            sa_id: k8s_openapi::api::core::v1::ServiceAccount::rt()?.id,
            published: HashMap::new(),
            failing: HashMap::new(),
            issuer,
            tokens: HashMap::new(),
        })
    }

    fn nodes_with_pods_in(&self, ns: &str) -> Result<Vec<String>, ControllerError> {
        let pods = self.client.list::<Pod>(Some(ns))?;
        let set: HashSet<String> =
            pods.iter().filter_map(|p| p.spec.as_ref().and_then(|s| s.node_name.clone())).collect();
        Ok(set.into_iter().collect())
    }

    /// The tokens of the projected volumes of `pods`, bound to their pods:
    /// minted once per pod, audience and lifetime and kept (the snapshot's
    /// content, and so its generation, stays put), minted again once 80 %
    /// of a token's life has passed, as the kubelet refreshes them. The
    /// lifetime the ServiceAccount admission injects (3607 s) is stretched to a year, as
    /// Kubernetes does by default (`--service-account-extend-token-expiration`):
    /// a node offline for long still has a valid token for its pods.
    /// A token for `pod`'s projected source `t`, with when to mint it
    /// again; `None` while its account does not exist (the pod is then
    /// reported by `node_pod`) or when it cannot be signed.
    fn mint(
        &self,
        pod: &Pod,
        t: &k8s_openapi::api::core::v1::ServiceAccountTokenProjection,
        now: i64,
    ) -> Result<Option<(String, i64)>, ControllerError> {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let sa_name =
            pod.spec.as_ref().and_then(|s| s.service_account_name.clone()).unwrap_or_else(|| "default".into());
        let Some(sa) = self.client.get::<k8s_openapi::api::core::v1::ServiceAccount>(&ns, &sa_name)? else {
            return Ok(None);
        };
        let ttl = match t.expiration_seconds.unwrap_or(3600) {
            crate::write::INJECTED_TOKEN_SECONDS => 365 * 24 * 3600,
            t => t.max(600),
        };
        let audiences = t.audience.clone().filter(|a| !a.is_empty()).map(|a| vec![a]).unwrap_or_default();
        let account = crate::auth::token::BoundRef { name: sa_name, uid: sa.metadata.uid.unwrap_or_default() };
        let bound =
            crate::auth::token::BoundRef { name: name.clone(), uid: pod.metadata.uid.clone().unwrap_or_default() };
        match self.issuer.mint(&ns, account, Some(bound), None, audiences, ttl) {
            Ok((token, _exp)) => Ok(Some((token, now + ttl * 4 / 5))),
            Err(e) => {
                tracing::error!(pod = %format!("{ns}/{name}"), error = %e, "cannot sign a service account token");
                Ok(None)
            }
        }
    }

    fn mint_tokens(
        &mut self,
        by_node: &BTreeMap<&str, Vec<&Pod>>,
        all_pods: &HashSet<&str>,
        refs: &mut node_pod::Refs,
    ) -> Result<HashMap<String, i64>, ControllerError> {
        let now = jiff::Timestamp::now().as_second();
        let mut refresh_at: HashMap<String, i64> = HashMap::new();
        for (node, pods) in by_node {
            for pod in pods {
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                let Some(spec) = &pod.spec else { continue };
                let sources = spec
                    .volumes
                    .iter()
                    .flatten()
                    .filter_map(|v| v.projected.as_ref())
                    .flat_map(|p| p.sources.iter().flatten());
                for t in sources.filter_map(|s| s.service_account_token.as_ref()) {
                    let key = node_pod::token_key(&uid, t);
                    let kept = self.tokens.get(&key).filter(|(_, refresh)| now < *refresh).cloned();
                    let (token, refresh) = match kept {
                        Some(kept) => kept,
                        None => match self.mint(pod, t, now)? {
                            Some(minted) => {
                                self.tokens.insert(key.clone(), minted.clone());
                                minted
                            }
                            None => continue,
                        },
                    };
                    let at = refresh_at.entry((*node).to_owned()).or_insert(refresh);
                    *at = (*at).min(refresh);
                    refs.tokens.insert(key, token);
                }
            }
        }
        // Tokens of pods gone are forgotten.
        self.tokens.retain(|k, _| all_pods.contains(k.0.as_str()));
        Ok(refresh_at)
    }

    /// Publishes the snapshots of `nodes`; answers when each node's tokens
    /// are due to be minted again (unix seconds), for the nodes with any.
    fn publish(&mut self, nodes: &[String]) -> Result<HashMap<String, i64>, ControllerError> {
        let wanted: HashSet<&str> = nodes.iter().map(String::as_str).collect();
        let revision = self.client.store().revision();
        let pods = self.client.list::<Pod>(None)?;
        let mut by_node: BTreeMap<&str, Vec<&Pod>> = nodes.iter().map(|n| (n.as_str(), Vec::new())).collect();
        let mut namespaces = HashSet::new();
        for p in &pods {
            let Some(n) = p.spec.as_ref().and_then(|s| s.node_name.as_deref()) else { continue };
            // A mirror pod shows what the node runs already (a static pod).
            if p.metadata.annotations.as_ref().is_some_and(|a| a.contains_key(super::mirror::MIRROR)) {
                continue;
            }
            if wanted.contains(n) {
                if let Some(list) = by_node.get_mut(n) {
                    list.push(p);
                    namespaces.insert(p.metadata.namespace.clone().unwrap_or_default());
                }
            }
        }
        let mut refs = Refs::default();
        for ns in &namespaces {
            for c in self.client.list::<ConfigMap>(Some(ns))? {
                refs.config_maps.insert((ns.clone(), c.metadata.name.clone().unwrap_or_default()), c);
            }
            for s in self.client.list::<Secret>(Some(ns))? {
                refs.secrets.insert((ns.clone(), s.metadata.name.clone().unwrap_or_default()), s);
            }
            for c in self.client.list::<PersistentVolumeClaim>(Some(ns))? {
                refs.claims.insert((ns.clone(), c.metadata.name.clone().unwrap_or_default()), c);
            }
        }
        refs.master = self
            .client
            .get::<k8s_openapi::api::core::v1::Service>(
                crate::controllers::master::NAMESPACE,
                crate::controllers::master::NAME,
            )?
            .and_then(|s| s.spec?.cluster_ip)
            .filter(|ip| !ip.is_empty() && ip != "None");
        let all_pods: HashSet<&str> = pods.iter().filter_map(|p| p.metadata.uid.as_deref()).collect();
        let refresh_at = self.mint_tokens(&by_node, &all_pods, &mut refs)?;
        // Node-local volumes deleted with their data, by node (what each node removes).
        let mut doomed: HashMap<String, Vec<String>> = HashMap::new();
        for pv in self.client.list::<PersistentVolume>(None)? {
            if let (Some(node), Some(handle)) =
                (crate::controllers::volume::pinned_node(&pv), crate::controllers::volume::local_path_handle(&pv))
            {
                if wanted.contains(node) && crate::controllers::volume::data_to_delete(&pv) {
                    doomed.entry(node.to_owned()).or_default().push(handle.to_owned());
                }
            }
            refs.volumes.insert(pv.metadata.name.clone().unwrap_or_default(), pv);
        }
        let epoch = self.state.epoch();
        for (node, pods) in by_node {
            // What the node's snapshot is sealed to (recorded when it joined).
            let Some(seal) = self.client.get::<Node>("", node)?.as_ref().and_then(super::trust::seal_key) else {
                // Not joined, revoked or deleted: nothing of its pods goes
                // out (unsealed, anyone on the broker would read their
                // Secrets), and what was retained for it is cleared.
                if self.published.remove(node).is_some() && self.state.connected() {
                    let topic = topics::node_topic(&self.prefix, node, NodeTopic::Desired);
                    if let Err(e) = self.mqtt.try_publish(topic, QoS::AtLeastOnce, true, Vec::new()) {
                        tracing::warn!(%node, error = %e, "cannot clear the snapshot of a node without a key");
                    }
                }
                continue;
            };
            let mut wire = Vec::with_capacity(pods.len());
            for p in pods {
                let uid = p.metadata.uid.clone().unwrap_or_default();
                match node_pod(p, node, &refs) {
                    Ok(w) => {
                        self.failing.remove(&uid);
                        wire.push(w);
                    }
                    // Being deleted and not sendable (what it refers to is gone):
                    // its node drops it, so the deletion ends here.
                    Err(_) if p.metadata.deletion_timestamp.is_some() => {
                        let (ns, name) = (
                            p.metadata.namespace.as_deref().unwrap_or_default(),
                            p.metadata.name.as_deref().unwrap_or_default(),
                        );
                        if let Err(e) =
                            crate::controllers::ignore_not_found(self.client.delete_now::<Pod>(ns, name, Some(&uid)))
                        {
                            tracing::warn!(pod = %format!("{ns}/{name}"), error = %e, "a deleted pod its node cannot run is not removed");
                        }
                    }
                    // Its claim is being bound (just scheduled): sent once bound.
                    Err(node_pod::NodePodError::ClaimUnbound { .. }) => {}
                    Err(e) => {
                        let msg = e.to_string();
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
            let mut delete_volumes = doomed.remove(node).unwrap_or_default();
            delete_volumes.sort_unstable();
            let mut h = std::collections::hash_map::DefaultHasher::new();
            let content = kedge_common::envelope::encode(&wire)
                .map_err(|source| ControllerError::Snapshot { node: node.to_owned(), source })?;
            content.hash(&mut h);
            delete_volumes.hash(&mut h);
            seal.hash(&mut h);
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
            let snapshot = NodeDesired { node: node.to_string(), generation, pods: wire, delete_volumes };
            let bytes = match kedge_common::envelope::encode_sealed(&snapshot, Purpose::Desired, &self.key, Some(&seal))
            {
                Ok(b) => b,
                Err(e) => {
                    // This node's alone: the others of the batch go on.
                    tracing::error!(%node, error = %e, "cannot seal the node's snapshot; not published");
                    continue;
                }
            };
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
        Ok(refresh_at)
    }
}

/// Done, or back when the node's tokens are due.
fn refresh(at: &HashMap<String, i64>, node: &str) -> Action {
    match at.get(node) {
        Some(t) => {
            let wait = (*t - jiff::Timestamp::now().as_second()).max(1);
            Action::RequeueAfter(std::time::Duration::from_secs(u64::try_from(wait).unwrap_or(1)))
        }
        None => Action::Done,
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
        } else if ev.resource == self.pv_id {
            // The node keeps (or drops) its data; pods of a claim bound to it follow the claim's event.
            for v in [Some(&ev.object), ev.prev.as_ref()].into_iter().flatten() {
                if let Ok(pv) = serde_json::from_value::<PersistentVolume>(v.clone()) {
                    if let Some(n) = crate::controllers::volume::pinned_node(&pv) {
                        out.push(node_key(n));
                    }
                }
            }
        } else if ev.resource == self.cm_id
            || ev.resource == self.secret_id
            || ev.resource == self.pvc_id
            || ev.resource == self.sa_id
        {
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
        self.publish(std::slice::from_ref(&key.name)).map(|at| refresh(&at, &key.name))
    }

    fn reconcile_batch(&mut self, keys: &[Key]) -> Vec<Result<Action, ControllerError>> {
        let nodes: Vec<String> = keys.iter().map(|k| k.name.clone()).collect();
        match self.publish(&nodes) {
            Ok(at) => keys.iter().map(|k| Ok(refresh(&at, &k.name))).collect(),
            Err(e) => {
                let e = Arc::new(e);
                keys.iter().map(|_| Err(ControllerError::Batch(e.clone()))).collect()
            }
        }
    }
}
