//! The node's network, kept in step with two inputs: the cluster's network
//! table (from the controller, or the cache) and this node's own pods (their
//! addresses, readiness and host ports, from the runtime and the pod
//! workers). Local health is applied locally: an endpoint of this node that
//! dies or turns unready leaves the Service rules at once, online or offline,
//! and comes back when it recovers; the controller's view of every other
//! node's endpoints is taken as it is.
//!
//! On every change it works out the bridge (pod CIDR), the routes to the
//! other nodes' pods and the Service table, and applies only what changed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use ipnet::IpNet;
use kedge_common::network::{ClusterNetwork, NodeNet};
use tokio::sync::watch;

use super::conntrack::{self, ConntrackError};
use super::dns::{self, DnsServer};
use super::nft::{self, Applier};
use super::pod::PodNet;
use super::routes::{self, Overlay};
use super::{HostPort, NodeNetwork};

/// How the node's network is set up (the agent's flags).
#[derive(Debug, Clone)]
pub struct NetworkConfig {
    pub node: String,
    /// `--pod-bridge`.
    pub bridge: String,
    /// `--pod-cidr`: the pod CIDR of a standalone node (no controller); a
    /// node in a cluster takes its own from the network table.
    pub pod_cidr: Option<IpNet>,
    /// `--node-ip`, or the address the route to the broker leaves from.
    pub node_ip: Option<IpAddr>,
    /// `--overlay`.
    pub overlay: Overlay,
    /// `--cluster-domain`: the zone the DNS server on the gateway answers.
    pub cluster_domain: String,
}

/// This node's pods as the network sees them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalPods {
    /// Pod address → ready (every container running and ready).
    pub endpoints: BTreeMap<IpAddr, bool>,
    pub host_ports: Vec<HostPort>,
}

pub struct NetworkManager {
    cfg: NetworkConfig,
    pod_net: Arc<PodNet>,
    table: Arc<ClusterNetwork>,
    local: LocalPods,
    /// The node as configured last (None: not yet / unavailable).
    node: Option<NodeNetwork>,
    /// Loads the Service table (None only while it works on a blocking thread).
    applier: Option<Applier>,
    /// Why the Service table could not be applied last time.
    services_error: Option<String>,
    /// Why the routes to the other nodes' pods are not set (also part of
    /// `NetworkUnavailable`).
    routes_error: Option<String>,
    /// The UDP flows the applied rules lead to each endpoint: when one
    /// goes, its conntrack entries are deleted (conntrack.rs).
    udp_flows: BTreeSet<(nft::UdpDst, Ipv4Addr)>,
    /// `conntrack` was found missing (said once).
    conntrack_missing: bool,
    routes: routes::Applied,
    /// Cluster DNS on the gateway, once the bridge has that address.
    dns: Option<(IpAddr, DnsServer)>,
    /// Where the pod workers read the gateway (their cluster DNS server).
    dns_gateway: Arc<std::sync::RwLock<Option<IpAddr>>>,
    /// The table with this node's health applied: what DNS answers from.
    effective: watch::Sender<Arc<ClusterNetwork>>,
}

impl NetworkManager {
    pub fn new(cfg: NetworkConfig, pod_net: Arc<PodNet>) -> NetworkManager {
        NetworkManager {
            cfg,
            pod_net,
            table: Arc::default(),
            local: LocalPods::default(),
            node: None,
            applier: Some(Applier::new()),
            services_error: None,
            routes_error: None,
            udp_flows: BTreeSet::new(),
            conntrack_missing: false,
            routes: routes::Applied::default(),
            dns: None,
            dns_gateway: Arc::default(),
            effective: watch::channel(Arc::default()).0,
        }
    }

    /// The effective table, for the DNS server.
    pub fn subscribe(&self) -> watch::Receiver<Arc<ClusterNetwork>> {
        self.effective.subscribe()
    }

    /// Whether pods have a working network, or why not (the node's
    /// `NetworkUnavailable` condition).
    pub fn status(&self) -> Result<(), String> {
        self.pod_net.node()?;
        match self.routes_error.as_ref().or(self.services_error.as_ref()) {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Where the pod workers should read the gateway from (their cluster
    /// DNS server when `--cluster-dns` is not set).
    pub fn share_dns_gateway(&mut self, cell: Arc<std::sync::RwLock<Option<IpAddr>>>) {
        self.dns_gateway = cell;
    }

    /// Reloads the whole Service table at the next sync (repairs a table
    /// someone else changed or deleted) and syncs.
    pub async fn resync(&mut self) {
        if let Some(a) = self.applier.as_mut() {
            a.forget();
        }
        self.routes = routes::Applied::default();
        self.sync().await;
    }

    /// A new table (from the controller, or the cache at start).
    pub async fn set_table(&mut self, table: ClusterNetwork) {
        self.table = Arc::new(table);
        self.sync().await;
    }

    /// This node's pods changed (or maybe did: unchanged input does nothing).
    pub async fn set_local(&mut self, local: LocalPods) {
        if local != self.local {
            self.local = local;
            self.sync().await;
        }
    }

    /// What this node is on the network, from the table and the flags.
    fn wanted_node(&self) -> Result<NodeNetwork, String> {
        let own = self.table.node(&self.cfg.node);
        let pod_cidr = match (own, self.cfg.pod_cidr) {
            (Some(n), _) => n.pod_cidr,
            (None, Some(c)) => c,
            (None, None) => return Err(NO_POD_CIDR.into()),
        };
        let gateway = gateway_of(pod_cidr)
            .map(IpAddr::V4)
            .ok_or_else(|| format!("pod CIDR {pod_cidr} is not an IPv4 network with room for pods"))?;
        let mut node_ips: Vec<IpAddr> = own.map(|n| n.addresses.clone()).unwrap_or_default();
        if let Some(ip) = self.cfg.node_ip {
            if !node_ips.contains(&ip) {
                node_ips.insert(0, ip);
            }
        }
        Ok(NodeNetwork {
            node: self.cfg.node.clone(),
            node_ips,
            pod_cidr,
            cluster_cidr: self.table.cluster_cidr.unwrap_or(pod_cidr),
            bridge: self.cfg.bridge.clone(),
            gateway,
            overlay_headroom: self.cfg.overlay != Overlay::HostGw,
        })
    }

    async fn sync(&mut self) {
        let wanted = self.wanted_node();
        match wanted {
            Err(reason) => {
                if self.node.take().is_some() || self.pod_net.node().is_ok() {
                    tracing::warn!(%reason, "pod network unavailable");
                }
                self.pod_net.set_unavailable(reason);
            }
            Ok(node) if self.node.as_ref() != Some(&node) => {
                let pod_net = self.pod_net.clone();
                let n = node.clone();
                let before = self.pod_net.node().err();
                match tokio::task::spawn_blocking(move || pod_net.configure(n)).await {
                    Ok(Ok(())) => {
                        tracing::info!(pod_cidr = %node.pod_cidr, bridge = %node.bridge, gateway = %node.gateway, "pod network ready");
                        self.node = Some(node);
                    }
                    Ok(Err(e)) => {
                        // Tried again at every change: said once per reason.
                        if self.pod_net.node().err() != before {
                            tracing::error!(error = %e, "pod network unavailable");
                        }
                        self.node = None;
                    }
                    Err(e) => tracing::error!(error = %e, "pod network task failed"),
                }
            }
            Ok(_) => {}
        }
        let Some(node) = self.node.clone() else { return };
        let effective = Arc::new(apply_local_health(&self.table, node.pod_cidr, &self.local));
        self.effective.send_replace(effective.clone());
        self.sync_routes(&node).await;
        self.sync_services(&node, &effective).await;
        self.sync_dns(&node).await;
    }

    async fn sync_dns(&mut self, node: &NodeNetwork) {
        if self.dns.as_ref().is_some_and(|(gw, _)| *gw == node.gateway) {
            return;
        }
        self.dns = None;
        let addr = std::net::SocketAddr::new(node.gateway, 53);
        let upstreams = dns::upstreams_from_host(&[addr]);
        match dns::serve(&[addr], self.cfg.cluster_domain.clone(), upstreams, self.effective.subscribe()).await {
            Ok(server) => {
                tracing::info!(%addr, domain = %self.cfg.cluster_domain, "cluster DNS serving the pods");
                self.dns = Some((node.gateway, server));
                *self.dns_gateway.write().unwrap_or_else(|p| p.into_inner()) = Some(node.gateway);
            }
            Err(e) => {
                tracing::error!(%addr, error = %e, "cannot serve cluster DNS; pods fall back to the node's resolvers")
            }
        }
    }

    async fn sync_routes(&mut self, node: &NodeNetwork) {
        let others: Vec<NodeNet> = self.table.nodes.iter().filter(|n| n.name != node.node).cloned().collect();
        let wanted = routes::Wanted {
            node: node.clone(),
            others,
            overlay: self.cfg.overlay,
            service_cidr: self.table.service_cidr,
        };
        if self.routes.matches(&wanted) {
            return;
        }
        let result = tokio::task::spawn_blocking(move || routes::apply(&wanted)).await;
        let (applied, problem, blocks) = match result {
            Ok(Ok(applied)) => (applied, None, false),
            Ok(Err(e)) => (routes::Applied::default(), Some(e.to_string()), e.blocks_pods()),
            Err(e) => (routes::Applied::default(), Some(format!("the routes task failed: {e}")), false),
        };
        self.routes = applied;
        if problem.is_some() && problem != self.routes_error {
            tracing::error!(error = problem.as_deref().unwrap_or_default(), "pod routes");
        } else if problem.is_none() && self.routes_error.is_some() {
            tracing::info!("routes to the other nodes' pods set again");
        }
        self.pod_net.block(problem.clone().filter(|_| blocks));
        self.routes_error = problem;
    }

    async fn sync_services(&mut self, node: &NodeNetwork, effective: &ClusterNetwork) {
        let ruleset = nft::render(effective, node, &self.local.host_ports);
        let mut applier = self.applier.take().unwrap_or_default();
        let done = tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let r = applier.apply(ruleset);
            crate::metrics::counters().rule_sync.observe(started.elapsed().as_secs_f64());
            (applier, r)
        })
        .await;
        let result = match done {
            Ok((applier, r)) => {
                self.applier = Some(applier);
                r.map_err(|e| e.to_string())
            }
            Err(e) => Err(format!("the nftables task failed: {e}")),
        };
        match result {
            Ok(()) => {
                if self.services_error.take().is_some() {
                    tracing::info!("Service rules applied again");
                }
                self.clear_gone_udp_flows(effective).await;
            }
            Err(e) => {
                if self.services_error.as_deref() != Some(e.as_str()) {
                    tracing::error!(error = %e, "cannot apply the Service rules (nftables)");
                }
                self.services_error = Some(format!("Service rules: {e}"));
            }
        }
    }
}

impl NetworkManager {
    /// Deletes the conntrack entries of UDP flows to endpoints the rules
    /// just stopped leading to.
    async fn clear_gone_udp_flows(&mut self, effective: &ClusterNetwork) {
        let now = nft::udp_flows(effective);
        let gone = conntrack::gone(&self.udp_flows, &now);
        self.udp_flows = now;
        if gone.is_empty() || self.conntrack_missing {
            return;
        }
        match tokio::task::spawn_blocking(move || conntrack::clear(&gone)).await {
            Ok(Ok(())) => {}
            Ok(Err(e @ ConntrackError::NotInstalled)) => {
                tracing::warn!(error = %e, "UDP flows to removed endpoints stay until they idle out");
                self.conntrack_missing = true;
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot delete UDP flows to removed endpoints"),
            Err(e) => tracing::error!(error = %e, "conntrack task failed"),
        }
    }
}

/// Why pods wait before the controller has given the node its pod CIDR.
pub const NO_POD_CIDR: &str = "the node has no pod CIDR yet (the controller gives each node a range of its --cluster-cidr, --node-cidr-mask-size wide; a full range shows as a CIDRNotAvailable event on the node)";

/// The table with this node's own endpoints' health put over the
/// controller's view: an endpoint address inside this node's pod CIDR is
/// ready exactly when the local pod with that address is ready, and dropped
/// when no local pod has it (any more).
pub fn apply_local_health(table: &ClusterNetwork, pod_cidr: IpNet, local: &LocalPods) -> ClusterNetwork {
    let mut out = table.clone();
    for svc in &mut out.services {
        for subset in &mut svc.subsets {
            let all: Vec<_> = subset
                .ready
                .drain(..)
                .map(|e| (e, true))
                .chain(subset.not_ready.drain(..).map(|e| (e, false)))
                .collect();
            for (ep, was_ready) in all {
                let ready = if pod_cidr.contains(&ep.ip) {
                    match local.endpoints.get(&ep.ip) {
                        Some(r) => *r,
                        None => continue,
                    }
                } else {
                    was_ready
                };
                if ready { subset.ready.push(ep) } else { subset.not_ready.push(ep) }
            }
            subset.ready.sort_by_key(|e| e.ip);
            subset.not_ready.sort_by_key(|e| e.ip);
        }
    }
    out
}

/// The first IPv4 host of `cidr` (the bridge's gateway address).
fn gateway_of(cidr: IpNet) -> Option<Ipv4Addr> {
    match cidr {
        IpNet::V4(v4) => v4.hosts().next(),
        IpNet::V6(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use kedge_common::network::{EndpointNet, ServiceNet, SubsetNet};

    use super::*;

    fn ep(ip: [u8; 4]) -> EndpointNet {
        EndpointNet { ip: IpAddr::from(ip), hostname: None }
    }

    #[test]
    fn own_endpoints_follow_local_health_and_others_the_controller() {
        let table = ClusterNetwork {
            services: vec![ServiceNet {
                name: "web".into(),
                subsets: vec![SubsetNet {
                    // Ours: .2 ready per the controller, .3 not ready, .4 gone here.
                    ready: vec![ep([10, 42, 1, 2]), ep([10, 42, 1, 4]), ep([10, 42, 2, 7])],
                    not_ready: vec![ep([10, 42, 1, 3]), ep([10, 42, 2, 8])],
                    ports: vec![],
                }],
                ..ServiceNet::default()
            }],
            ..ClusterNetwork::default()
        };
        let local = LocalPods {
            endpoints: [(IpAddr::from([10, 42, 1, 2]), false), (IpAddr::from([10, 42, 1, 3]), true)].into(),
            host_ports: vec![],
        };
        let out = apply_local_health(&table, "10.42.1.0/24".parse().expect("cidr"), &local);
        let s = &out.services[0].subsets[0];
        assert_eq!(
            s.ready,
            vec![ep([10, 42, 1, 3]), ep([10, 42, 2, 7])],
            "local .3 recovered; the other node's as told"
        );
        assert_eq!(s.not_ready, vec![ep([10, 42, 1, 2]), ep([10, 42, 2, 8])], "local .2 turned unready");
    }
}
