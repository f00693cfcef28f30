//! The cluster network table (design.md §3, §6): every Service with its
//! Endpoints, every node's pod CIDR and `InternalIP` addresses, and the
//! cluster and service CIDRs, as one [`ClusterNetwork`] published retained
//! at QoS 1 on `{prefix}/v1/cluster/network`. Agents cache it and serve
//! service rules, DNS and routes from it, so it is full state with a
//! generation, never a delta.
//!
//! [`build`] is the translation, pure over the typed API objects.
//! [`Tracker`] decides generations without I/O: a table keeps its generation
//! while its content is unchanged, and a changed one gets the store revision
//! it was built from, or one more than the last generation when that is not
//! higher. The table last accepted is kept as a store record (with its
//! generation), so a restarted controller knows it and republishes it as it
//! was: generations never go down and do not move without a change.
//!
//! [`NetworkPublisher`] is a control loop with one key: a change to a
//! Service, an Endpoints, or a node's pod CIDR or addresses marks the table
//! dirty. It is rebuilt at once when the last build is at least
//! `min_interval` old, and otherwise when it gets that old, so the first
//! change after a quiet spell goes out without delay and a burst makes at
//! most one publish per interval (kube-proxy's bounded-frequency sync). The
//! interval grows with the fan-out (a table's bytes times the nodes it goes
//! to), so thousands of nodes joining do not make a whole table per node
//! for every node. Node entries are kept from the Node watch, not listed
//! per build. It
//! publishes again after every (re)connect to the broker. A table over the
//! payload cap is refused (log line, a Warning Event, a counter on the
//! dashboard summary); the last one stays retained.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{EndpointAddress, EndpointSubset, Endpoints, Node, Service, ServicePort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kedge_common::envelope;
use kedge_common::network::{
    ClusterNetwork, EndpointNet, EndpointPortNet, NodeNet, Protocol, ServiceKind, ServiceNet, ServicePortNet, SubsetNet,
};
use kedge_common::sign::{Purpose, SigningKey};
use kedge_common::topics;
use rumqttc::{AsyncClient, QoS};
use serde_json::Value;
use tokio::time::Instant;

use super::FleetState;
use crate::client::{Client, Kind};
use crate::controllers::runner::{Action, Reconcile};
use crate::controllers::watched::Watched;
use crate::controllers::{ControllerError, events};
use crate::store::{EventType, Key, WatchEvent};

/// The store record holding the last accepted table (its envelope bytes).
const RECORD: &str = "fleet/cluster-network";
/// `sessionAffinityConfig.clientIP.timeoutSeconds` when unset (Kubernetes' default).
pub const DEFAULT_AFFINITY_SECONDS: u32 = 10_800;
/// The least time between two builds of the table: the rest of a burst
/// gathers for this long after the build its first change triggered.
pub const DEFAULT_MIN_INTERVAL: Duration = Duration::from_millis(150);
/// What the builds are paced to: a table's bytes times the nodes it goes
/// to, per second (see [`NetworkPublisher::interval`]). At 1,000 nodes
/// (a 60 KB table) bursts gather for about half a second; at 5,000
/// (300 KB) for about 11 s. A lone change still goes out at once.
const FANOUT_BYTES_PER_SECOND: u64 = 128 * 1024 * 1024;
/// The pacing never holds a change back longer than this.
const MAX_INTERVAL: Duration = Duration::from_secs(30);

/// The cluster-wide ranges the table carries (`--cluster-cidr`, `--service-cidr`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cidrs {
    pub cluster: Option<IpNet>,
    pub service: Option<IpNet>,
}

/// The table (generation 0) for these objects: Services sorted by namespace
/// and name, each with its Endpoints of the same name; nodes with a pod
/// CIDR sorted by name. Values the API would not have admitted (an address
/// that does not parse, a port out of range) are left out.
pub fn build(services: &[Service], endpoints: &[Endpoints], nodes: &[Node], cidrs: Cidrs) -> ClusterNetwork {
    let eps: HashMap<(&str, &str), &Endpoints> = endpoints
        .iter()
        .filter_map(|e| Some(((e.metadata.namespace.as_deref()?, e.metadata.name.as_deref()?), e)))
        .collect();
    let mut services: Vec<ServiceNet> = services
        .iter()
        .filter_map(|s| {
            let key = (s.metadata.namespace.as_deref()?, s.metadata.name.as_deref()?);
            Some(service_net(s, eps.get(&key).copied()))
        })
        .collect();
    services.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let mut nodes: Vec<NodeNet> = nodes.iter().filter_map(node_net).collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    ClusterNetwork { generation: 0, cluster_cidr: cidrs.cluster, service_cidr: cidrs.service, nodes, services }
}

/// [`build`] with the nodes' entries already made (sorted by name, as a
/// `BTreeMap` gives them).
fn build_from_entries(
    services: &[Service],
    endpoints: &[Endpoints],
    nodes: Vec<NodeNet>,
    cidrs: Cidrs,
) -> ClusterNetwork {
    ClusterNetwork { nodes, ..build(services, endpoints, &[], cidrs) }
}

fn ip(s: &str) -> Option<IpAddr> {
    s.parse().ok()
}

fn service_net(svc: &Service, ep: Option<&Endpoints>) -> ServiceNet {
    let spec = svc.spec.clone().unwrap_or_default();
    let kind = match spec.type_.as_deref() {
        Some("NodePort") => ServiceKind::NodePort,
        Some("LoadBalancer") => ServiceKind::LoadBalancer,
        Some("ExternalName") => ServiceKind::ExternalName,
        _ => ServiceKind::ClusterIP,
    };
    let headless = kind != ServiceKind::ExternalName && spec.cluster_ip.as_deref() == Some("None");
    let cluster_ips = if kind == ServiceKind::ExternalName || headless {
        Vec::new()
    } else {
        let ips =
            spec.cluster_ips.clone().filter(|v| !v.is_empty()).or_else(|| spec.cluster_ip.clone().map(|c| vec![c]));
        ips.unwrap_or_default().iter().filter_map(|s| ip(s)).collect()
    };
    let node_ports = matches!(kind, ServiceKind::NodePort | ServiceKind::LoadBalancer);
    let ports = spec.ports.iter().flatten().filter_map(|p| service_port(p, node_ports)).collect();
    let affinity_seconds = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref()?.timeout_seconds)
            .and_then(|t| u32::try_from(t).ok())
            .filter(|t| *t > 0)
            .unwrap_or(DEFAULT_AFFINITY_SECONDS)
    });
    ServiceNet {
        namespace: svc.metadata.namespace.clone().unwrap_or_default(),
        name: svc.metadata.name.clone().unwrap_or_default(),
        kind,
        cluster_ips,
        headless,
        external_name: (kind == ServiceKind::ExternalName).then(|| spec.external_name.clone()).flatten(),
        affinity_seconds,
        ports,
        subsets: ep.and_then(|e| e.subsets.as_ref()).into_iter().flatten().filter_map(subset_net).collect(),
    }
}

fn service_port(p: &ServicePort, node_ports: bool) -> Option<ServicePortNet> {
    Some(ServicePortNet {
        name: p.name.clone().unwrap_or_default(),
        protocol: Protocol::from_k8s(p.protocol.as_deref())?,
        port: u16::try_from(p.port).ok().filter(|p| *p > 0)?,
        node_port: p.node_port.filter(|_| node_ports).and_then(|n| u16::try_from(n).ok()).filter(|n| *n > 0),
    })
}

fn endpoints(addrs: Option<&Vec<EndpointAddress>>) -> Vec<EndpointNet> {
    let mut v: Vec<EndpointNet> = addrs
        .into_iter()
        .flatten()
        .filter_map(|a| Some(EndpointNet { ip: ip(&a.ip)?, hostname: a.hostname.clone().filter(|h| !h.is_empty()) }))
        .collect();
    v.sort_by_key(|a| a.ip);
    v
}

fn subset_net(s: &EndpointSubset) -> Option<SubsetNet> {
    let ready = endpoints(s.addresses.as_ref());
    let not_ready = endpoints(s.not_ready_addresses.as_ref());
    if ready.is_empty() && not_ready.is_empty() {
        return None;
    }
    let ports = s
        .ports
        .iter()
        .flatten()
        .filter_map(|p| {
            Some(EndpointPortNet {
                name: p.name.clone().unwrap_or_default(),
                protocol: Protocol::from_k8s(p.protocol.as_deref())?,
                port: u16::try_from(p.port).ok().filter(|p| *p > 0)?,
            })
        })
        .collect();
    Some(SubsetNet { ready, not_ready, ports })
}

fn node_net(n: &Node) -> Option<NodeNet> {
    let pod_cidr: IpNet = n.spec.as_ref()?.pod_cidr.as_deref()?.parse().ok()?;
    let addresses = n
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
        .filter(|a| a.type_ == "InternalIP")
        .filter_map(|a| ip(&a.address))
        .collect();
    Some(NodeNet { name: n.metadata.name.clone()?, pod_cidr, addresses })
}

/// [`node_net`] of a Node as stored JSON (a watch event's object), without
/// decoding the whole Node.
fn node_net_json(v: &Value) -> Option<NodeNet> {
    let name = v.pointer("/metadata/name")?.as_str()?.to_owned();
    let (cidr, addrs) = node_part(v);
    Some(NodeNet { name, pod_cidr: cidr?.parse().ok()?, addresses: addrs.into_iter().filter_map(ip).collect() })
}

/// What of a Node (as stored JSON) goes into the table: its pod CIDR and
/// `InternalIP` addresses. Other node changes (conditions, capacity) leave
/// the table alone.
fn node_part(v: &Value) -> (Option<&str>, Vec<&str>) {
    let cidr = v.pointer("/spec/podCIDR").and_then(Value::as_str);
    let addrs = v
        .pointer("/status/addresses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|a| a["type"] == "InternalIP")
        .filter_map(|a| a["address"].as_str())
        .collect();
    (cidr, addrs)
}

/// Generations without I/O (see the module doc).
#[derive(Debug, Default)]
pub struct Tracker {
    current: Option<ClusterNetwork>,
}

impl Tracker {
    /// Starts from the table last accepted (the stored record), if any.
    pub fn new(current: Option<ClusterNetwork>) -> Self {
        Tracker { current }
    }

    pub fn current(&self) -> Option<&ClusterNetwork> {
        self.current.as_ref()
    }

    /// `built` with the generation it goes out with, and whether it is new
    /// content: the current generation when nothing changed, else
    /// `revision` or one more than the current one, whichever is higher.
    pub fn stamp(&self, mut built: ClusterNetwork, revision: u64) -> (ClusterNetwork, bool) {
        match &self.current {
            Some(cur) => {
                built.generation = cur.generation;
                if built == *cur {
                    return (built, false);
                }
                built.generation = revision.max(cur.generation.saturating_add(1));
            }
            None => built.generation = revision.max(1),
        }
        (built, true)
    }

    /// Makes `table` (from [`Tracker::stamp`]) the current one.
    pub fn adopt(&mut self, table: ClusterNetwork) {
        self.current = Some(table);
    }
}

/// What the dashboard summary shows of the table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct NetworkSummary {
    /// The generation last published (0: none yet).
    pub generation: u64,
    pub services: usize,
    pub nodes: usize,
    pub bytes: usize,
    /// Tables refused for being over the payload cap since the start.
    pub refused: u64,
}

pub struct NetworkPublisher {
    /// The controller's fleet signing key.
    key: Arc<SigningKey>,
    client: Client,
    mqtt: AsyncClient,
    topic: String,
    max_payload: usize,
    state: Arc<FleetState>,
    cidrs: Cidrs,
    min_interval: Duration,
    ids: (&'static str, &'static str, &'static str),
    tracker: Tracker,
    /// The current table's envelope.
    bytes: Option<Vec<u8>>,
    /// The broker connection the current table was last published on.
    published_epoch: Option<u64>,
    /// Changes wait for the next build.
    dirty: bool,
    /// When the table was last built.
    last_build: Option<Instant>,
    /// The last refused table (generation 0), so it is reported once.
    refused: Option<ClusterNetwork>,
    /// Each node's entry, listed at the first build and kept from the
    /// Node watch since: a build does not decode every Node (thousands
    /// joining made each build, every `min_interval`, list them all).
    nodes: Watched<NodeNet>,
}

impl NetworkPublisher {
    /// Picks up the stored table, if any: it is what the first publish
    /// sends when nothing changed while the controller was down.
    /// From `opts`: the topic prefix, the payload cap and the least time
    /// between two builds.
    pub fn new(
        client: Client,
        mqtt: AsyncClient,
        opts: &super::FleetOptions,
        state: Arc<FleetState>,
        cidrs: Cidrs,
        key: Arc<SigningKey>,
    ) -> Result<Self, ControllerError> {
        let (prefix, max_payload, min_interval) = (&opts.prefix, opts.max_payload, opts.network_min_interval);
        let stored = client.store().record(RECORD)?;
        let (current, bytes) = match stored {
            // Signed again: it may come from a build before signatures.
            Some(b) => match envelope::decode::<ClusterNetwork>(&b, usize::MAX) {
                Ok(t) => {
                    let bytes = envelope::encode_signed(&t, Purpose::Network, &key)
                        .map_err(|source| ControllerError::NetworkTable { source })?;
                    (Some(t), Some(bytes))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the stored network table does not decode; starting a new one");
                    (None, None)
                }
            },
            None => (None, None),
        };
        Ok(NetworkPublisher {
            key,
            topic: topics::cluster_network_topic(prefix),
            ids: (Service::rt()?.id, Endpoints::rt()?.id, Node::rt()?.id),
            client,
            mqtt,
            max_payload,
            state,
            cidrs,
            min_interval,
            tracker: Tracker::new(current),
            bytes,
            published_epoch: None,
            dirty: false,
            last_build: None,
            refused: None,
            nodes: Watched::new(Node::rt()?.id, node_net_json),
        })
    }

    fn key() -> Key {
        Key::new("fleet/network", "", "cluster")
    }

    fn build(&mut self) -> Result<ClusterNetwork, ControllerError> {
        let services = self.client.list::<Service>(None)?;
        let endpoints = self.client.list::<Endpoints>(None)?;
        let nodes = self.nodes.get(self.client.store())?.values().cloned().collect();
        Ok(build_from_entries(&services, &endpoints, nodes, self.cidrs))
    }

    /// The least time between two builds: `min_interval`, or longer when
    /// a table times the nodes it goes to is more than the broker can
    /// forward in that time at [`FANOUT_BYTES_PER_SECOND`] — each new
    /// table goes whole to every node, so with thousands of nodes joining
    /// (each one a change) a build per change would be quadratic traffic.
    fn interval(&self) -> Duration {
        let nodes = self.nodes.count() as u64;
        let bytes = self.bytes.as_ref().map_or(0, Vec::len) as u64;
        let fanout = Duration::from_millis(bytes.saturating_mul(nodes).saturating_mul(1000) / FANOUT_BYTES_PER_SECOND);
        self.min_interval.max(fanout.min(MAX_INTERVAL))
    }

    fn publish(&mut self) -> Result<(), ControllerError> {
        let revision = self.client.store().revision();
        let built = self.build()?;
        let (table, new) = self.tracker.stamp(built, revision);
        if new {
            let bytes = envelope::encode_signed(&table, Purpose::Network, &self.key)
                .map_err(|source| ControllerError::NetworkTable { source })?;
            if bytes.len() > self.max_payload {
                // The current table (if any) still goes out below.
                self.refuse(&table, &bytes);
            } else {
                self.refused = None;
                self.client.store().put_record(RECORD, &bytes)?;
                tracing::info!(
                    generation = table.generation,
                    services = table.services.len(),
                    nodes = table.nodes.len(),
                    bytes = bytes.len(),
                    "new cluster network table"
                );
                self.tracker.adopt(table);
                self.bytes = Some(bytes);
                self.published_epoch = None;
            }
        }
        let epoch = self.state.epoch();
        if !self.state.connected() || self.published_epoch == Some(epoch) {
            // Published after the (re)connect, when everything is resynced.
            return Ok(());
        }
        let (Some(table), Some(bytes)) = (self.tracker.current(), self.bytes.as_ref()) else { return Ok(()) };
        self.mqtt
            .try_publish(self.topic.clone(), QoS::AtLeastOnce, true, bytes.clone())
            .map_err(|source| ControllerError::PublishNetwork { source })?;
        tracing::debug!(generation = table.generation, bytes = bytes.len(), "published the cluster network table");
        self.published_epoch = Some(epoch);
        self.state.set_network(|s| {
            s.generation = table.generation;
            s.services = table.services.len();
            s.nodes = table.nodes.len();
            s.bytes = bytes.len();
        });
        Ok(())
    }

    /// A table over the cap is not published: the nodes keep the last one.
    fn refuse(&mut self, table: &ClusterNetwork, bytes: &[u8]) {
        // Its generation follows the revision, which moves on its own.
        let content = ClusterNetwork { generation: 0, ..table.clone() };
        if self.refused.as_ref() == Some(&content) {
            return;
        }
        self.refused = Some(content);
        let msg = format!(
            "the cluster network table ({} Services, {} nodes) is {} bytes, over the {}-byte payload cap (--max-payload); the nodes keep the previous table",
            table.services.len(),
            table.nodes.len(),
            bytes.len(),
            self.max_payload
        );
        tracing::error!(bytes = bytes.len(), cap = self.max_payload, "{msg}");
        let about = ObjectMeta { name: Some("kube-system".into()), ..Default::default() };
        events::record(&self.client, "kedge-fleet", ("v1", "Namespace", &about), true, "NetworkTableTooLarge", &msg);
        self.state.set_network(|s| s.refused += 1);
    }
}

impl Reconcile for NetworkPublisher {
    fn name(&self) -> &'static str {
        "fleet-network"
    }

    fn keys_for(&mut self, ev: &WatchEvent, out: &mut Vec<Key>) {
        let (svc_id, ep_id, node_id) = self.ids;
        let relevant = if ev.resource == svc_id || ev.resource == ep_id {
            true
        } else if ev.resource == node_id {
            match ev.kind {
                EventType::Deleted => node_part(&ev.object).0.is_some(),
                _ => ev.prev.as_ref().map(node_part).unwrap_or_default() != node_part(&ev.object),
            }
        } else {
            false
        };
        if relevant {
            self.nodes.observe(ev);
        }
        if relevant {
            self.dirty = true;
            out.push(Self::key());
        }
    }

    fn all_keys(&mut self) -> Result<Vec<Key>, ControllerError> {
        // A resync: watch events may have been missed.
        self.nodes.forget();
        Ok(vec![Self::key()])
    }

    fn reconcile(&mut self, _key: &Key) -> Result<Action, ControllerError> {
        let now = Instant::now();
        if let (true, Some(last)) = (self.dirty, self.last_build) {
            let due = last + self.interval();
            if now < due {
                return Ok(Action::RequeueAfter(due - now));
            }
        }
        self.dirty = false;
        self.last_build = Some(now);
        self.publish().map(|()| Action::Done)
    }
}

#[cfg(test)]
mod tests;
