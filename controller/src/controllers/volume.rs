//! Persistent volumes: binding claims to volumes, and the node-local
//! provisioner behind the default StorageClass `local-path` (as K3s ships).
//!
//! - A claim without a class gets the default class (Kubernetes'
//!   retroactive default-class assignment), and the `kubernetes.io/pvc-protection`
//!   finalizer, released only when no running pod uses it.
//! - An unbound claim binds to an available volume of its class that fits
//!   (size, access modes, selector; for `WaitForFirstConsumer` on the node
//!   its first pod was scheduled to). Failing that, a `local-path` claim gets
//!   a new volume once its first pod has a node: `pvc-<claim uid>`, a CSI
//!   volume of driver [`LOCAL_PATH_DRIVER`] whose handle the node maps to a
//!   directory under its storage dir, pinned to that node by node affinity
//!   (which the scheduler respects for every later pod of the claim).
//! - A volume whose claim is gone is released: with `Delete` its object is
//!   removed, and the node removes the data when its next snapshot no longer
//!   lists it (an offline node does so when it is back); with `Retain` it
//!   stays `Released`, data and all.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    CSIPersistentVolumeSource, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, ObjectReference,
    PersistentVolume, PersistentVolumeClaim, PersistentVolumeClaimStatus, PersistentVolumeSpec, PersistentVolumeStatus,
    Pod, VolumeNodeAffinity,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Value;

use super::events;
use super::runner::{Action, Reconcile};
use crate::client::{Client, Kind};
use crate::controllers::{ControllerError, ignore_not_found};
use crate::selector::LabelSelector;
use crate::store::{Key, WatchEvent};

/// The default StorageClass.
pub const LOCAL_PATH_CLASS: &str = "local-path";
/// Its provisioner, and the CSI driver name of the volumes it makes.
pub const LOCAL_PATH_DRIVER: &str = "kedge.io/local-path";
pub const DEFAULT_CLASS_ANNOTATION: &str = "storageclass.kubernetes.io/is-default-class";
pub const PVC_PROTECTION: &str = "kubernetes.io/pvc-protection";
/// Holds a node-local volume's object until its node removed the data.
pub const DATA_FINALIZER: &str = "kedge.io/local-path-data";
const COMPONENT: &str = "persistentvolume-controller";
const HOSTNAME: &str = "kubernetes.io/hostname";

/// The default class as K3s has it: `WaitForFirstConsumer` (a volume is made
/// where its first pod lands), `Delete` when the claim goes.
pub fn default_class() -> StorageClass {
    StorageClass {
        metadata: ObjectMeta {
            name: Some(LOCAL_PATH_CLASS.to_owned()),
            annotations: Some(BTreeMap::from([(DEFAULT_CLASS_ANNOTATION.to_owned(), "true".to_owned())])),
            ..Default::default()
        },
        provisioner: LOCAL_PATH_DRIVER.to_owned(),
        reclaim_policy: Some("Delete".to_owned()),
        volume_binding_mode: Some("WaitForFirstConsumer".to_owned()),
        allow_volume_expansion: Some(false),
        ..Default::default()
    }
}

/// Whether claims of `class` bind only once a pod is scheduled: the class
/// says so, or its volumes are made node-local (they need that node).
pub fn waits_for_consumer(class: &StorageClass) -> bool {
    class.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer") || class.provisioner == LOCAL_PATH_DRIVER
}

/// The node a volume is pinned to: the single `kubernetes.io/hostname In [n]`
/// of its required node affinity.
pub fn pinned_node(pv: &PersistentVolume) -> Option<&str> {
    let terms = &pv.spec.as_ref()?.node_affinity.as_ref()?.required.as_ref()?.node_selector_terms;
    terms.iter().flat_map(|t| t.match_expressions.iter().flatten()).find_map(|r| {
        let vals = r.values.as_deref().unwrap_or_default();
        (r.key == HOSTNAME && r.operator == "In" && vals.len() == 1).then(|| vals[0].as_str())
    })
}

/// The node affinity that pins a volume to `node`.
fn pinned_to(node: &str) -> VolumeNodeAffinity {
    VolumeNodeAffinity {
        required: Some(NodeSelector {
            node_selector_terms: vec![NodeSelectorTerm {
                match_expressions: Some(vec![NodeSelectorRequirement {
                    key: HOSTNAME.to_owned(),
                    operator: "In".to_owned(),
                    values: Some(vec![node.to_owned()]),
                }]),
                match_fields: None,
            }],
        }),
    }
}

/// A volume the node-local provisioner made (its handle names the directory).
pub fn local_path_handle(pv: &PersistentVolume) -> Option<&str> {
    let csi = pv.spec.as_ref()?.csi.as_ref()?;
    (csi.driver == LOCAL_PATH_DRIVER).then_some(csi.volume_handle.as_str())
}

/// The claims a pod uses, by name.
pub fn claims_of(pod: &Pod) -> impl Iterator<Item = &str> {
    pod.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|v| v.persistent_volume_claim.as_ref().map(|c| c.claim_name.as_str()))
}

fn claims_in(v: &Value) -> Vec<String> {
    let vols = v.pointer("/spec/volumes").and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
    vols.iter()
        .filter_map(|v| v.pointer("/persistentVolumeClaim/claimName").and_then(Value::as_str).map(str::to_owned))
        .collect()
}

fn request(c: &PersistentVolumeClaim) -> i128 {
    c.spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .and_then(|q| kedge_common::quantity::parse_milli(&q.0).ok())
        .unwrap_or(0)
}

fn capacity(v: &PersistentVolume) -> i128 {
    v.spec
        .as_ref()
        .and_then(|s| s.capacity.as_ref())
        .and_then(|c| c.get("storage"))
        .and_then(|q| kedge_common::quantity::parse_milli(&q.0).ok())
        .unwrap_or(0)
}

fn is_running_pod(p: &Pod) -> bool {
    !matches!(super::podutil::phase(p), "Succeeded" | "Failed")
}

/// Whether `pv` can serve `claim` (class, size, access modes, selector), and
/// on `node` when the claim waits for its first consumer.
fn fits(pv: &PersistentVolume, claim: &PersistentVolumeClaim, class: &str, node: Option<&str>) -> bool {
    let (Some(ps), Some(cs)) = (pv.spec.as_ref(), claim.spec.as_ref()) else { return false };
    // Claimed by another (a claim named without uid: pre-bound to that name).
    if let Some(r) = &ps.claim_ref {
        let ours = match &r.uid {
            Some(uid) => claim.metadata.uid.as_ref() == Some(uid),
            None => r.name == claim.metadata.name && r.namespace == claim.metadata.namespace,
        };
        if !ours {
            return false;
        }
    }
    if pv.metadata.deletion_timestamp.is_some()
        || pv.status.as_ref().and_then(|s| s.phase.as_deref()).is_some_and(|p| p != "Available")
        || ps.storage_class_name.as_deref().unwrap_or_default() != class
        || ps.volume_mode.as_deref().unwrap_or("Filesystem") != cs.volume_mode.as_deref().unwrap_or("Filesystem")
        || capacity(pv) < request(claim)
    {
        return false;
    }
    let have = ps.access_modes.as_deref().unwrap_or_default();
    if !cs.access_modes.iter().flatten().all(|m| have.contains(m)) {
        return false;
    }
    if let Some(sel) = &cs.selector {
        let labels = serde_json::json!({"metadata": {"labels": pv.metadata.labels}});
        if !LabelSelector::from_k8s(sel).is_ok_and(|s| s.matches(&labels)) {
            return false;
        }
    }
    match (node, pinned_node(pv)) {
        (Some(n), Some(p)) => n == p,
        _ => true,
    }
}

pub struct VolumeController {
    client: Client,
    pvc_id: &'static str,
    pv_id: &'static str,
    pod_id: &'static str,
    node_id: &'static str,
}

impl VolumeController {
    pub fn new(client: Client) -> Result<Self, ControllerError> {
        let me = VolumeController {
            pvc_id: PersistentVolumeClaim::rt()?.id,
            pv_id: PersistentVolume::rt()?.id,
            pod_id: Pod::rt()?.id,
            node_id: k8s_openapi::api::core::v1::Node::rt()?.id,
            client,
        };
        // Shipped as K3s ships it (a deleted class comes back at the next start).
        match me.client.create(&default_class()) {
            Ok(_) | Err(ControllerError::Conflict(_)) => {}
            Err(e) => return Err(e),
        }
        Ok(me)
    }

    fn default_class_name(&self) -> Result<Option<String>, ControllerError> {
        let classes = self.client.list::<StorageClass>(None)?;
        Ok(classes
            .into_iter()
            .filter(|c| {
                c.metadata.annotations.as_ref().and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION)).map(String::as_str)
                    == Some("true")
            })
            .max_by(|a, b| a.metadata.creation_timestamp.cmp(&b.metadata.creation_timestamp))
            .and_then(|c| c.metadata.name))
    }

    /// The pods of `ns` that use the claim `name`.
    fn users(&self, ns: &str, name: &str) -> Result<Vec<Pod>, ControllerError> {
        let pods = self.client.list::<Pod>(Some(ns))?;
        Ok(pods.into_iter().filter(|p| claims_of(p).any(|c| c == name)).collect())
    }

    fn reconcile_claim(&mut self, ns: &str, name: &str) -> Result<Action, ControllerError> {
        let Some(mut claim) = self.client.get::<PersistentVolumeClaim>(ns, name)? else { return Ok(Action::Done) };
        let users = self.users(ns, name)?;
        let finalizers = claim.metadata.finalizers.get_or_insert_with(Vec::new);
        if claim.metadata.deletion_timestamp.is_some() {
            // Protection: the claim goes only once no pod may still run on it.
            if finalizers.iter().any(|f| f == PVC_PROTECTION) && !users.iter().any(is_running_pod) {
                finalizers.retain(|f| f != PVC_PROTECTION);
                ignore_not_found(self.client.replace(&claim))?;
            }
            return Ok(Action::Done);
        }
        let mut changed = false;
        if !finalizers.iter().any(|f| f == PVC_PROTECTION) {
            finalizers.push(PVC_PROTECTION.to_owned());
            changed = true;
        }
        let spec = claim.spec.get_or_insert_with(Default::default);
        if spec.storage_class_name.is_none() {
            if let Some(def) = self.default_class_name()? {
                spec.storage_class_name = Some(def);
                changed = true;
            }
        }
        if changed {
            self.client.replace(&claim)?;
            return Ok(Action::Done); // back with the change
        }
        let volume_name = spec.volume_name.clone().unwrap_or_default();
        if !volume_name.is_empty() {
            return self.claim_bound(claim, &volume_name);
        }
        let class_name = spec.storage_class_name.clone().unwrap_or_default();
        let class = if class_name.is_empty() { None } else { self.client.get::<StorageClass>("", &class_name)? };
        let wait_first = class.as_ref().is_some_and(waits_for_consumer);
        // Where its first consumer was scheduled (a pod with a node, oldest first).
        let mut consumers: Vec<&Pod> = users
            .iter()
            .filter(|p| is_running_pod(p) && p.metadata.deletion_timestamp.is_none())
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()).is_some_and(|n| !n.is_empty()))
            .collect();
        consumers.sort_by(|a, b| a.metadata.creation_timestamp.cmp(&b.metadata.creation_timestamp));
        let node = consumers.first().and_then(|p| p.spec.as_ref()?.node_name.clone());
        if wait_first && node.is_none() {
            self.set_claim_pending(
                &claim,
                "WaitForFirstConsumer",
                "waiting for first consumer to be created before binding",
            )?;
            return Ok(Action::Done);
        }
        // A volume already claimed for it (bound half way before a crash or a conflict).
        let volumes = self.client.list::<PersistentVolume>(None)?;
        if let Some(pv) = volumes.iter().find(|v| {
            v.metadata.deletion_timestamp.is_none()
                && v.spec.as_ref().and_then(|s| s.claim_ref.as_ref()).and_then(|r| r.uid.as_deref())
                    == claim.metadata.uid.as_deref()
        }) {
            return self.bind(claim, pv.clone());
        }
        // An existing volume that fits, smallest first.
        let mut candidates: Vec<PersistentVolume> = volumes
            .into_iter()
            .filter(|v| fits(v, &claim, &class_name, if wait_first { node.as_deref() } else { None }))
            .collect();
        candidates.sort_by_key(capacity);
        if let Some(pv) = candidates.into_iter().next() {
            return self.bind(claim, pv);
        }
        match (class, node) {
            (Some(c), Some(node)) if c.provisioner == LOCAL_PATH_DRIVER => {
                let pv = self.provision(&claim, &c, &node)?;
                self.bind(claim, pv)
            }
            (Some(c), None) if c.provisioner == LOCAL_PATH_DRIVER => {
                // An Immediate class of local volumes: the node is unknown until a pod lands.
                self.set_claim_pending(&claim, "WaitForPodScheduled", "waiting for pod to be scheduled")?;
                Ok(Action::Done)
            }
            (Some(c), _) => {
                let msg = format!("waiting for a volume to be created by external provisioner {:?}", c.provisioner);
                self.set_claim_pending(&claim, "ExternalProvisioning", &msg)?;
                Ok(Action::Done)
            }
            (None, _) => {
                let msg = if class_name.is_empty() {
                    "no persistent volumes available for this claim and no storage class is set".to_owned()
                } else {
                    format!("storageclass.storage.k8s.io {class_name:?} not found")
                };
                self.set_claim_pending(&claim, "FailedBinding", &msg)?;
                Ok(Action::Done)
            }
        }
    }

    /// Status `Pending`, with an event when the reason is new.
    fn set_claim_pending(&self, claim: &PersistentVolumeClaim, reason: &str, msg: &str) -> Result<(), ControllerError> {
        let st = claim.status.clone().unwrap_or_default();
        if st.phase.as_deref() != Some("Pending") {
            let mut c = claim.clone();
            c.status = Some(PersistentVolumeClaimStatus { phase: Some("Pending".into()), ..Default::default() });
            c.metadata.resource_version = None;
            ignore_not_found(self.client.replace_status(&c))?;
            events::record(
                &self.client,
                COMPONENT,
                ("v1", "PersistentVolumeClaim", &claim.metadata),
                false,
                reason,
                msg,
            );
        }
        Ok(())
    }

    /// Makes the node-local volume for `claim` on `node`.
    fn provision(
        &self,
        claim: &PersistentVolumeClaim,
        class: &StorageClass,
        node: &str,
    ) -> Result<PersistentVolume, ControllerError> {
        let uid = claim.metadata.uid.clone().unwrap_or_default();
        let name = format!("pvc-{uid}");
        if let Some(pv) = self.client.get::<PersistentVolume>("", &name)? {
            return Ok(pv); // made before a crash, not yet bound
        }
        let cs = claim.spec.clone().unwrap_or_default();
        let size = cs.resources.as_ref().and_then(|r| r.requests.as_ref()).and_then(|r| r.get("storage")).cloned();
        let pv = PersistentVolume {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                finalizers: Some(vec![DATA_FINALIZER.to_owned()]),
                annotations: Some(BTreeMap::from([(
                    "pv.kubernetes.io/provisioned-by".to_owned(),
                    LOCAL_PATH_DRIVER.to_owned(),
                )])),
                ..Default::default()
            },
            spec: Some(PersistentVolumeSpec {
                access_modes: cs.access_modes.clone(),
                capacity: size.map(|s| BTreeMap::from([("storage".to_owned(), s)])),
                claim_ref: Some(claim_ref(claim)),
                csi: Some(CSIPersistentVolumeSource {
                    driver: LOCAL_PATH_DRIVER.to_owned(),
                    volume_handle: name.clone(),
                    ..Default::default()
                }),
                node_affinity: Some(pinned_to(node)),
                persistent_volume_reclaim_policy: Some(class.reclaim_policy.clone().unwrap_or_else(|| "Delete".into())),
                storage_class_name: class.metadata.name.clone(),
                volume_mode: cs.volume_mode.clone(),
                ..Default::default()
            }),
            status: None,
        };
        let pv = self.client.create(&pv)?;
        let msg = format!("Successfully provisioned volume {name} on node {node}");
        events::record(
            &self.client,
            COMPONENT,
            ("v1", "PersistentVolumeClaim", &claim.metadata),
            false,
            "ProvisioningSucceeded",
            &msg,
        );
        tracing::info!(claim = %format!("{}/{}", claim.metadata.namespace.as_deref().unwrap_or_default(), claim.metadata.name.as_deref().unwrap_or_default()), volume = %name, %node, "provisioned");
        Ok(pv)
    }

    /// Binds both ways: the volume's `claimRef` first (so no other claim
    /// takes it), then the claim's `volumeName` and status.
    fn bind(&self, claim: PersistentVolumeClaim, mut pv: PersistentVolume) -> Result<Action, ControllerError> {
        let pv_name = pv.metadata.name.clone().unwrap_or_default();
        let spec = pv.spec.get_or_insert_with(Default::default);
        if spec.claim_ref.as_ref().and_then(|r| r.uid.as_deref()) != claim.metadata.uid.as_deref() {
            spec.claim_ref = Some(claim_ref(&claim));
            pv = self.client.replace(&pv)?;
        }
        let mut c = claim;
        c.spec.get_or_insert_with(Default::default).volume_name = Some(pv_name.clone());
        c.metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert("pv.kubernetes.io/bind-completed".into(), "yes".into());
        let c = self.client.replace(&c)?;
        self.set_volume_phase(&pv, "Bound")?;
        self.claim_bound(c, &pv_name)
    }

    /// A bound claim's status mirrors its volume (`Lost` when it is gone).
    fn claim_bound(&self, claim: PersistentVolumeClaim, pv_name: &str) -> Result<Action, ControllerError> {
        let mut pv = self.client.get::<PersistentVolume>("", pv_name)?;
        let was_bound =
            claim.metadata.annotations.as_ref().is_some_and(|a| a.contains_key("pv.kubernetes.io/bind-completed"));
        if let Some(v) = pv.as_mut() {
            // A claim that names its volume: the volume is claimed for it,
            // unless another claim has it.
            let owner = v.spec.as_ref().and_then(|s| s.claim_ref.as_ref()).and_then(|r| r.uid.clone());
            match owner {
                Some(uid) if Some(&uid) != claim.metadata.uid.as_ref() => {
                    let msg = format!("volume {pv_name:?} already bound to a different claim");
                    self.set_claim_pending(&claim, "FailedBinding", &msg)?;
                    return Ok(Action::Done);
                }
                Some(_) => {}
                None => {
                    v.spec.get_or_insert_with(Default::default).claim_ref = Some(claim_ref(&claim));
                    *v = self.client.replace(&*v)?;
                }
            }
        } else if !was_bound {
            self.set_claim_pending(&claim, "FailedBinding", &format!("volume {pv_name:?} not found"))?;
            return Ok(Action::Done);
        }
        let want = match &pv {
            Some(v) => PersistentVolumeClaimStatus {
                phase: Some("Bound".into()),
                access_modes: v.spec.as_ref().and_then(|s| s.access_modes.clone()),
                capacity: v.spec.as_ref().and_then(|s| s.capacity.clone()),
                ..Default::default()
            },
            None => PersistentVolumeClaimStatus { phase: Some("Lost".into()), ..Default::default() },
        };
        let have = claim.status.clone().unwrap_or_default();
        if have.phase != want.phase || have.capacity != want.capacity || have.access_modes != want.access_modes {
            let mut c = claim.clone();
            c.status = Some(want);
            c.metadata.resource_version = None;
            ignore_not_found(self.client.replace_status(&c))?;
            if pv.is_none() {
                let msg = format!("Bound claim has lost its PersistentVolume {pv_name}. Data on the volume is lost!");
                events::record(
                    &self.client,
                    COMPONENT,
                    ("v1", "PersistentVolumeClaim", &claim.metadata),
                    true,
                    "ClaimLost",
                    &msg,
                );
            }
        }
        Ok(Action::Done)
    }

    fn set_volume_phase(&self, pv: &PersistentVolume, phase: &str) -> Result<(), ControllerError> {
        if pv.status.as_ref().and_then(|s| s.phase.as_deref()) == Some(phase) {
            return Ok(());
        }
        let mut v = pv.clone();
        v.status = Some(PersistentVolumeStatus { phase: Some(phase.to_owned()), ..Default::default() });
        v.metadata.resource_version = None;
        ignore_not_found(self.client.replace_status(&v))
    }

    fn reconcile_volume(&mut self, name: &str) -> Result<Action, ControllerError> {
        let Some(pv) = self.client.get::<PersistentVolume>("", name)? else { return Ok(Action::Done) };
        let claim = match pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) {
            Some(r) => self.client.get::<PersistentVolumeClaim>(
                r.namespace.as_deref().unwrap_or_default(),
                r.name.as_deref().unwrap_or_default(),
            )?,
            None => None,
        };
        let released = match pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) {
            None => false,
            // Pre-bound by name: waits for its claim.
            Some(r) if r.uid.is_none() => false,
            Some(r) => claim.as_ref().is_none_or(|c| c.metadata.uid != r.uid),
        };
        if pv.metadata.deletion_timestamp.is_some() {
            return self.volume_deleting(&pv, released);
        }
        if !released {
            let bound = claim.as_ref().is_some_and(|c| {
                c.spec.as_ref().and_then(|s| s.volume_name.as_deref()) == Some(name)
                    && pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref()).and_then(|r| r.uid.as_deref())
                        == c.metadata.uid.as_deref()
            });
            // Half bound (its claim not yet pointing back): the claim's pass finishes it.
            if bound || claim.is_none() {
                self.set_volume_phase(&pv, if bound { "Bound" } else { "Available" })?;
            }
            return Ok(Action::Done);
        }
        // Its claim is gone: released, then (Delete) deleted. The deletion
        // comes after the phase, so a snapshot made after it names the data.
        self.set_volume_phase(&pv, "Released")?;
        if pv.spec.as_ref().and_then(|s| s.persistent_volume_reclaim_policy.as_deref()) == Some("Delete") {
            ignore_not_found(self.client.delete::<PersistentVolume>("", name, pv.metadata.uid.as_deref()))?;
            tracing::info!(volume = %name, node = pinned_node(&pv).unwrap_or("-"), "released volume deleted");
        }
        Ok(Action::Done)
    }

    /// A volume being deleted: held while its claim still uses it (as
    /// Kubernetes' pv-protection); a node-local one with reclaim `Delete`
    /// then waits for its node to remove the data (the fleet ingest lets it
    /// go once the node acted on a snapshot that named it), unless the node
    /// is gone. A retained one goes, its data left where it is.
    fn volume_deleting(&self, pv: &PersistentVolume, released: bool) -> Result<Action, ControllerError> {
        let holds = pv.metadata.finalizers.as_ref().is_some_and(|f| f.iter().any(|f| f == DATA_FINALIZER));
        let bound = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref()).is_some() && !released;
        if !holds || bound {
            return Ok(Action::Done);
        }
        if pv.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Released") {
            return self.set_volume_phase(pv, "Released").map(|()| Action::Done);
        }
        let node_gone = match pinned_node(pv) {
            Some(n) => self.client.get::<k8s_openapi::api::core::v1::Node>("", n)?.is_none(),
            None => true,
        };
        if !data_to_delete(pv) || node_gone {
            release_data(&self.client, pv)?;
        }
        Ok(Action::Done)
    }
}

/// Whether a volume's node should now remove its data: a node-local
/// volume being deleted, released, with reclaim policy `Delete`.
pub fn data_to_delete(pv: &PersistentVolume) -> bool {
    local_path_handle(pv).is_some()
        && pv.metadata.deletion_timestamp.is_some()
        && pv.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Released")
        && pv.spec.as_ref().and_then(|s| s.persistent_volume_reclaim_policy.as_deref()) == Some("Delete")
        && pv.metadata.finalizers.as_ref().is_some_and(|f| f.iter().any(|f| f == DATA_FINALIZER))
}

/// Lets a deleted volume go: its data is gone from its node (or stays).
pub fn release_data(client: &Client, pv: &PersistentVolume) -> Result<(), ControllerError> {
    let mut v = pv.clone();
    if let Some(f) = v.metadata.finalizers.as_mut() {
        f.retain(|f| f != DATA_FINALIZER);
    }
    ignore_not_found(client.replace(&v))
}

fn claim_ref(c: &PersistentVolumeClaim) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("PersistentVolumeClaim".into()),
        namespace: c.metadata.namespace.clone(),
        name: c.metadata.name.clone(),
        uid: c.metadata.uid.clone(),
        resource_version: c.metadata.resource_version.clone(),
        field_path: None,
    }
}

impl Reconcile for VolumeController {
    fn name(&self) -> &'static str {
        "persistentvolume"
    }

    fn keys_for(&mut self, ev: &WatchEvent, out: &mut Vec<Key>) {
        if ev.resource == self.pvc_id {
            out.push(Key::new(self.pvc_id, &ev.namespace, &ev.name));
            // A claim that went releases its volume.
            for o in std::iter::once(&ev.object).chain(ev.prev.as_ref()) {
                if let Some(v) = o.pointer("/spec/volumeName").and_then(Value::as_str).filter(|v| !v.is_empty()) {
                    out.push(Key::new(self.pv_id, "", v));
                }
            }
        } else if ev.resource == self.pv_id {
            out.push(Key::new(self.pv_id, "", &ev.name));
            if let Some(r) = ev.object.pointer("/spec/claimRef") {
                let (ns, name) = (r["namespace"].as_str().unwrap_or_default(), r["name"].as_str().unwrap_or_default());
                out.push(Key::new(self.pvc_id, ns, name));
            }
        } else if ev.resource == self.node_id && ev.kind == crate::store::EventType::Deleted {
            // Volumes whose data waited for this node: nothing left to wait for.
            for pv in self.client.list::<PersistentVolume>(None).unwrap_or_default() {
                if pinned_node(&pv) == Some(ev.name.as_str()) && pv.metadata.deletion_timestamp.is_some() {
                    out.push(Key::new(self.pv_id, "", pv.metadata.name.as_deref().unwrap_or_default()));
                }
            }
        } else if ev.resource == self.pod_id {
            // A pod scheduled (provision), or finished or gone (protection).
            for o in std::iter::once(&ev.object).chain(ev.prev.as_ref()) {
                for c in claims_in(o) {
                    out.push(Key::new(self.pvc_id, &ev.namespace, &c));
                }
            }
        }
    }

    fn all_keys(&mut self) -> Result<Vec<Key>, ControllerError> {
        let mut keys = self.client.keys::<PersistentVolumeClaim>()?;
        keys.extend(self.client.keys::<PersistentVolume>()?);
        Ok(keys)
    }

    fn reconcile(&mut self, key: &Key) -> Result<Action, ControllerError> {
        if key.resource == self.pv_id {
            self.reconcile_volume(&key.name)
        } else {
            self.reconcile_claim(&key.namespace, &key.name)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PersistentVolumeClaimSpec, VolumeResourceRequirements};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    fn claim(size: &str, modes: &[&str]) -> PersistentVolumeClaim {
        PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some("data".into()),
                namespace: Some("default".into()),
                uid: Some("u1".into()),
                ..Default::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(modes.iter().map(|m| (*m).to_owned()).collect()),
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([("storage".into(), Quantity(size.into()))])),
                    ..Default::default()
                }),
                storage_class_name: Some("manual".into()),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn volume(size: &str, modes: &[&str], node: Option<&str>) -> PersistentVolume {
        let mut pv = PersistentVolume {
            metadata: ObjectMeta { name: Some("pv1".into()), ..Default::default() },
            spec: Some(PersistentVolumeSpec {
                access_modes: Some(modes.iter().map(|m| (*m).to_owned()).collect()),
                capacity: Some(BTreeMap::from([("storage".into(), Quantity(size.into()))])),
                storage_class_name: Some("manual".into()),
                ..Default::default()
            }),
            status: Some(PersistentVolumeStatus { phase: Some("Available".into()), ..Default::default() }),
        };
        if let Some(n) = node {
            if let Some(s) = pv.spec.as_mut() {
                s.node_affinity = Some(pinned_to(n));
            }
        }
        pv
    }

    #[test]
    fn a_volume_fits_a_claim_by_class_size_modes_and_node() {
        let c = claim("1Gi", &["ReadWriteOnce"]);
        assert!(fits(&volume("2Gi", &["ReadWriteOnce"], None), &c, "manual", None));
        assert!(!fits(&volume("512Mi", &["ReadWriteOnce"], None), &c, "manual", None), "too small");
        assert!(!fits(&volume("2Gi", &["ReadOnlyMany"], None), &c, "manual", None), "modes");
        assert!(!fits(&volume("2Gi", &["ReadWriteOnce"], None), &c, "other", None), "class");
        assert!(fits(&volume("2Gi", &["ReadWriteOnce"], Some("n1")), &c, "manual", Some("n1")));
        assert!(!fits(&volume("2Gi", &["ReadWriteOnce"], Some("n2")), &c, "manual", Some("n1")), "node");
        let mut taken = volume("2Gi", &["ReadWriteOnce"], None);
        if let Some(s) = taken.spec.as_mut() {
            s.claim_ref = Some(ObjectReference { uid: Some("other".into()), ..Default::default() });
        }
        assert!(!fits(&taken, &c, "manual", None), "claimed by another");
    }

    #[test]
    fn the_pinned_node_and_handle_of_a_local_volume() {
        let mut pv = volume("1Gi", &["ReadWriteOnce"], Some("pi-7"));
        assert_eq!(pinned_node(&pv), Some("pi-7"));
        assert_eq!(local_path_handle(&pv), None);
        if let Some(s) = pv.spec.as_mut() {
            s.csi = Some(CSIPersistentVolumeSource {
                driver: LOCAL_PATH_DRIVER.into(),
                volume_handle: "pvc-1".into(),
                ..Default::default()
            });
        }
        assert_eq!(local_path_handle(&pv), Some("pvc-1"));
        assert_eq!(pinned_node(&volume("1Gi", &["ReadWriteOnce"], None)), None);
    }
}
