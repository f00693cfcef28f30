//! Services in nftables (design.md §6): one table, `inet kedge`, rendered
//! from the cached [`ClusterNetwork`] and applied with the `nft` binary.
//!
//! - [`render`] is pure: the same table, node and host ports give the same
//!   script, byte for byte (everything is sorted), so a caller can skip an
//!   apply whose script did not change.
//! - [`apply`] loads a script in one `nft -f -` transaction: the table is
//!   never seen flushed and not yet refilled. [`remove`] deletes the table
//!   (`kedge-agent network cleanup`); [`available`] tells whether `nft` and
//!   the kernel's nf_tables can carry it. Nothing here flushes the ruleset or
//!   touches another table (Docker's, ufw's, the user's).
//!
//! [`apply`], [`remove`] and [`available`] block on the `nft` process: call
//! them from `tokio::task::spawn_blocking`.
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
//! in the kernel, and at 1,000 Services they tripled the time of an apply.
//! No per-endpoint chains either, except for ClientIP affinity.
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
//! Replacing: the script does not delete the table; it adds whatever is
//! missing, flushes every rule in the table and the fixed maps, and adds
//! them back — as kube-proxy does — so ClientIP affinity sets keep their
//! entries across applies. Chains and affinity sets a new script no longer
//! declares are left empty and unreferenced; [`apply`] deletes them in a
//! second transaction. If a script cannot be applied over the existing
//! table (a chain or set defined differently by an older kedge), [`apply`]
//! rebuilds it: delete and re-create, still in one transaction.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, ExitStatus, Stdio};

use ipnet::{IpNet, Ipv4Net};
use kedge_common::network::{Protocol, ServiceKind, ServiceNet};

use super::{ClusterNetwork, HostPort, NodeNetwork};

/// The table kedge owns, `inet kedge`.
pub const TABLE: &str = "inet kedge";

/// The packet mark bit that asks `masquerading` to masquerade (kube-proxy's
/// default bit, same meaning, cleared once used).
const MASQ_MARK: u32 = 0x4000;

/// The longest object name we write (nft allows 255 bytes).
const NAME_MAX: usize = 200;

/// Renders the script that makes `inet kedge` carry `table`'s Services,
/// this node's NodePorts and `host_ports`, and the pods' masquerade.
///
/// `table` should already have this node's own endpoints' health applied:
/// only `ready` addresses are routed to. Headless and ExternalName Services
/// get no rules; a Service port with cluster IPs and no ready endpoint is
/// rejected at once. Deterministic: identical input, identical script.
pub fn render(table: &ClusterNetwork, node: &NodeNetwork, host_ports: &[HostPort]) -> String {
    let ctx = Context::new(node);
    let mut services: Vec<&ServiceNet> = table.services.iter().collect();
    services.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let ports: Vec<PortRules> = services.iter().flat_map(|s| PortRules::of(s)).collect();
    let mut host_ports: Vec<&HostPort> = host_ports.iter().collect();
    host_ports.sort();
    host_ports.dedup();

    let mut out = String::with_capacity(1024 + ports.len() * 1024);
    ctx.prologue(&mut out);
    ctx.declarations(&mut out, &ports);
    ctx.fixed_rules(&mut out);
    ctx.elements(&mut out, &ports);
    for port in ports.iter().filter(|p| p.has_endpoints()) {
        ctx.port_rules(&mut out, port);
    }
    ctx.host_port_rules(&mut out, &host_ports);
    out
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

    fn prologue(&self, out: &mut String) {
        out.push_str("# Generated by kedge-agent (agent/src/net/nft.rs); replaced on every change.\n");
        let _ = writeln!(out, "add table {TABLE}");
        let _ = writeln!(out, "flush table {TABLE}");
    }

    /// Every chain, map and set, fixed ones first; `add` leaves existing
    /// ones (and the affinity sets' entries) in place.
    fn declarations(&self, out: &mut String, ports: &[PortRules]) {
        for (name, kind, hook, priority) in BASE_CHAINS {
            let _ = writeln!(out, "add chain {TABLE} {name} {{ type {kind} hook {hook} priority {priority}; }}");
        }
        for name in ["services", "hostports", "endpoints-check", "reject-chain", "mark-for-masquerade", "masquerading"]
        {
            let _ = writeln!(out, "add chain {TABLE} {name}");
        }
        for (name, kind) in MAPS {
            let _ = writeln!(out, "add map {TABLE} {name} {{ type {kind} : verdict; }}");
            let _ = writeln!(out, "flush map {TABLE} {name}");
        }
        let _ = writeln!(out, "add set {TABLE} nodeport-ips {{ type ipv4_addr; }}");
        let _ = writeln!(out, "flush set {TABLE} nodeport-ips");
        for port in ports.iter().filter(|p| p.has_endpoints()) {
            let _ = writeln!(out, "add chain {TABLE} {}", port.chain);
            let Some(seconds) = port.affinity else { continue };
            for ep in &port.endpoints {
                let _ = writeln!(out, "add chain {TABLE} {}", ep.chain);
                let _ = writeln!(
                    out,
                    "add set {TABLE} {} {{ type ipv4_addr; flags dynamic,timeout; timeout {seconds}s; }}",
                    ep.affinity_set
                );
            }
        }
    }

    fn fixed_rules(&self, out: &mut String) {
        let rule = |out: &mut String, chain: &str, rule: &str| {
            let _ = writeln!(out, "add rule {TABLE} {chain} {rule}");
        };
        for (name, kind, _, _) in BASE_CHAINS {
            match (kind, name) {
                ("filter", _) => rule(out, name, "ct state new jump endpoints-check"),
                (_, "nat-postrouting") => rule(out, name, "jump masquerading"),
                _ => rule(out, name, "jump services"),
            }
        }
        let np = self.nodeport_daddr();
        let dispatch = "ip daddr . meta l4proto . th dport";
        match self.cluster_cidr {
            Some(cluster) => {
                rule(out, "services", &format!("ip saddr != {cluster} {dispatch} @service-ips jump mark-for-masquerade"))
            }
            None => rule(out, "services", &format!("{dispatch} @service-ips jump mark-for-masquerade")),
        }
        rule(out, "services", &format!("{dispatch} vmap @service-ips"));
        rule(out, "services", &format!("{np} meta l4proto . th dport @service-nodeports jump mark-for-masquerade"));
        rule(out, "services", &format!("{np} meta l4proto . th dport vmap @service-nodeports"));
        rule(out, "services", "jump hostports");
        rule(out, "endpoints-check", &format!("{dispatch} vmap @no-endpoint-services"));
        rule(out, "endpoints-check", &format!("{np} meta l4proto . th dport vmap @no-endpoint-nodeports"));
        rule(out, "reject-chain", "meta l4proto tcp reject with tcp reset");
        rule(out, "reject-chain", "reject");
        rule(out, "mark-for-masquerade", &format!("meta mark set meta mark or {MASQ_MARK:#x}"));
        rule(
            out,
            "masquerading",
            &format!(
                "meta mark & {MASQ_MARK:#x} == {MASQ_MARK:#x} meta mark set meta mark and {:#x} masquerade fully-random",
                !MASQ_MARK
            ),
        );
        if let Some(pods) = self.pod_cidr {
            rule(out, "masquerading", &format!("ct status dnat ip saddr {pods} ip daddr {pods} masquerade fully-random"));
            if let Some(cluster) = self.cluster_cidr {
                rule(out, "masquerading", &format!("ip saddr {pods} ip daddr != {cluster} masquerade fully-random"));
            }
        }
    }

    fn elements(&self, out: &mut String, ports: &[PortRules]) {
        // Keyed maps: a key claimed twice (two Services on one IP and port,
        // which validation should prevent) keeps the first, in sorted order.
        let mut service_ips = BTreeMap::new();
        let mut nodeports = BTreeMap::new();
        let mut no_ep_services = BTreeMap::new();
        let mut no_ep_nodeports = BTreeMap::new();
        for port in ports {
            let proto = port.protocol.lower();
            for ip in &port.cluster_ips {
                let key = (*ip, port.protocol, port.port);
                if port.has_endpoints() {
                    service_ips.entry(key).or_insert_with(|| format!("{ip} . {proto} . {} : goto {}", port.port, port.chain));
                } else {
                    no_ep_services.entry(key).or_insert_with(|| format!("{ip} . {proto} . {} : goto reject-chain", port.port));
                }
            }
            if let Some(np) = port.node_port {
                let key = (port.protocol, np);
                if port.has_endpoints() {
                    nodeports.entry(key).or_insert_with(|| format!("{proto} . {np} : goto {}", port.chain));
                } else {
                    no_ep_nodeports.entry(key).or_insert_with(|| format!("{proto} . {np} : goto reject-chain"));
                }
            }
        }
        elements(out, "service-ips", service_ips.values());
        elements(out, "service-nodeports", nodeports.values());
        elements(out, "no-endpoint-services", no_ep_services.values());
        elements(out, "no-endpoint-nodeports", no_ep_nodeports.values());
        let ips: Vec<String> = self.node_ips.iter().map(Ipv4Addr::to_string).collect();
        elements(out, "nodeport-ips", ips.iter());
    }

    fn port_rules(&self, out: &mut String, port: &PortRules) {
        let n = port.endpoints.len();
        let proto = port.protocol.lower();
        let chain = &port.chain;
        if port.affinity.is_some() {
            for ep in &port.endpoints {
                let _ = writeln!(out, "add rule {TABLE} {chain} ip saddr @{} goto {}", ep.affinity_set, ep.chain);
            }
        }
        for (i, ep) in port.endpoints.iter().enumerate() {
            // Endpoint i of the n is taken with probability 1/(n-i) of
            // those left: each one 1/n overall.
            let pick = if i + 1 < n { format!("numgen random mod {} == 0 ", n - i) } else { String::new() };
            if port.affinity.is_some() {
                let _ = writeln!(out, "add rule {TABLE} {chain} {pick}goto {}", ep.chain);
                let _ = writeln!(out, "add rule {TABLE} {} update @{} {{ ip saddr }}", ep.chain, ep.affinity_set);
                let _ = writeln!(out, "add rule {TABLE} {} meta l4proto {proto} dnat ip to {}:{}", ep.chain, ep.ip, ep.port);
            } else {
                let _ = writeln!(out, "add rule {TABLE} {chain} {pick}meta l4proto {proto} dnat ip to {}:{}", ep.ip, ep.port);
            }
        }
    }

    fn host_port_rules(&self, out: &mut String, host_ports: &[&HostPort]) {
        for hp in host_ports {
            let IpAddr::V4(pod_ip) = hp.pod_ip else { continue };
            let daddr = match hp.host_ip {
                None => "fib daddr type local ip daddr != 127.0.0.0/8".to_string(),
                Some(IpAddr::V4(ip)) if !ip.is_unspecified() => format!("ip daddr {ip}"),
                Some(IpAddr::V4(_)) => "fib daddr type local ip daddr != 127.0.0.0/8".to_string(),
                Some(IpAddr::V6(_)) => continue,
            };
            if hp.host_port == 0 || hp.container_port == 0 {
                continue;
            }
            let _ = writeln!(
                out,
                "add rule {TABLE} hostports {daddr} {} dport {} dnat ip to {pod_ip}:{}",
                hp.protocol.lower(),
                hp.host_port,
                hp.container_port
            );
        }
    }
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

fn elements<'a>(out: &mut String, map: &str, items: impl Iterator<Item = &'a String>) {
    let mut items = items.peekable();
    if items.peek().is_none() {
        return;
    }
    let _ = write!(out, "add element {TABLE} {map} {{ ");
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(item);
    }
    out.push_str(" }\n");
}

/// One Service port as the rules see it.
struct PortRules {
    protocol: Protocol,
    port: u16,
    node_port: Option<u16>,
    affinity: Option<u32>,
    cluster_ips: Vec<Ipv4Addr>,
    /// Ready endpoints, sorted, deduplicated.
    endpoints: Vec<Endpoint>,
    chain: String,
}

struct Endpoint {
    ip: Ipv4Addr,
    port: u16,
    /// With ClientIP affinity: the endpoint's chain, and the set of the
    /// clients it has.
    chain: String,
    affinity_set: String,
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
                let endpoints = eps
                    .into_iter()
                    .map(|(ip, port)| Endpoint {
                        ip,
                        port,
                        chain: format!("ep-{base}__{ip}/{port}"),
                        affinity_set: format!("aff-{base}__{ip}/{port}/{}s", affinity.unwrap_or_default()),
                    })
                    .collect();
                PortRules {
                    protocol: p.protocol,
                    port: p.port,
                    node_port: p.node_port.filter(|np| node_ports && *np != 0),
                    affinity,
                    cluster_ips: cluster_ips.clone(),
                    endpoints,
                    chain: format!("svc-{base}"),
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
    let mut safe: String = joined
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '/' { c } else { '_' })
        .collect();
    safe.truncate(NAME_MAX - 9);
    format!("{hash:08x}-{safe}")
}

/// FNV-1a, 32 bits: a stable short hash for object names.
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(*b)).wrapping_mul(0x0100_0193))
}

/// What went wrong running `nft`.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("the nft command is not installed (install the nftables package)")]
    NotInstalled(#[source] std::io::Error),
    #[error("running nft")]
    Spawn(#[source] std::io::Error),
    #[error("nft {what} failed ({status}): {stderr}")]
    Failed { what: &'static str, status: ExitStatus, stderr: String },
    #[error("nftables cannot carry kedge's table here (no nf_tables, inet NAT or reject in the kernel, or no CAP_NET_ADMIN): {stderr}")]
    Unavailable { stderr: String },
    #[error("reading nft's listing of table {TABLE}")]
    Listing(#[source] serde_json::Error),
}

/// Where `nft` may be when `PATH` (a service's environment) lacks sbin.
const NFT_PATHS: [&str; 3] = ["nft", "/usr/sbin/nft", "/sbin/nft"];

/// Runs `nft ARGS`, feeding `stdin`; its standard output. Blocking.
fn nft(args: &[&str], stdin: Option<&str>, what: &'static str) -> Result<Vec<u8>, NftError> {
    let mut last = None;
    for bin in NFT_PATHS {
        let child = Command::new(bin)
            .args(args)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match child {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                last = Some(e);
                continue;
            }
            Err(e) => return Err(NftError::Spawn(e)),
        };
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // nft reads the whole script before it answers, so writing
            // first cannot deadlock on its output; a write error shows up
            // as nft's own failure below.
            let _ = pipe.write_all(text.as_bytes());
        }
        let out = child.wait_with_output().map_err(NftError::Spawn)?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let stderr = stderr.trim();
            // nft quotes the offending line; keep the message readable.
            let stderr = match stderr.char_indices().nth(4000) {
                Some((i, _)) => format!("{}…", &stderr[..i]),
                None => stderr.to_string(),
            };
            return Err(NftError::Failed { what, status: out.status, stderr });
        }
        return Ok(out.stdout);
    }
    Err(NftError::NotInstalled(last.unwrap_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))))
}

/// Loads `script` (from [`render`]) in one transaction, then deletes the
/// chains and affinity sets it no longer declares. Blocking: run it in
/// `spawn_blocking`.
///
/// If the script does not apply over the table as it is, the table is
/// rebuilt (deleted and re-created in the same transaction; affinity
/// entries are lost then). If that fails too, the old rules stay as they
/// were and the error says why.
pub fn apply(script: &str) -> Result<(), NftError> {
    match nft(&["-f", "-"], Some(script), "-f (apply)") {
        Ok(_) => {}
        Err(first @ NftError::Failed { .. }) => {
            tracing::warn!(error = %first, "nftables: applying over table inet kedge failed; rebuilding it");
        let rebuild = format!("add table {TABLE}\ndelete table {TABLE}\n{script}");
            nft(&["-f", "-"], Some(&rebuild), "-f (rebuild)")?;
            return Ok(());
        }
        Err(e) => return Err(e),
    }
    if let Err(e) = sweep(script) {
        // Left-overs are empty and unreferenced: harmless; the next apply
        // tries again (kernels before 6.2 free a chain a little after the
        // map element that pointed at it).
        tracing::debug!(error = %e, "nftables: stale chains or sets of table inet kedge stay until the next apply");
    }
    Ok(())
}

/// Deletes the chains and sets of `inet kedge` that `script` does not declare.
fn sweep(script: &str) -> Result<(), NftError> {
    let declared = declared(script);
    let mut stale = String::new();
    for (kind, listing) in [("set", "sets"), ("chain", "chains")] {
        let out = nft(&["-j", "list", listing, "inet"], None, "list")?;
        for name in listed(&out, kind)? {
            if !declared.contains(&(kind, name.as_str())) {
                let _ = writeln!(stale, "delete {kind} {TABLE} {name}");
            }
        }
    }
    if stale.is_empty() {
        return Ok(());
    }
    nft(&["-f", "-"], Some(&stale), "-f (delete stale)").map(|_| ())
}

/// The (kind, name) of every chain and set `script` adds.
fn declared(script: &str) -> BTreeSet<(&'static str, &str)> {
    let mut names = BTreeSet::new();
    for line in script.lines() {
        for kind in ["chain", "set"] {
            let Some(rest) = line.strip_prefix("add ").and_then(|l| l.strip_prefix(kind)) else { continue };
            if let Some(rest) = rest.strip_prefix(' ').and_then(|l| l.strip_prefix(TABLE)).and_then(|l| l.strip_prefix(' ')) {
                if let Some(name) = rest.split_whitespace().next() {
                    names.insert((kind, name));
                }
            }
        }
    }
    names
}

/// The names of the `kind` objects of table kedge in `nft -j list` output.
fn listed(json: &[u8], kind: &str) -> Result<Vec<String>, NftError> {
    #[derive(serde::Deserialize)]
    struct Listing {
        nftables: Vec<serde_json::Map<String, serde_json::Value>>,
    }
    let listing: Listing = serde_json::from_slice(json).map_err(NftError::Listing)?;
    Ok(listing
        .nftables
        .iter()
        .filter_map(|item| item.get(kind))
        .filter(|o| o.get("table").and_then(|t| t.as_str()) == Some("kedge"))
        .filter_map(|o| o.get("name").and_then(|n| n.as_str()).map(str::to_string))
        .collect())
}

/// Deletes table `inet kedge` and everything in it, and nothing else; no
/// error when there is none (`kedge-agent network cleanup`). Blocking.
pub fn remove() -> Result<(), NftError> {
    nft(&["-f", "-"], Some(&format!("add table {TABLE}\ndelete table {TABLE}\n")), "-f (remove)").map(|_| ())
}

/// Whether `nft` is installed and the kernel takes what kedge's table
/// needs (an inet NAT chain, reject, numgen, verdict maps, timeout sets,
/// fib): `nft --check` of a probe, which the kernel validates and then
/// discards. Changes nothing. Blocking.
pub fn available() -> Result<(), NftError> {
    const PROBE: &str = "add table inet kedge\n\
        add chain inet kedge probe-nat { type nat hook prerouting priority -100; }\n\
        add chain inet kedge probe-filter { type filter hook forward priority -110; }\n\
        add chain inet kedge probe-target\n\
        add map inet kedge probe-map { type ipv4_addr . inet_proto . inet_service : verdict; }\n\
        add set inet kedge probe-set { type ipv4_addr; flags dynamic,timeout; timeout 10s; }\n\
        add rule inet kedge probe-nat ip daddr . meta l4proto . th dport vmap @probe-map\n\
        add rule inet kedge probe-nat fib daddr type local numgen random mod 2 vmap { 0 : goto probe-target, 1 : goto probe-target }\n\
        add rule inet kedge probe-target update @probe-set { ip saddr } meta l4proto tcp dnat ip to 127.0.0.1:1\n\
        add rule inet kedge probe-filter meta l4proto tcp reject with tcp reset\n\
        add rule inet kedge probe-filter reject\n";
    match nft(&["--check", "-f", "-"], Some(PROBE), "--check") {
        Ok(_) => Ok(()),
        Err(NftError::Failed { stderr, .. }) => Err(NftError::Unavailable { stderr }),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests;
