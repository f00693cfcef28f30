//! A small synchronous rtnetlink client: links (bridge, veth, VXLAN),
//! addresses, routes and neighbour/FDB entries, over `netlink-packet-route`
//! and `netlink-sys` — the crates libcontainer already links, so the pod
//! network adds no netlink code of its own to the binary. (rtnetlink, the
//! async wrapper, would add netlink-proto and futures for no gain here: every
//! call is a blocking request/ack made from a blocking thread, often one that
//! has entered a pod's network namespace.)
//!
//! A socket talks to the network namespace of the thread that opened it.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::RawFd;

use ipnet::IpNet;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    BridgeStpState, InfoBridge, InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoPortKind, InfoVeth, InfoVxlan,
    LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::Socket;
use netlink_sys::protocols::NETLINK_ROUTE;

/// The route protocol kedge marks its routes with (`ip route` shows
/// `proto 107`), so cleanup removes exactly kedge's routes.
pub const ROUTE_PROTOCOL: u8 = 107;

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("netlink socket: {0}")]
    Socket(#[source] io::Error),
    #[error("netlink {op}: {source}")]
    Kernel {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("netlink {op}: unreadable answer: {detail}")]
    Decode { op: &'static str, detail: netlink_packet_core::DecodeError },
}

impl NetlinkError {
    /// The errno the kernel answered, if it did.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Kernel { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    /// The kernel does not know the kind of link asked for (its module is
    /// missing: it answers "Unknown device type").
    pub fn kernel_lacks_kind(&self) -> bool {
        matches!(self.errno(), Some(libc::EOPNOTSUPP | libc::EAFNOSUPPORT))
    }
}

type Result<T> = std::result::Result<T, NetlinkError>;

/// A link as a dump lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub up: bool,
    /// The bridge it is enslaved to, if any.
    pub master: Option<u32>,
    pub mtu: Option<u32>,
}

/// A route of the main table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: IpNet,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    pub protocol: u8,
}

pub struct Netlink {
    socket: Socket,
    seq: u32,
}

impl Netlink {
    /// A socket on the calling thread's network namespace.
    pub fn open() -> Result<Netlink> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(NetlinkError::Socket)?;
        socket.bind_auto().map_err(NetlinkError::Socket)?;
        socket.set_ext_ack(true).ok();
        Ok(Netlink { socket, seq: 0 })
    }

    /// Sends one request and collects every answer up to the ACK (or the
    /// end of a dump).
    fn request(&mut self, op: &'static str, msg: RouteNetlinkMessage, flags: u16) -> Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        header.sequence_number = self.seq;
        let mut req = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        req.finalize();
        let mut buf = vec![0u8; req.buffer_len()];
        req.serialize(&mut buf);
        self.socket.send(&buf, 0).map_err(|source| NetlinkError::Kernel { op, source })?;
        let mut out = Vec::new();
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        loop {
            let (bytes, _) = self.socket.recv_from_full().map_err(|source| NetlinkError::Kernel { op, source })?;
            let mut offset = 0;
            while offset < bytes.len() {
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&bytes[offset..])
                    .map_err(|detail| NetlinkError::Decode { op, detail })?;
                let len = msg.header.length as usize;
                if msg.header.sequence_number == self.seq {
                    match msg.payload {
                        NetlinkPayload::Error(e) => match e.code {
                            Some(code) => {
                                return Err(NetlinkError::Kernel {
                                    op,
                                    source: io::Error::from_raw_os_error(-code.get()),
                                });
                            }
                            None if !dump => return Ok(out),
                            None => {}
                        },
                        NetlinkPayload::Done(_) => return Ok(out),
                        NetlinkPayload::InnerMessage(m) => out.push(m),
                        _ => {}
                    }
                }
                if len == 0 {
                    break;
                }
                offset += len;
            }
        }
    }

    /// `request`, where "already exists" counts as done.
    fn create(&mut self, op: &'static str, msg: RouteNetlinkMessage) -> Result<()> {
        match self.request(op, msg, NLM_F_CREATE | NLM_F_EXCL) {
            Err(e) if e.errno() == Some(libc::EEXIST) => Ok(()),
            other => other.map(drop),
        }
    }

    // ---- links -------------------------------------------------------------

    pub fn links(&mut self) -> Result<Vec<Link>> {
        let answers = self.request("list links", RouteNetlinkMessage::GetLink(LinkMessage::default()), NLM_F_DUMP)?;
        Ok(answers
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(link_of(&l)),
                _ => None,
            })
            .collect())
    }

    pub fn link(&mut self, name: &str) -> Result<Option<Link>> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.request("get link", RouteNetlinkMessage::GetLink(msg), 0) {
            Ok(answers) => Ok(answers.iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(link_of(l)),
                _ => None,
            })),
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates bridge `name` (if missing) and returns its index.
    pub fn ensure_bridge(&mut self, name: &str) -> Result<u32> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Bridge),
            // No STP and no forwarding delay: ports forward as soon as they are up.
            LinkInfo::Data(InfoData::Bridge(vec![
                InfoBridge::StpState(BridgeStpState::Disabled),
                InfoBridge::ForwardDelay(0),
            ])),
        ]));
        self.create("create bridge", RouteNetlinkMessage::NewLink(msg))?;
        self.index(name, "create bridge")
    }

    fn index(&mut self, name: &str, op: &'static str) -> Result<u32> {
        self.link(name)?
            .map(|l| l.index)
            .ok_or_else(|| NetlinkError::Kernel { op, source: io::Error::from_raw_os_error(libc::ENODEV) })
    }

    /// A veth pair: `host` here, `peer` created straight in the network
    /// namespace `netns_fd`.
    pub fn add_veth(&mut self, host: &str, peer: &str, netns_fd: RawFd) -> Result<u32> {
        let mut peer_msg = LinkMessage::default();
        peer_msg.attributes.push(LinkAttribute::IfName(peer.to_string()));
        peer_msg.attributes.push(LinkAttribute::NetNsFd(netns_fd));
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(host.to_string()));
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_msg))),
        ]));
        self.request("create veth", RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL)?;
        self.index(host, "create veth")
    }

    /// A VXLAN device (learning off: kedge writes the FDB and neighbours).
    pub fn ensure_vxlan(&mut self, name: &str, vni: u32, local: Ipv4Addr, port: u16, mac: [u8; 6]) -> Result<u32> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        msg.attributes.push(LinkAttribute::Address(mac.to_vec()));
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Vxlan),
            LinkInfo::Data(InfoData::Vxlan(vec![
                InfoVxlan::Id(vni),
                InfoVxlan::Local(local),
                InfoVxlan::Port(port),
                InfoVxlan::Learning(false),
            ])),
        ]));
        self.create("create vxlan", RouteNetlinkMessage::NewLink(msg))?;
        self.index(name, "create vxlan")
    }

    /// Sets the link up, and enslaves it to `master` when given.
    pub fn set_up(&mut self, index: u32, master: Option<u32>) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        if let Some(m) = master {
            msg.attributes.push(LinkAttribute::Controller(m));
        }
        self.request("set link up", RouteNetlinkMessage::SetLink(msg), 0).map(drop)
    }

    /// Hairpin mode on a bridge port: frames may leave by the port they came
    /// in on (a pod reaching itself through a Service when br_netfilter
    /// hands bridged traffic to the DNAT rules).
    pub fn set_hairpin(&mut self, index: u32) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::PortKind(InfoPortKind::Bridge),
            LinkInfo::PortData(InfoPortData::BridgePort(vec![InfoBridgePort::HairpinMode(true)])),
        ]));
        self.request("set hairpin", RouteNetlinkMessage::NewLink(msg), 0).map(drop)
    }

    pub fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::Mtu(mtu));
        self.request("set mtu", RouteNetlinkMessage::SetLink(msg), 0).map(drop)
    }

    /// Deletes a link; a missing one counts as deleted.
    pub fn delete_link(&mut self, index: u32) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        match self.request("delete link", RouteNetlinkMessage::DelLink(msg), 0) {
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(()),
            other => other.map(drop),
        }
    }

    // ---- addresses ---------------------------------------------------------

    /// Adds `ip/prefix` to the link (already there: done).
    pub fn add_address(&mut self, index: u32, ip: IpAddr, prefix: u8) -> Result<()> {
        let mut msg = AddressMessage::default();
        msg.header.family = family(ip);
        msg.header.prefix_len = prefix;
        msg.header.index = index;
        msg.attributes.push(AddressAttribute::Local(ip));
        msg.attributes.push(AddressAttribute::Address(ip));
        self.create("add address", RouteNetlinkMessage::NewAddress(msg))
    }

    /// Every address of the namespace, as `(link index, address, prefix)`.
    pub fn addresses(&mut self) -> Result<Vec<(u32, IpAddr, u8)>> {
        let answers =
            self.request("list addresses", RouteNetlinkMessage::GetAddress(AddressMessage::default()), NLM_F_DUMP)?;
        Ok(answers
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) => {
                    let ip = a.attributes.iter().find_map(|at| match at {
                        AddressAttribute::Address(ip) => Some(*ip),
                        _ => None,
                    })?;
                    Some((a.header.index, ip, a.header.prefix_len))
                }
                _ => None,
            })
            .collect())
    }

    // ---- routes ------------------------------------------------------------

    /// Adds or replaces a main-table route marked as kedge's.
    pub fn replace_route(&mut self, dst: IpNet, gateway: Option<IpAddr>, oif: Option<u32>, onlink: bool) -> Result<()> {
        let mut msg = route_message(dst);
        msg.header.protocol = RouteProtocol::Other(ROUTE_PROTOCOL);
        msg.header.scope = if gateway.is_some() { RouteScope::Universe } else { RouteScope::Link };
        msg.header.kind = RouteType::Unicast;
        if onlink {
            msg.header.flags = RouteFlags::Onlink;
        }
        if let Some(gw) = gateway {
            msg.attributes.push(RouteAttribute::Gateway(RouteAddress::from(gw)));
        }
        if let Some(oif) = oif {
            msg.attributes.push(RouteAttribute::Oif(oif));
        }
        self.request("replace route", RouteNetlinkMessage::NewRoute(msg), NLM_F_CREATE | NLM_F_REPLACE).map(drop)
    }

    /// A default route via `gateway` (in a pod's namespace).
    pub fn add_default_route(&mut self, gateway: IpAddr, oif: u32) -> Result<()> {
        let dst = IpNet::new(if gateway.is_ipv4() { Ipv4Addr::UNSPECIFIED.into() } else { IpAddr::from([0u16; 8]) }, 0)
            .map_err(|_| NetlinkError::Kernel {
                op: "add route",
                source: io::Error::from_raw_os_error(libc::EINVAL),
            })?;
        let mut msg = route_message(dst);
        msg.header.protocol = RouteProtocol::Boot;
        msg.header.scope = RouteScope::Universe;
        msg.header.kind = RouteType::Unicast;
        msg.attributes.push(RouteAttribute::Gateway(RouteAddress::from(gateway)));
        msg.attributes.push(RouteAttribute::Oif(oif));
        self.create("add default route", RouteNetlinkMessage::NewRoute(msg))
    }

    pub fn delete_route(&mut self, route: &Route) -> Result<()> {
        let mut msg = route_message(route.dst);
        msg.header.protocol = RouteProtocol::Other(route.protocol);
        msg.header.scope = RouteScope::NoWhere;
        if let Some(oif) = route.oif {
            msg.attributes.push(RouteAttribute::Oif(oif));
        }
        match self.request("delete route", RouteNetlinkMessage::DelRoute(msg), 0) {
            Err(e) if e.errno() == Some(libc::ESRCH) => Ok(()),
            other => other.map(drop),
        }
    }

    /// The IPv4 routes of the main table.
    pub fn routes(&mut self) -> Result<Vec<Route>> {
        let mut q = RouteMessage::default();
        q.header.address_family = AddressFamily::Inet;
        let answers = self.request("list routes", RouteNetlinkMessage::GetRoute(q), NLM_F_DUMP)?;
        Ok(answers
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) if r.header.table == RouteHeader::RT_TABLE_MAIN => route_of(&r),
                _ => None,
            })
            .collect())
    }

    // ---- neighbours (VXLAN) -------------------------------------------------

    /// A permanent ARP entry `ip → mac` on link `index`.
    pub fn replace_neighbour(&mut self, index: u32, ip: Ipv4Addr, mac: [u8; 6]) -> Result<()> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.ifindex = index;
        msg.header.state = NeighbourState::Permanent;
        msg.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
        msg.attributes.push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        self.request("replace neighbour", RouteNetlinkMessage::NewNeighbour(msg), NLM_F_CREATE | NLM_F_REPLACE)
            .map(drop)
    }

    /// A forwarding entry on VXLAN link `index`: frames for `mac` go to `dst`.
    pub fn replace_fdb(&mut self, index: u32, mac: [u8; 6], dst: Ipv4Addr) -> Result<()> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Bridge;
        msg.header.ifindex = index;
        msg.header.state = NeighbourState::Permanent;
        msg.header.flags = NeighbourFlags::Own;
        msg.attributes.push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        msg.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::Inet(dst)));
        self.request("replace fdb entry", RouteNetlinkMessage::NewNeighbour(msg), NLM_F_CREATE | NLM_F_REPLACE)
            .map(drop)
    }
}

fn family(ip: IpAddr) -> AddressFamily {
    if ip.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 }
}

fn route_message(dst: IpNet) -> RouteMessage {
    let mut msg = RouteMessage::default();
    msg.header.address_family = family(dst.addr());
    msg.header.destination_prefix_length = dst.prefix_len();
    msg.header.table = RouteHeader::RT_TABLE_MAIN;
    msg.attributes.push(RouteAttribute::Destination(RouteAddress::from(dst.network())));
    msg
}

fn link_of(l: &LinkMessage) -> Link {
    let mut link = Link {
        index: l.header.index,
        name: String::new(),
        up: l.header.flags.contains(LinkFlags::Up),
        master: None,
        mtu: None,
    };
    for a in &l.attributes {
        match a {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Controller(m) => link.master = Some(*m),
            LinkAttribute::Mtu(m) => link.mtu = Some(*m),
            _ => {}
        }
    }
    link
}

fn route_of(r: &RouteMessage) -> Option<Route> {
    let mut dst = None;
    let mut gateway = None;
    let mut oif = None;
    for a in &r.attributes {
        match a {
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => dst = Some(IpAddr::V4(*ip)),
            RouteAttribute::Gateway(RouteAddress::Inet(ip)) => gateway = Some(IpAddr::V4(*ip)),
            RouteAttribute::Oif(i) => oif = Some(*i),
            _ => {}
        }
    }
    let dst = IpNet::new(dst.unwrap_or(Ipv4Addr::UNSPECIFIED.into()), r.header.destination_prefix_length).ok()?;
    let protocol = u8::from(r.header.protocol);
    Some(Route { dst, gateway, oif, protocol })
}
