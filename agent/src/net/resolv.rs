//! A pod's `/etc/resolv.conf` per its `dnsPolicy`, computed as the
//! kubelet's DNS configurer does (`pkg/kubelet/network/dns`), and the node's
//! own resolver config it starts from — also where the cluster DNS server
//! forwards what is not a cluster name.
//!
//! The result is the CRI `DNSConfig` the kubelet passes in
//! `RunPodSandbox`; the runtime writes the file from it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use k8s_cri::v1 as cri;
use kedge_common::pod::{DnsPolicy, MAX_DNS_NAMESERVERS, MAX_DNS_SEARCH_CHARS, MAX_DNS_SEARCHES, Pod};

/// The node's resolver config, as the kubelet's `--resolv-conf` defaults.
pub const ETC_RESOLV_CONF: &str = "/etc/resolv.conf";
/// What systemd-resolved writes with the real upstream servers; kubeadm
/// points the kubelet there when `/etc/resolv.conf` holds only its stub.
pub const SYSTEMD_RESOLVED_CONF: &str = "/run/systemd/resolve/resolv.conf";
/// systemd-resolved's stub listener: reachable only from the host's network
/// namespace, and a forwarding loop waiting to happen for a node-local DNS.
pub const SYSTEMD_RESOLVED_STUB: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 53));
/// A resolv.conf is a few hundred bytes; anything past this is not read.
const MAX_RESOLV_CONF_BYTES: u64 = 64 * 1024;
/// A search domain longer than a DNS name can be makes glibc abort().
const MAX_SEARCH_DOMAIN_CHARS: usize = 253;
/// The kubelet's options for `ClusterFirst` pods.
const CLUSTER_FIRST_OPTIONS: &[&str] = &["ndots:5"];

/// The `nameserver`, `search` and `options` lines of a resolv.conf.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResolvConf {
    /// Every `nameserver` line, in order.
    pub nameservers: Vec<String>,
    /// The last `search` line (trailing dots removed).
    pub searches: Vec<String>,
    /// The last `options` line, one entry per option.
    pub options: Vec<String>,
}

impl ResolvConf {
    /// Parses as the kubelet (and glibc) do: `nameserver` lines accumulate,
    /// the last `search` and `options` lines win, `#` and `;` start comments.
    pub fn parse(text: &str) -> Self {
        let mut conf = ResolvConf::default();
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            let mut fields = line.split_whitespace();
            match fields.next() {
                Some("nameserver") => conf.nameservers.extend(fields.next().map(str::to_string)),
                Some("search") => {
                    conf.searches = fields.map(|s| s.strip_suffix('.').unwrap_or(s).to_string()).collect();
                }
                Some("options") => conf.options = fields.map(str::to_string).collect(),
                _ => {}
            }
        }
        conf
    }

    /// Reads and parses a file (bounded in size).
    pub fn read(path: &Path) -> std::io::Result<Self> {
        use std::io::Read;
        let mut text = String::new();
        std::fs::File::open(path)?.take(MAX_RESOLV_CONF_BYTES).read_to_string(&mut text)?;
        Ok(Self::parse(&text))
    }

    /// The nameservers that are IP addresses (a `%zone` suffix is dropped).
    pub fn nameserver_ips(&self) -> Vec<IpAddr> {
        self.nameservers.iter().filter_map(|s| s.split('%').next().and_then(|ip| ip.parse().ok())).collect()
    }

    /// Whether this file sends queries to systemd-resolved's stub.
    pub fn is_systemd_resolved_stub(&self) -> bool {
        self.nameserver_ips().contains(&SYSTEMD_RESOLVED_STUB)
    }
}

/// Where the node's resolver config is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostResolv {
    /// `/etc/resolv.conf`.
    pub etc: PathBuf,
    /// systemd-resolved's upstream file, used when `etc` points at its stub.
    pub systemd_resolved: PathBuf,
}

impl Default for HostResolv {
    fn default() -> Self {
        HostResolv { etc: ETC_RESOLV_CONF.into(), systemd_resolved: SYSTEMD_RESOLVED_CONF.into() }
    }
}

impl HostResolv {
    /// The node's resolver config, as the kubelet's `--resolv-conf` would
    /// give it: `/etc/resolv.conf`, or systemd-resolved's upstream file
    /// when `/etc/resolv.conf` points at the stub `127.0.0.53`. A node
    /// without either has no resolver config (empty), which is logged.
    pub fn read(&self) -> ResolvConf {
        let etc = match ResolvConf::read(&self.etc) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(path = %self.etc.display(), error = %e, "cannot read the node's resolver config");
                ResolvConf::default()
            }
        };
        if !etc.is_systemd_resolved_stub() {
            return etc;
        }
        match ResolvConf::read(&self.systemd_resolved) {
            Ok(upstream) => upstream,
            Err(e) => {
                tracing::warn!(path = %self.systemd_resolved.display(), error = %e,
                    "the node uses systemd-resolved's stub but its upstream file cannot be read");
                etc
            }
        }
    }

    /// The upstream resolvers the cluster DNS server forwards to: the
    /// node's nameservers on port 53, never systemd-resolved's stub (it
    /// is replaced by the real upstreams, as the kubelet does) nor any of
    /// `own` (the server's own addresses: no forwarding loop).
    pub fn upstreams(&self, own: &[SocketAddr]) -> Vec<SocketAddr> {
        upstreams_of(&self.read(), own)
    }
}

/// The node's upstream resolvers from the default paths: see [`HostResolv::upstreams`].
pub fn upstreams_from_host(own: &[SocketAddr]) -> Vec<SocketAddr> {
    HostResolv::default().upstreams(own)
}

/// [`HostResolv::upstreams`] for an already read config.
pub fn upstreams_of(conf: &ResolvConf, own: &[SocketAddr]) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = Vec::new();
    for ip in conf.nameserver_ips() {
        let addr = SocketAddr::new(ip, 53);
        if ip == SYSTEMD_RESOLVED_STUB || ip.is_unspecified() || is_own(addr, own) || out.contains(&addr) {
            continue;
        }
        out.push(addr);
    }
    out
}

/// Whether what is sent to `upstream` would reach a server bound to one of
/// `own`: the same address, or loopback when bound to the unspecified
/// address (the node's other addresses are not known here; `[::]` takes
/// IPv4 too, `0.0.0.0` only IPv4).
pub fn is_own(upstream: SocketAddr, own: &[SocketAddr]) -> bool {
    let (ip, port) = (upstream.ip(), upstream.port());
    own.iter().any(|o| {
        let bound = o.ip();
        let catches = bound.is_unspecified() && ip.is_loopback() && (bound.is_ipv6() || ip.is_ipv4());
        o.port() == port && (bound == ip || catches)
    })
}

/// What the node tells pods about cluster DNS: the kubelet's
/// `--cluster-dns` and `--cluster-domain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterDns {
    /// Empty: `ClusterFirst` pods fall back to `Default`, as with the kubelet.
    pub servers: Vec<IpAddr>,
    /// `cluster.local` unless set.
    pub domain: String,
    /// The node's resolver config.
    pub host: HostResolv,
}

impl Default for ClusterDns {
    fn default() -> Self {
        ClusterDns { servers: Vec::new(), domain: DEFAULT_CLUSTER_DOMAIN.into(), host: HostResolv::default() }
    }
}

pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";

/// A pod's DNS config and what was wrong on the way (the kubelet's
/// `MissingClusterDNS` and `DNSConfigForming` warnings).
#[derive(Debug, Clone, PartialEq)]
pub struct PodDns {
    pub config: cri::DnsConfig,
    pub warnings: Vec<String>,
}

/// The pod's resolver config per its `dnsPolicy` and `dnsConfig`, from the
/// node's config `host` (see [`HostResolv::read`]).
pub fn pod_dns_config(pod: &Pod, cluster: &ClusterDns, host: &ResolvConf) -> PodDns {
    let mut warnings = Vec::new();
    let spec = &pod.spec;
    let policy = match spec.dns_policy {
        DnsPolicy::ClusterFirst if spec.host_network => DnsPolicy::Default,
        DnsPolicy::ClusterFirstWithHostNet => DnsPolicy::ClusterFirst,
        p => p,
    };
    let host_config = || cri::DnsConfig {
        servers: host.nameservers.clone(),
        searches: host.searches.clone(),
        options: host.options.clone(),
    };
    let mut config = match policy {
        DnsPolicy::None => cri::DnsConfig::default(),
        DnsPolicy::ClusterFirst | DnsPolicy::ClusterFirstWithHostNet if !cluster.servers.is_empty() => cri::DnsConfig {
            servers: cluster.servers.iter().map(IpAddr::to_string).collect(),
            searches: cluster_searches(pod.namespace(), &cluster.domain, &host.searches),
            options: CLUSTER_FIRST_OPTIONS.iter().map(|o| o.to_string()).collect(),
        },
        DnsPolicy::ClusterFirst | DnsPolicy::ClusterFirstWithHostNet => {
            warnings.push(
                "the node has no cluster DNS IP configured and cannot create a pod using \"ClusterFirst\" policy; \
                 falling back to \"Default\" policy"
                    .to_string(),
            );
            host_config()
        }
        DnsPolicy::Default => host_config(),
    };
    if let Some(extra) = &spec.dns_config {
        config.servers = dedup(config.servers.into_iter().chain(extra.nameservers.iter().cloned()));
        config.searches = dedup(config.searches.into_iter().chain(extra.searches.iter().cloned()));
        config.options = merge_options(config.options, extra);
    }
    fit_limits(&mut config, &mut warnings);
    PodDns { config, warnings }
}

/// `NS.svc.DOMAIN svc.DOMAIN DOMAIN`, then the node's search list.
fn cluster_searches(namespace: &str, domain: &str, host: &[String]) -> Vec<String> {
    if domain.is_empty() {
        return host.to_vec();
    }
    let cluster = [format!("{namespace}.svc.{domain}"), format!("svc.{domain}"), domain.to_string()];
    dedup(cluster.into_iter().chain(host.iter().cloned()))
}

fn dedup(items: impl Iterator<Item = String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for item in items {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}

/// The kubelet's option merge: `dnsConfig` options replace those of the
/// same name. Unlike the kubelet (a Go map) the order is kept: existing
/// options first, new ones after.
fn merge_options(existing: Vec<String>, extra: &kedge_common::pod::PodDnsConfig) -> Vec<String> {
    let mut merged: Vec<(String, Option<String>)> = Vec::new();
    let mut set = |name: &str, value: Option<String>| match merged.iter_mut().find(|(n, _)| n == name) {
        Some(entry) => entry.1 = value,
        None => merged.push((name.to_string(), value)),
    };
    for op in &existing {
        match op.split_once(':') {
            Some((name, value)) => set(name, Some(value.to_string())),
            None => set(op, None),
        }
    }
    for op in &extra.options {
        set(&op.name, op.value.clone().filter(|v| !v.is_empty()));
    }
    merged.into_iter().map(|(name, value)| value.map_or_else(|| name.clone(), |v| format!("{name}:{v}"))).collect()
}

/// The kubelet's limits: 3 nameservers; 32 search domains of at most 253
/// characters, 2048 characters in all (the last ones are cut).
fn fit_limits(config: &mut cri::DnsConfig, warnings: &mut Vec<String>) {
    if config.servers.len() > MAX_DNS_NAMESERVERS {
        config.servers.truncate(MAX_DNS_NAMESERVERS);
        warnings.push(format!(
            "nameserver limits were exceeded, some nameservers have been omitted, the applied nameserver line is: {}",
            config.servers.join(" ")
        ));
    }
    let mut exceeded = config.searches.len() > MAX_DNS_SEARCHES;
    config.searches.truncate(MAX_DNS_SEARCHES);
    let before = config.searches.len();
    config.searches.retain(|s| s.len() <= MAX_SEARCH_DOMAIN_CHARS);
    exceeded |= config.searches.len() != before;
    while config.searches.join(" ").len() > MAX_DNS_SEARCH_CHARS {
        config.searches.pop();
        exceeded = true;
    }
    if exceeded {
        warnings.push(format!(
            "search line limits were exceeded, some search paths have been omitted, the applied search line is: {}",
            config.searches.join(" ")
        ));
    }
}

/// The resolv.conf text for a config, as container runtimes write it.
pub fn render(config: &cri::DnsConfig) -> String {
    let mut s = String::new();
    if !config.searches.is_empty() {
        s.push_str(&format!("search {}\n", config.searches.join(" ")));
    }
    for server in &config.servers {
        s.push_str(&format!("nameserver {server}\n"));
    }
    if !config.options.is_empty() {
        s.push_str(&format!("options {}\n", config.options.join(" ")));
    }
    s
}

#[cfg(test)]
mod tests;
