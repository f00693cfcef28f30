//! Cluster DNS, served by the agent to its own pods on the bridge gateway
//! (design.md §6), UDP and TCP: names in the cluster domain are answered
//! from the cached network table (so they resolve with the controller
//! gone; see [`zone`]), everything else is forwarded to the node's
//! upstream resolvers ([`crate::net::resolv::upstreams_from_host`]).
//!
//! Built for an edge device: one task per socket answers cluster names
//! inline; forwarded questions run in tasks bounded in number and time
//! (SERVFAIL after the deadline, REFUSED when too many are in flight), TCP
//! connections are bounded in number and idle time, and malformed packets
//! are answered FORMERR when their header can be read and dropped when not.

mod forward;
pub mod zone;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Edns, Header, Message, MessageType, Metadata, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use kedge_common::network::ClusterNetwork;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio::time::timeout;

use self::forward::Upstreams;
use self::zone::{Answer, Lookup, Zone};
/// The node's upstream resolvers, for [`serve`].
pub use crate::net::resolv::upstreams_from_host;

/// The EDNS payload size this server advertises and asks upstreams for
/// (the DNS Flag Day 2020 value: no fragmentation on common paths).
pub const UPSTREAM_PAYLOAD: u16 = 1232;
/// Largest UDP answer sent to a pod, whatever it advertises: the bridge
/// carries it without trouble.
const MAX_UDP_ANSWER: usize = 4096;
/// The size of a UDP query read: larger datagrams are not DNS questions.
const UDP_QUERY_BUFFER: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("nothing to serve DNS on")]
    NoAddress,
    #[error("serving DNS on {addr} ({transport})")]
    Bind {
        addr: SocketAddr,
        transport: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Zone(#[from] zone::ZoneError),
}

/// How the server runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `--cluster-domain`.
    pub domain: String,
    /// Where names outside the cluster domain go (see
    /// [`crate::net::resolv::upstreams_from_host`]).
    pub upstreams: Vec<SocketAddr>,
    /// Longest wait for one upstream.
    pub upstream_attempt: Duration,
    /// Longest wait for an answer from upstream in all: then SERVFAIL.
    /// Below the 5 s a glibc or musl client waits before asking again.
    pub upstream_deadline: Duration,
    /// Forwarded questions in flight; past that, REFUSED at once.
    pub max_forwards: usize,
    /// TCP connections at a time; more are closed at once.
    pub max_tcp_connections: usize,
    /// A TCP connection with no question for this long is closed.
    pub tcp_idle: Duration,
}

impl Settings {
    pub fn new(domain: String, upstreams: Vec<SocketAddr>) -> Self {
        Settings {
            domain,
            upstreams,
            upstream_attempt: Duration::from_secs(2),
            upstream_deadline: Duration::from_secs(4),
            max_forwards: 128,
            max_tcp_connections: 32,
            tcp_idle: Duration::from_secs(10),
        }
    }
}

/// The running server: dropping it stops it (forwarded questions still in
/// flight end at their deadline).
pub struct DnsServer {
    addrs: Vec<SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
}

impl DnsServer {
    /// The addresses served (with the ports bound, for port 0).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Serves DNS on each of `addrs`, UDP and TCP (port 0: one free port for
/// both), answering the cluster domain `domain` from `table` as it changes
/// and forwarding the rest to `upstreams`. Returns once every socket is bound.
pub async fn serve(
    addrs: &[SocketAddr],
    domain: String,
    upstreams: Vec<SocketAddr>,
    table: watch::Receiver<Arc<ClusterNetwork>>,
) -> Result<DnsServer, DnsError> {
    serve_with(addrs, Settings::new(domain, upstreams), table).await
}

/// [`serve`] with every setting.
pub async fn serve_with(
    addrs: &[SocketAddr],
    settings: Settings,
    table: watch::Receiver<Arc<ClusterNetwork>>,
) -> Result<DnsServer, DnsError> {
    if addrs.is_empty() {
        return Err(DnsError::NoAddress);
    }
    let zone = Zone::new(&settings.domain)?;
    let mut sockets = Vec::new();
    let mut local = Vec::new();
    for addr in addrs {
        let (udp, tcp) = bind(*addr).await?;
        local.push(udp.local_addr().map_err(|source| DnsError::Bind { addr: *addr, transport: "udp", source })?);
        sockets.push((udp, tcp));
    }
    // Never forward to ourselves: a loop that would hold every forward until its deadline.
    let upstreams: Vec<SocketAddr> =
        settings.upstreams.iter().copied().filter(|u| !crate::net::resolv::is_own(*u, &local)).collect();
    let mut tasks = Vec::new();
    let (sorted, table) = sorted_table(table);
    tasks.push(sorted);
    let shared = Arc::new(Shared {
        zone,
        upstreams: Upstreams::new(upstreams.clone(), settings.upstream_attempt, settings.upstream_deadline),
        forwards: Arc::new(Semaphore::new(settings.max_forwards)),
        tcp_idle: settings.tcp_idle,
        table,
    });
    let connections = Arc::new(Semaphore::new(settings.max_tcp_connections));
    for (udp, tcp) in sockets {
        tasks.push(tokio::spawn(serve_udp(Arc::new(udp), shared.clone())));
        tasks.push(tokio::spawn(serve_tcp(tcp, shared.clone(), connections.clone())));
    }
    tracing::info!(addrs = ?local, domain = %shared.zone.origin().to_ascii(), upstreams = ?upstreams, "cluster DNS served");
    Ok(DnsServer { addrs: local, tasks })
}

/// A UDP socket and a TCP listener on one address; port 0 picks a port free for both.
async fn bind(addr: SocketAddr) -> Result<(UdpSocket, TcpListener), DnsError> {
    let err = |transport| move |source| DnsError::Bind { addr, transport, source };
    let mut tries = 0;
    loop {
        let udp = UdpSocket::bind(addr).await.map_err(err("udp"))?;
        let port = udp.local_addr().map_err(err("udp"))?.port();
        match TcpListener::bind(SocketAddr::new(addr.ip(), port)).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if addr.port() == 0 && e.kind() == io::ErrorKind::AddrInUse && tries < 8 => tries += 1,
            Err(e) => return Err(err("tcp")(e)),
        }
    }
}

/// The table as the answers read it (sorted, see [`zone::sorted`]), kept
/// up to date by a task; the last table stays when the sender goes.
fn sorted_table(
    mut input: watch::Receiver<Arc<ClusterNetwork>>,
) -> (JoinHandle<()>, watch::Receiver<Arc<ClusterNetwork>>) {
    let (tx, rx) = watch::channel(zone::sorted(input.borrow_and_update().clone()));
    let task = tokio::spawn(async move {
        while input.changed().await.is_ok() {
            let table = input.borrow_and_update().clone();
            tx.send_replace(zone::sorted(table));
        }
    });
    (task, rx)
}

struct Shared {
    zone: Zone,
    upstreams: Upstreams,
    forwards: Arc<Semaphore>,
    tcp_idle: Duration,
    table: watch::Receiver<Arc<ClusterNetwork>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Udp,
    Tcp,
}

/// What to do with one packet.
enum Step {
    Reply(Vec<u8>),
    Ignore,
    /// Needs the upstream resolvers.
    Upstream(Box<Pending>),
}

struct Pending {
    request: Message,
    /// None: forward the question; Some: an ExternalName's CNAME chain,
    /// its target's records to be asked upstream.
    chase: Option<(Answer, Name)>,
}

async fn serve_udp(socket: Arc<UdpSocket>, shared: Arc<Shared>) {
    let mut buf = vec![0u8; UDP_QUERY_BUFFER];
    loop {
        let (len, peer) = match socket.recv_from(&mut buf).await {
            Ok(got) => got,
            Err(e) => {
                tracing::debug!(error = %e, "dns: udp receive failed");
                // Not a busy loop should the error persist.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Some(packet) = buf.get(..len) else { continue };
        match prepare(&shared, packet, Transport::Udp) {
            Step::Ignore => {}
            Step::Reply(bytes) => send_udp(&socket, &bytes, peer).await,
            Step::Upstream(pending) => match shared.forwards.clone().try_acquire_owned() {
                Ok(permit) => {
                    let (socket, shared) = (socket.clone(), shared.clone());
                    tokio::spawn(async move {
                        let bytes = finish(&shared, pending, Transport::Udp).await;
                        send_udp(&socket, &bytes, peer).await;
                        drop(permit);
                    });
                }
                Err(_) => send_udp(&socket, &error(&pending.request.metadata, ResponseCode::Refused), peer).await,
            },
        }
    }
}

async fn send_udp(socket: &UdpSocket, bytes: &[u8], peer: SocketAddr) {
    if let Err(e) = socket.send_to(bytes, peer).await {
        tracing::debug!(peer = %peer, error = %e, "dns: udp send failed");
    }
}

async fn serve_tcp(listener: TcpListener, shared: Arc<Shared>, connections: Arc<Semaphore>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and friends: wait a moment rather than spin.
                tracing::debug!(error = %e, "dns: tcp accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            continue; // too many: closed at once
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_connection(stream, &shared).await {
                tracing::debug!(error = %e, "dns: tcp connection ended");
            }
            drop(permit);
        });
    }
}

/// Questions on one TCP connection, answered in turn, until the asker
/// closes it, idles, or sends something that is not DNS.
async fn serve_connection(mut stream: TcpStream, shared: &Shared) -> io::Result<()> {
    loop {
        let Ok(len) = timeout(shared.tcp_idle, stream.read_u16()).await else { return Ok(()) };
        let mut packet = vec![0u8; usize::from(len?)];
        timeout(shared.tcp_idle, stream.read_exact(&mut packet)).await.map_err(io::Error::other)??;
        let reply = match prepare(shared, &packet, Transport::Tcp) {
            Step::Ignore => return Ok(()),
            Step::Reply(bytes) => bytes,
            Step::Upstream(pending) => {
                let _permit = shared.forwards.acquire().await.map_err(io::Error::other)?;
                finish(shared, pending, Transport::Tcp).await
            }
        };
        let len = u16::try_from(reply.len()).map_err(io::Error::other)?;
        let mut framed = Vec::with_capacity(reply.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(&reply);
        stream.write_all(&framed).await?;
    }
}

/// The part of answering that needs no upstream.
fn prepare(shared: &Shared, packet: &[u8], transport: Transport) -> Step {
    let Ok(header) = Header::read(&mut BinDecoder::new(packet)) else {
        return Step::Ignore;
    };
    if header.message_type != MessageType::Query {
        return Step::Ignore; // an answer sent to us: never reply (no reflection loops)
    }
    let request = match Message::from_vec(packet) {
        Ok(m) => m,
        Err(_) => return Step::Reply(error(&header.metadata, ResponseCode::FormErr)),
    };
    if request.metadata.op_code != OpCode::Query {
        return Step::Reply(error(&request.metadata, ResponseCode::NotImp));
    }
    let [question] = request.queries.as_slice() else {
        return Step::Reply(error(&request.metadata, ResponseCode::FormErr));
    };
    let table = shared.table.borrow().clone();
    let lookup = shared.zone.lookup(&table, question.name(), question.query_type());
    if question.query_class() != DNSClass::IN && !matches!(lookup, Lookup::Forward) {
        return Step::Reply(error(&request.metadata, ResponseCode::Refused));
    }
    match lookup {
        Lookup::Forward => Step::Upstream(Box::new(Pending { request, chase: None })),
        Lookup::Chase { answer, target } => {
            Step::Upstream(Box::new(Pending { request, chase: Some((answer, target)) }))
        }
        Lookup::Answer(answer) => Step::Reply(encode(reply(&request, answer, true), limit(&request, transport))),
    }
}

/// The part of answering that asks the upstream resolvers.
async fn finish(shared: &Shared, pending: Box<Pending>, transport: Transport) -> Vec<u8> {
    let Pending { request, chase } = *pending;
    let Some(question) = request.queries.first().cloned() else {
        return error(&request.metadata, ResponseCode::FormErr);
    };
    match chase {
        None => {
            // The asker's question as it is, but asking for no more than
            // UPSTREAM_PAYLOAD bytes: what comes back fits the asker's limit
            // on UDP and this server's buffer.
            let mut ask = request.clone();
            if let Some(edns) = ask.edns.as_mut() {
                edns.set_max_payload(edns.max_payload().clamp(512, UPSTREAM_PAYLOAD));
            }
            let Ok(bytes) = ask.to_vec() else { return error(&request.metadata, ResponseCode::ServFail) };
            let whole = transport == Transport::Tcp;
            match shared.upstreams.exchange(&bytes, request.metadata.id, &question, whole).await {
                Ok(answer) => answer,
                Err(e) => {
                    tracing::debug!(name = %question.name().to_ascii(), error = %e, "dns: forwarding failed");
                    error(&request.metadata, ResponseCode::ServFail)
                }
            }
        }
        Some((mut answer, target)) => {
            let id = random_id();
            let target_question = Query::query(target, question.query_type());
            let mut ask = Message::new(id, MessageType::Query, OpCode::Query);
            ask.metadata.recursion_desired = true;
            ask.add_query(target_question.clone());
            let mut edns = Edns::new();
            edns.set_max_payload(UPSTREAM_PAYLOAD);
            ask.set_edns(edns);
            let Ok(bytes) = ask.to_vec() else { return error(&request.metadata, ResponseCode::ServFail) };
            let got = shared.upstreams.exchange(&bytes, id, &target_question, true).await;
            match got.ok().and_then(|b| Message::from_vec(&b).ok()) {
                Some(upstream) => {
                    answer.rcode = upstream.metadata.response_code;
                    answer.answers.extend(upstream.answers);
                    answer.soa = None;
                    encode(reply(&request, answer, false), limit(&request, transport))
                }
                None => error(&request.metadata, ResponseCode::ServFail),
            }
        }
    }
}

/// The answer message to `request`.
fn reply(request: &Message, answer: Answer, authoritative: bool) -> Message {
    let mut m = response(&request.metadata, answer.rcode);
    m.metadata.authoritative = authoritative;
    m.queries = request.queries.clone();
    m.answers = answer.answers;
    m.additionals = answer.additionals;
    m.authorities.extend(answer.soa);
    if request.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(UPSTREAM_PAYLOAD);
        m.set_edns(edns);
    }
    m
}

fn response(request: &Metadata, rcode: ResponseCode) -> Message {
    let mut m = Message::new(request.id, MessageType::Response, request.op_code);
    m.metadata = Metadata::response_from_request(request);
    m.metadata.recursion_available = true;
    m.metadata.response_code = rcode;
    m
}

/// An error answer without the question (it may be what was wrong).
fn error(request: &Metadata, rcode: ResponseCode) -> Vec<u8> {
    // A header-only message always encodes; an empty answer is dropped by the asker.
    response(request, rcode).to_vec().unwrap_or_default()
}

/// How large an answer may be: the asker's EDNS size on UDP (512 without),
/// 65535 on TCP.
fn limit(request: &Message, transport: Transport) -> usize {
    match transport {
        Transport::Tcp => usize::from(u16::MAX),
        Transport::Udp => {
            let asked = request.edns.as_ref().map_or(512, |e| usize::from(e.max_payload()));
            asked.clamp(512, MAX_UDP_ANSWER)
        }
    }
}

/// Encodes `m`; past `limit` bytes, just the header (TC set) and the question.
fn encode(m: Message, limit: usize) -> Vec<u8> {
    match m.to_vec() {
        Ok(bytes) if bytes.len() <= limit => bytes,
        Ok(_) => m.truncate().to_vec().unwrap_or_default(),
        Err(_) => {
            // Not formatted: hickory-proto's error text would link its IDNA tables.
            tracing::debug!("dns: answer does not encode");
            error(&m.metadata, ResponseCode::ServFail)
        }
    }
}

/// A question id for the upstream (the asker's ids are kept when forwarding).
fn random_id() -> u16 {
    use ring::rand::SecureRandom;
    let mut id = [0u8; 2];
    // The system's random source does not fail on Linux once booted; 0 would still be a valid id.
    let _ = ring::rand::SystemRandom::new().fill(&mut id);
    u16::from_be_bytes(id)
}

#[cfg(test)]
mod tests;
