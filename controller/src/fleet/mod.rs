//! The fleet link (design.md §3–4): the controller's MQTT session, with the
//! embedded broker by default (`broker`), publishing each node's desired
//! snapshot (`desired`), the cluster network table (`network`), taking in
//! reports, presence and events (`ingest`), and publishing the dashboard
//! topics (`dashboard`).
//!
//! Liveness is kept in memory ([`FleetState`]), never written as heartbeats
//! (flash wear): a node is alive while its presence is online and its last
//! report is not older than the report timeout. A report numbered above an
//! offline presence counts as online (a restarted agent's will can reach
//! the controller before its online presence, which is then a replay). The node lifecycle
//! controller reads it through [`FleetState::heartbeat`], as its
//! [`Liveness`].
//!
//! Every task started here goes into the caller's `JoinSet` and ends when
//! `stop` flips.

pub mod broker;
pub mod dashboard;
pub mod desired;
pub mod ingest;
pub mod join;
pub mod mirror;
pub mod network;
pub mod relay;
pub mod trust;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use kedge_common::topics::{self, BrokerUrl, NodeTopic};
use rumqttc::{AsyncClient, MqttOptions, Packet, QoS};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::client::Client;
use crate::controllers::nodelifecycle::Liveness;
use crate::controllers::{ControllerError, runner};

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error(transparent)]
    Broker(#[from] broker::BrokerError),
    #[error("setting up the fleet link: {0}")]
    Setup(#[from] ControllerError),
}

#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// Where the embedded broker listens for plain MQTT (`--mqtt-listen`,
    /// loopback only); ignored with `broker`.
    pub mqtt_listen: SocketAddr,
    /// Where it listens for MQTT over TLS (`--mqtts-listen`), if anywhere.
    pub mqtts_listen: Option<SocketAddr>,
    /// An external broker instead of the embedded one (`--broker`).
    pub broker: Option<BrokerUrl>,
    /// TLS to an external `mqtts://` broker (`--broker-ca`, `--broker-cert`).
    pub broker_tls: Option<Arc<kedge_common::broker_tls::ClientConfig>>,
    /// MQTT user name and password for an external broker.
    pub credentials: Option<(String, String)>,
    pub prefix: String,
    /// Where join tokens are kept (`DATA/tokens`, [`crate::tokens`]).
    pub tokens_dir: std::path::PathBuf,
    pub max_payload: usize,
    /// A node whose newest report is older than this counts as silent even
    /// while its presence says online.
    pub report_timeout: Duration,
    pub keepalive: Duration,
    /// The least time between two builds of the network table (a burst of
    /// Service/Endpoints/Node changes gathers for this long).
    pub network_min_interval: Duration,
}

impl Default for FleetOptions {
    fn default() -> Self {
        FleetOptions {
            mqtt_listen: SocketAddr::from(([127, 0, 0, 1], 1883)),
            mqtts_listen: None,
            broker: None,
            broker_tls: None,
            credentials: None,
            prefix: topics::DEFAULT_PREFIX.into(),
            tokens_dir: std::path::PathBuf::from("tokens"),
            max_payload: kedge_common::envelope::DEFAULT_MAX_PAYLOAD,
            report_timeout: Duration::from_secs(30 * 60),
            keepalive: Duration::from_secs(30),
            network_min_interval: network::DEFAULT_MIN_INTERVAL,
        }
    }
}

/// What the controller knows of one node outside the store.
#[derive(Debug, Clone, Default)]
pub struct NodeLive {
    /// Presence as last heard, and when that was (unix seconds).
    pub online: Option<bool>,
    pub presence_at: i64,
    /// The node's counter on that presence.
    pub presence_seq: u64,
    /// Whether this controller has seen the node online since it started.
    pub seen_online: bool,
    /// When the newest report arrived (unix seconds, 0: none yet).
    pub report_at: i64,
    pub report: Option<dashboard::ReportSummary>,
    /// The newest snapshot published: generation, content hash, pod count.
    pub desired: Option<(u64, u64, usize)>,
    /// Messages under its name dropped while it is joined: forged,
    /// replayed, malformed or over its rate.
    pub rejected: u64,
    /// A snapshot generation published and when, until a report has seen it.
    pub unobserved: Option<(u64, std::time::Instant)>,
}

/// Shared between the link task, the snapshot publisher and the node lifecycle.
pub struct FleetState {
    nodes: Mutex<HashMap<String, NodeLive>>,
    connected: AtomicBool,
    /// Bumped on every (re)connect to the broker.
    epoch: AtomicU64,
    report_timeout: Duration,
    /// Asks the snapshot and network publishers to republish everything
    /// (after a connect).
    resync_desired: watch::Sender<u64>,
    /// Asks the node lifecycle to look at every node (presence changed).
    resync_nodes: watch::Sender<u64>,
    /// The nodes whose presence changed since the node lifecycle last asked.
    presence_changed: Mutex<HashSet<String>>,
    /// The cluster network table as last published, for the dashboard.
    network: Mutex<network::NetworkSummary>,
    /// Counters for `/metrics`.
    metrics: crate::telemetry::FleetMetrics,
}

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

impl FleetState {
    pub fn new(report_timeout: Duration) -> Arc<FleetState> {
        Arc::new(FleetState {
            nodes: Mutex::new(HashMap::new()),
            connected: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
            report_timeout,
            resync_desired: watch::channel(0).0,
            resync_nodes: watch::channel(0).0,
            presence_changed: Mutex::new(HashSet::new()),
            network: Mutex::new(network::NetworkSummary::default()),
            metrics: crate::telemetry::FleetMetrics::default(),
        })
    }

    pub fn metrics(&self) -> &crate::telemetry::FleetMetrics {
        &self.metrics
    }

    fn with<R>(&self, f: impl FnOnce(&mut HashMap<String, NodeLive>) -> R) -> R {
        let mut g = self.nodes.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut g)
    }

    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    fn set_connected(&self, up: bool) {
        self.connected.store(up, Ordering::SeqCst);
        if up {
            let e = self.epoch.fetch_add(1, Ordering::SeqCst) + 1;
            self.resync_desired.send_replace(e);
        }
    }

    pub fn node(&self, name: &str) -> Option<NodeLive> {
        self.with(|m| m.get(name).cloned())
    }

    pub fn nodes(&self) -> Vec<(String, NodeLive)> {
        let mut v: Vec<_> = self.with(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect());
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Whether the node's presence says online now.
    pub fn online(&self, node: &str) -> bool {
        self.with(|m| m.get(node).and_then(|n| n.online) == Some(true))
    }

    pub fn desired_generation(&self, node: &str) -> Option<(u64, u64)> {
        self.with(|m| m.get(node).and_then(|n| n.desired.map(|(g, h, _)| (g, h))))
    }

    pub fn set_desired(&self, node: &str, generation: u64, hash: u64, pods: usize) {
        self.metrics.snapshots.inc();
        self.with(|m| {
            let n = m.entry(node.to_string()).or_default();
            // Timed from the oldest publication no report has seen yet: a
            // node that lags behind a stream of changes is measured too, and
            // a republish of the same generation (after a reconnect) keeps
            // its first time.
            if n.unobserved.is_none() && n.desired.map(|d| d.0) != Some(generation) {
                n.unobserved = Some((generation, std::time::Instant::now()));
            }
            n.desired = Some((generation, hash, pods));
        });
    }

    pub fn network(&self) -> network::NetworkSummary {
        *self.network.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set_network(&self, f: impl FnOnce(&mut network::NetworkSummary)) {
        f(&mut self.network.lock().unwrap_or_else(PoisonError::into_inner));
    }

    fn set_presence(&self, node: &str, online: bool, seq: u64) {
        let changed = self.with(|m| {
            let n = m.entry(node.to_string()).or_default();
            let changed = n.online != Some(online);
            n.online = Some(online);
            n.presence_at = now();
            n.presence_seq = seq;
            n.seen_online |= online;
            changed
        });
        if changed {
            self.presence_changed.lock().unwrap_or_else(PoisonError::into_inner).insert(node.to_owned());
            self.resync_nodes.send_modify(|v| *v += 1);
        }
    }

    /// A verified message of the node numbered `seq` arrived: if its
    /// presence says offline with an older number, the node is online
    /// again — a message sent after the offline was decided proves it
    /// (its online presence may have been overtaken by a will it numbered
    /// below it, or lost).
    fn heard_from(&self, node: &str, seq: u64) {
        let offline_before = self.with(|m| {
            m.get(node).is_some_and(|n| n.online == Some(false) && seq > n.presence_seq && n.presence_seq > 0)
        });
        if offline_before {
            tracing::info!(%node, seq, "a message newer than the node's offline presence: online");
            self.set_presence(node, true, seq);
        }
    }

    /// Counts a dropped message for `/metrics` (any node, joined or not)
    /// and, for a joined `node`, on its own counter (the dashboard's).
    fn count_rejected(&self, node: &str, topic: &'static str, reason: &'static str) {
        self.metrics.rejected.get_or_create(&crate::telemetry::RejectLabels { topic, reason }).inc();
        if reason == "not joined" {
            return;
        }
        // Only joined nodes have an entry to count on: a flood of made-up
        // names leaves nothing behind.
        self.with(|m| {
            if let Some(n) = m.get_mut(node) {
                n.rejected += 1;
            }
        });
    }

    fn set_report(&self, node: &str, summary: dashboard::ReportSummary) {
        self.with(|m| {
            let n = m.entry(node.to_string()).or_default();
            if let Some((generation, at)) = n.unobserved
                && summary.observed_generation >= generation
            {
                self.metrics.snapshot_observed.observe(at.elapsed().as_secs_f64());
                n.unobserved = None;
            }
            n.report_at = now();
            n.report = Some(summary);
        });
    }

    /// The node's liveness as a heartbeat time (unix seconds) for the node
    /// lifecycle: now while it is online and reporting, the moment it went
    /// silent when this controller saw that happen, and `None` when this
    /// controller knows nothing better than the stored status.
    pub fn heartbeat(&self, node: &str) -> Option<i64> {
        let n = self.node(node)?;
        let t = now();
        let timeout = i64::try_from(self.report_timeout.as_secs()).unwrap_or(i64::MAX);
        let reporting = n.report_at > 0 && t - n.report_at <= timeout;
        match n.online {
            Some(true) if reporting => Some(t),
            Some(true) if n.report_at > 0 => Some(n.report_at + timeout),
            Some(true) => Some(n.presence_at),
            Some(false) if n.seen_online => Some(n.presence_at),
            _ => None,
        }
    }

    /// Changes whenever presence changes somewhere: the node lifecycle then
    /// looks at every node again.
    pub fn presence_changes(&self) -> watch::Receiver<u64> {
        self.resync_nodes.subscribe()
    }
}

impl Liveness for FleetState {
    fn heartbeat(&self, node: &str) -> Option<i64> {
        FleetState::heartbeat(self, node)
    }

    fn take_changed(&self) -> Option<Vec<String>> {
        Some(
            std::mem::take(&mut *self.presence_changed.lock().unwrap_or_else(PoisonError::into_inner))
                .into_iter()
                .collect(),
        )
    }
}

/// A running fleet link.
pub struct Fleet {
    pub state: Arc<FleetState>,
    /// The broker this controller talks to.
    pub broker: BrokerUrl,
    /// The embedded broker's TLS listener, for agents on other machines.
    pub broker_tls: Option<BrokerUrl>,
    /// Sessions to nodes (`kubectl logs`).
    pub relay: Arc<relay::Relay>,
}

/// Starts the broker (unless external), the controller's MQTT session, the
/// snapshot publisher and the network table publisher (with `cidrs`; both
/// sign with `key`), as tasks of `tasks`. The embedded broker serves TLS
/// with `serving` on `opts.mqtts_listen`. Everything stops when `stop` flips.
#[allow(clippy::too_many_arguments)]
pub async fn start(
    client: Client,
    opts: FleetOptions,
    serving: Option<Arc<rustls::ServerConfig>>,
    key: Arc<kedge_common::sign::SigningKey>,
    issuer: Arc<crate::auth::token::Issuer>,
    cidrs: network::Cidrs,
    state: Arc<FleetState>,
    tasks: &mut JoinSet<()>,
    stop: watch::Receiver<bool>,
) -> Result<Fleet, FleetError> {
    let (broker, broker_tls) = match &opts.broker {
        Some(b) => (b.clone(), None),
        None => {
            let tls = opts.mqtts_listen.zip(serving);
            let l = broker::start(opts.mqtt_listen, tls, opts.max_payload, &opts.prefix, tasks, stop.clone()).await?;
            tracing::info!(plain = %l.plain, tls = ?l.tls, "embedded MQTT broker listening");
            // Clients on this machine reach a wildcard listener through loopback.
            let url = |a: SocketAddr, tls: bool| BrokerUrl {
                host: if a.ip().is_unspecified() { "127.0.0.1".to_string() } else { a.ip().to_string() },
                port: a.port(),
                tls,
            };
            (url(l.plain, false), l.tls.map(|a| url(a, true)))
        }
    };
    // A client id no one can guess, so no one can knock this session off
    // the broker by connecting with it (a clean session: nothing is kept
    // under it).
    let id = format!("kedge-controller-{}", uuid::Uuid::new_v4().simple());
    let mut mo = MqttOptions::new(id, broker.host.clone(), broker.port);
    if let Some((user, password)) = &opts.credentials {
        mo.set_credentials(user.clone(), password.clone());
    }
    if let Some(tls) = opts.broker_tls.clone().filter(|_| broker.tls) {
        mo.set_transport(rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(tls)));
    }
    mo.set_keep_alive(opts.keepalive);
    mo.set_clean_session(true);
    mo.set_max_packet_size(opts.max_payload.saturating_mul(4).max(64 * 1024), opts.max_payload + 64 * 1024);
    mo.set_request_channel_capacity(4096);
    let (mqtt, mut eventloop) = AsyncClient::new(mo, 4096);
    // Small frames unbatched (exec keystrokes; the agent does the same).
    let mut net = rumqttc::NetworkOptions::new();
    net.set_tcp_nodelay(true);
    // As long as the broker waits for a CONNECT (an external broker under
    // load; the embedded one answers at once).
    net.set_connection_timeout(15);
    eventloop.set_network_options(net);
    let publisher = desired::DesiredPublisher::new(
        client.clone(),
        mqtt.clone(),
        opts.prefix.clone(),
        opts.max_payload,
        state.clone(),
        key.clone(),
        issuer,
    )?;
    let store = client.store().clone();
    tasks.spawn(runner::run_with_resync(publisher, store.clone(), stop.clone(), state.resync_desired.subscribe()));
    let network =
        network::NetworkPublisher::new(client.clone(), mqtt.clone(), &opts, state.clone(), cidrs, key.clone())?;
    tasks.spawn(runner::run_with_resync(network, store, stop.clone(), state.resync_desired.subscribe()));
    let joins = join::Joins::new(
        client.clone(),
        opts.tokens_dir.clone(),
        key.clone(),
        mqtt.clone(),
        opts.prefix.clone(),
        opts.max_payload,
    );
    let relay =
        relay::Relay::new(mqtt.clone(), opts.prefix.clone(), key, state.clone(), client.clone(), opts.max_payload);
    let mirrors = Arc::new(mirror::Mirrors::default());
    tasks.spawn(runner::run(
        mirror::MirrorController::new(client.clone(), mirrors.clone())?,
        client.store().clone(),
        stop.clone(),
    ));
    let ingest = ingest::Ingest::new(client, opts.clone(), state.clone(), joins, mirrors);
    tasks.spawn(link(eventloop, mqtt, ingest, relay.clone(), opts, state.clone(), broker.clone(), stop));
    Ok(Fleet { state, broker, broker_tls, relay })
}

/// How often the nodes' message counters are written to the store.
const COUNTERS_EVERY: Duration = Duration::from_secs(5);

/// Owns the MQTT event loop and polls it without ever being cancelled,
/// handing each event to the link, and waits out a growing backoff after a
/// failed poll. rumqttc's `poll` is not cancel-safe while it connects:
/// polled inside the link's `select!`, the link's timers dropped the
/// half-made connection (three attempts at every start) and a broker slower
/// to answer than the 100 ms tick would never have been connected to.
async fn drive(
    mut eventloop: rumqttc::EventLoop,
    events: tokio::sync::mpsc::Sender<Result<rumqttc::Event, rumqttc::ConnectionError>>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let ev = eventloop.poll().await;
        let failed = ev.is_err();
        if matches!(ev, Ok(rumqttc::Event::Incoming(Packet::ConnAck(_)))) {
            backoff = Duration::from_millis(100);
        }
        if events.send(ev).await.is_err() {
            return;
        }
        if failed {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    }
}

/// Aborts the event loop's task when the link ends.
struct Driver(tokio::task::JoinHandle<()>);

impl Drop for Driver {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Polls the session: (re)subscribes on every connect, feeds incoming
/// messages to `ingest`, and flushes the dashboard topics.
#[allow(clippy::too_many_arguments)]
async fn link(
    eventloop: rumqttc::EventLoop,
    mqtt: AsyncClient,
    mut ingest: ingest::Ingest,
    relay: Arc<relay::Relay>,
    opts: FleetOptions,
    state: Arc<FleetState>,
    broker: BrokerUrl,
    mut stop: watch::Receiver<bool>,
) {
    let (events, mut polled) = tokio::sync::mpsc::channel(16);
    let _driver = Driver(tokio::spawn(drive(eventloop, events)));
    let mut dash = dashboard::Dashboard::new(opts.prefix.clone());
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // Reports that waited for their node's rate go in at most this late.
    let mut waiting = tokio::time::interval(Duration::from_millis(100));
    waiting.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The nodes' message counters go to the store this often (and at stop):
    // one write however many nodes spoke.
    let mut keep = tokio::time::interval(COUNTERS_EVERY);
    keep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => {
                ingest.persist();
                let _ = mqtt.try_disconnect();
                return;
            }
            _ = waiting.tick() => ingest.tick(),
            _ = keep.tick() => ingest.persist(),
            _ = tick.tick() => {
                if state.connected() {
                    dash.flush(&mqtt, &state, ingest.client());
                }
            }
            ev = polled.recv() => match ev {
                // The event loop's task is gone: it only ends with us, or
                // by a panic.
                None => {
                    tracing::error!("the fleet link's event loop task ended; the fleet link stops");
                    return;
                }
                Some(Ok(rumqttc::Event::Incoming(Packet::ConnAck(_)))) => {
                    tracing::info!(%broker, "fleet link connected to the broker");
                    let filters = [NodeTopic::Status, NodeTopic::Presence, NodeTopic::Events, NodeTopic::Rotate]
                        .map(|which| topics::all_nodes_filter(&opts.prefix, which));
                    for filter in filters.into_iter().chain([topics::join_filter(&opts.prefix), relay.filter()]) {
                        if let Err(e) = mqtt.try_subscribe(filter, QoS::AtLeastOnce) {
                            tracing::error!(error = %e, "cannot subscribe");
                        }
                    }
                    dash.forget();
                    state.set_connected(true);
                }
                Some(Ok(rumqttc::Event::Incoming(Packet::Publish(p)))) => {
                    if !relay.incoming(&p.topic, &p.payload) {
                        ingest.handle(&p.topic, &p.payload);
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    if state.connected() {
                        tracing::warn!(%broker, error = %e, "fleet link lost the broker; reconnecting");
                    } else {
                        tracing::debug!(%broker, error = %e, "broker unreachable; retrying");
                    }
                    state.set_connected(false);
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::FleetState;
    use crate::controllers::nodelifecycle::Liveness;

    /// The node lifecycle revisits the nodes whose presence changed, not
    /// every node (quadratic with thousands joining).
    #[test]
    fn a_presence_change_names_its_node_once() {
        let state = FleetState::new(Duration::from_secs(60));
        let mut signal = state.presence_changes();
        state.set_presence("a", true, 1);
        state.set_presence("b", true, 1);
        state.set_presence("a", true, 2);
        assert!(signal.has_changed().unwrap_or(false), "the lifecycle is woken");
        signal.mark_unchanged();
        let mut changed = state.take_changed().expect("fleet liveness knows what changed");
        changed.sort();
        assert_eq!(changed, ["a", "b"], "a's second online is no change");
        assert_eq!(state.take_changed(), Some(vec![]), "each change is named once");
        state.set_presence("b", false, 3);
        assert_eq!(state.take_changed(), Some(vec!["b".to_owned()]));
    }
}
