//! The embedded MQTT broker (rumqttd, MQTT 3.1.1). It keeps retained
//! messages and sessions in memory only: the controller republishes every
//! snapshot when it (re)connects, and agents republish their presence and
//! report (design.md §3).
//!
//! rumqttd listens for plain MQTT on loopback only (`--mqtt-listen`): the
//! controller's own session, and agents on this machine. Other machines
//! reach it over TLS (`--mqtts-listen`): each connection's handshake runs in
//! its own task, with a time limit, and the connection is then piped to the
//! plain listener. (rumqttd's own TLS listener does handshakes one after
//! another in its accept loop, without a limit: one client that connects and
//! says nothing would stop every other from connecting.)
//!
//! rumqttd's router runs on its own OS thread; the listeners run as tasks on
//! the controller's runtime.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kedge_common::topics::{self, NodeTopic};
use rumqttd::protocol::v4::V4;
use rumqttd::{ConnectionSettings, LinkType, Router, RouterConfig, SegmentConfig, Server, ServerSettings};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot listen for MQTT on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error(
        "plain MQTT listens on loopback only, not {addr}: other machines connect over TLS (--mqtts-listen {}:8883, agents with --broker mqtts://… --broker-ca DATA/tls/ca.crt)",
        addr.ip()
    )]
    PlainOffLoopback { addr: SocketAddr },
}

/// Where the broker listens.
#[derive(Debug, Clone, Copy)]
pub struct Listening {
    /// Plain MQTT, on loopback.
    pub plain: SocketAddr,
    /// MQTT over TLS, when asked for.
    pub tls: Option<SocketAddr>,
}

/// How long a TLS client may take to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// TLS connections at most (rumqttd's own limit is a little above).
const MAX_TLS_CONNECTIONS: usize = 10_000;
/// Per direction and connection: MQTT packets of the link are small, and a
/// large one just takes more rounds.
const PIPE_BUFFER: usize = 4096;

/// Starts the broker on `listen` (loopback; port 0: a free port) and, with
/// `tls`, its TLS listener; returns the addresses. Addresses are bound here
/// first, so a port already in use is an error at start-up, not a log line
/// later. The listeners are tasks of `tasks` and stop accepting when `stop`
/// flips (the router thread lives on until the process exits).
pub async fn start(
    listen: SocketAddr,
    tls: Option<(SocketAddr, Arc<rustls::ServerConfig>)>,
    max_payload: usize,
    prefix: &str,
    tasks: &mut JoinSet<()>,
    stop: watch::Receiver<bool>,
) -> Result<Listening, BrokerError> {
    if !listen.ip().is_loopback() {
        return Err(BrokerError::PlainOffLoopback { addr: listen });
    }
    let tls = match tls {
        Some((addr, cfg)) => {
            let l = TcpListener::bind(addr).await.map_err(|source| BrokerError::Listen { addr, source })?;
            Some((l, cfg))
        }
        None => None,
    };
    let plain = start_plain(listen, max_payload, prefix, tasks, stop.clone()).await?;
    let tls = match tls {
        Some((l, cfg)) => {
            let addr = l.local_addr().map_err(|source| BrokerError::Listen { addr: listen, source })?;
            tasks.spawn(serve_tls(l, cfg, plain, stop));
            Some(addr)
        }
        None => None,
    };
    Ok(Listening { plain, tls })
}

/// The in-memory history the router keeps of what every node sends to the
/// controller (`nodes/+/status`, `events`, `presence`): a subscriber that
/// falls further behind than this loses messages (rumqttd jumps its
/// cursor to the head). With 5,000 nodes joining, the default 2 × 256 KiB
/// lost first reports, and a node whose report is lost stays NotReady
/// until its next refresh. Segments fill as messages come and are only
/// dropped by count, so in time every fleet holds the whole 14 MiB.
fn node_logs(prefix: &str) -> HashMap<String, SegmentConfig> {
    [(NodeTopic::Status, 8), (NodeTopic::Events, 4), (NodeTopic::Presence, 2)]
        .into_iter()
        .map(|(which, mib)| {
            let seg = SegmentConfig { max_segment_size: 1024 * 1024, max_segment_count: mib };
            (topics::all_nodes_filter(prefix, which), seg)
        })
        .collect()
}

async fn start_plain(
    listen: SocketAddr,
    max_payload: usize,
    prefix: &str,
    tasks: &mut JoinSet<()>,
    mut stop: watch::Receiver<bool>,
) -> Result<SocketAddr, BrokerError> {
    // Bound here and handed to rumqttd (listener.patch): the port accepts
    // connections once this returns, before the broker's task first runs —
    // a client told the address (an agent, `mosquitto_sub`, a test) is never
    // refused in between.
    let listener = TcpListener::bind(listen).await.map_err(|source| BrokerError::Listen { addr: listen, source })?;
    let listen = listener.local_addr().map_err(|source| BrokerError::Listen { addr: listen, source })?;
    let router = Router::new(
        0,
        RouterConfig {
            max_connections: 10_010,
            max_outgoing_packet_count: 200,
            // Per-topic in-memory history; retained messages are kept apart.
            max_segment_size: 256 * 1024,
            max_segment_count: 2,
            custom_segment: Some(node_logs(prefix)),
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
    );
    let router_tx = router.spawn();
    let settings = ServerSettings {
        name: "kedge".into(),
        listen,
        tls: None,
        next_connection_delay_ms: 0,
        connections: ConnectionSettings {
            // For the CONNECT after the TCP handshake: 5 s timed out
            // thousands of nodes reconnecting at once.
            connection_timeout_ms: 15_000,
            // Room for the envelope around a payload at the cap; anything
            // larger is refused by the broker and never reaches an agent.
            max_payload_size: max_payload + 4096,
            max_inflight_count: 100,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    let mut server = Server::new(settings, router_tx, V4);
    tasks.spawn(async move {
        tokio::select! {
            r = server.start_on(listener, LinkType::Remote) => if let Err(e) = r {
                tracing::error!(error = %e, "the embedded MQTT broker stopped");
            },
            _ = stop.wait_for(|v| *v) => {}
        }
    });
    Ok(listen)
}

/// Accepts TLS connections on `listener` and pipes each, once its handshake
/// is done, to the plain listener at `plain`.
async fn serve_tls(
    listener: TcpListener,
    cfg: Arc<rustls::ServerConfig>,
    plain: SocketAddr,
    mut stop: watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_TLS_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.wait_for(|v| *v) => return,
        };
        let (tcp, peer) = match accepted {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "MQTT over TLS: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, limit = MAX_TLS_CONNECTIONS, "MQTT over TLS: too many connections; refused");
            continue;
        };
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let _ = tcp.set_nodelay(true);
            let mut tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "MQTT over TLS: handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "MQTT over TLS: handshake timed out");
                    return;
                }
            };
            let mut inner = match TcpStream::connect(plain).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "MQTT over TLS: the broker does not answer");
                    return;
                }
            };
            let _ = inner.set_nodelay(true);
            if let Err(e) =
                tokio::io::copy_bidirectional_with_sizes(&mut tls, &mut inner, PIPE_BUFFER, PIPE_BUFFER).await
            {
                tracing::debug!(%peer, error = %e, "MQTT over TLS: connection ended");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Packet, QoS};
    use tokio::task::JoinSet;

    fn client(id: &str, port: u16, will: Option<&str>) -> (AsyncClient, EventLoop) {
        let mut o = MqttOptions::new(id, "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(60));
        if let Some(w) = will {
            o.set_last_will(LastWill::new("t/will", w.as_bytes().to_vec(), QoS::AtLeastOnce, false));
        }
        AsyncClient::new(o, 16)
    }

    /// Polls until the connection is acknowledged.
    async fn connected(ev: &mut EventLoop) {
        loop {
            if let Ok(Event::Incoming(Packet::ConnAck(_))) = ev.poll().await {
                return;
            }
        }
    }

    /// The address the broker reports takes connections at once: the
    /// controller prints it and goes on with its start-up before the
    /// broker's task first runs, and a client that connects in between (a
    /// `mosquitto_sub` that does not retry) must not be refused.
    #[tokio::test(flavor = "current_thread")]
    async fn the_reported_address_takes_connections_before_the_broker_task_runs() {
        let mut tasks = JoinSet::new();
        let (_stop_tx, stop) = tokio::sync::watch::channel(false);
        let addr = "127.0.0.1:0".parse().expect("address");
        let plain = super::start(addr, None, 64 * 1024, "kedge", &mut tasks, stop).await.expect("broker").plain;
        // Blocking, on this (the only) runtime thread: the broker's task
        // cannot have run yet.
        let early = std::net::TcpStream::connect(plain);
        assert!(early.is_ok(), "connecting to {plain} right after start: {early:?}");
    }

    /// A node that lost its cache keeps its key, so its client id and the
    /// persistent session the broker kept: subscribing again must bring the
    /// retained messages (its snapshot) again, as MQTT 3.1.1 says.
    #[tokio::test(flavor = "current_thread")]
    async fn a_resubscribe_on_a_kept_session_brings_the_retained_messages_again() {
        let mut tasks = JoinSet::new();
        let (_stop_tx, stop) = tokio::sync::watch::channel(false);
        let addr = "127.0.0.1:0".parse().expect("address");
        let port = super::start(addr, None, 64 * 1024, "kedge", &mut tasks, stop).await.expect("broker").plain.port();
        let (publisher, mut pev) = client("controller", port, None);
        connected(&mut pev).await;
        publisher.publish("t/snapshot", QoS::AtLeastOnce, true, "generation 7").await.expect("publish");
        tasks.spawn(async move { while pev.poll().await.is_ok() {} });
        // Reads what arrives on the node's connection for `secs`.
        async fn retained(ev: &mut EventLoop, secs: u64) -> Vec<String> {
            let mut got = Vec::new();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
            while let Ok(Ok(ev)) = tokio::time::timeout_at(deadline, ev.poll()).await {
                if let Event::Incoming(Packet::Publish(p)) = ev {
                    got.push(String::from_utf8_lossy(&p.payload).into_owned());
                }
            }
            got
        }
        let node = |port| {
            let mut o = MqttOptions::new("node-2", "127.0.0.1", port);
            o.set_clean_session(false);
            AsyncClient::new(o, 16)
        };
        let (first, mut ev) = node(port);
        connected(&mut ev).await;
        first.subscribe("t/snapshot", QoS::AtLeastOnce).await.expect("subscribe");
        assert_eq!(retained(&mut ev, 2).await, ["generation 7"], "the first subscribe");
        drop(ev);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (again, mut ev) = node(port);
        connected(&mut ev).await;
        again.subscribe("t/snapshot", QoS::AtLeastOnce).await.expect("subscribe");
        assert_eq!(retained(&mut ev, 2).await, ["generation 7"], "subscribing again on the kept session");
    }

    /// An agent restarted before the broker saw its old socket close: its
    /// new connection takes the client id over. When the old socket closes
    /// after that, the new connection must live on (the router had given it
    /// the old one's connection id) and its will must not fire.
    #[tokio::test(flavor = "current_thread")]
    async fn a_connection_that_took_over_a_client_id_outlives_the_old_socket() {
        let mut tasks = JoinSet::new();
        let (_stop_tx, stop) = tokio::sync::watch::channel(false);
        let addr = "127.0.0.1:0".parse().expect("address");
        let port = super::start(addr, None, 64 * 1024, "kedge", &mut tasks, stop).await.expect("broker").plain.port();
        let (watcher, mut wev) = client("watcher", port, None);
        connected(&mut wev).await;
        watcher.subscribe("t/#", QoS::AtLeastOnce).await.expect("subscribe");
        let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
        tasks.spawn(async move {
            while let Ok(ev) = wev.poll().await {
                if let Event::Incoming(Packet::Publish(p)) = ev {
                    let _ = seen_tx.send((p.topic, String::from_utf8_lossy(&p.payload).into_owned()));
                }
            }
        });
        // The old process: connected, then gone without a word (its socket
        // still open as far as the broker knows).
        let (_old, mut old_ev) = client("node-1", port, Some("old"));
        connected(&mut old_ev).await;
        // The new process, same client id.
        let (new, mut new_ev) = client("node-1", port, Some("new"));
        connected(&mut new_ev).await;
        tasks.spawn(async move { while new_ev.poll().await.is_ok() {} });
        // Now the old socket closes.
        drop(old_ev);
        tokio::time::sleep(Duration::from_millis(500)).await;
        new.publish("t/alive", QoS::AtLeastOnce, false, "still here").await.expect("publish");
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while let Ok(Some(m)) = tokio::time::timeout_at(deadline, seen.recv()).await {
            got.push(m);
        }
        assert!(got.contains(&("t/alive".to_owned(), "still here".to_owned())), "the new connection lives: {got:?}");
        assert!(!got.iter().any(|(t, p)| t == "t/will" && p == "new"), "the live connection's will fired: {got:?}");
    }

    /// The controller may fall behind the nodes (thousands joining): what
    /// they sent waits in the router's log for it. A 2.4 MB backlog of
    /// reports used to be cut to the last 512 KiB.
    #[tokio::test(flavor = "current_thread")]
    async fn a_controller_behind_by_megabytes_of_reports_still_gets_them_all() {
        let mut tasks = JoinSet::new();
        let (_stop_tx, stop) = tokio::sync::watch::channel(false);
        let addr = "127.0.0.1:0".parse().expect("address");
        let port = super::start(addr, None, 64 * 1024, "kedge", &mut tasks, stop).await.expect("broker").plain.port();
        let (controller, mut cev) = client("controller", port, None);
        connected(&mut cev).await;
        controller.subscribe("kedge/v1/nodes/+/status", QoS::AtLeastOnce).await.expect("subscribe");
        while !matches!(cev.poll().await, Ok(Event::Incoming(Packet::SubAck(_)))) {}
        // The controller reads nothing while the nodes send.
        let (node, mut nev) = client("nodes", port, None);
        connected(&mut nev).await;
        tasks.spawn(async move { while nev.poll().await.is_ok() {} });
        const REPORTS: usize = 600;
        for i in 0..REPORTS {
            let topic = format!("kedge/v1/nodes/n{i}/status");
            node.publish(topic, QoS::AtLeastOnce, false, vec![b'r'; 4096]).await.expect("publish");
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut got = std::collections::BTreeSet::new();
        while let Ok(Ok(ev)) = tokio::time::timeout(Duration::from_secs(3), cev.poll()).await {
            if let Event::Incoming(Packet::Publish(p)) = ev {
                got.insert(p.topic);
            }
        }
        assert_eq!(got.len(), REPORTS, "reports lost while the controller was behind");
    }
}
