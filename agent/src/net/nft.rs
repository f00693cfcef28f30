//! Services in nftables (design.md §6): one table, `inet kedge`, rendered
//! from the cached [`ClusterNetwork`] and applied with the `nft` binary.
//!
//! - [`render`] is pure: the same table, node and host ports give the same
//!   [`Ruleset`] (everything is sorted); its `to_string()` is the whole
//!   `nft -f` script, byte for byte the same.
//! - [`Applier::apply`] makes the table hold a ruleset in one `nft -f -`
//!   transaction — the whole script the first time, only the changes after
//!   (apply.rs) — so the table is never seen flushed and not yet refilled.
//!   It sends nothing when the ruleset did not change.
//! - [`remove`] deletes the table (`kedge-agent network cleanup`);
//!   [`available`] tells whether `nft` and the kernel's nf_tables can carry
//!   it. Nothing here flushes the ruleset or touches another table
//!   (Docker's, ufw's, the user's).
//!
//! [`Applier::apply`], [`remove`] and [`available`] block on the `nft`
//! process: call them from `tokio::task::spawn_blocking`.
//!
//! Why `inet` and not `ip`: one table holds both families, so IPv6 can come
//! later without a second table to own and clean up, and `nft delete table
//! inet kedge` removes everything. NAT in an `inet` table needs Linux 5.2
//! (Debian 11's 5.10 and every Raspberry Pi OS kernel have it). Only IPv4 is
//! rendered today: IPv6 cluster IPs, endpoints, node addresses and host
//! ports are skipped.
//!
//! The shape follows kube-proxy's nftables mode (pkg/proxy/nftables): one
//! verdict-map lookup per packet to find the Service port, a chain per
//! Service port, reject for ports with no endpoint in filter chains that
//! run before DNAT. The rules are our own:
//!
//! ```text
//! nat-prerouting/-output ─► services ─ ip daddr . l4proto . dport vmap @service-ips ───────────► svc-NS/NAME/PROTO/PORT
//!                                    ─ NODE IP, l4proto . dport vmap @service-nodeports ────────► svc-…
//!                                    ─ jump hostports (hostPort DNAT)
//! svc-…  numgen random mod N == 0 dnat to EP1; numgen random mod N-1 == 0 dnat to EP2; … dnat to EPN
//!        (ClientIP affinity: ip saddr @aff-EP goto ep-EP first, and ep-EP records the client)
//! filter-input/-forward/-output (before DNAT) ─► endpoints-check ─ no ready endpoint ─► reject
//! nat-postrouting ─► masquerading
//! ```
//!
//! The random choice is a cascade of `numgen random mod K == 0` rules (each
//! endpoint taken with probability 1/K of the rest: uniform), not
//! kube-proxy's `numgen … vmap { … }`: every inline vmap is an anonymous set
//! in the kernel, and at 1,000 Services they made a whole-table apply take
//! twice as long (four times the kernel's share). No per-endpoint chains
//! either, except for ClientIP affinity.
//!
//! Masquerade: NodePort traffic (the endpoint may be on another node, its
//! reply must come back through here) and ClusterIP traffic from outside
//! the cluster range (the node itself, a routed LAN host) are marked (bit
//! 0x4000, kube-proxy's, with the same meaning) before DNAT. After DNAT, a
//! connection from this node's pod CIDR to this node's pod CIDR is
//! masqueraded: pods share the bridge's subnet, so without it the
//! endpoint's reply would go straight over the bridge, around the un-DNAT
//! (hairpin, a pod reaching itself, is that case too). Pods' traffic to
//! outside the cluster range is masqueraded; traffic between pod CIDRs is
//! not.
//!
//! Replacing: the whole script does not delete the table; it adds whatever
//! is missing, flushes every rule in the table and the refilled maps, and
//! adds them back — as kube-proxy does — so ClientIP affinity sets keep
//! their entries across applies. Chains a ruleset no longer has are
//! emptied in the transaction and deleted right after it.
//!
//! Conntrack entries of UDP flows to an endpoint that went away would
//! outlive it (the rules only see a flow's first datagram): the manager
//! deletes them after each apply ([`udp_flows`], `conntrack.rs`). New TCP
//! connections follow the rules at once.
//!
//! Bridged pods: where br_netfilter is loaded (Docker and k3s load it), the
//! bridge hands bridged IPv4 to these hooks and a connection DNATed back to
//! its own pod is bridged out of the port it came in on — the pod's bridge
//! port needs hairpin mode (as the kubelet's `hairpin-veth`), or hairpin
//! traffic is dropped by the bridge before any rule here sees it.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net};
use kedge_common::network::{Protocol, ServiceKind, ServiceNet};

use super::{ClusterNetwork, HostPort, NodeNetwork};

mod apply;

pub use apply::{Applier, NftError, available, remove};

/// The table kedge owns, `inet kedge`.
pub const TABLE: &str = "inet kedge";

/// The packet mark bit that asks `masquerading` to masquerade (kube-proxy's
/// default bit, same meaning, cleared once used).
const MASQ_MARK: u32 = 0x4000;

/// The longest object name we write (nft allows 255 bytes).
const NAME_MAX: usize = 200;

/// What table `inet kedge` should hold: its chains with their rules, its
/// maps and sets with their elements. `to_string()` is the whole `nft -f`
/// script that loads it over whatever the table holds; [`Applier`] sends
/// only what changed since the last ruleset it applied.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ruleset {
    chains: BTreeMap<String, Chain>,
    collections: BTreeMap<String, Collection>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Chain {
    /// `{ type … hook … priority …; }` of a base chain.
    spec: Option<String>,
    rules: Vec<String>,
}

/// A named map or set.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Collection {
    kind: &'static str,
    spec: String,
    /// Flushed and refilled by every full script; the affinity sets are
    /// not (the kernel fills them, and their entries must survive).
    refilled: bool,
    /// Key → value (empty for a set's elements).
    elements: BTreeMap<String, String>,
}

impl Ruleset {
    fn chain(&mut self, name: &str, spec: Option<String>) {
        self.chains.entry(name.to_string()).or_default().spec = spec;
    }

    fn rule(&mut self, chain: &str, rule: String) {
        self.chains.entry(chain.to_string()).or_default().rules.push(rule);
    }

    fn collection(&mut self, kind: &'static str, name: &str, spec: String, refilled: bool) {
        self.collections.insert(name.to_string(), Collection { kind, spec, refilled, elements: BTreeMap::new() });
    }

    /// Adds an element; a key claimed twice (two Services on one IP and
    /// port, which validation should prevent) keeps the first, in sorted
    /// order.
    fn element(&mut self, collection: &str, key: String, value: String) {
        if let Some(c) = self.collections.get_mut(collection) {
            c.elements.entry(key).or_insert(value);
        }
    }

    /// The names of the chains.
    pub fn chains(&self) -> impl Iterator<Item = &str> {
        self.chains.keys().map(String::as_str)
    }

    /// The names of the maps and sets.
    pub fn collections(&self) -> impl Iterator<Item = &str> {
        self.collections.keys().map(String::as_str)
    }
}

/// The whole script: adds whatever is missing, flushes every rule and the
/// refilled maps and sets, and adds everything back, in one transaction.
impl fmt::Display for Ruleset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "# Generated by kedge-agent (agent/src/net/nft.rs); replaced on every change.")?;
        writeln!(f, "add table {TABLE}")?;
        writeln!(f, "flush table {TABLE}")?;
        for (name, chain) in &self.chains {
            write_chain(f, name, chain)?;
        }
        for (name, c) in &self.collections {
            writeln!(f, "add {} {TABLE} {name} {}", c.kind, c.spec)?;
            if c.refilled {
                writeln!(f, "flush {} {TABLE} {name}", c.kind)?;
            }
        }
        for (name, c) in &self.collections {
            write_elements(f, name, c.elements.iter())?;
        }
        for (name, chain) in &self.chains {
            write_rules(f, name, chain)?;
        }
        Ok(())
    }
}

fn write_chain(f: &mut impl fmt::Write, name: &str, chain: &Chain) -> fmt::Result {
    match &chain.spec {
        Some(spec) => writeln!(f, "add chain {TABLE} {name} {spec}"),
        None => writeln!(f, "add chain {TABLE} {name}"),
    }
}

fn write_rules(f: &mut impl fmt::Write, name: &str, chain: &Chain) -> fmt::Result {
    for rule in &chain.rules {
        writeln!(f, "add rule {TABLE} {name} {rule}")?;
    }
    Ok(())
}

/// `add element` of `items` (key, value) into `collection`; nothing when
/// there are none (`{ }` is not valid nft).
fn write_elements<'a>(
    f: &mut impl fmt::Write,
    collection: &str,
    items: impl Iterator<Item = (&'a String, &'a String)>,
) -> fmt::Result {
    let mut items = items.peekable();
    if items.peek().is_none() {
        return Ok(());
    }
    write!(f, "add element {TABLE} {collection} {{ ")?;
    for (i, (key, value)) in items.enumerate() {
        let sep = if i > 0 { ", " } else { "" };
        match value.is_empty() {
            true => write!(f, "{sep}{key}")?,
            false => write!(f, "{sep}{key} : {value}")?,
        }
    }
    writeln!(f, " }}")
}

/// Renders what `inet kedge` should hold for `table`'s Services, this
/// node's NodePorts and `host_ports`, and the pods' masquerade.
///
/// `table` should already have this node's own endpoints' health applied:
/// only `ready` addresses are routed to. Headless and ExternalName Services
/// get no rules; a Service port with cluster IPs and no ready endpoint is
/// rejected at once. Deterministic: identical input, identical ruleset and
/// script.
pub fn render(table: &ClusterNetwork, node: &NodeNetwork, host_ports: &[HostPort]) -> Ruleset {
    let ctx = Context::new(node);
    let mut services: Vec<&ServiceNet> = table.services.iter().collect();
    services.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let ports: Vec<PortRules> = services.iter().flat_map(|s| PortRules::of(s)).collect();
    let mut host_ports: Vec<&HostPort> = host_ports.iter().collect();
    host_ports.sort();
    host_ports.dedup();

    let mut rs = Ruleset::default();
    ctx.fixed(&mut rs);
    for port in &ports {
        ctx.port(&mut rs, port);
    }
    ctx.host_ports(&mut rs, &host_ports);
    rs
}

/// What the rules need to know about this node, IPv4 only.
struct Context {
    /// This node's pod CIDR: its pods' traffic to outside the cluster is
    /// masqueraded, and their traffic to endpoints on this node too.
    pod_cidr: Option<Ipv4Net>,
    /// Traffic from outside it to a ClusterIP is masqueraded.
    cluster_cidr: Option<Ipv4Net>,
    /// Where NodePorts answer; empty: every local address but loopback.
    node_ips: Vec<Ipv4Addr>,
}

impl Context {
    fn new(node: &NodeNetwork) -> Self {
        let v4 = |n: &IpNet| match n {
            IpNet::V4(n) => Some(n.trunc()),
            IpNet::V6(_) => None,
        };
        let pod_cidr = v4(&node.pod_cidr);
        let mut node_ips: Vec<Ipv4Addr> = node
            .node_ips
            .iter()
            .filter_map(|ip| match ip {
                IpAddr::V4(ip) if !ip.is_loopback() && !ip.is_unspecified() => Some(*ip),
                _ => None,
            })
            .collect();
        node_ips.sort();
        node_ips.dedup();
        Context { pod_cidr, cluster_cidr: v4(&node.cluster_cidr).or(pod_cidr), node_ips }
    }

    /// The match for "addressed to a NodePort address".
    fn nodeport_daddr(&self) -> &'static str {
        if self.node_ips.is_empty() { "fib daddr type local ip daddr != 127.0.0.0/8" } else { "ip daddr @nodeport-ips" }
    }

    /// The chains, maps and rules every ruleset has.
    fn fixed(&self, rs: &mut Ruleset) {
        for (name, kind, hook, priority) in BASE_CHAINS {
            rs.chain(name, Some(format!("{{ type {kind} hook {hook} priority {priority}; }}")));
            let jump = match (kind, name) {
                ("filter", _) => "ct state new jump endpoints-check",
                (_, "nat-postrouting") => "jump masquerading",
                _ => "jump services",
            };
            rs.rule(name, jump.to_string());
        }
        for name in ["services", "hostports", "endpoints-check", "reject-chain", "mark-for-masquerade", "masquerading"]
        {
            rs.chain(name, None);
        }
        for (name, key) in MAPS {
            rs.collection("map", name, format!("{{ type {key} : verdict; }}"), true);
        }
        rs.collection("set", "nodeport-ips", "{ type ipv4_addr; }".to_string(), true);
        for ip in &self.node_ips {
            rs.element("nodeport-ips", ip.to_string(), String::new());
        }

        let np = self.nodeport_daddr();
        let dispatch = "ip daddr . meta l4proto . th dport";
        rs.rule(
            "services",
            match self.cluster_cidr {
                Some(cluster) => format!("ip saddr != {cluster} {dispatch} @service-ips jump mark-for-masquerade"),
                None => format!("{dispatch} @service-ips jump mark-for-masquerade"),
            },
        );
        rs.rule("services", format!("{dispatch} vmap @service-ips"));
        rs.rule("services", format!("{np} meta l4proto . th dport @service-nodeports jump mark-for-masquerade"));
        rs.rule("services", format!("{np} meta l4proto . th dport vmap @service-nodeports"));
        rs.rule("services", "jump hostports".to_string());
        rs.rule("endpoints-check", format!("{dispatch} vmap @no-endpoint-services"));
        rs.rule("endpoints-check", format!("{np} meta l4proto . th dport vmap @no-endpoint-nodeports"));
        rs.rule("reject-chain", "meta l4proto tcp reject with tcp reset".to_string());
        rs.rule("reject-chain", "reject".to_string());
        rs.rule("mark-for-masquerade", format!("meta mark set meta mark or {MASQ_MARK:#x}"));
        rs.rule(
            "masquerading",
            format!(
                "meta mark & {MASQ_MARK:#x} == {MASQ_MARK:#x} meta mark set meta mark and {:#x} masquerade fully-random",
                !MASQ_MARK
            ),
        );
        if let Some(pods) = self.pod_cidr {
            rs.rule("masquerading", format!("ct status dnat ip saddr {pods} ip daddr {pods} masquerade fully-random"));
            if let Some(cluster) = self.cluster_cidr {
                rs.rule("masquerading", format!("ip saddr {pods} ip daddr != {cluster} masquerade fully-random"));
            }
        }
    }

    /// One Service port: its map elements, and its chain when it has
    /// endpoints.
    fn port(&self, rs: &mut Ruleset, port: &PortRules) {
        let proto = port.protocol.lower();
        let chain = &port.chain;
        let ready = port.has_endpoints();
        for ip in &port.cluster_ips {
            let key = format!("{ip} . {proto} . {}", port.port);
            match ready {
                true => rs.element("service-ips", key, format!("goto {chain}")),
                false => rs.element("no-endpoint-services", key, "goto reject-chain".to_string()),
            }
        }
        if let Some(np) = port.node_port {
            match ready {
                true => rs.element("service-nodeports", format!("{proto} . {np}"), format!("goto {chain}")),
                false => {
                    rs.element("no-endpoint-nodeports", format!("{proto} . {np}"), "goto reject-chain".to_string())
                }
            }
        }
        if !ready {
            return;
        }
        rs.chain(chain, None);
        let n = port.endpoints.len();
        // With ClientIP affinity, each endpoint has a chain that records
        // the client in the endpoint's set, and a known client goes
        // straight back to its endpoint.
        let sticky: Vec<String> = match port.affinity {
            None => vec![],
            Some(seconds) => port
                .endpoints
                .iter()
                .map(|(ip, p)| {
                    let ep_chain = format!("ep-{}__{ip}/{p}", port.base);
                    let set = format!("aff-{}__{ip}/{p}/{seconds}s", port.base);
                    let spec = format!("{{ type ipv4_addr; flags dynamic,timeout; timeout {seconds}s; }}");
                    rs.collection("set", &set, spec, false);
                    rs.chain(&ep_chain, None);
                    rs.rule(&ep_chain, format!("update @{set} {{ ip saddr }}"));
                    rs.rule(&ep_chain, format!("meta l4proto {proto} dnat ip to {ip}:{p}"));
                    rs.rule(chain, format!("ip saddr @{set} goto {ep_chain}"));
                    ep_chain
                })
                .collect(),
        };
        for (i, (ip, p)) in port.endpoints.iter().enumerate() {
            // Endpoint i of the n is taken with probability 1/(n-i) of
            // those left: each one 1/n overall.
            let pick = if i + 1 < n { format!("numgen random mod {} == 0 ", n - i) } else { String::new() };
            match sticky.get(i) {
                Some(ep_chain) => rs.rule(chain, format!("{pick}goto {ep_chain}")),
                None => rs.rule(chain, format!("{pick}meta l4proto {proto} dnat ip to {ip}:{p}")),
            }
        }
    }

    fn host_ports(&self, rs: &mut Ruleset, host_ports: &[&HostPort]) {
        for hp in host_ports {
            let IpAddr::V4(pod_ip) = hp.pod_ip else { continue };
            let daddr = match hp.host_ip {
                Some(IpAddr::V4(ip)) if !ip.is_unspecified() => format!("ip daddr {ip}"),
                None | Some(IpAddr::V4(_)) => "fib daddr type local ip daddr != 127.0.0.0/8".to_string(),
                Some(IpAddr::V6(_)) => continue,
            };
            if hp.host_port == 0 || hp.container_port == 0 {
                continue;
            }
            let proto = hp.protocol.lower();
            rs.rule(
                "hostports",
                format!("{daddr} {proto} dport {} dnat ip to {pod_ip}:{}", hp.host_port, hp.container_port),
            );
        }
    }
}

/// Where a UDP datagram was sent before the rules rewrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum UdpDst {
    ClusterIp(Ipv4Addr, u16),
    NodePort(u16),
}

/// The UDP destinations the rules rendered from `table` send to each ready
/// endpoint address: what a conntrack entry of a live UDP flow can point
/// at. An entry in the previous set and not in the next is a flow to an
/// endpoint that left ([`super::conntrack`]).
pub fn udp_flows(table: &ClusterNetwork) -> std::collections::BTreeSet<(UdpDst, Ipv4Addr)> {
    let mut flows = std::collections::BTreeSet::new();
    for port in table.services.iter().flat_map(PortRules::of).filter(|p| p.protocol == Protocol::UDP) {
        for (endpoint, _) in &port.endpoints {
            for ip in &port.cluster_ips {
                flows.insert((UdpDst::ClusterIp(*ip, port.port), *endpoint));
            }
            if let Some(np) = port.node_port {
                flows.insert((UdpDst::NodePort(np), *endpoint));
            }
        }
    }
    flows
}

/// Base chains: name, type, hook, priority. The filter chains run before
/// DNAT (priority dstnat - 10), so they see a Service's own address.
const BASE_CHAINS: [(&str, &str, &str, &str); 6] = [
    ("filter-input", "filter", "input", "-110"),
    ("filter-forward", "filter", "forward", "-110"),
    ("filter-output", "filter", "output", "-110"),
    ("nat-prerouting", "nat", "prerouting", "-100"),
    ("nat-output", "nat", "output", "-100"),
    ("nat-postrouting", "nat", "postrouting", "100"),
];

/// The verdict maps, flushed and refilled by every script.
const MAPS: [(&str, &str); 4] = [
    ("service-ips", "ipv4_addr . inet_proto . inet_service"),
    ("service-nodeports", "inet_proto . inet_service"),
    ("no-endpoint-services", "ipv4_addr . inet_proto . inet_service"),
    ("no-endpoint-nodeports", "inet_proto . inet_service"),
];

/// One Service port as the rules see it.
struct PortRules {
    protocol: Protocol,
    port: u16,
    node_port: Option<u16>,
    affinity: Option<u32>,
    cluster_ips: Vec<Ipv4Addr>,
    /// Ready endpoints (address, port), sorted, deduplicated.
    endpoints: Vec<(Ipv4Addr, u16)>,
    /// `NS/NAME/PROTO/PORT`, made safe: the rest of its objects' names.
    base: String,
    chain: String,
}

impl PortRules {
    /// The rules of each port of `svc`; none for headless and ExternalName
    /// Services, which DNS alone serves.
    fn of(svc: &ServiceNet) -> Vec<PortRules> {
        if svc.headless || svc.kind == ServiceKind::ExternalName {
            return vec![];
        }
        let mut cluster_ips: Vec<Ipv4Addr> = svc
            .cluster_ips
            .iter()
            .filter_map(|ip| match ip {
                IpAddr::V4(ip) if !ip.is_unspecified() => Some(*ip),
                _ => None,
            })
            .collect();
        cluster_ips.sort();
        cluster_ips.dedup();
        let node_ports = matches!(svc.kind, ServiceKind::NodePort | ServiceKind::LoadBalancer);
        let affinity = svc.affinity_seconds.map(|s| s.clamp(1, 86_400));
        let mut ports: Vec<_> = svc.ports.iter().filter(|p| p.port != 0).collect();
        ports.sort_by_key(|p| (p.protocol, p.port, &p.name));
        ports.dedup_by_key(|p| (p.protocol, p.port));
        ports
            .into_iter()
            .map(|p| {
                let base = object_name(&[&svc.namespace, &svc.name, p.protocol.lower(), &p.port.to_string()]);
                // The endpoint port is the subset's port of the same name
                // (a named targetPort resolves per subset).
                let mut eps: Vec<(Ipv4Addr, u16)> = svc
                    .subsets
                    .iter()
                    .filter_map(|s| {
                        let ep = s.ports.iter().find(|ep| ep.name == p.name && ep.protocol == p.protocol)?;
                        Some(s.ready.iter().filter_map(move |a| match a.ip {
                            IpAddr::V4(ip) if ep.port != 0 && !ip.is_unspecified() => Some((ip, ep.port)),
                            _ => None,
                        }))
                    })
                    .flatten()
                    .collect();
                eps.sort();
                eps.dedup();
                PortRules {
                    protocol: p.protocol,
                    port: p.port,
                    node_port: p.node_port.filter(|np| node_ports && *np != 0),
                    affinity,
                    cluster_ips: cluster_ips.clone(),
                    endpoints: eps,
                    chain: format!("svc-{base}"),
                    base,
                }
            })
            // A port with no cluster IP and no NodePort has nothing to route.
            .filter(|p| !p.cluster_ips.is_empty() || p.node_port.is_some())
            .collect()
    }

    fn has_endpoints(&self) -> bool {
        !self.endpoints.is_empty()
    }
}

/// `a/b/c/d` from name parts, when every part is made of `[A-Za-z0-9-]`
/// (what Kubernetes names are) and short enough; otherwise the offending
/// characters become `_`, the result is cut, and a hash of the original
/// parts goes in front so two different inputs never share a name.
fn object_name(parts: &[&str]) -> String {
    let joined = parts.join("/");
    let clean = parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    if clean && joined.len() <= NAME_MAX {
        return joined;
    }
    let hash = fnv1a(joined.as_bytes());
    let mut safe: String =
        joined.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '/' { c } else { '_' }).collect();
    safe.truncate(NAME_MAX - 9);
    format!("{hash:08x}-{safe}")
}

/// FNV-1a, 32 bits: a stable short hash for object names.
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(*b)).wrapping_mul(0x0100_0193))
}

#[cfg(test)]
mod tests;
