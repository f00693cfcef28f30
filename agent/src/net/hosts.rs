//! A pod's `/etc/hosts`, as the kubelet manages it: localhost lines, the
//! pod's IP with its hostname (and FQDN `HOSTNAME.SUBDOMAIN.NS.svc.DOMAIN`
//! when it has a `subdomain`), and its `hostAliases`; `hostNetwork` pods get
//! the node's file plus their aliases.
//!
//! The CRI's sandbox config carries the hostname but neither the domain nor
//! the aliases, so the pod side (`pods/translate.rs`) puts them into two
//! annotations and the runtime, which writes the file, reads them back.

use std::net::IpAddr;

use k8s_cri::v1 as cri;
use kedge_common::pod::{HostAlias, Pod};

/// `SUBDOMAIN.NS.svc.DOMAIN` of a pod with a `subdomain`.
pub const ANNOTATION_HOST_DOMAIN: &str = "kedge.io/host-domain";
/// The pod's `hostAliases` as JSON (`[{"ip": …, "hostnames": […]}]`).
pub const ANNOTATION_HOST_ALIASES: &str = "kedge.io/host-aliases";

const MANAGED_HEADER: &str = "# Kubernetes-managed hosts file.\n";
const MANAGED_HEADER_HOST_NETWORK: &str = "# Kubernetes-managed hosts file (host network).\n";
/// Where Debian puts the machine's own name when it has no fixed address:
/// the pod's name resolves to it until the pod has an IP.
const NO_IP_YET: &str = "127.0.1.1";

/// What a pod's hosts file says about the pod.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PodHosts {
    pub hostname: String,
    /// `SUBDOMAIN.NS.svc.DOMAIN`, when the pod has a `subdomain`.
    pub domain: Option<String>,
    pub aliases: Vec<HostAlias>,
}

/// The pod's hostname as the kubelet makes it: `spec.hostname`, or the pod
/// name cut to a DNS label's 63 characters (without a trailing `-` or `.`).
pub fn pod_hostname(pod: &Pod) -> String {
    match pod.spec.hostname.as_deref().filter(|h| !h.is_empty()) {
        Some(h) => h.to_string(),
        None => {
            let name: String = pod.metadata.name.chars().take(63).collect();
            name.trim_end_matches(['-', '.']).to_string()
        }
    }
}

impl PodHosts {
    /// From the pod spec (the pod side).
    pub fn for_pod(pod: &Pod, cluster_domain: &str) -> Self {
        let domain = pod
            .spec
            .subdomain
            .as_deref()
            .filter(|s| !s.is_empty())
            .map(|sub| format!("{sub}.{}.svc.{cluster_domain}", pod.namespace()));
        PodHosts { hostname: pod_hostname(pod), domain, aliases: pod.spec.host_aliases.clone() }
    }

    /// The sandbox annotations that carry the domain and aliases.
    pub fn annotations(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if let Some(d) = &self.domain {
            out.push((ANNOTATION_HOST_DOMAIN.to_string(), d.clone()));
        }
        if !self.aliases.is_empty() {
            // A Vec of plain structs always serializes.
            if let Ok(json) = serde_json::to_string(&self.aliases) {
                out.push((ANNOTATION_HOST_ALIASES.to_string(), json));
            }
        }
        out
    }

    /// From a sandbox config (the runtime side); `hostname` is the one the
    /// sandbox got. A config without the annotations (any CRI client) gives
    /// just the hostname; unreadable aliases are left out and logged.
    pub fn from_sandbox(config: &cri::PodSandboxConfig, hostname: &str) -> Self {
        let domain = config.annotations.get(ANNOTATION_HOST_DOMAIN).filter(|d| !d.is_empty()).cloned();
        let aliases = match config.annotations.get(ANNOTATION_HOST_ALIASES) {
            None => Vec::new(),
            Some(json) => serde_json::from_str(json).unwrap_or_else(|e| {
                tracing::warn!(annotation = ANNOTATION_HOST_ALIASES, error = %e, "host aliases left out of /etc/hosts");
                Vec::new()
            }),
        };
        PodHosts { hostname: hostname.to_string(), domain, aliases }
    }

    /// The file. `pod_ip`: the pod's address, `None` while it has none
    /// (the name then points at 127.0.1.1). `node_hosts`: the node's
    /// `/etc/hosts` for a `hostNetwork` pod, which gets that plus its aliases.
    pub fn render(&self, pod_ip: Option<IpAddr>, node_hosts: Option<&str>) -> String {
        let mut s = String::new();
        if let Some(node) = node_hosts {
            s.push_str(MANAGED_HEADER_HOST_NETWORK);
            s.push_str(node);
            if !node.is_empty() && !node.ends_with('\n') {
                s.push('\n');
            }
        } else {
            s.push_str(MANAGED_HEADER);
            s.push_str("127.0.0.1\tlocalhost\n");
            s.push_str("::1\tlocalhost ip6-localhost ip6-loopback\n");
            s.push_str("fe00::0\tip6-localnet\n");
            s.push_str("fe00::0\tip6-mcastprefix\n");
            s.push_str("fe00::1\tip6-allnodes\n");
            s.push_str("fe00::2\tip6-allrouters\n");
            let ip = pod_ip.map_or_else(|| NO_IP_YET.to_string(), |ip| ip.to_string());
            match &self.domain {
                Some(domain) => s.push_str(&format!("{ip}\t{}.{domain}\t{}\n", self.hostname, self.hostname)),
                None => s.push_str(&format!("{ip}\t{}\n", self.hostname)),
            }
        }
        if !self.aliases.is_empty() {
            s.push_str("\n# Entries added by HostAliases.\n");
            for alias in &self.aliases {
                for name in &alias.hostnames {
                    s.push_str(&format!("{}\t{name}\n", alias.ip));
                }
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use kedge_common::pod::{ObjectMeta, PodSpec};

    use super::*;

    fn pod() -> Pod {
        Pod {
            metadata: ObjectMeta { name: "db-0".into(), namespace: Some("shop".into()), ..Default::default() },
            spec: PodSpec {
                hostname: Some("db-0".into()),
                subdomain: Some("db".into()),
                host_aliases: vec![
                    HostAlias { ip: "10.1.2.3".into(), hostnames: vec!["foo.local".into(), "bar.local".into()] },
                    HostAlias { ip: "fd00::7".into(), hostnames: vec!["six.local".into()] },
                ],
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn the_managed_file_names_the_pod_its_fqdn_and_aliases() {
        let hosts = PodHosts::for_pod(&pod(), "cluster.local");
        assert_eq!(hosts.domain.as_deref(), Some("db.shop.svc.cluster.local"));
        // Across the CRI: the annotations carry what the sandbox config has no field for.
        let config = cri::PodSandboxConfig {
            hostname: "db-0".into(),
            annotations: hosts.annotations().into_iter().collect::<HashMap<_, _>>(),
            ..Default::default()
        };
        let back = PodHosts::from_sandbox(&config, &config.hostname);
        assert_eq!(back, hosts);
        assert_eq!(
            back.render(Some("10.42.0.7".parse().expect("ip")), None),
            "# Kubernetes-managed hosts file.\n\
             127.0.0.1\tlocalhost\n\
             ::1\tlocalhost ip6-localhost ip6-loopback\n\
             fe00::0\tip6-localnet\n\
             fe00::0\tip6-mcastprefix\n\
             fe00::1\tip6-allnodes\n\
             fe00::2\tip6-allrouters\n\
             10.42.0.7\tdb-0.db.shop.svc.cluster.local\tdb-0\n\
             \n# Entries added by HostAliases.\n\
             10.1.2.3\tfoo.local\n\
             10.1.2.3\tbar.local\n\
             fd00::7\tsix.local\n"
        );
    }

    #[test]
    fn without_an_ip_or_subdomain_the_name_still_resolves() {
        let mut p = pod();
        p.spec.subdomain = None;
        p.spec.hostname = None;
        p.spec.host_aliases.clear();
        p.metadata.name = format!("{}-x", "a".repeat(62));
        let hosts = PodHosts::for_pod(&p, "cluster.local");
        assert_eq!(hosts.hostname, "a".repeat(62), "cut to 63 characters, trailing '-' dropped");
        assert!(hosts.annotations().is_empty());
        let text = hosts.render(None, None);
        assert!(text.ends_with(&format!("fe00::2\tip6-allrouters\n127.0.1.1\t{}\n", "a".repeat(62))), "{text}");
        // A plain CRI client's sandbox: just the hostname.
        let plain = PodHosts::from_sandbox(&cri::PodSandboxConfig::default(), "box");
        assert_eq!(plain, PodHosts { hostname: "box".into(), ..Default::default() });
    }

    #[test]
    fn host_network_pods_get_the_node_file_and_their_aliases() {
        let hosts = PodHosts::for_pod(&pod(), "cluster.local");
        let text =
            hosts.render(Some("192.168.1.5".parse().expect("ip")), Some("127.0.0.1 localhost\n192.168.1.5 pi-7"));
        assert_eq!(
            text,
            "# Kubernetes-managed hosts file (host network).\n127.0.0.1 localhost\n192.168.1.5 pi-7\n\
             \n# Entries added by HostAliases.\n10.1.2.3\tfoo.local\n10.1.2.3\tbar.local\nfd00::7\tsix.local\n"
        );
    }

    #[test]
    fn bad_alias_json_is_left_out() {
        let config = cri::PodSandboxConfig {
            annotations: [(ANNOTATION_HOST_ALIASES.to_string(), "{not json".to_string())].into_iter().collect(),
            ..Default::default()
        };
        assert!(PodHosts::from_sandbox(&config, "x").aliases.is_empty());
    }
}
