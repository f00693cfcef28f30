//! The messages of the fleet link (design.md §3): the controller's desired
//! snapshot for one node, the node's report back, its events, and its
//! presence. Snapshots and reports are full state, never deltas: the newest
//! one wins whatever arrived before it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::pod::Pod;

/// Everything one node should run, published retained on
/// `{prefix}/v1/nodes/{node}/desired`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct NodeDesired {
    /// The node this snapshot is for; an agent drops a snapshot for another node.
    pub node: String,
    /// Strictly increasing per node, persisted by the controller.
    pub generation: u64,
    /// The node's pods, each with `metadata.uid` and `metadata.namespace`,
    /// ConfigMap/Secret data and `env` references already resolved.
    pub pods: Vec<Pod>,
    /// Node-local persistent volumes (`localPath` handles) deleted with
    /// their data (released, reclaim policy `Delete`): the node removes
    /// their directories, unless a pod still mounts one. Only what is named
    /// here is ever removed; the controller keeps the volume object until
    /// the node has acted on a snapshot that named it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub delete_volumes: Vec<String>,
}

/// What a node reports, published retained on `{prefix}/v1/nodes/{node}/status`
/// whenever it changes (and at a slow refresh interval).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct NodeReport {
    pub node: String,
    /// The newest snapshot generation the node has accepted and acts on.
    pub observed_generation: u64,
    /// Unix seconds at which the report was made.
    pub time: i64,
    pub boot_id: String,
    pub agent_version: String,
    pub info: NodeInfo,
    pub capacity: NodeResources,
    pub allocatable: NodeResources,
    /// `(type, address)`: `InternalIP`, `Hostname`.
    pub addresses: Vec<(String, String)>,
    pub labels: BTreeMap<String, String>,
    pub pressure: Pressure,
    pub usage: Usage,
    pub pods: Vec<PodReport>,
    /// Events dropped from the bounded offline queue since the last report.
    #[serde(default)]
    pub events_dropped: u64,
    /// The pod network, shown as the node's `NetworkUnavailable` condition.
    #[serde(default)]
    pub network: NetworkStatus,
    /// Messages from the controller this node refused since it started
    /// (unsigned, mis-signed, malformed): a forger's attempts, counted.
    #[serde(default)]
    pub rejected: u64,
    /// The node's message counter ([`Seq`]): the controller takes a report
    /// only if it is newer than the newest it took (no replays).
    #[serde(default)]
    pub seq: u64,
    /// The static pods this node runs from its manifest folder, shown in the
    /// API as mirror pods (their status is in `pods`, under the same uid).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub static_pods: Vec<Pod>,
}

/// Whether the node's pods can have addresses.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum NetworkStatus {
    /// The agent runs without a pod network (`--no-pod-network`, or an
    /// agent too old to say).
    #[default]
    None,
    Ready,
    /// Pods wait as ContainerCreating; the reason names the problem.
    Unavailable {
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Kubernetes spelling: `amd64`, `arm64`, `arm`.
    pub architecture: String,
    pub operating_system: String,
    pub os_image: String,
    pub kernel_version: String,
    pub machine_id: String,
    pub container_runtime_version: String,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct NodeResources {
    pub cpu_milli: i64,
    pub memory_bytes: i64,
    pub ephemeral_storage_bytes: i64,
    pub pods: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Pressure {
    pub memory: bool,
    pub disk: bool,
    pub pid: bool,
}

/// Coarse usage for dashboards.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Usage {
    /// Memory in use (total minus available), bytes.
    pub memory_bytes: i64,
    /// One-minute load average × 1000 (a stand-in for CPU use).
    pub load_milli: i64,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct PodReport {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub phase: PodPhase,
    pub ready: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_ip: Option<String>,
    /// Unix seconds at which the node started working on the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<i64>,
    pub containers: Vec<ContainerReport>,
    /// The pod is being deleted and the node has stopped all its
    /// containers: the controller may remove the object.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub terminated: bool,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ContainerReport {
    pub name: String,
    pub image: String,
    #[serde(default)]
    pub image_id: String,
    #[serde(default)]
    pub container_id: String,
    pub ready: bool,
    pub started: bool,
    pub restart_count: u32,
    pub state: ContainerState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_state: Option<ContainerState>,
}

/// A container's state, as Kubernetes' `ContainerState` (times in unix seconds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ContainerState {
    Waiting { reason: WaitingReason, message: String },
    Running { started_at: i64 },
    Terminated { exit_code: i32, reason: TerminatedReason, message: String, started_at: i64, finished_at: i64 },
}

impl Default for ContainerState {
    fn default() -> Self {
        ContainerState::Waiting { reason: WaitingReason::ContainerCreating, message: String::new() }
    }
}

/// Declares a string-like enum: each variant is spelled on the wire (CBOR
/// text), in the agent's files and in the Kubernetes API as its `name`, so
/// these enums read what earlier versions wrote as strings.
macro_rules! reasons {
    ($(#[$m:meta])* $ty:ident { $($(#[$vm:meta])* $v:ident = $name:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $ty {
            $($(#[$vm])* #[serde(rename = $name)] $v),+
        }

        impl $ty {
            /// The Kubernetes spelling.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$v => $name),+
                }
            }

            /// The variant spelled `name`.
            pub fn from_name(name: &str) -> Option<$ty> {
                match name {
                    $($name => Some($ty::$v),)+
                    _ => None,
                }
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

reasons! {
    /// A pod's phase, as Kubernetes' `PodPhase`.
    #[derive(Default)]
    PodPhase {
        #[default]
        Pending = "Pending",
        Running = "Running",
        Succeeded = "Succeeded",
        Failed = "Failed",
        Unknown = "Unknown",
    }
}

reasons! {
    /// Why a container is not running yet, as the kubelet words it.
    WaitingReason {
        ContainerCreating = "ContainerCreating",
        CrashLoopBackOff = "CrashLoopBackOff",
        ErrImagePull = "ErrImagePull",
        ImagePullBackOff = "ImagePullBackOff",
        ErrImageNeverPull = "ErrImageNeverPull",
        CreatePodSandboxError = "CreatePodSandboxError",
        CreateContainerConfigError = "CreateContainerConfigError",
        CreateContainerError = "CreateContainerError",
        RunContainerError = "RunContainerError",
    }
}

reasons! {
    /// Why a container's process ended, as containerd and the kubelet word it.
    TerminatedReason {
        /// Exit code 0.
        Completed = "Completed",
        /// A non-zero exit code.
        Error = "Error",
        /// The kernel's OOM killer ended it.
        OomKilled = "OOMKilled",
        /// The exit was not observed (e.g. it ended while no agent watched it).
        Unknown = "Unknown",
        /// The container's process could not be found when the node looked.
        ContainerStatusUnknown = "ContainerStatusUnknown",
    }
}

impl TerminatedReason {
    /// The reason for an observed exit code (`None`: not observed).
    pub fn for_exit(code: Option<i32>) -> TerminatedReason {
        match code {
            Some(0) => TerminatedReason::Completed,
            Some(_) => TerminatedReason::Error,
            None => TerminatedReason::Unknown,
        }
    }
}

/// Something that happened on a node, published (not retained) on
/// `{prefix}/v1/nodes/{node}/events`; the controller turns it into a
/// Kubernetes Event.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Event {
    /// Unix seconds.
    pub time: i64,
    /// `false` for a Warning.
    pub normal: bool,
    pub reason: String,
    pub message: String,
    /// The pod it is about, if any: namespace, name, uid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<(String, String, String)>,
    /// The node's message counter ([`Seq`]); a replayed event is dropped.
    #[serde(default)]
    pub seq: u64,
}

/// `{prefix}/v1/nodes/{node}/presence`, plain JSON (also the Last Will),
/// signed with the node's key: `sig` covers [`Presence::signed_body`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Presence {
    pub online: bool,
    /// RFC 3339.
    pub since: String,
    pub boot_id: String,
    /// The node's message counter ([`Seq`]).
    #[serde(default)]
    pub seq: u64,
    /// The node's signature (base64url).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sig: String,
}

/// A node's message counter: the high 32 bits count the agent's starts
/// (kept in its data dir, one write per start), the low 32 bits its
/// messages since. Strictly increasing over a node's life without a write
/// per message (flash wear).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seq(pub u64);

impl Seq {
    pub fn start(epoch: u32) -> Seq {
        Seq(u64::from(epoch) << 32)
    }

    pub fn epoch(self) -> u32 {
        (self.0 >> 32) as u32
    }

    /// The next value (what a message carries).
    pub fn take(&mut self) -> u64 {
        self.0 += 1;
        self.0
    }
}

/// A node's request to join, published on `{prefix}/v1/join/{node}` in an
/// envelope signed ([`crate::sign::Purpose::Join`]) with the key it names.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct JoinRequest {
    pub node: String,
    /// The node's public key, as text.
    pub key: String,
    /// The id of the join token.
    pub token_id: String,
    /// [`crate::sign::join_proof`] keyed with the token's secret, base64url.
    pub proof: String,
    /// Random; the answer echoes it, so an old answer replayed matches nothing.
    pub nonce: String,
    /// The node's public sealing key ([`crate::seal`]): its snapshots are
    /// sealed to it.
    #[serde(default)]
    pub seal_key: String,
}

/// The controller's answer on `{prefix}/v1/join/{node}/answer`, signed
/// ([`crate::sign::Purpose::JoinAnswer`]).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct JoinAnswer {
    pub node: String,
    /// The key the request named.
    pub key: String,
    pub nonce: String,
    pub accepted: bool,
    /// Why not, when refused.
    pub reason: String,
}

/// A joined node's request to be known by a new key (`kedge-agent
/// rotate-key`), published on `{prefix}/v1/nodes/{node}/rotate` in an
/// envelope signed ([`crate::sign::Purpose::Rotate`]) with its current key;
/// `proof` shows it holds the new one. The controller answers with a
/// [`JoinAnswer`] for the new key and this nonce.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RotateRequest {
    pub node: String,
    /// The new public key, as text.
    pub key: String,
    /// The new public sealing key.
    pub seal_key: String,
    /// Random, echoed by the answer.
    pub nonce: String,
    /// The new key's signature ([`crate::sign::Purpose::RotateProof`]) of
    /// [`RotateRequest::proof_body`], base64url.
    pub proof: String,
}

impl RotateRequest {
    /// What the new key signs: everything the request asks for.
    pub fn proof_body(&self) -> Vec<u8> {
        format!("{}\n{}\n{}\n{}", self.node, self.key, self.seal_key, self.nonce).into_bytes()
    }

    /// A request from `node` for `new` (and `seal`), with its proof.
    pub fn new(
        node: &str,
        new: &crate::sign::SigningKey,
        seal: &crate::seal::SealPublic,
        nonce: &str,
    ) -> RotateRequest {
        let mut r = RotateRequest {
            node: node.to_owned(),
            key: new.public().to_string(),
            seal_key: seal.to_string(),
            nonce: nonce.to_owned(),
            proof: String::new(),
        };
        r.proof = crate::sign::signature_text(&new.sign(crate::sign::Purpose::RotateProof, &r.proof_body()));
        r
    }

    /// The new key, if the proof is its signature.
    pub fn proven_key(&self) -> Result<crate::sign::PublicKey, String> {
        let key: crate::sign::PublicKey = self.key.parse().map_err(|e: crate::sign::SignError| e.to_string())?;
        let sig = crate::sign::signature_from_text(&self.proof).ok_or("the proof is not base64url")?;
        key.verify(crate::sign::Purpose::RotateProof, &self.proof_body(), &sig)
            .map_err(|e| format!("the proof is not the new key's: {e}"))?;
        Ok(key)
    }
}

/// Why a received message was dropped.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error(transparent)]
    Envelope(#[from] crate::envelope::EnvelopeError),
    #[error("message for node {got:?} arrived on node {want:?}'s topic")]
    WrongNode { got: String, want: String },
    #[error("presence is not valid JSON: {0}")]
    Presence(String),
}

/// A message that names the node it is about; it is only valid on that
/// node's topics.
pub trait NodeMessage: serde::de::DeserializeOwned {
    fn node(&self) -> &str;
}

impl NodeMessage for NodeDesired {
    fn node(&self) -> &str {
        &self.node
    }
}

impl NodeMessage for NodeReport {
    fn node(&self) -> &str {
        &self.node
    }
}

/// Decodes a snapshot or report received on `node`'s topic: envelope, size
/// cap, version, and the node it names.
pub fn decode_for<T: NodeMessage>(payload: &[u8], node: &str, cap: usize) -> Result<T, WireError> {
    let m: T = crate::envelope::decode(payload, cap)?;
    if m.node() != node {
        return Err(WireError::WrongNode { got: m.node().to_string(), want: node.into() });
    }
    Ok(m)
}

/// [`decode_for`] of a message that must carry `key`'s signature for
/// `purpose` (what the controller sends).
pub fn decode_verified_for<T: NodeMessage>(
    payload: &[u8],
    node: &str,
    cap: usize,
    purpose: crate::sign::Purpose,
    key: &crate::sign::PublicKey,
) -> Result<T, WireError> {
    decode_opened_for(payload, node, cap, purpose, key, None)
}

/// [`decode_verified_for`] of a message that may be sealed to this node
/// ([`crate::seal`]; `opener` is the node's sealing key).
pub fn decode_opened_for<T: NodeMessage>(
    payload: &[u8],
    node: &str,
    cap: usize,
    purpose: crate::sign::Purpose,
    key: &crate::sign::PublicKey,
    opener: Option<&crate::seal::SealSecret>,
) -> Result<T, WireError> {
    let m: T = crate::envelope::decode_opened(payload, cap, purpose, key, opener)?;
    if m.node() != node {
        return Err(WireError::WrongNode { got: m.node().to_string(), want: node.into() });
    }
    Ok(m)
}

impl Presence {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// What the signature covers: the CBOR of the node name and every field
    /// but `sig`.
    pub fn signed_body(&self, node: &str) -> Vec<u8> {
        let mut out = Vec::new();
        // Plain strings, bools and integers: encoding cannot fail.
        let _ = ciborium::into_writer(&(node, self.online, &self.since, &self.boot_id, self.seq), &mut out);
        out
    }

    /// Signs it as `node`'s presence.
    pub fn sign(&mut self, node: &str, key: &crate::sign::SigningKey) {
        self.sig = crate::sign::signature_text(&key.sign(crate::sign::Purpose::Presence, &self.signed_body(node)));
    }

    /// Whether it carries `key`'s signature as `node`'s presence.
    pub fn verify(&self, node: &str, key: &crate::sign::PublicKey) -> Result<(), crate::sign::SignError> {
        let sig = crate::sign::signature_from_text(&self.sig).ok_or(crate::sign::SignError::Mismatch)?;
        key.verify(crate::sign::Purpose::Presence, &self.signed_body(node), &sig)
    }

    pub fn from_json(payload: &[u8]) -> Result<Presence, WireError> {
        serde_json::from_slice(payload).map_err(|e| WireError::Presence(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{DEFAULT_MAX_PAYLOAD, encode};

    fn snapshot() -> NodeDesired {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-1", "namespace": "default", "uid": "u1"},
            "spec": {"containers": [{"name": "c", "image": "kedge.local/busybox:latest",
                "command": ["sleep", "3600"], "env": [{"name": "A", "value": "from-configmap"}]}],
                "volumes": [{"name": "cfg", "configMap": {"name": "cfg", "data": {"k": "v"}}}]}
        }))
        .expect("pod");
        NodeDesired { node: "n1".into(), generation: 7, pods: vec![pod], delete_volumes: Vec::new() }
    }

    fn report() -> NodeReport {
        NodeReport {
            node: "n1".into(),
            observed_generation: 7,
            time: 1_700_000_000,
            info: NodeInfo { architecture: "arm64".into(), ..Default::default() },
            capacity: NodeResources {
                cpu_milli: 4000,
                memory_bytes: 1 << 30,
                ephemeral_storage_bytes: 1 << 34,
                pods: 110,
            },
            pods: vec![PodReport {
                uid: "u1".into(),
                namespace: "default".into(),
                name: "web-1".into(),
                phase: PodPhase::Running,
                ready: true,
                containers: vec![ContainerReport {
                    name: "c".into(),
                    restart_count: 2,
                    state: ContainerState::Running { started_at: 1_700_000_000 },
                    last_state: Some(ContainerState::Terminated {
                        exit_code: 1,
                        reason: TerminatedReason::Error,
                        message: String::new(),
                        started_at: 1,
                        finished_at: 2,
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn snapshot_and_report_round_trip() {
        let d = snapshot();
        let bytes = encode(&d).expect("encode");
        assert_eq!(decode_for::<NodeDesired>(&bytes, "n1", DEFAULT_MAX_PAYLOAD).expect("decode"), d);
        let r = report();
        let bytes = encode(&r).expect("encode");
        assert_eq!(decode_for::<NodeReport>(&bytes, "n1", DEFAULT_MAX_PAYLOAD).expect("decode"), r);
        let p =
            Presence { online: true, since: "2026-11-29T00:00:00Z".into(), boot_id: "b".into(), ..Default::default() };
        assert_eq!(Presence::from_json(&p.to_json()).expect("presence"), p);
    }

    /// Presence is plain JSON (dashboards read it) and signed all the same:
    /// any field changed, another node's name or another key fails.
    #[test]
    fn a_rotation_proves_the_new_key() {
        let (new, _) = crate::sign::SigningKey::generate().expect("key");
        let seal = crate::seal::SealSecret::generate().expect("seal").public();
        let r = RotateRequest::new("n1", &new, &seal, "nonce");
        assert_eq!(r.proven_key().expect("proven"), new.public());
        let other = crate::seal::SealSecret::generate().expect("seal").public();
        let tampered = RotateRequest { seal_key: other.to_string(), ..r.clone() };
        assert!(tampered.proven_key().is_err(), "another sealing key than the new key signed");
        let (someone, _) = crate::sign::SigningKey::generate().expect("key");
        let claimed = RotateRequest { key: someone.public().to_string(), ..r };
        assert!(claimed.proven_key().is_err(), "a key whose holder did not sign");
    }

    #[test]
    fn presence_is_signed_json() {
        let (key, _) = crate::sign::SigningKey::generate().expect("key");
        let (other, _) = crate::sign::SigningKey::generate().expect("key");
        let mut p = Presence { online: false, since: String::new(), boot_id: "b".into(), seq: 7, sig: String::new() };
        assert!(p.verify("n1", &key.public()).is_err(), "unsigned");
        p.sign("n1", &key);
        let back = Presence::from_json(&p.to_json()).expect("json");
        assert_eq!(back.verify("n1", &key.public()), Ok(()));
        assert!(back.verify("n2", &key.public()).is_err(), "another node's name");
        assert!(back.verify("n1", &other.public()).is_err(), "another key");
        let flipped = Presence { online: true, ..back.clone() };
        assert!(flipped.verify("n1", &key.public()).is_err(), "online flipped");
        let replayed = Presence { seq: 8, ..back };
        assert!(replayed.verify("n1", &key.public()).is_err(), "renumbered");
    }

    #[test]
    fn rejects_other_nodes_garbage_truncation_and_size() {
        let bytes = encode(&snapshot()).expect("encode");
        assert!(matches!(
            decode_for::<NodeDesired>(&bytes, "n2", DEFAULT_MAX_PAYLOAD),
            Err(WireError::WrongNode { .. })
        ));
        assert!(decode_for::<NodeDesired>(b"hello", "n1", DEFAULT_MAX_PAYLOAD).is_err());
        assert!(decode_for::<NodeDesired>(&bytes[..bytes.len() / 2], "n1", DEFAULT_MAX_PAYLOAD).is_err());
        assert!(decode_for::<NodeDesired>(&bytes, "n1", 16).is_err());
        // A report is not a snapshot.
        let report = encode(&report()).expect("encode");
        assert!(decode_for::<NodeDesired>(&report, "n1", DEFAULT_MAX_PAYLOAD).is_err());
        assert!(Presence::from_json(b"{\"online\":").is_err());
    }

    #[test]
    fn states_travel_as_their_kubernetes_names() {
        // An earlier agent sent these as strings: the enums read them.
        let old = ciborium_bytes(&("Running", "CrashLoopBackOff", "OOMKilled"));
        let new = ciborium_bytes(&(PodPhase::Running, WaitingReason::CrashLoopBackOff, TerminatedReason::OomKilled));
        assert_eq!(old, new);
        assert_eq!(TerminatedReason::from_name("OOMKilled"), Some(TerminatedReason::OomKilled));
        assert_eq!(WaitingReason::from_name("Bogus"), None);
        assert_eq!(PodPhase::Failed.to_string(), "Failed");
        assert_eq!(TerminatedReason::for_exit(Some(0)), TerminatedReason::Completed);
        assert_eq!(TerminatedReason::for_exit(Some(2)), TerminatedReason::Error);
        assert_eq!(TerminatedReason::for_exit(None), TerminatedReason::Unknown);
    }

    fn ciborium_bytes<T: Serialize>(v: &T) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::into_writer(v, &mut out).expect("encode");
        out
    }
}
