//! The dashboard topics: `fleet/nodes/{node}` and `fleet/summary` as plain,
//! retained JSON, so MQTT Explorer, Node-RED or `mosquitto_sub` show the
//! fleet without a decoder. Published when their content changes (checked
//! once a second), and all again after a reconnect.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Node;
use kedge_common::topics;
use kedge_common::wire::{ContainerState, NodeReport, PodPhase, WaitingReason};
use rumqttc::{AsyncClient, QoS};
use serde::Serialize;
use tokio::sync::broadcast::{self, error::TryRecvError};

use super::{FleetState, NodeLive};
use crate::client::{Client, Kind};
use crate::controllers::watched::Watched;
use crate::store::WatchEvent;

/// What a dashboard needs of a node's newest report.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReportSummary {
    pub arch: String,
    pub agent_version: String,
    pub observed_generation: u64,
    pub pods: usize,
    pub running: usize,
    pub failing: usize,
    pub cpu_milli: i64,
    pub load_milli: i64,
    pub memory_bytes: i64,
    pub memory_used_bytes: i64,
    pub report_time: i64,
    /// Messages from the controller the node refused (forgeries, as it says).
    pub rejected: u64,
}

/// Waiting reasons and exits that mean a pod is in trouble.
fn failing(state: &ContainerState) -> bool {
    match state {
        ContainerState::Waiting { reason, .. } => matches!(
            reason,
            WaitingReason::CrashLoopBackOff
                | WaitingReason::ErrImagePull
                | WaitingReason::ImagePullBackOff
                | WaitingReason::CreateContainerError
                | WaitingReason::CreateContainerConfigError
        ),
        ContainerState::Terminated { exit_code, .. } => *exit_code != 0,
        ContainerState::Running { .. } => false,
    }
}

impl ReportSummary {
    pub fn of(r: &NodeReport) -> ReportSummary {
        ReportSummary {
            arch: r.info.architecture.clone(),
            agent_version: r.agent_version.clone(),
            observed_generation: r.observed_generation,
            pods: r.pods.len(),
            running: r.pods.iter().filter(|p| p.phase == PodPhase::Running).count(),
            failing: r
                .pods
                .iter()
                .filter(|p| p.phase == PodPhase::Failed || p.containers.iter().any(|c| failing(&c.state)))
                .count(),
            cpu_milli: r.capacity.cpu_milli,
            load_milli: r.usage.load_milli,
            memory_bytes: r.capacity.memory_bytes,
            memory_used_bytes: r.usage.memory_bytes,
            report_time: r.time,
            rejected: r.rejected,
        }
    }
}

#[derive(Debug, Serialize, PartialEq)]
struct PodCounts {
    desired: usize,
    running: usize,
    failing: usize,
}

#[derive(Debug, Serialize, PartialEq)]
struct NodeJson {
    node: String,
    ready: bool,
    online: bool,
    /// RFC 3339: the newest presence or report heard from the node.
    last_seen: Option<String>,
    pods: PodCounts,
    cpu: serde_json::Value,
    memory: serde_json::Value,
    arch: String,
    agent_version: String,
    desired_generation: u64,
    observed_generation: u64,
    /// Messages refused for want of a valid signature, counter or rate:
    /// `by_node` those the node refused (sent to it in the controller's
    /// name), `by_controller` those sent in the node's name.
    rejected: serde_json::Value,
}

#[derive(Debug, Serialize, PartialEq)]
struct SummaryJson {
    nodes: usize,
    ready: usize,
    online: usize,
    pods: PodCounts,
    /// The cluster network table: generation, size, refusals.
    network: super::network::NetworkSummary,
}

fn rfc3339(secs: i64) -> Option<String> {
    (secs > 0).then(|| jiff::Timestamp::from_second(secs).map(|t| t.to_string()).ok()).flatten()
}

/// Whether a Node (as stored JSON) is Ready.
fn ready_json(node: &serde_json::Value) -> bool {
    let conditions = node.pointer("/status/conditions").and_then(|c| c.as_array());
    conditions.into_iter().flatten().any(|c| c["type"] == "Ready" && c["status"] == "True")
}

fn node_json(name: &str, live: &NodeLive, ready: bool) -> NodeJson {
    let r = live.report.clone().unwrap_or_default();
    let last = live.report_at.max(live.presence_at);
    NodeJson {
        node: name.to_string(),
        ready,
        online: live.online == Some(true),
        last_seen: rfc3339(last),
        pods: PodCounts { desired: live.desired.map_or(r.pods, |d| d.2), running: r.running, failing: r.failing },
        cpu: serde_json::json!({"capacity_milli": r.cpu_milli, "load_milli": r.load_milli}),
        memory: serde_json::json!({"capacity_bytes": r.memory_bytes, "used_bytes": r.memory_used_bytes}),
        arch: r.arch,
        agent_version: r.agent_version,
        desired_generation: live.desired.map_or(0, |d| d.0),
        observed_generation: r.observed_generation,
        rejected: serde_json::json!({"by_node": r.rejected, "by_controller": live.rejected}),
    }
}

pub struct Dashboard {
    prefix: String,
    /// Topic → payload last handed to the broker.
    sent: HashMap<String, Vec<u8>>,
    /// Each Node's Ready: listed once, then kept from the store's watch
    /// (listing every Node once a second took a fifth of the controller
    /// with 5,000 nodes joining).
    ready: Option<Watched<bool>>,
    /// The store's watch feeding `ready`; `None` until subscribed, and
    /// again when it lagged.
    watch: Option<broadcast::Receiver<Arc<WatchEvent>>>,
}

impl Dashboard {
    pub fn new(prefix: String) -> Self {
        Dashboard { prefix, sent: HashMap::new(), ready: None, watch: None }
    }

    /// Each Node's Ready, brought up to date.
    fn readiness(&mut self, client: &Client) -> Option<&BTreeMap<String, bool>> {
        if self.ready.is_none() {
            self.ready = Some(Watched::new(Node::rt().ok()?.id, |n| Some(ready_json(n))));
        }
        let ready = self.ready.as_mut()?;
        let store = client.store();
        if let Some(rx) = self.watch.as_mut() {
            loop {
                match rx.try_recv() {
                    Ok(ev) => ready.observe(&ev),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Lagged(_) | TryRecvError::Closed) => {
                        self.watch = None;
                        break;
                    }
                }
            }
        }
        if self.watch.is_none() {
            // Watching first, then listing: a change after the list comes
            // again as an event, which sets what the list already says.
            self.watch = Some(store.hub().subscribe(store.revision()).ok()?.live);
            ready.forget();
        }
        match ready.get(store) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(error = %e, "dashboard: cannot list nodes");
                None
            }
        }
    }

    /// After a reconnect the broker may have lost everything: send all again.
    pub fn forget(&mut self) {
        self.sent.clear();
    }

    fn send(&mut self, mqtt: &AsyncClient, topic: String, payload: Vec<u8>) {
        if self.sent.get(&topic) == Some(&payload) {
            return;
        }
        match mqtt.try_publish(topic.clone(), QoS::AtLeastOnce, true, payload.clone()) {
            Ok(()) => {
                self.sent.insert(topic, payload);
            }
            Err(e) => tracing::debug!(%topic, error = %e, "dashboard update not queued; retrying"),
        }
    }

    /// Publishes what changed since the last flush.
    pub fn flush(&mut self, mqtt: &AsyncClient, state: &FleetState, client: &Client) {
        let Some(ready) = self.readiness(client).cloned() else { return };
        let mut summary = SummaryJson {
            nodes: 0,
            ready: 0,
            online: 0,
            pods: PodCounts { desired: 0, running: 0, failing: 0 },
            network: state.network(),
        };
        for (name, live) in state.nodes() {
            if live.online.is_none() && live.report.is_none() {
                continue; // only a snapshot so far: not a node we have heard from
            }
            let j = node_json(&name, &live, ready.get(&name).copied().unwrap_or(false));
            summary.nodes += 1;
            summary.ready += usize::from(j.ready);
            summary.online += usize::from(j.online);
            summary.pods.desired += j.pods.desired;
            summary.pods.running += j.pods.running;
            summary.pods.failing += j.pods.failing;
            match serde_json::to_vec(&j) {
                Ok(bytes) => self.send(mqtt, topics::fleet_node_topic(&self.prefix, &name), bytes),
                Err(e) => tracing::warn!(error = %e, "dashboard: cannot encode a node"),
            }
        }
        if let Ok(bytes) = serde_json::to_vec(&summary) {
            self.send(mqtt, topics::fleet_summary_topic(&self.prefix), bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_reads_as_plain_json() {
        let live = NodeLive {
            online: Some(true),
            presence_at: 1_700_000_000,
            presence_seq: 5,
            seen_online: true,
            report_at: 1_700_000_010,
            report: Some(ReportSummary { arch: "arm64".into(), pods: 3, running: 2, failing: 1, ..Default::default() }),
            desired: Some((42, 0, 3)),
            rejected: 7,
            unobserved: None,
        };
        let j = serde_json::to_value(node_json("pi-1", &live, false)).expect("json");
        assert_eq!(j["node"], "pi-1");
        assert_eq!(j["online"], true);
        assert_eq!(j["arch"], "arm64");
        assert_eq!(j["pods"], serde_json::json!({"desired": 3, "running": 2, "failing": 1}));
        assert_eq!(j["last_seen"], "2023-11-14T22:13:30Z");
        assert_eq!(j["desired_generation"], 42);
        assert_eq!(j["rejected"], serde_json::json!({"by_node": 0, "by_controller": 7}));
    }
}
