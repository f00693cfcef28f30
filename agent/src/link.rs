//! The agent's end of the fleet link (design.md §3–4): one persistent MQTT
//! session to the broker, reconnecting with backoff forever.
//!
//! - Snapshots arriving on `nodes/{node}/desired` are decoded and checked
//!   (envelope, size cap, node name) here and handed on through a `watch`
//!   channel: only the newest undelivered one is kept.
//! - Reports go out retained on `nodes/{node}/status` when they change (time
//!   and usage figures aside) and at a slow refresh interval. While offline
//!   only the newest report is kept (a `watch` value), plus a fixed-size
//!   event queue that drops its oldest entry when full and counts the drops:
//!   memory stays flat however long the outage.
//! - `nodes/{node}/presence` is published retained on every connect, and the
//!   broker publishes the Last Will (offline) when the connection dies.
//!
//! Publishing never waits: the task that polls the connection is the one
//! that publishes, so a full request queue would otherwise stall both.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use kedge_common::envelope;
use kedge_common::topics::{self, BrokerUrl, NodeTopic};
use kedge_common::wire::{Event, NodeDesired, NodeReport, Presence};
use rumqttc::{AsyncClient, ConnectionError, EventLoop, LastWill, MqttOptions, Packet, QoS};
use tokio::sync::{Notify, watch};

/// Events kept while offline; the oldest goes first when it is full.
pub const EVENT_QUEUE: usize = 32;
/// Longest wait between connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

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
}

/// The fixed-size event queue shared by the agent's loop and the link.
#[derive(Default)]
pub struct Events {
    queue: Mutex<(heapless::Deque<Event, EVENT_QUEUE>, u64)>,
    notify: Notify,
}

impl Events {
    /// Queues an event, dropping the oldest when full.
    pub fn push(&self, ev: Event) {
        if let Ok(mut g) = self.queue.lock() {
            let (q, dropped) = &mut *g;
            if q.is_full() {
                q.pop_front();
                *dropped += 1;
            }
            let _ = q.push_back(ev);
        }
        self.notify.notify_one();
    }

    fn pop(&self) -> Option<Event> {
        self.queue.lock().ok()?.0.pop_front()
    }

    fn push_front(&self, ev: Event) {
        if let Ok(mut g) = self.queue.lock() {
            let _ = g.0.push_front(ev);
        }
    }

    /// Events dropped since the last call.
    pub fn take_dropped(&self) -> u64 {
        self.queue.lock().map(|mut g| std::mem::take(&mut g.1)).unwrap_or(0)
    }

    pub fn len(&self) -> usize {
        self.queue.lock().map(|g| g.0.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What the agent's loop holds of the link.
pub struct LinkHandle {
    /// Newest snapshot received and not yet taken.
    pub snapshots: watch::Receiver<Option<NodeDesired>>,
    /// Set the newest report here; the link publishes it when it should.
    pub reports: watch::Sender<Option<NodeReport>>,
    pub events: Arc<Events>,
    /// Whether the broker connection is up.
    pub connected: watch::Receiver<bool>,
}

fn now_rfc3339() -> String {
    jiff::Timestamp::now().to_string()
}

/// A report without what changes on its own every second.
fn comparable(r: &NodeReport) -> NodeReport {
    let mut r = r.clone();
    r.time = 0;
    r.usage = Default::default();
    r
}

/// Starts the link task.
pub fn start(cfg: LinkConfig) -> LinkHandle {
    let (snap_tx, snap_rx) = watch::channel(None);
    let (report_tx, report_rx) = watch::channel(None);
    let (conn_tx, conn_rx) = watch::channel(false);
    let events = Arc::new(Events::default());
    tokio::spawn(run(cfg, snap_tx, report_rx, conn_tx, events.clone()));
    LinkHandle { snapshots: snap_rx, reports: report_tx, events, connected: conn_rx }
}

fn options(cfg: &LinkConfig) -> MqttOptions {
    let mut o = MqttOptions::new(cfg.node.clone(), cfg.broker.host.clone(), cfg.broker.port);
    o.set_keep_alive(cfg.keepalive);
    if let Some((user, password)) = &cfg.credentials {
        o.set_credentials(user.clone(), password.clone());
    }
    // The broker keeps our subscription and QoS 1 messages across short drops.
    o.set_clean_session(false);
    // A packet over rumqttc's own limit kills the connection; leave room above
    // our cap so an oversize snapshot is dropped by `decode`, with a reason.
    o.set_max_packet_size(cfg.max_payload.saturating_mul(4).max(64 * 1024), cfg.max_payload + 64 * 1024);
    o.set_request_channel_capacity(64);
    let will = Presence { online: false, since: String::new(), boot_id: cfg.boot_id.clone() };
    o.set_last_will(LastWill::new(
        topics::node_topic(&cfg.prefix, &cfg.node, NodeTopic::Presence),
        will.to_json(),
        QoS::AtLeastOnce,
        true,
    ));
    o
}

struct Session {
    cfg: LinkConfig,
    client: AsyncClient,
    /// The last report handed to the broker, compared without time/usage.
    published: Option<NodeReport>,
    published_at: tokio::time::Instant,
}

impl Session {
    fn topic(&self, which: NodeTopic) -> String {
        topics::node_topic(&self.cfg.prefix, &self.cfg.node, which)
    }

    fn on_connect(&mut self) {
        let presence = Presence { online: true, since: now_rfc3339(), boot_id: self.cfg.boot_id.clone() };
        if let Err(e) = self.client.try_subscribe(self.topic(NodeTopic::Desired), QoS::AtLeastOnce) {
            tracing::warn!(error = %e, "cannot subscribe to the desired topic");
        }
        if let Err(e) =
            self.client.try_publish(self.topic(NodeTopic::Presence), QoS::AtLeastOnce, true, presence.to_json())
        {
            tracing::warn!(error = %e, "cannot publish presence");
        }
        // Whatever the broker had of us may be gone: report again.
        self.published = None;
    }

    fn publish_report(&mut self, report: &NodeReport, force: bool) {
        let same = self.published.as_ref().is_some_and(|p| *p == comparable(report));
        if same && !force {
            return;
        }
        match envelope::encode(report) {
            Ok(bytes) => match self.client.try_publish(self.topic(NodeTopic::Status), QoS::AtLeastOnce, true, bytes) {
                Ok(()) => {
                    self.published = Some(comparable(report));
                    self.published_at = tokio::time::Instant::now();
                }
                Err(e) => tracing::debug!(error = %e, "report not queued; retrying"),
            },
            Err(e) => tracing::error!(error = %e, "cannot encode the node report"),
        }
    }

    fn flush_events(&mut self, events: &Events) {
        while let Some(ev) = events.pop() {
            let bytes = match envelope::encode(&ev) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, "cannot encode an event; dropped");
                    continue;
                }
            };
            if self.client.try_publish(self.topic(NodeTopic::Events), QoS::AtLeastOnce, false, bytes).is_err() {
                events.push_front(ev);
                break;
            }
        }
    }

    fn on_publish(&self, topic: &str, payload: &[u8], snapshots: &watch::Sender<Option<NodeDesired>>, events: &Events) {
        if topic != self.topic(NodeTopic::Desired) {
            tracing::debug!(%topic, "message on a topic we did not ask for; ignored");
            return;
        }
        if payload.is_empty() {
            tracing::info!("the desired snapshot was cleared on the broker; keeping the last accepted one");
            return;
        }
        match kedge_common::wire::decode_for::<NodeDesired>(payload, &self.cfg.node, self.cfg.max_payload) {
            Ok(d) => {
                snapshots.send_replace(Some(d));
            }
            Err(e) => {
                tracing::warn!(%topic, bytes = payload.len(), error = %e, "desired snapshot rejected; keeping the last accepted one");
                events.push(Event {
                    time: jiff::Timestamp::now().as_second(),
                    normal: false,
                    reason: "SnapshotRejected".into(),
                    message: format!("desired snapshot of {} bytes rejected: {e}", payload.len()),
                    pod: None,
                });
            }
        }
    }
}

async fn run(
    cfg: LinkConfig,
    snapshots: watch::Sender<Option<NodeDesired>>,
    mut reports: watch::Receiver<Option<NodeReport>>,
    connected: watch::Sender<bool>,
    events: Arc<Events>,
) {
    let (client, mut eventloop): (AsyncClient, EventLoop) = AsyncClient::new(options(&cfg), 64);
    let refresh = cfg.report_refresh;
    let mut s = Session { cfg, client, published: None, published_at: tokio::time::Instant::now() };
    let mut backoff = Duration::from_millis(200);
    let mut up = false;
    let mut retry = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            ev = eventloop.poll() => match ev {
                Ok(rumqttc::Event::Incoming(Packet::ConnAck(ack))) => {
                    tracing::info!(broker = %s.cfg.broker, session_present = ack.session_present, "connected to the broker");
                    up = true;
                    backoff = Duration::from_millis(200);
                    connected.send_replace(true);
                    s.on_connect();
                    if let Some(r) = reports.borrow_and_update().clone() {
                        s.publish_report(&r, true);
                    }
                    s.flush_events(&events);
                }
                Ok(rumqttc::Event::Incoming(Packet::Publish(p))) => s.on_publish(&p.topic, &p.payload, &snapshots, &events),
                Ok(_) => {}
                Err(e) => {
                    if up {
                        tracing::warn!(broker = %s.cfg.broker, error = %e, "lost the broker; pods keep running, reconnecting");
                    } else {
                        tracing::debug!(broker = %s.cfg.broker, error = %e, "broker unreachable; retrying");
                    }
                    if up || matches!(e, ConnectionError::ConnectionRefused(_)) {
                        connected.send_replace(false);
                    }
                    up = false;
                    tokio::time::sleep(jitter(backoff)).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            },
            changed = reports.changed(), if up => {
                if changed.is_err() {
                    return;
                }
                if let Some(r) = reports.borrow_and_update().clone() {
                    s.publish_report(&r, false);
                }
            }
            _ = events.notify.notified(), if up => s.flush_events(&events),
            _ = retry.tick(), if up => {
                // Retry what a full request queue refused, and refresh.
                let due = s.published_at.elapsed() >= refresh;
                if let Some(r) = reports.borrow().clone() {
                    s.publish_report(&r, due);
                }
                s.flush_events(&events);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_event_queue_keeps_the_newest_and_counts_drops() {
        let q = Events::default();
        for i in 0..(EVENT_QUEUE as i64 + 5) {
            q.push(Event { time: i, ..Default::default() });
        }
        assert_eq!(q.len(), EVENT_QUEUE);
        assert_eq!(q.take_dropped(), 5);
        assert_eq!(q.take_dropped(), 0);
        assert_eq!(q.pop().map(|e| e.time), Some(5), "the oldest five went");
    }
}
