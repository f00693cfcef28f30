//! `net::nft` against the real kernel: each test builds a small network of
//! its own in fresh network namespaces — a "node" with a bridge
//! (`kedgetest0`), pods on veths, a "LAN" host on another veth — loads the
//! rendered table into the node with `nft::apply`, and sends real traffic.
//! Needs root (CI runs as root; locally these skip loudly, under CI=true a
//! skip fails).
//!
//! Servers and clients are sockets of this test process, opened in a
//! namespace by a thread that entered it (a socket stays in the namespace
//! it was made in), so a test can see exactly what a connection got: the
//! answering pod, the peer address it saw, or the connect error's kind.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kedge_agent::net::conntrack;
use kedge_agent::net::nft::{self, Ruleset};
use kedge_agent::net::{ClusterNetwork, HostPort, NodeNetwork};
use kedge_common::network::{
    EndpointNet, EndpointPortNet, Protocol, ServiceKind, ServiceNet, ServicePortNet, SubsetNet,
};

/// A connect that is not refused in this long has hung: far above what a
/// reject takes, so a "refused" cannot pass by timing out.
const CONNECT: Duration = Duration::from_secs(10);

fn ready() -> bool {
    !kedge_tests::under_qemu_user("network namespaces and nftables (run on the host kernel, not arm code)")
        && kedge_tests::require(kedge_tests::is_root(), "root (network namespaces and nftables)")
        && kedge_tests::require(nft::available().is_ok(), "nft with the kernel's nf_tables (apt-get install nftables)")
}

fn run(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().expect("spawn");
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Runs `f` on a thread that entered network namespace `ns`.
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("netns file");
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("thread in namespace")
}

const GATEWAY: &str = "10.244.1.1";
const NODE_IP: &str = "192.168.77.1";
const LAN_IP: &str = "192.168.77.2";
/// An address in another node's pod CIDR, routed over the LAN.
const REMOTE_POD: &str = "10.244.2.5";

/// The namespaces of one test; deleted when it ends.
struct Lab {
    prefix: String,
    names: Vec<String>,
    /// The node's applier: after the first apply it sends changes only.
    applier: Option<nft::Applier>,
}

impl Lab {
    /// A node with bridge `kedgetest0` (10.244.1.1/24), forwarding on, and
    /// a LAN host at 192.168.77.2, the node's default route (as a real node
    /// has one, so ClusterIPs route), that also plays another node's pod
    /// 10.244.2.5.
    fn new() -> Lab {
        static N: AtomicUsize = AtomicUsize::new(0);
        let prefix = format!("kn{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        let mut lab = Lab { prefix, names: vec![], applier: Some(nft::Applier::new()) };
        let node = lab.ns("node");
        let lan = lab.ns("lan");
        run(&["ip", "-n", &node, "link", "add", "kedgetest0", "type", "bridge"]);
        run(&["ip", "-n", &node, "addr", "add", &format!("{GATEWAY}/24"), "dev", "kedgetest0"]);
        run(&["ip", "-n", &node, "link", "set", "kedgetest0", "up"]);
        run(&["ip", "netns", "exec", &node, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"]);
        run(&["ip", "-n", &node, "link", "add", "lan0", "type", "veth", "peer", "name", "eth0", "netns", &lan]);
        run(&["ip", "-n", &node, "addr", "add", &format!("{NODE_IP}/24"), "dev", "lan0"]);
        run(&["ip", "-n", &node, "link", "set", "lan0", "up"]);
        run(&["ip", "-n", &node, "route", "add", "default", "via", LAN_IP]);
        run(&["ip", "-n", &lan, "addr", "add", &format!("{LAN_IP}/24"), "dev", "eth0"]);
        run(&["ip", "-n", &lan, "addr", "add", &format!("{REMOTE_POD}/32"), "dev", "lo"]);
        run(&["ip", "-n", &lan, "link", "set", "eth0", "up"]);
        run(&["ip", "-n", &lan, "route", "add", "10.244.1.0/24", "via", NODE_IP]);
        lab
    }

    fn ns(&mut self, role: &str) -> String {
        let name = format!("{}-{role}", self.prefix);
        run(&["ip", "netns", "add", &name]);
        run(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        self.names.push(name.clone());
        name
    }

    fn node(&self) -> String {
        format!("{}-node", self.prefix)
    }

    fn lan(&self) -> String {
        format!("{}-lan", self.prefix)
    }

    /// A pod namespace with `ip` on the bridge, its gateway the node. Its
    /// bridge port is in hairpin mode, as the agent sets it: where the
    /// bridge calls netfilter (br_netfilter), a pod's connection DNATed back
    /// to itself is bridged out of the port it came in on.
    fn pod(&mut self, role: &str, ip: &str) -> String {
        let ns = self.ns(role);
        let node = self.node();
        let host_side = format!("v{role}");
        run(&["ip", "-n", &node, "link", "add", &host_side, "type", "veth", "peer", "name", "eth0", "netns", &ns]);
        run(&["ip", "-n", &node, "link", "set", &host_side, "master", "kedgetest0", "up"]);
        run(&["ip", "-n", &node, "link", "set", &host_side, "type", "bridge_slave", "hairpin", "on"]);
        run(&["ip", "-n", &ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        run(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
        run(&["ip", "-n", &ns, "route", "add", "default", "via", GATEWAY]);
        ns
    }

    /// Whether the node's bridge hands bridged IPv4 to netfilter
    /// (`net.bridge.bridge-nf-call-iptables`; on by default where
    /// br_netfilter is loaded, as Docker and k3s load it). Returns false
    /// when this kernel has no br_netfilter to turn on.
    fn bridge_netfilter(&self, on: bool) -> bool {
        let value = if on { "1" } else { "0" };
        let set = format!("echo {value} > /proc/sys/net/bridge/bridge-nf-call-iptables");
        let status = Command::new("ip").args(["netns", "exec", &self.node(), "sh", "-c", &set]).status();
        status.is_ok_and(|s| s.success()) || !on
    }

    fn apply(&mut self, ruleset: Ruleset) {
        let mut applier = self.applier.take().expect("applier");
        let (applier, result) = in_ns(&self.node(), move || {
            let result = applier.apply(ruleset);
            (applier, result)
        });
        self.applier = Some(applier);
        result.expect("Applier::apply in the node");
    }

    fn nft(&self, args: &[&str]) -> String {
        let out = Command::new("ip").args(["netns", "exec", &self.node(), "nft"]).args(args).output().expect("spawn");
        assert!(out.status.success(), "nft {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

fn node_network() -> NodeNetwork {
    NodeNetwork {
        node: "node".into(),
        node_ips: vec![NODE_IP.parse().expect("ip")],
        pod_cidr: "10.244.1.0/24".parse().expect("cidr"),
        cluster_cidr: "10.244.0.0/16".parse().expect("cidr"),
        bridge: "kedgetest0".into(),
        gateway: GATEWAY.parse().expect("ip"),
        overlay_headroom: false,
    }
}

fn service(name: &str, cluster_ip: &str, protocol: Protocol, port: u16, target: u16, ready: &[&str]) -> ServiceNet {
    ServiceNet {
        namespace: "default".into(),
        name: name.into(),
        cluster_ips: vec![cluster_ip.parse().expect("ip")],
        ports: vec![ServicePortNet { name: String::new(), protocol, port, node_port: None }],
        subsets: vec![SubsetNet {
            ready: ready.iter().map(|ip| EndpointNet { ip: ip.parse().expect("ip"), hostname: None }).collect(),
            not_ready: vec![],
            ports: vec![EndpointPortNet { name: String::new(), protocol, port: target }],
        }],
        ..ServiceNet::default()
    }
}

fn render(services: Vec<ServiceNet>, host_ports: &[HostPort]) -> Ruleset {
    let table = ClusterNetwork { generation: 1, services, ..ClusterNetwork::default() };
    nft::render(&table, &node_network(), host_ports)
}

/// A TCP server in a namespace: answers every connection with
/// "NAME PEER-IP" and closes it.
struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn tcp(ns: &str, addr: &str, name: &str) -> Server {
        let addr: SocketAddr = addr.parse().expect("addr");
        let listener = in_ns(ns, move || TcpListener::bind(addr)).expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let (stop, name) = (Arc::new(AtomicBool::new(false)), name.to_string());
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, peer)) => {
                        let _ = conn.set_nonblocking(false);
                        let _ = conn.write_all(format!("{name} {}\n", peer.ip()).as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Server { stop, thread: Some(thread) }
    }

    fn udp(ns: &str, addr: &str, name: &str) -> Server {
        let addr: SocketAddr = addr.parse().expect("addr");
        let socket = in_ns(ns, move || UdpSocket::bind(addr)).expect("bind");
        socket.set_read_timeout(Some(Duration::from_millis(50))).expect("timeout");
        let (stop, name) = (Arc::new(AtomicBool::new(false)), name.to_string());
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !flag.load(Ordering::Relaxed) {
                if let Ok((_, peer)) = socket.recv_from(&mut buf) {
                    let _ = socket.send_to(format!("{name} {}\n", peer.ip()).as_bytes(), peer);
                }
            }
        });
        Server { stop, thread: Some(thread) }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Connects from namespace `ns` to `addr`: (server name, peer it saw).
fn fetch(ns: &str, addr: &str) -> std::io::Result<(String, IpAddr)> {
    let addr: SocketAddr = addr.parse().expect("addr");
    let stream = in_ns(ns, move || TcpStream::connect_timeout(&addr, CONNECT))?;
    stream.set_read_timeout(Some(CONNECT))?;
    let mut text = String::new();
    (&stream).read_to_string(&mut text)?;
    Ok(answer(&text))
}

fn answer(text: &str) -> (String, IpAddr) {
    let mut words = text.split_whitespace();
    let name = words.next().unwrap_or_default().to_string();
    let peer = words.next().and_then(|w| w.parse().ok()).unwrap_or(IpAddr::from([0, 0, 0, 0]));
    (name, peer)
}

fn fetch_udp(ns: &str, addr: &str) -> std::io::Result<(String, IpAddr)> {
    let addr: SocketAddr = addr.parse().expect("addr");
    let socket = in_ns(ns, || UdpSocket::bind("0.0.0.0:0"))?;
    socket.set_read_timeout(Some(Duration::from_millis(500)))?;
    socket.connect(addr)?;
    // UDP may lose a datagram: ask a few times within the deadline.
    let deadline = Instant::now() + CONNECT;
    let mut buf = [0u8; 512];
    loop {
        socket.send(b"who")?;
        match socket.recv(&mut buf) {
            Ok(n) => return Ok(answer(&String::from_utf8_lossy(&buf[..n]))),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => {}
        }
    }
}

fn name(r: std::io::Result<(String, IpAddr)>) -> String {
    r.expect("connection through the Service").0
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

#[test]
fn cluster_ip_reaches_ready_endpoints_and_follows_a_reapply() {
    if !ready() {
        return;
    }
    let mut lab = Lab::new();
    let a = lab.pod("a", "10.244.1.10");
    let b = lab.pod("b", "10.244.1.11");
    let c = lab.pod("c", "10.244.1.12");
    let _sa = Server::tcp(&a, "0.0.0.0:8080", "pod-a");
    let _sc = Server::tcp(&c, "0.0.0.0:8080", "pod-c");
    let _ua = Server::udp(&a, "0.0.0.0:5353", "pod-a");

    let dns = service("dns", "10.96.0.53", Protocol::UDP, 53, 5353, &["10.244.1.10"]);
    lab.apply(render(vec![service("web", "10.96.0.10", Protocol::TCP, 80, 8080, &["10.244.1.10"]), dns.clone()], &[]));
    assert_eq!(name(fetch(&b, "10.96.0.10:80")), "pod-a");
    assert_eq!(name(fetch_udp(&b, "10.96.0.53:53")), "pod-a", "UDP through the ClusterIP");
    // The node itself reaches it too (nat output).
    assert_eq!(name(fetch(&lab.node(), "10.96.0.10:80")), "pod-a");

    // The endpoint moves: new connections follow the new rules.
    lab.apply(render(vec![service("web", "10.96.0.10", Protocol::TCP, 80, 8080, &["10.244.1.12"]), dns.clone()], &[]));
    assert_eq!(name(fetch(&b, "10.96.0.10:80")), "pod-c");

    // Both ready: the random choice reaches both (each try misses one with
    // probability 1/2: 64 tries all on one side would be a broken choice).
    lab.apply(render(
        vec![service("web", "10.96.0.10", Protocol::TCP, 80, 8080, &["10.244.1.10", "10.244.1.12"]), dns],
        &[],
    ));
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..64 {
        seen.insert(name(fetch(&b, "10.96.0.10:80")));
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["pod-a", "pod-c"]);
}

#[test]
fn a_service_without_ready_endpoints_refuses_at_once() {
    if !ready() {
        return;
    }
    let mut lab = Lab::new();
    let a = lab.pod("a", "10.244.1.10");
    let b = lab.pod("b", "10.244.1.11");
    let _sa = Server::tcp(&a, "0.0.0.0:8080", "pod-a");
    let mut not_ready = service("web", "10.96.0.10", Protocol::TCP, 80, 8080, &[]);
    not_ready.subsets[0].not_ready = vec![EndpointNet { ip: ip("10.244.1.10"), hostname: None }];
    not_ready.kind = ServiceKind::NodePort;
    not_ready.ports[0].node_port = Some(30080);
    let empty = service("empty", "10.96.0.11", Protocol::TCP, 80, 8080, &[]);
    lab.apply(render(vec![not_ready, empty], &[]));

    // From a pod (forward), from the node itself (output), and a NodePort
    // from the LAN (input): refused, not left to time out.
    for (from, to) in [
        (&b, "10.96.0.10:80"),
        (&b, "10.96.0.11:80"),
        (&lab.node(), "10.96.0.11:80"),
        (&lab.lan(), "192.168.77.1:30080"),
    ] {
        let err = fetch(from, to).expect_err("no ready endpoint: the connection must fail");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{from} -> {to}: {err}");
    }
    // UDP is refused with ICMP port unreachable.
    let udp = service("dns", "10.96.0.53", Protocol::UDP, 53, 5353, &[]);
    lab.apply(render(vec![udp], &[]));
    let socket = in_ns(&b, || UdpSocket::bind("0.0.0.0:0")).expect("bind");
    socket.set_read_timeout(Some(CONNECT)).expect("timeout");
    socket.connect("10.96.0.53:53").expect("connect");
    socket.send(b"who").expect("send");
    let err = socket.recv(&mut [0u8; 64]).expect_err("no answer without endpoints");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
}

#[test]
fn a_pod_reaches_itself_through_its_service() {
    if !ready() {
        return;
    }
    // Both ways a node's bridge may be set up: routed by the node (plain
    // bridge) and bridged after DNAT (br_netfilter loaded).
    for br_netfilter in [false, true] {
        let mut lab = Lab::new();
        if !lab.bridge_netfilter(br_netfilter) {
            eprintln!("this kernel has no br_netfilter: testing the routed bridge only");
            continue;
        }
        let a = lab.pod("a", "10.244.1.10");
        let b = lab.pod("b", "10.244.1.11");
        let _sa = Server::tcp(&a, "0.0.0.0:8080", "pod-a");
        lab.apply(render(vec![service("web", "10.96.0.10", Protocol::TCP, 80, 8080, &["10.244.1.10"])], &[]));
        // Hairpin: masqueraded, or the pod would get a packet from its own
        // address; it sees the connection from the bridge's address.
        let hairpin = fetch(&a, "10.96.0.10:80");
        assert_eq!(hairpin.expect("hairpin"), ("pod-a".into(), ip(GATEWAY)), "br_netfilter: {br_netfilter}");
        // Another pod on the same bridge: masqueraded too (routed, the reply
        // must come back through the node to be un-DNATed).
        let same_node = fetch(&b, "10.96.0.10:80");
        assert_eq!(same_node.expect("same node"), ("pod-a".into(), ip(GATEWAY)), "br_netfilter: {br_netfilter}");
    }
}

#[test]
fn node_ports_and_host_ports_answer_from_the_lan() {
    if !ready() {
        return;
    }
    let mut lab = Lab::new();
    let a = lab.pod("a", "10.244.1.10");
    let c = lab.pod("c", "10.244.1.12");
    let _sa = Server::tcp(&a, "0.0.0.0:8080", "pod-a");
    let _sc = Server::tcp(&c, "0.0.0.0:80", "pod-c");
    let mut web = service("web", "10.96.0.10", Protocol::TCP, 80, 8080, &["10.244.1.10"]);
    web.kind = ServiceKind::NodePort;
    web.ports[0].node_port = Some(30080);
    let host_port = HostPort {
        protocol: Protocol::TCP,
        host_ip: None,
        host_port: 8088,
        pod_ip: ip("10.244.1.12"),
        container_port: 80,
    };
    lab.apply(render(vec![web], &[host_port]));

    let lan = lab.lan();
    // NodePort traffic is masqueraded: the pod sees the node.
    assert_eq!(fetch(&lan, "192.168.77.1:30080").expect("NodePort"), ("pod-a".into(), ip(GATEWAY)));
    // A hostPort keeps the client's address.
    assert_eq!(fetch(&lan, "192.168.77.1:8088").expect("hostPort"), ("pod-c".into(), ip(LAN_IP)));
    // Other ports of the node are not redirected.
    let err = fetch(&lan, "192.168.77.1:8080").expect_err("nothing listens on the node itself");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
}

#[test]
fn pods_are_masqueraded_leaving_the_cluster_but_not_to_other_pod_cidrs() {
    if !ready() {
        return;
    }
    let mut lab = Lab::new();
    let b = lab.pod("b", "10.244.1.11");
    let lan = lab.lan();
    let _outside = Server::tcp(&lan, &format!("{LAN_IP}:9000"), "lan");
    let _remote_pod = Server::tcp(&lan, &format!("{REMOTE_POD}:9000"), "remote-pod");
    lab.apply(render(vec![], &[]));
    assert_eq!(fetch(&b, "192.168.77.2:9000").expect("egress"), ("lan".into(), ip(NODE_IP)));
    assert_eq!(fetch(&b, "10.244.2.5:9000").expect("pod to pod"), ("remote-pod".into(), ip("10.244.1.11")));
}

#[test]
fn client_ip_affinity_holds_across_connections_and_applies() {
    if !ready() {
        return;
    }
    let mut lab = Lab::new();
    let a = lab.pod("a", "10.244.1.10");
    let b = lab.pod("b", "10.244.1.11");
    let c = lab.pod("c", "10.244.1.12");
    let _sa = Server::tcp(&a, "0.0.0.0:8080", "pod-a");
    let _sc = Server::tcp(&c, "0.0.0.0:8080", "pod-c");
    let mut web = service("web", "10.96.0.10", Protocol::TCP, 80, 8080, &["10.244.1.10", "10.244.1.12"]);
    web.affinity_seconds = Some(600);
    lab.apply(render(vec![web.clone()], &[]));
    let first = name(fetch(&b, "10.96.0.10:80"));
    for _ in 0..20 {
        assert_eq!(name(fetch(&b, "10.96.0.10:80")), first, "ClientIP affinity sends a client back to its endpoint");
    }
    // Another Service changes (sent as changes), and then the whole table
    // is loaded again (an agent restart): the affinity entries stay.
    let other = service("other", "10.96.0.20", Protocol::TCP, 80, 8080, &["10.244.1.12"]);
    // Listed as `elements = { 10.244.1.11 expires 9m59s… }`.
    let remembered = |lab: &Lab| lab.nft(&["list", "table", "inet", "kedge"]).contains("{ 10.244.1.11 expires ");
    assert!(remembered(&lab), "the client is in its endpoint's affinity set");
    lab.apply(render(vec![web.clone(), other.clone()], &[]));
    assert!(remembered(&lab), "still there after a change");
    for _ in 0..20 {
        assert_eq!(name(fetch(&b, "10.96.0.10:80")), first, "affinity entries survive a change");
    }
    lab.applier = Some(nft::Applier::new());
    lab.apply(render(vec![web, other], &[]));
    assert!(remembered(&lab), "still there after a whole-table load");
    for _ in 0..20 {
        assert_eq!(name(fetch(&b, "10.96.0.10:80")), first, "affinity entries survive a whole-table load");
    }
}

#[test]
fn only_the_kedge_table_is_touched_and_removed() {
    if !ready() {
        return;
    }
    let mut lab = Lab::new();
    let a = lab.pod("a", "10.244.1.10");
    let b = lab.pod("b", "10.244.1.11");
    let _sa = Server::tcp(&a, "0.0.0.0:8080", "pod-a");
    let foreign = "table inet filter {\n\tchain input {\n\t\ttype filter hook input priority filter; policy accept;\n\t\ttcp dport 9999 counter packets 0 bytes 0 accept\n\t}\n}\n";
    let node = lab.node();
    let script = foreign.to_string();
    in_ns(&node, move || {
        let mut child = Command::new("nft").args(["-f", "-"]).stdin(std::process::Stdio::piped()).spawn().expect("nft");
        child.stdin.take().expect("stdin").write_all(script.as_bytes()).expect("write");
        assert!(child.wait().expect("nft").success());
    });
    let before = lab.nft(&["list", "table", "inet", "filter"]);

    let web = || service("web", "10.96.0.10", Protocol::TCP, 80, 8080, &["10.244.1.10"]);
    let mut old = service("old", "10.96.0.11", Protocol::TCP, 80, 8080, &["10.244.1.10"]);
    old.affinity_seconds = Some(60);
    lab.apply(render(vec![web(), old], &[]));
    assert!(lab.nft(&["list", "table", "inet", "kedge"]).contains("aff-default/old/tcp/80"));
    assert_eq!(lab.nft(&["list", "table", "inet", "filter"]), before, "a foreign table is untouched by an apply");

    // A Service (with its affinity) goes: its chains and sets are deleted.
    lab.apply(render(vec![web()], &[]));
    let listing = lab.nft(&["list", "table", "inet", "kedge"]);
    assert!(!listing.contains("default/old"), "the old Service's chains and sets are gone: {listing}");
    assert!(listing.contains("svc-default/web/tcp/80"), "{listing}");
    assert_eq!(lab.nft(&["list", "table", "inet", "filter"]), before, "a foreign table is untouched by an apply");

    in_ns(&node, nft::remove).expect("remove");
    assert_eq!(lab.nft(&["list", "tables"]), "table inet filter\n", "only kedge's table is gone");
    assert_eq!(lab.nft(&["list", "table", "inet", "filter"]), before, "a foreign table is untouched by remove");
    in_ns(&node, nft::remove).expect("removing twice is fine");

    // The table went behind the applier's back: the next change cannot be
    // sent as changes, the whole table is loaded again.
    lab.apply(render(vec![web(), service("new", "10.96.0.12", Protocol::TCP, 80, 8080, &["10.244.1.10"])], &[]));
    assert_eq!(name(fetch(&b, "10.96.0.10:80")), "pod-a");
    assert_eq!(name(fetch(&b, "10.96.0.12:80")), "pod-a");
}

/// A UDP flow keeps its conntrack entry, so it would keep reaching an
/// endpoint the rules dropped; deleting the entries of the flows that went
/// (as the manager does after each apply) moves it to the new endpoint.
#[test]
fn udp_flows_to_a_removed_endpoint_move_once_their_entries_are_cleared() {
    if !ready()
        || !kedge_tests::require(
            Command::new("conntrack").arg("--version").output().is_ok_and(|o| o.status.success()),
            "conntrack (apt-get install conntrack)",
        )
    {
        return;
    }
    let mut lab = Lab::new();
    let a = lab.pod("a", "10.244.1.10");
    let b = lab.pod("b", "10.244.1.11");
    let client = lab.pod("client", "10.244.1.12");
    let _a = Server::udp(&a, "10.244.1.10:5353", "pod-a");
    let _b = Server::udp(&b, "10.244.1.11:5353", "pod-b");
    let table = |ready: &str| ClusterNetwork {
        generation: 1,
        services: vec![service("dns", "10.96.0.53", Protocol::UDP, 53, 5353, &[ready])],
        ..ClusterNetwork::default()
    };
    let (before, after) = (table("10.244.1.10"), table("10.244.1.11"));
    lab.apply(nft::render(&before, &node_network(), &[]));

    // One socket: one flow, the same source port throughout.
    let socket = in_ns(&client, || UdpSocket::bind("0.0.0.0:0")).expect("bind");
    socket.set_read_timeout(Some(Duration::from_millis(500))).expect("timeout");
    socket.connect("10.96.0.53:53").expect("connect");
    let ask = || -> String {
        let mut buf = [0u8; 512];
        for _ in 0..10 {
            socket.send(b"who").expect("send");
            if let Ok(n) = socket.recv(&mut buf) {
                return answer(&String::from_utf8_lossy(&buf[..n])).0;
            }
        }
        panic!("no answer through the Service");
    };
    assert_eq!(ask(), "pod-a");
    lab.apply(nft::render(&after, &node_network(), &[]));
    assert_eq!(ask(), "pod-a", "the flow's conntrack entry still leads to the removed endpoint");

    let gone = conntrack::gone(&nft::udp_flows(&before), &nft::udp_flows(&after));
    assert_eq!(gone.len(), 1);
    in_ns(&lab.node(), move || conntrack::clear(&gone)).expect("conntrack -D");
    assert_eq!(ask(), "pod-b", "the same flow, now through the rules");
}
