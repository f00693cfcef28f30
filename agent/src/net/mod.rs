//! The pod network on this node (design.md §6): pod addresses on a bridge,
//! Services in one nftables table kedge owns, cluster DNS for the node's
//! pods, and routes to the other nodes' pod CIDRs — all applied from the
//! cached [`ClusterNetwork`] table, so they work with the controller gone.
//!
//! The parts take [`NodeNetwork`] (what this node is on the network) and a
//! table that already has this node's own endpoints' health applied.
//! `manager.rs` keeps them all in step; `pod.rs` (with `ipam.rs` and
//! `netlink.rs`) gives sandboxes addresses, `routes.rs` reaches the other
//! nodes, `nft.rs` holds the Services, `dns/` answers cluster names and
//! `resolv.rs`/`hosts.rs` write each pod's resolver files.

pub mod conntrack;
pub mod dns;
pub mod hosts;
pub mod ipam;
pub mod manager;
pub mod netlink;
pub mod nft;
pub mod pod;
pub mod resolv;
pub mod routes;

use std::net::IpAddr;

use ipnet::IpNet;
pub use kedge_common::network::ClusterNetwork;

/// This node as its network parts see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeNetwork {
    pub node: String,
    /// The node's own addresses (NodePorts answer on them).
    pub node_ips: Vec<IpAddr>,
    /// `spec.podCIDR` of this node.
    pub pod_cidr: IpNet,
    /// The whole cluster's pod range: not masqueraded between pods.
    pub cluster_cidr: IpNet,
    /// The bridge the pods' veths hang on (default `kedge0`).
    pub bridge: String,
    /// The bridge's address: the first of the pod CIDR, the pods' gateway
    /// and their DNS server.
    pub gateway: IpAddr,
    /// Pod traffic may leave through the VXLAN overlay (`--overlay` auto or
    /// vxlan): pods get an MTU with room for its headers.
    pub overlay_headroom: bool,
}

/// A `hostPort` of a running pod on this node.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostPort {
    pub protocol: kedge_common::network::Protocol,
    /// `hostIP`, when the port is bound to one address only.
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub pod_ip: IpAddr,
    pub container_port: u16,
}

#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    #[error(transparent)]
    Netlink(#[from] netlink::NetlinkError),
    #[error(transparent)]
    Nft(#[from] nft::NftError),
}

/// Removes what kedge made on this node's network (`kedge-agent network
/// cleanup`): routes to other nodes' pods, the VXLAN device, the pod veths
/// on `bridge`, the bridge, and kedge's nftables table. Nothing else.
pub fn cleanup(bridge: &str) -> Result<(), CleanupError> {
    nft::remove()?;
    routes::remove_all()?;
    let mut nl = netlink::Netlink::open()?;
    let links = nl.links()?;
    if let Some(br) = links.iter().find(|l| l.name == bridge) {
        for veth in links.iter().filter(|l| l.master == Some(br.index) && l.name.starts_with("kv")) {
            nl.delete_link(veth.index)?;
        }
        nl.delete_link(br.index)?;
    }
    Ok(())
}
