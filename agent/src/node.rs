//! The node loop: what `kedge-agent run` does once the runtime is open. It
//! merges the two sources of desired pods — the static manifest folder and,
//! with a broker, the controller's snapshots — into the pod manager, stores
//! each source's accepted state in the local cache before acting on it,
//! builds the node report from the runtime's and the pod workers' memory,
//! and hands it to the fleet link.
//!
//! Generic over the runtime: the agent runs it on libcontainer, the tests and
//! the fleet simulator on the fake.

use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kedge_common::network::ClusterNetwork;
use kedge_common::wire::{Event, NetworkStatus, NodeReport};

use crate::cache::{Cache, CacheError};
use crate::fleet::{self, Accepted, CONTROLLER_PREFIX, ControllerSource};
use crate::link::{self, LinkConfig, LinkHandle};
use crate::net::HostPort;
use crate::net::manager::{LocalPods, NetworkManager};
use crate::pods::backoff::BackoffPolicy;
use crate::pods::manifests::{SOURCE_PREFIX, StaticSource};
use crate::pods::{DesiredPod, PodManager, WorkerContext, status};
use crate::report;
use crate::runtime::{CriRuntime, Paths};

/// Everything the node loop needs to know.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub node: String,
    /// The agent's data dir: the local cache (`agent.redb`), pod volumes,
    /// logs and status files.
    pub data_dir: PathBuf,
    /// Folder of static Pod manifests.
    pub manifests: PathBuf,
    pub backoff: BackoffPolicy,
    /// Disk usage (percent) above which unused images are removed.
    pub image_gc_high_threshold: u8,
    /// The fleet link; None runs static pods only.
    pub link: Option<LinkConfig>,
    /// This node's address as other nodes see it (default: the source
    /// address of the route to the broker).
    pub node_ip: Option<String>,
    /// How often static manifests are rescanned and the report rebuilt.
    pub tick: Duration,
    /// `--cluster-dns`: the nameserver of `ClusterFirst` pods (the
    /// kubelet's flag). None: they get the node's resolv.conf, as with the kubelet.
    pub cluster_dns: Option<IpAddr>,
    /// `--cluster-domain` (default `cluster.local`).
    pub cluster_domain: String,
    /// `--storage-dir`: node-local persistent volumes (default `DATA/storage`).
    pub storage_dir: PathBuf,
    /// Told what the node does, for the fleet simulator's measurements
    /// (`kedge-sim`); `None` in the agent.
    pub observer: Option<Observer>,
}

/// What the node tells an [`Observer`].
#[derive(Debug)]
pub enum Observed<'a> {
    /// It accepted a snapshot of the controller: its generation and the
    /// pods it names (`namespace/name`).
    Accepted { generation: u64, pods: &'a [String] },
}

/// What an [`Observer`] calls: the node's name and what it did.
pub type ObserveFn = dyn Fn(&str, Observed<'_>) + Send + Sync;

/// A callback told of what a node does ([`Observed`]).
#[derive(Clone)]
pub struct Observer(pub Arc<ObserveFn>);

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Observer")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("the local cache task failed")]
    CacheTask(#[source] tokio::task::JoinError),
    #[error("node name {0:?} cannot be an MQTT topic level (lower-case letters, digits, '-' and '.'; use --node-name)")]
    NodeName(String),
}

/// Runs a cache operation on a blocking thread: redb syncs to disk, and
/// opening it may wait for a dying process's lock.
async fn cached<T: Send + 'static>(
    cache: &Arc<Cache>,
    f: impl FnOnce(&Cache) -> Result<T, CacheError> + Send + 'static,
) -> Result<T, NodeError> {
    let cache = cache.clone();
    tokio::task::spawn_blocking(move || f(&cache)).await.map_err(NodeError::CacheTask)?.map_err(NodeError::from)
}

/// This node's pods as the network sees them: each address with whether
/// the pod is ready, and the host ports of pods that have an address.
fn local_pods(desired: &[DesiredPod], views: &[status::PodView]) -> LocalPods {
    let mut local = LocalPods::default();
    for v in views {
        let Some(ip) = v.pod_ip.as_deref().and_then(|ip| ip.parse().ok()) else { continue };
        let ready = v.phase == kedge_common::wire::PodPhase::Running
            && !v.containers.is_empty()
            && v.containers.iter().all(|c| c.ready);
        local.endpoints.insert(ip, ready);
        let Some(d) = desired.iter().find(|d| d.uid == v.uid) else { continue };
        for c in &d.pod.spec.containers {
            for p in &c.ports {
                let (Some(host_port), Ok(container_port)) = (p.host_port, u16::try_from(p.container_port)) else {
                    continue;
                };
                let Ok(host_port) = u16::try_from(host_port) else { continue };
                let protocol = kedge_common::network::Protocol::from_k8s(p.protocol.as_deref())
                    .unwrap_or(kedge_common::network::Protocol::TCP);
                local.host_ports.push(HostPort { protocol, host_ip: None, host_port, pod_ip: ip, container_port });
            }
        }
    }
    local.host_ports.sort();
    local
}

/// The fleet link as the node loop holds it.
struct Link {
    handle: LinkHandle,
    machine: report::Machine,
    /// The newest report handed to the link, to derive events from.
    last: Option<NodeReport>,
}

struct Node<R> {
    cfg: NodeConfig,
    boot_id: String,
    manager: PodManager<R>,
    cache: Arc<Cache>,
    network: Option<NetworkManager>,
    source: StaticSource,
    static_pods: Vec<DesiredPod>,
    controller: ControllerSource,
    link: Option<Link>,
}

/// Runs the node until `stop` resolves. Pods are not stopped when it ends: a
/// restarted agent adopts them. `network`: the pod network to keep in step
/// (None: pods get no network beyond `lo`, as with the fake runtime).
pub async fn run<R: CriRuntime>(
    cfg: NodeConfig,
    runtime: R,
    paths: Paths,
    network: Option<NetworkManager>,
    stop: impl Future<Output = ()>,
) -> Result<(), NodeError> {
    if cfg.link.is_some() && !kedge_common::topics::valid_node_name(&cfg.node) {
        return Err(NodeError::NodeName(cfg.node.clone()));
    }
    let session_paths = paths.clone();
    let exec_helper = runtime.exec_helper();
    let mut workers = WorkerContext::new(runtime.clone(), paths, cfg.backoff);
    workers.dns.servers = cfg.cluster_dns.into_iter().collect();
    workers.dns.domain = cfg.cluster_domain.clone();
    workers.storage = cfg.storage_dir.clone();
    let mut network = network;
    if let Some(n) = network.as_mut() {
        n.share_dns_gateway(workers.dns_gateway.clone());
    }
    let manager = PodManager::new(workers);
    let path = cfg.data_dir.join("agent.redb");
    let cache = Arc::new(tokio::task::spawn_blocking(move || Cache::open(&path)).await.map_err(NodeError::CacheTask)??);
    let cached_pods = cached(&cache, |c| c.desired()).await?;
    let source = StaticSource::new(&cfg.manifests, cfg.node.clone()).with_cached(cached_pods.into_values());
    // The controller's last accepted pods start at once, broker or not.
    let controller = cached(&cache, ControllerSource::from_cache).await?;
    let boot_id = crate::runtime::records::boot_id();
    // The last accepted network table: Services, DNS and routes work at once, controller or not.
    let cached_table = match cached(&cache, |c| c.network()).await? {
        Some(payload) => kedge_common::envelope::decode::<ClusterNetwork>(&payload, usize::MAX)
            .inspect_err(
                |e| tracing::warn!(error = %e, "cached network table unreadable; waiting for the controller's"),
            )
            .ok(),
        None => None,
    };
    let mut node =
        Node { cfg, boot_id, manager, cache, network, source, static_pods: Vec::new(), controller, link: None };
    let network_generation = cached_table.as_ref().map_or(0, |t| t.generation);
    if let Some(n) = node.network.as_mut() {
        if let Some(t) = &cached_table {
            tracing::info!(
                generation = t.generation,
                services = t.services.len(),
                "network table from the local cache"
            );
        }
        n.set_table(cached_table.unwrap_or_default()).await;
    }
    let static_pods = node.source.scan().unwrap_or_default();
    node.store_static(static_pods).await;
    // With a controller that was never heard from (a first start, or a
    // cache wiped), running pods wait for its snapshot before any is taken
    // for an orphan.
    node.manager.set_sources_ready(node.cfg.link.is_none() || node.controller.generation > 0);
    node.manager.set_desired(node.all_pods());
    if !node.controller.pods.is_empty() {
        tracing::info!(
            pods = node.controller.pods.len(),
            generation = node.controller.generation,
            "started the controller's pods from the local cache"
        );
    }
    if let Some(mut link_cfg) = node.cfg.link.clone() {
        link_cfg.sessions =
            Some(crate::sessions::SessionEnv { paths: session_paths, cache: node.cache.clone(), exec_helper });
        let node_ip =
            node.cfg.node_ip.clone().or_else(|| report::route_source_ip(&link_cfg.broker.host, link_cfg.broker.port));
        let machine = report::Machine::detect(&node.cfg.node, node_ip);
        let broker = link_cfg.broker.clone();
        let handle = link::start(link_cfg, node.controller.generation, network_generation);
        tracing::info!(%broker, "fleet link started");
        node.link = Some(Link { handle, machine, last: None });
    }
    node.run(stop).await;
    if let Some(l) = node.link.take() {
        l.handle.stop().await;
    }
    Ok(())
}

impl<R: CriRuntime> Node<R> {
    /// Every pod this node should run: its static pods and the controller's.
    fn all_pods(&self) -> Vec<DesiredPod> {
        self.static_pods.iter().chain(&self.controller.pods).cloned().collect()
    }

    /// Stores the static pods, then acts on them (stored before acted on:
    /// a restart runs what was last accepted).
    async fn store_static(&mut self, pods: Vec<DesiredPod>) -> bool {
        let by_source = pods.iter().map(|d| (d.source.clone(), d.clone())).collect();
        match cached(&self.cache, move |c| c.replace(SOURCE_PREFIX, &by_source)).await {
            Ok(()) => {
                self.static_pods = pods;
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot store the desired pods; not acting on them");
                false
            }
        }
    }

    async fn run(&mut self, stop: impl Future<Output = ()>) {
        let mut tick = tokio::time::interval(self.cfg.tick);
        let mut gc = tokio::time::interval(Duration::from_secs(60));
        let changed = self.manager.changed();
        tokio::pin!(stop);
        loop {
            let linked = self.link.is_some();
            let networked = self.network.is_some();
            // What the link handed on: a snapshot, or a network table.
            let from_link = async {
                match self.link.as_mut() {
                    Some(l) => tokio::select! {
                        ok = l.handle.snapshots.changed() => (ok.is_ok(), false),
                        ok = l.handle.networks.changed(), if networked => (ok.is_ok(), true),
                    },
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tick.tick() => {
                    if let Some(pods) = self.source.scan() {
                        if self.store_static(pods).await {
                            self.manager.set_desired(self.all_pods());
                        }
                    }
                    self.send_report();
                    self.update_network().await;
                }
                _ = changed.notified(), if linked || networked => {
                    // Let a burst of worker passes settle into one report.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    self.send_report();
                    self.update_network().await;
                }
                (ok, network) = from_link => {
                    if !ok {
                        tracing::error!("the fleet link stopped; running on without it");
                        self.link = None;
                        continue;
                    }
                    if network {
                        self.take_network().await;
                    } else {
                        self.take_snapshot().await;
                    }
                }
                _ = gc.tick() => {
                    if let Some(n) = self.network.as_mut() {
                        n.resync().await;
                    }
                    let wanted: Vec<String> = self
                        .all_pods()
                        .iter()
                        .flat_map(|d| d.pod.spec.containers.iter().map(|c| c.image.clone()))
                        .collect();
                    let threshold = self.cfg.image_gc_high_threshold;
                    if let Err(e) = self.manager.runtime().collect_images_if_full(threshold, &wanted).await {
                        tracing::warn!(error = %e, "image garbage collection failed");
                    }
                }
                _ = &mut stop => break,
            }
        }
    }

    /// Takes the newest snapshot the link handed on: stored, then acted on.
    async fn take_snapshot(&mut self) {
        let Some(l) = self.link.as_mut() else { return };
        let Some(snap) = l.handle.snapshots.borrow_and_update().clone() else { return };
        let generation = snap.generation;
        let delete_volumes = snap.delete_volumes.clone();
        let Some(prepared) = self.controller.prepare(snap) else {
            tracing::debug!(generation, have = self.controller.generation, "snapshot not newer; ignored");
            return;
        };
        let pods = prepared.pods.clone();
        if let Err(e) = cached(&self.cache, move |c| c.store_snapshot(CONTROLLER_PREFIX, generation, &pods)).await {
            tracing::error!(generation, error = %e, "cannot store the controller's snapshot; not acting on it");
            return;
        }
        let Accepted::New { skipped } = self.controller.adopt(prepared) else { return };
        tracing::info!(generation, pods = self.controller.pods.len(), "accepted the controller's snapshot");
        if let Some(o) = &self.cfg.observer {
            let names: Vec<String> = self
                .controller
                .pods
                .iter()
                .map(|d| {
                    let m = &d.pod.metadata;
                    format!("{}/{}", m.namespace.as_deref().unwrap_or_default(), m.name)
                })
                .collect();
            (o.0)(&self.cfg.node, Observed::Accepted { generation, pods: &names });
        }
        if let Some(l) = self.link.as_ref() {
            for s in skipped {
                tracing::warn!(pod = %s, "pod of the snapshot not run");
                l.handle.push_event(Event {
                    time: jiff::Timestamp::now().as_second(),
                    normal: false,
                    reason: "PodRejected".into(),
                    message: s,
                    pod: None,
                    seq: 0,
                });
            }
        }
        self.manager.set_sources_ready(true);
        self.manager.set_desired(self.all_pods());
        if !delete_volumes.is_empty() {
            // Deleted volumes (claim gone, reclaim policy Delete): their data
            // goes, unless a pod here still mounts one. Off the node loop:
            // a large volume on an SD card takes a while.
            let mounted: std::collections::BTreeSet<String> = self
                .all_pods()
                .iter()
                .flat_map(|d| d.pod.spec.volumes.iter())
                .filter_map(|v| v.local_path.as_ref().map(|l| l.volume.clone()))
                .collect();
            let doomed: Vec<String> = delete_volumes.into_iter().filter(|h| !mounted.contains(h)).collect();
            let dir = self.cfg.storage_dir.clone();
            tokio::task::spawn_blocking(move || {
                for (handle, result) in crate::pods::storage::remove(&dir, &doomed) {
                    match result {
                        Ok(()) => tracing::info!(volume = %handle, "deleted volume's data removed"),
                        Err(e) => tracing::warn!(volume = %handle, error = %e, "cannot remove a deleted volume's data"),
                    }
                }
            });
        }
        // The new observed generation goes out at once.
        self.send_report();
    }

    /// Takes the newest network table the link handed on: stored, then applied.
    async fn take_network(&mut self) {
        let Some(l) = self.link.as_mut() else { return };
        let Some((table, payload)) = l.handle.networks.borrow_and_update().clone() else { return };
        let generation = table.generation;
        if let Err(e) = cached(&self.cache, move |c| c.store_network(&payload)).await {
            tracing::error!(generation, error = %e, "cannot store the network table; not acting on it");
            return;
        }
        tracing::info!(
            generation,
            services = table.services.len(),
            nodes = table.nodes.len(),
            "accepted the network table"
        );
        if let Some(n) = self.network.as_mut() {
            n.set_table(*table).await;
        }
    }

    /// Hands this node's pods (addresses, readiness, host ports) to the
    /// network, which re-applies only if they changed.
    async fn update_network(&mut self) {
        if self.network.is_none() {
            return;
        }
        let rt = self.manager.runtime();
        let views = status::views(&rt.sandbox_records(), &rt.container_records(), &self.manager.statuses(), false);
        let local = local_pods(&self.all_pods(), &views);
        if let Some(n) = self.network.as_mut() {
            n.set_local(local).await;
        }
    }

    /// Builds the node report from the runtime's and the workers' memory and
    /// hands it to the link (which publishes it if it changed); events come
    /// from the difference with the last one.
    fn send_report(&mut self) {
        let network = match self.network.as_ref().map(NetworkManager::status) {
            None => NetworkStatus::None,
            Some(Ok(_)) => NetworkStatus::Ready,
            Some(Err(reason)) => NetworkStatus::Unavailable { reason },
        };
        let Some(l) = self.link.as_mut() else { return };
        let rt = self.manager.runtime();
        let views = status::views(&rt.sandbox_records(), &rt.container_records(), &self.manager.statuses(), false);
        // The static pods' status goes with the controller's pods' (the
        // controller shows them as mirror pods), their spec beside it.
        let statics: Vec<_> = self.static_pods.iter().map(|d| d.pod.clone()).collect();
        let pods: Vec<_> = self.controller.pods.iter().map(|d| d.pod.clone()).chain(statics.iter().cloned()).collect();
        let mut r = report::build(
            &l.machine,
            &self.cfg.node,
            &self.boot_id,
            &self.cfg.data_dir,
            self.controller.generation,
            &pods,
            &views,
        );
        r.network = network;
        r.static_pods = statics.into_iter().map(report::without_secrets).collect();
        for ev in fleet::events_between(l.last.as_ref(), &r).into_iter().chain(self.manager.take_notices()) {
            l.handle.push_event(ev);
        }
        l.last = Some(r.clone());
        l.handle.reports.send_replace(Some(r));
    }
}
