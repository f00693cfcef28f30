//! Pod addresses on the node's bridge: the CNI "bridge" plugin's job, done
//! in-process. The bridge (`kedge0`) carries the first address of the pod
//! CIDR as the pods' gateway; each sandbox gets a veth pair whose pod end is
//! `eth0` in the sandbox's pinned network namespace with a /32 address and a
//! default route through the gateway. Pods on one node therefore also talk
//! through the host's routing (not straight over the bridge), so conntrack
//! sees both directions of every flow and Service DNAT works for same-node
//! backends without `br_netfilter`.
//!
//! Blocking: every call here does netlink and redb I/O; the runtime calls it
//! from its blocking threads.

use std::fs;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::{Arc, RwLock};

use ipnet::IpNet;
use nix::sched::{CloneFlags, setns};

use super::NodeNetwork;
use super::ipam::{self, IpamError};
use super::netlink::{Netlink, NetlinkError};
use crate::cache::Cache;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The node cannot give pods addresses yet (or at all): the reason is
    /// shown on the pods (ContainerCreating) and the node
    /// (`NetworkUnavailable`).
    #[error("pod network unavailable: {0}")]
    Unavailable(String),
    #[error("pod network: {0}")]
    Netlink(#[from] NetlinkError),
    #[error("pod network: {0}")]
    Ipam(#[from] IpamError),
    #[error("pod network: {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// The pod network of this node, as the runtime uses it.
pub struct PodNet {
    cache: Arc<Cache>,
    /// `Err(reason)` until the node has a usable pod CIDR.
    node: RwLock<Result<Configured, String>>,
    /// Set while a part the pods need beyond the bridge is missing (the
    /// kernel cannot make the VXLAN device): new sandboxes wait with it.
    blocked: RwLock<Option<String>>,
}

/// The node as configured, and the MTU its pods get (`None`: the kernel's
/// default), worked out once here rather than for every sandbox.
#[derive(Clone)]
struct Configured {
    node: NodeNetwork,
    pod_mtu: Option<u32>,
}

/// The veth's host end for a sandbox: `kv` + 12 characters of its id (an
/// interface name has at most 15).
pub fn host_veth(sandbox: &str) -> String {
    let tail: String = sandbox.chars().filter(char::is_ascii_alphanumeric).take(12).collect();
    format!("kv{tail}")
}

impl PodNet {
    pub fn new(cache: Arc<Cache>) -> PodNet {
        PodNet { cache, node: RwLock::new(Err(super::manager::NO_POD_CIDR.into())), blocked: RwLock::new(None) }
    }

    /// What this node is on the network, once configured.
    pub fn node(&self) -> Result<NodeNetwork, String> {
        self.configured().map(|c| c.node)
    }

    fn configured(&self) -> Result<Configured, String> {
        if let Some(reason) = self.blocked.read().unwrap_or_else(|p| p.into_inner()).clone() {
            return Err(reason);
        }
        self.node.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Holds new sandboxes back with `reason` (`None`: lets them go again).
    pub fn block(&self, reason: Option<String>) {
        *self.blocked.write().unwrap_or_else(|p| p.into_inner()) = reason;
    }

    /// Marks the network unusable, with the reason pods and the node show.
    pub fn set_unavailable(&self, reason: String) {
        *self.node.write().unwrap_or_else(|p| p.into_inner()) = Err(reason);
    }

    /// Brings the bridge up with the gateway address and turns on IPv4
    /// forwarding. Idempotent; called whenever the node's pod CIDR is known
    /// or changes.
    pub fn configure(&self, node: NodeNetwork) -> Result<(), NetError> {
        let result = configure_host(&node);
        *self.node.write().unwrap_or_else(|p| p.into_inner()) = match &result {
            Ok(pod_mtu) => Ok(Configured { node, pod_mtu: *pod_mtu }),
            Err(e) => Err(e.to_string()),
        };
        result.map(drop)
    }

    /// Gives the sandbox an address and plugs its namespace into the bridge.
    pub fn attach(&self, sandbox: &str, netns: &Path) -> Result<IpAddr, NetError> {
        let Configured { node, pod_mtu } = self.configured().map_err(NetError::Unavailable)?;
        let ip = ipam::allocate(&self.cache, node.pod_cidr, sandbox)?;
        if let Err(e) = plug(&node, pod_mtu, sandbox, netns, ip) {
            let _ = unplug(sandbox);
            let _ = ipam::release(&self.cache, sandbox);
            return Err(e);
        }
        Ok(ip)
    }

    /// Unplugs the sandbox and releases its address. Missing pieces are fine.
    pub fn detach(&self, sandbox: &str) -> Result<(), NetError> {
        unplug(sandbox)?;
        ipam::release(&self.cache, sandbox)?;
        Ok(())
    }

    /// Releases the addresses of sandboxes that are gone.
    pub fn release_all_but(&self, live: &std::collections::BTreeSet<String>) -> Result<usize, NetError> {
        Ok(ipam::release_all_but(&self.cache, live)?)
    }
}

/// Sets the host side up; returns the pods' MTU.
fn configure_host(node: &NodeNetwork) -> Result<Option<u32>, NetError> {
    let IpNet::V4(cidr) = node.pod_cidr else {
        return Err(NetError::Unavailable(format!("pod CIDR {} is not IPv4", node.pod_cidr)));
    };
    // Without nftables pods would have no egress, Services or hostPorts:
    // say so before building anything.
    super::nft::available().map_err(|e| NetError::Unavailable(e.to_string()))?;
    let mut nl = Netlink::open()?;
    let own = nl.link(&node.bridge)?.map(|l| l.index);
    let overlap = nl
        .addresses()?
        .into_iter()
        .filter(|(index, ip, _)| ip.is_ipv4() && Some(*index) != own)
        .filter_map(|(_, ip, prefix)| IpNet::new(ip, prefix).ok())
        .find(|net| net.contains(&node.pod_cidr.network()) || node.pod_cidr.contains(&net.network()));
    if let Some(net) = overlap {
        return Err(NetError::Unavailable(format!("pod CIDR {} overlaps the host's network {net}", node.pod_cidr)));
    }
    let bridge = match nl.ensure_bridge(&node.bridge) {
        Err(e) if e.kernel_lacks_kind() => {
            return Err(NetError::Unavailable(format!(
                "the kernel cannot make bridge {} (no bridge module?): {e}",
                node.bridge
            )));
        }
        other => other?,
    };
    nl.add_address(bridge, node.gateway, cidr.prefix_len())?;
    nl.set_up(bridge, None)?;
    sysctl("net/ipv4/ip_forward", "1")?;
    // Pods on this bridge route through the host: no redirects telling them
    // to go to each other directly.
    sysctl(&format!("net/ipv4/conf/{}/send_redirects", node.bridge), "0")?;
    match node.overlay_headroom {
        true => Ok(Some(super::routes::overlay_mtu(&mut nl, &node.node_ips)?)),
        false => Ok(None),
    }
}

fn sysctl(key: &str, value: &str) -> Result<(), NetError> {
    let path = Path::new("/proc/sys").join(key);
    if fs::read_to_string(&path).is_ok_and(|v| v.trim() == value) {
        return Ok(());
    }
    fs::write(&path, value).map_err(|source| NetError::Io { what: path.display().to_string(), source })
}

fn plug(node: &NodeNetwork, mtu: Option<u32>, sandbox: &str, netns: &Path, ip: IpAddr) -> Result<(), NetError> {
    let ns = fs::File::open(netns).map_err(|source| NetError::Io { what: netns.display().to_string(), source })?;
    let mut nl = Netlink::open()?;
    let bridge =
        nl.link(&node.bridge)?.ok_or_else(|| NetError::Unavailable(format!("bridge {} is gone", node.bridge)))?;
    let host = host_veth(sandbox);
    if let Some(stale) = nl.link(&host)? {
        nl.delete_link(stale.index)?;
    }
    let index = nl.add_veth(&host, "eth0", ns.as_raw_fd())?;
    if let Some(mtu) = mtu {
        nl.set_mtu(index, mtu)?;
    }
    nl.set_up(index, Some(bridge.index))?;
    nl.set_hairpin(index)?;
    let gateway = node.gateway;
    // Inside the pod's namespace, on a thread of its own that ends there.
    std::thread::scope(|s| {
        s.spawn(|| -> Result<(), NetError> {
            setns(&ns, CloneFlags::CLONE_NEWNET)
                .map_err(|e| NetError::Io { what: format!("entering {}", netns.display()), source: e.into() })?;
            let mut nl = Netlink::open()?;
            let eth0 =
                nl.link("eth0")?.ok_or_else(|| NetError::Unavailable("eth0 did not appear in the pod".into()))?;
            if let Some(mtu) = mtu {
                nl.set_mtu(eth0.index, mtu)?;
            }
            nl.add_address(eth0.index, ip, if ip.is_ipv4() { 32 } else { 128 })?;
            nl.set_up(eth0.index, None)?;
            let prefix = if gateway.is_ipv4() { 32 } else { 128 };
            let to_gateway =
                IpNet::new(gateway, prefix).map_err(|_| NetError::Unavailable(format!("bad gateway {gateway}")))?;
            nl.replace_route(to_gateway, None, Some(eth0.index), false)?;
            nl.add_default_route(gateway, eth0.index)?;
            Ok(())
        })
        .join()
        .unwrap_or_else(|_| Err(NetError::Unavailable("the namespace thread panicked".into())))
    })
}

fn unplug(sandbox: &str) -> Result<(), NetError> {
    let mut nl = Netlink::open()?;
    if let Some(link) = nl.link(&host_veth(sandbox))? {
        nl.delete_link(link.index)?;
    }
    Ok(())
}
