//! The cluster's network as every node needs it (design.md §3, §6): the
//! `ClusterNetwork` table the controller publishes retained on
//! `{prefix}/v1/cluster/network`, and the agent caches and serves from —
//! nftables service rules, cluster DNS and routes to the other nodes' pods
//! all come from it, so they keep working with the controller gone.
//!
//! Like a node's snapshot it is full state with a generation, never a delta:
//! the newest table wins.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// Published retained on `{prefix}/v1/cluster/network`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ClusterNetwork {
    /// Strictly increasing, persisted by the controller; an agent ignores a
    /// table that is not newer than the one it has.
    pub generation: u64,
    /// `--cluster-cidr`: traffic between pods (any node) is not masqueraded.
    pub cluster_cidr: Option<IpNet>,
    /// `--service-cidr`: where ClusterIPs come from.
    pub service_cidr: Option<IpNet>,
    /// Every node with a pod CIDR, sorted by name.
    pub nodes: Vec<NodeNet>,
    /// Every Service, sorted by namespace and name.
    pub services: Vec<ServiceNet>,
}

/// A node as the others route to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeNet {
    pub name: String,
    /// `spec.podCIDR`.
    pub pod_cidr: IpNet,
    /// The node's `InternalIP` addresses, first one preferred for routes.
    pub addresses: Vec<IpAddr>,
}

/// One Service with its endpoints, as Kubernetes' Service + Endpoints.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ServiceNet {
    pub namespace: String,
    pub name: String,
    pub kind: ServiceKind,
    /// `spec.clusterIPs`; empty for headless (`clusterIP: None`) and ExternalName.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cluster_ips: Vec<IpAddr>,
    /// `spec.clusterIP: None`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub headless: bool,
    /// `spec.externalName` of an ExternalName Service (a DNS CNAME).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_name: Option<String>,
    /// `sessionAffinity: ClientIP`: the affinity timeout in seconds (default 10800).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity_seconds: Option<u32>,
    pub ports: Vec<ServicePortNet>,
    /// From the Service's Endpoints: ready and not-ready addresses per
    /// resolved port set. A node applies its own endpoints' health over
    /// this (design.md §6), so not-ready ones are carried too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subsets: Vec<SubsetNet>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum ServiceKind {
    #[default]
    ClusterIP,
    NodePort,
    /// Handled as NodePort: kedge has no load-balancer provider.
    LoadBalancer,
    ExternalName,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub enum Protocol {
    #[default]
    TCP,
    UDP,
    SCTP,
}

impl Protocol {
    /// Kubernetes' spelling (`TCP`, `UDP`, `SCTP`); unset is TCP, as the API defaults it.
    pub fn from_k8s(p: Option<&str>) -> Option<Protocol> {
        match p.unwrap_or("TCP") {
            "TCP" => Some(Protocol::TCP),
            "UDP" => Some(Protocol::UDP),
            "SCTP" => Some(Protocol::SCTP),
            _ => None,
        }
    }

    /// nftables' and `/etc/services`' spelling.
    pub fn lower(self) -> &'static str {
        match self {
            Protocol::TCP => "tcp",
            Protocol::UDP => "udp",
            Protocol::SCTP => "sctp",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ServicePortNet {
    /// Empty only when the Service has a single port.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_port: Option<u16>,
}

/// An Endpoints subset: addresses that share one resolved port set (a named
/// `targetPort` can resolve to different numbers in different pods).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SubsetNet {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ready: Vec<EndpointNet>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ready: Vec<EndpointNet>,
    /// The endpoint port for each Service port, matched by `name`.
    pub ports: Vec<EndpointPortNet>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointNet {
    pub ip: IpAddr,
    /// The pod's `hostname` when it also set `subdomain` to the Service's
    /// name: `HOSTNAME.SVC.NS.svc.DOMAIN` resolves to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct EndpointPortNet {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

impl ClusterNetwork {
    /// The node named `name`, if it has a pod CIDR.
    pub fn node(&self, name: &str) -> Option<&NodeNet> {
        self.nodes.iter().find(|n| n.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope;

    fn table(services: usize, endpoints: usize) -> ClusterNetwork {
        let nodes = (0..50u8)
            .map(|i| NodeNet {
                name: format!("node-{i}"),
                pod_cidr: format!("10.42.{i}.0/24").parse().expect("cidr"),
                addresses: vec![IpAddr::from([192, 168, 1, i])],
            })
            .collect();
        let services = (0..services)
            .map(|i| ServiceNet {
                namespace: "default".into(),
                name: format!("service-{i}"),
                kind: ServiceKind::ClusterIP,
                cluster_ips: vec![IpAddr::from([10, 43, (i / 256) as u8, (i % 256) as u8])],
                ports: vec![ServicePortNet { name: "http".into(), protocol: Protocol::TCP, port: 80, node_port: None }],
                subsets: vec![SubsetNet {
                    ready: (0..endpoints)
                        .map(|e| EndpointNet {
                            ip: IpAddr::from([10, 42, e as u8, (i % 250) as u8 + 2]),
                            hostname: None,
                        })
                        .collect(),
                    not_ready: vec![],
                    ports: vec![EndpointPortNet { name: "http".into(), protocol: Protocol::TCP, port: 8080 }],
                }],
                ..ServiceNet::default()
            })
            .collect();
        ClusterNetwork {
            generation: 7,
            cluster_cidr: Some("10.42.0.0/16".parse().expect("cidr")),
            service_cidr: Some("10.43.0.0/16".parse().expect("cidr")),
            nodes,
            services,
        }
    }

    #[test]
    fn round_trips_through_the_envelope() {
        let t = table(3, 2);
        let bytes = envelope::encode(&t).expect("encode");
        let back: ClusterNetwork = envelope::decode(&bytes, envelope::DEFAULT_MAX_PAYLOAD).expect("decode");
        assert_eq!(back, t);
    }

    /// The size check: 1,000 Services × 4 endpoints on 50 nodes must
    /// stay well under the 1 MiB payload cap (BENCHMARKS.md records the figure).
    #[test]
    fn a_thousand_services_fit_well_under_the_cap() {
        let bytes = envelope::encode(&table(1000, 4)).expect("encode");
        eprintln!("network table, 1,000 Services x 4 endpoints: {} bytes", bytes.len());
        assert!(bytes.len() < envelope::DEFAULT_MAX_PAYLOAD / 4, "{} bytes", bytes.len());
    }
}
