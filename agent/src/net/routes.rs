//! Routes to the other nodes' pod CIDRs (design.md §6): straight to the
//! node (host-gw) when it sits on one of this node's own networks, through a
//! kernel VXLAN device otherwise (`--overlay auto|host-gw|vxlan`).
//!
//! VXLAN without a control protocol: every node's VTEP address and MAC are
//! derived from its pod CIDR (address: the CIDR's network address; MAC:
//! `0e:6b` + those four bytes), so a node writes a permanent neighbour entry
//! and an FDB entry per peer from the network table alone, with no flooding
//! or learning — the flannel "vxlan" backend's shape, without its annotations.
//! Every route is marked with kedge's route protocol; stale ones (a node
//! gone, moved, or switched mode) are removed by that mark.
//!
//! Blocking (netlink): run it on a blocking thread.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;
use kedge_common::network::NodeNet;

use super::NodeNetwork;
use super::netlink::{Netlink, NetlinkError, ROUTE_PROTOCOL};

/// The VXLAN device.
pub const VXLAN_DEVICE: &str = "kedge.vxlan";
/// VNI and UDP port (flannel's defaults: Linux's own VXLAN port).
const VNI: u32 = 1;
const VXLAN_PORT: u16 = 8472;
/// VXLAN's headers over IPv4: outer IP 20, UDP 8, VXLAN 8, inner Ethernet 14.
pub const VXLAN_OVERHEAD: u32 = 50;
/// The underlay MTU when the node's interface cannot be found.
const DEFAULT_MTU: u32 = 1500;

/// The MTU of what rides the overlay: that of the interface holding the
/// node's first IPv4 address (the VXLAN packets' source), less VXLAN's
/// headers. The VXLAN device and the pods' interfaces both get it, so a pod
/// never sends a packet the overlay must fragment or drop (as flannel sets
/// its pods' MTU). On a 1500-byte LAN: 1450.
pub fn overlay_mtu(nl: &mut Netlink, node_ips: &[IpAddr]) -> Result<u32, NetlinkError> {
    let underlay = match first_v4(node_ips) {
        Some(ip) => {
            let index = nl.addresses()?.into_iter().find(|(_, a, _)| *a == IpAddr::V4(ip)).map(|(i, _, _)| i);
            let links = nl.links()?;
            index.and_then(|i| links.iter().find(|l| l.index == i)).and_then(|l| l.mtu).unwrap_or(DEFAULT_MTU)
        }
        None => DEFAULT_MTU,
    };
    Ok(underlay.saturating_sub(VXLAN_OVERHEAD).max(576))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overlay {
    /// host-gw to nodes on a shared network, VXLAN to the rest.
    #[default]
    Auto,
    HostGw,
    Vxlan,
}

impl std::str::FromStr for Overlay {
    type Err = String;
    fn from_str(s: &str) -> Result<Overlay, String> {
        match s {
            "auto" => Ok(Overlay::Auto),
            "host-gw" => Ok(Overlay::HostGw),
            "vxlan" => Ok(Overlay::Vxlan),
            _ => Err(format!("{s:?} is not an overlay (auto, host-gw or vxlan)")),
        }
    }
}

/// What the routes should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub node: NodeNetwork,
    pub others: Vec<NodeNet>,
    pub overlay: Overlay,
    /// The cluster's Service range: routed onto the bridge (see [`apply`]).
    pub service_cidr: Option<IpNet>,
}

/// What was applied last: nothing is redone while the wish is the same.
#[derive(Debug, Default)]
pub struct Applied {
    wanted: Option<Wanted>,
}

impl Applied {
    pub fn matches(&self, w: &Wanted) -> bool {
        self.wanted.as_ref() == Some(w)
    }
}

/// The VTEP address of the node with `cidr`.
fn vtep(cidr: IpNet) -> Option<Ipv4Addr> {
    match cidr {
        IpNet::V4(v4) => Some(v4.network()),
        IpNet::V6(_) => None,
    }
}

/// The VTEP MAC of the node with `cidr`: locally administered, unicast.
pub fn vtep_mac(cidr: IpNet) -> Option<[u8; 6]> {
    let [a, b, c, d] = vtep(cidr)?.octets();
    Some([0x0e, 0x6b, a, b, c, d])
}

fn first_v4(addrs: &[IpAddr]) -> Option<Ipv4Addr> {
    addrs.iter().find_map(|a| match a {
        IpAddr::V4(v4) => Some(*v4),
        IpAddr::V6(_) => None,
    })
}

/// Why the routes to the other nodes' pods could not be set.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error(
        "the kernel cannot make the VXLAN device {VXLAN_DEVICE} for nodes on other networks (no vxlan module? \
         --overlay host-gw avoids it when all nodes share one network): {0}"
    )]
    NoVxlan(#[source] NetlinkError),
    #[error("cannot set the routes to the other nodes' pods: {0}")]
    Netlink(#[from] NetlinkError),
}

impl RouteError {
    /// Whether new pods must wait for it: a node that can never reach the
    /// pods behind the overlay is not one to start pods on (the issue's
    /// "missing parts" rule); any other failure is retried at the next
    /// change and leaves the pods be.
    pub fn blocks_pods(&self) -> bool {
        matches!(self, RouteError::NoVxlan(_))
    }
}

/// Applies `w`. On failure nothing matches, so the next change tries again.
///
/// Besides the routes to the other nodes' pods, the Service range gets a
/// route onto the bridge. The Service rules DNAT a ClusterIP before the
/// kernel routes it, but a connection the rules do not rewrite (a Service
/// with no endpoint, which the forward filter must reject) and the node's
/// own connections (routed before the output hook) need some route to the
/// address first. A node without a default route — an edge box whose
/// uplink is down — would otherwise leave those SYNs unanswered instead of
/// refused, and could not reach a ClusterIP itself.
pub fn apply(w: &Wanted) -> Result<Applied, RouteError> {
    try_apply(w)?;
    Ok(Applied { wanted: Some(w.clone()) })
}

fn try_apply(w: &Wanted) -> Result<(), RouteError> {
    let mut nl = Netlink::open()?;
    let links = nl.links()?;
    let own: BTreeSet<u32> =
        links.iter().filter(|l| l.name == w.node.bridge || l.name == VXLAN_DEVICE).map(|l| l.index).collect();
    let connected: Vec<IpNet> = nl
        .addresses()?
        .into_iter()
        .filter(|(index, ip, _)| ip.is_ipv4() && !ip.is_loopback() && !own.contains(index))
        .filter_map(|(_, ip, prefix)| IpNet::new(ip, prefix).ok())
        .map(|n| n.trunc())
        .collect();
    let mut wanted_dsts = BTreeSet::new();
    let mut vxlan_peers = Vec::new();
    for other in &w.others {
        let Some(addr) = first_v4(&other.addresses) else {
            tracing::warn!(node = %other.name, "node has no IPv4 address; no route to its pods");
            continue;
        };
        let direct = match w.overlay {
            Overlay::HostGw => true,
            Overlay::Vxlan => false,
            Overlay::Auto => connected.iter().any(|n| n.contains(&IpAddr::V4(addr))),
        };
        if direct {
            nl.replace_route(other.pod_cidr, Some(IpAddr::V4(addr)), None, false)?;
        } else {
            vxlan_peers.push((other, addr));
        }
        wanted_dsts.insert(other.pod_cidr.trunc());
    }
    if let Some(services) = w.service_cidr.filter(|n| matches!(n, IpNet::V4(_))) {
        match links.iter().find(|l| l.name == w.node.bridge) {
            Some(bridge) => {
                nl.replace_route(services, None, Some(bridge.index), false)?;
                wanted_dsts.insert(services.trunc());
            }
            None => tracing::warn!(bridge = %w.node.bridge, "no bridge yet; no route for the Service range"),
        }
    }
    if vxlan_peers.is_empty() {
        if let Some(dev) = links.iter().find(|l| l.name == VXLAN_DEVICE) {
            nl.delete_link(dev.index)?;
        }
    } else {
        let local = first_v4(&w.node.node_ips).ok_or_else(|| NetlinkError::Kernel {
            op: "create vxlan (this node has no IPv4 address to send from; set --node-ip)",
            source: std::io::Error::from_raw_os_error(libc::EADDRNOTAVAIL),
        })?;
        let (Some(own_vtep), Some(own_mac)) = (vtep(w.node.pod_cidr), vtep_mac(w.node.pod_cidr)) else {
            return Ok(());
        };
        let dev = nl.ensure_vxlan(VXLAN_DEVICE, VNI, local, VXLAN_PORT, own_mac).map_err(|e| match e {
            e if e.kernel_lacks_kind() => RouteError::NoVxlan(e),
            e => RouteError::Netlink(e),
        })?;
        let mtu = overlay_mtu(&mut nl, &w.node.node_ips)?;
        nl.set_mtu(dev, mtu)?;
        nl.add_address(dev, IpAddr::V4(own_vtep), 32)?;
        nl.set_up(dev, None)?;
        for (other, addr) in vxlan_peers {
            let (Some(peer_vtep), Some(peer_mac)) = (vtep(other.pod_cidr), vtep_mac(other.pod_cidr)) else { continue };
            nl.replace_neighbour(dev, peer_vtep, peer_mac)?;
            nl.replace_fdb(dev, peer_mac, addr)?;
            nl.replace_route(other.pod_cidr, Some(IpAddr::V4(peer_vtep)), Some(dev), true)?;
        }
    }
    for stale in nl.routes()?.into_iter().filter(|r| r.protocol == ROUTE_PROTOCOL && !wanted_dsts.contains(&r.dst)) {
        tracing::info!(dst = %stale.dst, "removing a stale route to pods");
        nl.delete_route(&stale)?;
    }
    Ok(())
}

/// Removes kedge's routes and VXLAN device (`network cleanup`).
pub fn remove_all() -> Result<(), NetlinkError> {
    let mut nl = Netlink::open()?;
    for r in nl.routes()?.into_iter().filter(|r| r.protocol == ROUTE_PROTOCOL) {
        nl.delete_route(&r)?;
    }
    if let Some(dev) = nl.link(VXLAN_DEVICE)? {
        nl.delete_link(dev.index)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vteps_come_from_the_pod_cidr() {
        let cidr: IpNet = "10.42.7.0/24".parse().expect("cidr");
        assert_eq!(vtep(cidr), Some(Ipv4Addr::new(10, 42, 7, 0)));
        assert_eq!(vtep_mac(cidr), Some([0x0e, 0x6b, 10, 42, 7, 0]));
        assert_eq!("host-gw".parse::<Overlay>(), Ok(Overlay::HostGw));
        assert!("wireguard".parse::<Overlay>().is_err());
    }

    #[test]
    fn a_kernel_without_vxlan_holds_new_pods_back_and_says_why() {
        // What the kernel answers RTM_NEWLINK for a kind whose module it
        // cannot load ("Unknown device type").
        let kernel =
            |errno| NetlinkError::Kernel { op: "create vxlan", source: std::io::Error::from_raw_os_error(errno) };
        let missing = RouteError::NoVxlan(kernel(libc::EOPNOTSUPP));
        assert!(kernel(libc::EOPNOTSUPP).kernel_lacks_kind());
        assert!(missing.blocks_pods());
        let said = missing.to_string();
        assert!(
            said.contains("kedge.vxlan") && said.contains("vxlan module") && said.contains("--overlay host-gw"),
            "{said}"
        );
        // Anything else is retried at the next change and leaves pods be.
        assert!(!kernel(libc::EEXIST).kernel_lacks_kind());
        assert!(!RouteError::from(kernel(libc::ENETUNREACH)).blocks_pods());
    }
}
