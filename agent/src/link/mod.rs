//! The agent's end of the fleet link (design.md §3–4): one persistent MQTT
//! session to the broker, reconnecting with jittered backoff forever.
//!
//! The protocol lives in [`state::LinkState`], a plain value tested without
//! a broker; this module is the thin driver around it: it polls rumqttc,
//! feeds what happens into the state, and carries out the actions it gets
//! back. Publishing never waits (`try_publish`): the task that polls the
//! connection is the one that publishes, so a full request queue would
//! otherwise stall both; what the client refuses goes back to the state and
//! is retried at the next tick.
//!
//! Towards the node loop: the newest snapshot handed on is a `watch` value
//! (only the newest undelivered one is kept), the newest report is a `watch`
//! value the other way, events go through a small channel.

pub mod state;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use kedge_common::network::ClusterNetwork;
use kedge_common::topics::BrokerUrl;
use kedge_common::wire::{Event, NodeDesired, NodeReport};
use rumqttc::{AsyncClient, EventLoop, LastWill, MqttOptions, Packet, QoS};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use state::EVENT_QUEUE;
use state::{Action, Input, LinkState, Settings};

/// Longest wait between connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How long a stopping link waits for its goodbye to reach the broker.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// How the next connection attempt presents itself: client id and will,
/// both numbered for it.
type NextConnect = (String, LastWill);

/// Owns the MQTT event loop and polls it without ever being cancelled,
/// handing each event to the link. rumqttc's `poll` is not cancel-safe
/// while it connects: polled inside the link's `select!`, any other branch
/// firing first (the 1 s tick, a report) dropped the half-made connection.
/// Every node connected two or three times at start, and a broker slower
/// than a second to answer (thousands of nodes reconnecting) was never
/// connected to at all. After a failed poll it waits for the link to say
/// when, and as whom, to connect again.
async fn drive(
    mut eventloop: EventLoop,
    events: mpsc::Sender<Result<rumqttc::Event, rumqttc::ConnectionError>>,
    mut resume: mpsc::Receiver<NextConnect>,
) {
    loop {
        let ev = eventloop.poll().await;
        let failed = ev.is_err();
        if events.send(ev).await.is_err() {
            return;
        }
        if failed {
            let Some((client_id, will)) = resume.recv().await else { return };
            eventloop.mqtt_options.set_last_will(will);
            eventloop.mqtt_options.set_client_id(client_id);
        }
    }
}

/// Aborts the event loop's task when the link ends.
struct Driver(JoinHandle<()>);

impl Drop for Driver {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `d` ± 20 %, so a fleet that lost its broker does not come back in lockstep.
fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |t| t.subsec_nanos());
    let spread = (nanos % 401) as f64 / 1000.0; // 0.0 ..= 0.4
    d.mul_f64(0.8 + spread)
}

#[derive(Debug, Clone)]
pub struct LinkConfig {
    pub broker: BrokerUrl,
    pub node: String,
    pub prefix: String,
    pub keepalive: Duration,
    /// A report is republished this often even when nothing changed.
    pub report_refresh: Duration,
    pub max_payload: usize,
    pub boot_id: String,
    /// MQTT user name and password, when the broker wants them.
    pub credentials: Option<(String, String)>,
    /// TLS to an `mqtts://` broker ([`kedge_common::broker_tls`]).
    pub tls: Option<Arc<kedge_common::broker_tls::ClientConfig>>,
    /// The pinned controller key ([`crate::pin`]); `None` takes nothing.
    pub controller_key: Option<kedge_common::sign::PublicKey>,
    /// This node's key and join state; `None`: no token was ever given.
    pub identity: Option<crate::identity::Identity>,
    /// What sessions (`kubectl logs`) read on the node; `None`: every
    /// session is answered with an error.
    pub sessions: Option<crate::sessions::SessionEnv>,
}

/// What the node loop holds of the link.
pub struct LinkHandle {
    /// Newest snapshot received and not yet taken.
    pub snapshots: watch::Receiver<Option<NodeDesired>>,
    /// Newest network table received and not yet taken, with its payload
    /// (the envelope as received, for the cache).
    pub networks: watch::Receiver<Option<NetworkDelivery>>,
    /// Set the newest report here; the link publishes it when it should.
    pub reports: watch::Sender<Option<NodeReport>>,
    /// Whether the broker connection is up.
    pub connected: watch::Receiver<bool>,
    events: mpsc::Sender<Event>,
    events_lost: Arc<AtomicU64>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl LinkHandle {
    /// Queues an event for the controller. Never waits: should the link be
    /// too busy to take it, it is counted as dropped.
    pub fn push_event(&self, ev: Event) {
        if self.events.try_send(ev).is_err() {
            self.events_lost.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Says goodbye (presence offline, a clean disconnect) and ends the
    /// link task, waiting at most a couple of seconds for the broker.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if tokio::time::timeout(STOP_GRACE + Duration::from_secs(1), &mut self.task).await.is_err() {
            self.task.abort();
        }
    }
}

/// A network table handed on, with the bytes it came in.
pub type NetworkDelivery = (Box<ClusterNetwork>, Vec<u8>);

/// Starts the link task. `accepted`, `network_accepted`: the snapshot and
/// network table generations the node already has.
pub fn start(cfg: LinkConfig, accepted: u64, network_accepted: u64) -> LinkHandle {
    let (snap_tx, snap_rx) = watch::channel(None);
    let (net_tx, net_rx) = watch::channel(None);
    let (report_tx, report_rx) = watch::channel(None);
    let (conn_tx, conn_rx) = watch::channel(false);
    let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE);
    let (stop_tx, stop_rx) = oneshot::channel();
    let events_lost = Arc::new(AtomicU64::new(0));
    let ends = Ends {
        snapshots: snap_tx,
        networks: net_tx,
        reports: report_rx,
        connected: conn_tx,
        events: events_rx,
        lost: events_lost.clone(),
    };
    let task = tokio::spawn(run(cfg, (accepted, network_accepted), ends, stop_rx));
    LinkHandle {
        snapshots: snap_rx,
        networks: net_rx,
        reports: report_tx,
        connected: conn_rx,
        events: events_tx,
        events_lost,
        stop: Some(stop_tx),
        task,
    }
}

fn options(cfg: &LinkConfig, will: (String, Vec<u8>)) -> MqttOptions {
    // A client id only this node knows ([`kedge_common::sign::SigningKey::client_id`]): no one
    // else can take it over and knock the node off the broker. (A node that
    // has no key, having never had a token, takes nothing anyway.)
    let id = cfg.identity.as_ref().map_or_else(|| cfg.node.clone(), |i| i.key.client_id(&cfg.node));
    let mut o = MqttOptions::new(id, cfg.broker.host.clone(), cfg.broker.port);
    o.set_keep_alive(cfg.keepalive);
    if let Some((user, password)) = &cfg.credentials {
        o.set_credentials(user.clone(), password.clone());
    }
    if let Some(tls) = &cfg.tls {
        o.set_transport(rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(tls.clone())));
    }
    // The broker keeps our subscription and QoS 1 messages across short drops.
    o.set_clean_session(false);
    // A packet over rumqttc's own limit kills the connection; leave room above
    // our cap so an oversize snapshot is dropped by `decode`, with a reason.
    o.set_max_packet_size(cfg.max_payload.saturating_mul(4).max(64 * 1024), cfg.max_payload + 64 * 1024);
    o.set_request_channel_capacity(64);
    o.set_last_will(LastWill::new(will.0, will.1, QoS::AtLeastOnce, true));
    o
}

/// The link task's ends of the channels to the node loop.
struct Ends {
    snapshots: watch::Sender<Option<NodeDesired>>,
    networks: watch::Sender<Option<NetworkDelivery>>,
    reports: watch::Receiver<Option<NodeReport>>,
    connected: watch::Sender<bool>,
    events: mpsc::Receiver<Event>,
    lost: Arc<AtomicU64>,
}

/// Carries out the state's actions; what the client refuses goes back.
fn perform(
    client: &AsyncClient,
    ends: &Ends,
    identity: Option<&crate::identity::Identity>,
    state: &mut LinkState,
    actions: Vec<Action>,
) {
    for action in actions {
        let refused = match &action {
            Action::Connected(up) => {
                ends.connected.send_replace(*up);
                let m = crate::metrics::counters();
                m.link_up.set(i64::from(*up));
                if *up {
                    m.link_connects.inc();
                }
                false
            }
            Action::Subscribe { topic } => client
                .try_subscribe(topic.clone(), QoS::AtLeastOnce)
                .inspect_err(|e| tracing::debug!(error = %e, "subscribe not queued; retrying"))
                .is_err(),
            Action::Publish(p) => client
                .try_publish(p.topic.clone(), QoS::AtLeastOnce, p.retain, p.payload.clone())
                .inspect_err(|e| tracing::debug!(topic = %p.topic, error = %e, "publish not queued; retrying"))
                .is_err(),
            Action::Deliver(d) => {
                ends.snapshots.send_replace(Some(d.clone()));
                false
            }
            Action::DeliverNetwork { table, payload } => {
                ends.networks.send_replace(Some((table.clone(), payload.clone())));
                false
            }
            Action::Disconnect => client.try_disconnect().is_err(),
            Action::Joined => {
                if let Some(Err(e)) = identity.map(crate::identity::Identity::mark_joined) {
                    // The key was accepted; a restart asks again (and is answered again).
                    tracing::error!(error = %e, "cannot record that this node joined");
                }
                false
            }
            Action::Rotated => {
                if let Some(Err(e)) = identity.map(crate::identity::Identity::commit_rotation) {
                    // The next start signs with the old key, asks again and
                    // is answered again (the new key proves itself).
                    tracing::error!(error = %e, "cannot put the new key in place");
                }
                // The Last Will and client id of this connection are the
                // old key's: connect again with the new one's.
                let _ = client.try_disconnect();
                false
            }
            Action::RotationRefused(reason) => {
                if let Some(Err(e)) = identity.map(|i| i.refuse_rotation(reason)) {
                    tracing::error!(error = %e, "cannot drop the refused key");
                }
                false
            }
        };
        if refused {
            state.refused(action);
        }
    }
}

async fn run(cfg: LinkConfig, accepted: (u64, u64), mut ends: Ends, mut stop: oneshot::Receiver<()>) {
    let settings = Settings {
        node: cfg.node.clone(),
        prefix: cfg.prefix.clone(),
        boot_id: cfg.boot_id.clone(),
        max_payload: cfg.max_payload,
        report_refresh: cfg.report_refresh,
        extra_topics: crate::sessions::Sessions::topics(&cfg.prefix, &cfg.node).to_vec(),
        controller_key: cfg.controller_key,
        identity: cfg.identity.clone(),
    };
    let mut state = LinkState::new(settings, accepted.0, accepted.1);
    let (client, mut eventloop): (AsyncClient, EventLoop) = AsyncClient::new(options(&cfg, state.will()), 64);
    // Session frames (exec keystrokes) are small and answered: unbatched,
    // or each waits out the peer's delayed ACK (40 ms, BENCHMARKS.md).
    let mut net = rumqttc::NetworkOptions::new();
    net.set_tcp_nodelay(true);
    // TCP, TLS, CONNECT and CONNACK: as long as the broker waits for a
    // CONNECT (15 s), so a loaded broker is not given up on first.
    net.set_connection_timeout(15);
    eventloop.set_network_options(net);
    let (events_tx, mut polled) = mpsc::channel(16);
    let (resume, resume_rx) = mpsc::channel::<NextConnect>(1);
    let _driver = Driver(tokio::spawn(drive(eventloop, events_tx, resume_rx)));
    // Who the next attempt connects as, once its backoff is over.
    let mut next: Option<NextConnect> = None;
    let mut sessions =
        crate::sessions::Sessions::new(cfg.sessions.clone(), client.clone(), &cfg.prefix, &cfg.node, cfg.max_payload);
    let identity = cfg.identity.as_ref();
    let mut backoff = Duration::from_millis(200);
    // While set, the connection is not polled: we wait before the next attempt.
    let mut retry_at: Option<Instant> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut rotation_error_told = false;
    loop {
        let input = tokio::select! {
            ev = polled.recv(), if retry_at.is_none() => match ev {
                // The event loop's task is gone: it only ends with us, or
                // by a panic.
                None => {
                    tracing::error!("the fleet link's event loop task ended; the link stops");
                    return;
                }
                Some(ev) => match ev {
                Ok(rumqttc::Event::Incoming(Packet::ConnAck(ack))) => {
                    tracing::info!(broker = %cfg.broker, session_present = ack.session_present, "connected to the broker");
                    backoff = Duration::from_millis(200);
                    Input::Connected
                }
                Ok(rumqttc::Event::Incoming(Packet::Publish(p))) => {
                    match sessions.handle(&p.topic, &p.payload, state.controller_key(), state.seal()) {
                        crate::sessions::Incoming::NotOurs => {
                            Input::Message { topic: p.topic, payload: p.payload.to_vec() }
                        }
                        crate::sessions::Incoming::Taken => continue,
                        crate::sessions::Incoming::Refused(why) => Input::SessionRefused(why),
                    }
                }
                Ok(_) => continue,
                Err(e) => {
                    if state.is_connected() {
                        tracing::warn!(broker = %cfg.broker, error = %e, "lost the broker; pods keep running, reconnecting");
                    } else {
                        tracing::debug!(broker = %cfg.broker, error = %e, "broker unreachable; retrying");
                    }
                    retry_at = Some(Instant::now() + jitter(backoff));
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    // The next connection's will, numbered for it.
                    let (topic, payload) = state.will();
                    next = Some((state.client_id(), LastWill::new(topic, payload, QoS::AtLeastOnce, true)));
                    Input::Disconnected
                }
                },
            },
            _ = async { if let Some(at) = retry_at { tokio::time::sleep_until(at).await } }, if retry_at.is_some() => {
                retry_at = None;
                if let Some(n) = next.take() {
                    // Only fails when the event loop's task is gone.
                    if resume.send(n).await.is_err() {
                        return;
                    }
                }
                continue;
            }
            changed = ends.reports.changed() => {
                if changed.is_err() {
                    // The node loop is gone without stopping us.
                    return;
                }
                match ends.reports.borrow_and_update().clone() {
                    Some(r) => Input::Report(Box::new(r)),
                    None => continue,
                }
            }
            Some(ev) = ends.events.recv() => Input::Event(ev),
            _ = tick.tick() => {
                sessions.reap();
                let lost = ends.lost.swap(0, Ordering::Relaxed);
                if lost > 0 {
                    state.handle(Input::EventsLost(lost), Instant::now());
                }
                // A key pair `kedge-agent rotate-key` left waiting.
                if state.wants_rotation() {
                    match identity.map(crate::identity::Identity::pending_rotation) {
                        Some(Ok(Some(next))) => {
                            let actions = state.handle(Input::Rotate(next), Instant::now());
                            perform(&client, &ends, identity, &mut state, actions);
                        }
                        Some(Err(e)) if !rotation_error_told => {
                            rotation_error_told = true;
                            tracing::error!(error = %e, "the key waiting for rotation cannot be read");
                        }
                        _ => {}
                    }
                }
                Input::Tick
            }
            _ = &mut stop => {
                let actions = state.handle(Input::Stop, Instant::now());
                let saying_goodbye = actions.contains(&Action::Disconnect);
                perform(&client, &ends, identity, &mut state, actions);
                if saying_goodbye {
                    // Drive the connection until the goodbye is out (the
                    // broker then closes it) or the grace is over.
                    let _ = tokio::time::timeout(STOP_GRACE, async {
                        while let Some(Ok(_)) = polled.recv().await {}
                    })
                    .await;
                }
                tracing::info!("fleet link stopped");
                return;
            }
        };
        let actions = state.handle(input, Instant::now());
        perform(&client, &ends, identity, &mut state, actions);
    }
}
