//! The agent's side of the fleet protocol as a plain value (as rumqttc's
//! `MqttState`): an input — the broker connection came up or went, a message
//! arrived, the node loop has a new report or event, a timer ticked, stop —
//! goes in, and the actions to take come out: subscribe, publish, hand a
//! snapshot on, report the connection. No sockets, no clock of its own:
//! the driver (`super::run`) performs the actions and passes the time in.
//!
//! The rules it keeps (design.md §3):
//! - a snapshot is handed on only if it decodes (envelope, size cap, node
//!   name) and is newer than the newest one handed on; a bad one becomes a
//!   `SnapshotRejected` event and the last accepted snapshot stays;
//! - only the newest report is kept (coalescing), and it is published when
//!   it differs from the last one published (time, usage and the drop count
//!   aside), at once after every (re)connect, and at the refresh interval;
//! - events wait in a fixed-size queue while offline; when it is full the
//!   oldest goes, and the count of dropped events rides on the next report;
//! - until the controller has accepted this node's key, the only thing sent
//!   is the join request (retried with backoff), and nothing is taken but
//!   the controller's signed answer to it;
//! - everything sent is signed with the node's key and numbered
//!   ([`Seq`]); the Last Will is numbered above the online presence that
//!   follows the connect it belongs to, so the controller takes it when it
//!   fires and refuses it replayed later.

use std::time::Duration;

use kedge_common::envelope;
use kedge_common::network::ClusterNetwork;
use kedge_common::sign::{PublicKey, Purpose};
use kedge_common::topics::{self, NodeTopic};
use kedge_common::wire::{Event, JoinAnswer, JoinRequest, NodeDesired, NodeReport, Presence, Seq};

use crate::identity::{Identity, NextKey};
use tokio::time::Instant;

/// Events kept while offline; the oldest goes first when it is full.
pub const EVENT_QUEUE: usize = 32;

/// What happened, as the driver tells it.
#[derive(Debug)]
pub enum Input {
    /// The broker accepted our connection (CONNACK).
    Connected,
    /// The connection failed or dropped.
    Disconnected,
    /// A PUBLISH arrived.
    Message { topic: String, payload: Vec<u8> },
    /// The node loop's newest report.
    Report(Box<NodeReport>),
    /// Something the controller should hear about.
    Event(Event),
    /// Events the driver could not take in (its channel was full).
    EventsLost(u64),
    /// The periodic timer: retry what was refused, refresh the report.
    Tick,
    /// The agent is stopping: say goodbye.
    Stop,
    /// A key pair waits to replace this node's (`kedge-agent rotate-key`):
    /// ask the controller to take it.
    Rotate(NextKey),
    /// Something on a session topic was refused ([`crate::sessions`]):
    /// counted and told, as a refused snapshot is.
    SessionRefused(String),
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Tell the node loop whether the broker connection is up.
    Connected(bool),
    Subscribe {
        topic: String,
    },
    Publish(Publish),
    /// A snapshot to act on (after storing it).
    Deliver(NodeDesired),
    /// A newer cluster network table to act on (after storing `payload`,
    /// the envelope as received).
    DeliverNetwork {
        table: Box<ClusterNetwork>,
        payload: Vec<u8>,
    },
    /// Close the session cleanly (after the publishes before it).
    Disconnect,
    /// The controller accepted this node's key: record it.
    Joined,
    /// The controller took the waiting key pair, which the link now signs
    /// and opens with: put it in place on disk.
    Rotated,
    /// The controller refused the waiting key pair, for this reason.
    RotationRefused(String),
}

/// One message to publish at QoS 1.
#[derive(Debug, Clone, PartialEq)]
pub struct Publish {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
    pub what: Outgoing,
}

/// What a publish carries, so a refused one can be put back.
#[derive(Debug, Clone, PartialEq)]
pub enum Outgoing {
    Presence {
        online: bool,
        seq: u64,
    },
    /// The node report, carrying this many dropped events.
    Report {
        events_dropped: u64,
    },
    Event(Event),
    Join,
    Rotate,
}

/// Static facts of the session.
#[derive(Debug, Clone)]
pub struct Settings {
    pub node: String,
    pub prefix: String,
    pub boot_id: String,
    pub max_payload: usize,
    /// A report is republished this often even when nothing changed.
    pub report_refresh: Duration,
    /// Topics to subscribe to once joined besides the snapshot and the
    /// network table (the session topics).
    pub extra_topics: Vec<String>,
    /// The controller's key, pinned from the join token: what it sends
    /// must carry its signature. `None` (not joined): nothing is taken.
    pub controller_key: Option<PublicKey>,
    /// This node's key and join state ([`crate::identity`]); `None`: it was
    /// never given a token and cannot join.
    pub identity: Option<Identity>,
}

/// First wait before a join request is asked again; it doubles up to [`JOIN_BACKOFF_MAX`].
pub const JOIN_BACKOFF: Duration = Duration::from_secs(2);
pub const JOIN_BACKOFF_MAX: Duration = Duration::from_secs(60);

/// Why nothing from the controller is taken before the node has a key.
const NOT_JOINED: &str = "no controller key pinned: this node has not joined (give it a token from `kedge-controller token create` with --token, agent.yaml or the first-boot file)";

pub struct LinkState {
    settings: Settings,
    desired_topic: String,
    network_topic: String,
    connected: bool,
    /// A subscription or presence the client refused; retried at the tick.
    subscribe_pending: bool,
    presence_pending: bool,
    /// The node loop's newest report.
    report: Option<NodeReport>,
    /// The last report handed to the client, in comparable form, and when.
    published: Option<(NodeReport, Instant)>,
    events: heapless::Deque<Event, EVENT_QUEUE>,
    /// Events dropped and not yet told in a published report.
    dropped: u64,
    /// The newest generation handed on.
    delivered: u64,
    /// The newest network table generation handed on.
    network_delivered: u64,
    /// Whether the controller accepted this node's key.
    joined: bool,
    answer_topic: String,
    /// Echoed by the controller's answer (one per start).
    join_nonce: String,
    /// When the join request is asked again, and the wait after that.
    join_retry: Option<(Instant, Duration)>,
    /// This node's message counter.
    seq: Seq,
    /// The number the next online presence carries: taken with the Last
    /// Will's, below it ([`LinkState::will`]).
    online_seq: Option<u64>,
    /// Messages from the controller refused since the start.
    rejected: u64,
    /// A key rotation asked of the controller, not yet answered.
    rotation: Option<Rotation>,
    /// The sealing key before a rotation: a snapshot sealed to it may still
    /// be on its way.
    previous_seal: Option<kedge_common::seal::SealSecret>,
}

/// A key rotation under way.
struct Rotation {
    next: NextKey,
    /// Echoed by the controller's answer.
    nonce: String,
    /// When it is asked again, and the wait after that.
    retry: Option<(Instant, Duration)>,
}

/// A report without what changes on its own (time, usage) or travels beside
/// it (the drop count).
fn comparable(r: &NodeReport) -> NodeReport {
    let mut r = r.clone();
    r.time = 0;
    r.usage = Default::default();
    r.events_dropped = 0;
    r
}

impl LinkState {
    /// `accepted`, `network_accepted`: the snapshot and network table
    /// generations the node already has (from its cache): ones not newer
    /// are not handed on.
    pub fn new(settings: Settings, accepted: u64, network_accepted: u64) -> LinkState {
        let joined = settings.identity.as_ref().is_some_and(Identity::joined);
        LinkState {
            desired_topic: topics::node_topic(&settings.prefix, &settings.node, NodeTopic::Desired),
            network_topic: topics::cluster_network_topic(&settings.prefix),
            answer_topic: topics::join_answer_topic(&settings.prefix, &settings.node),
            joined,
            join_nonce: kedge_common::sign::random_text(16).unwrap_or_default(),
            join_retry: None,
            seq: Seq::start(settings.identity.as_ref().map_or(0, |i| i.epoch)),
            online_seq: None,
            rejected: 0,
            rotation: None,
            previous_seal: None,
            settings,
            connected: false,
            subscribe_pending: false,
            presence_pending: false,
            report: None,
            published: None,
            events: heapless::Deque::new(),
            dropped: 0,
            delivered: accepted,
            network_delivered: network_accepted,
        }
    }

    pub fn is_connected(&self) -> bool {
        self.connected
    }

    pub fn is_joined(&self) -> bool {
        self.joined
    }

    /// This node's MQTT client id: derived from its current key
    /// ([`kedge_common::sign::SigningKey::client_id`]); the bare name for a
    /// node without a key (it takes nothing anyway).
    pub fn client_id(&self) -> String {
        let node = &self.settings.node;
        self.settings.identity.as_ref().map_or_else(|| node.clone(), |i| i.key.client_id(node))
    }

    /// Whether a waiting key pair would be taken up now ([`Input::Rotate`]).
    pub fn wants_rotation(&self) -> bool {
        self.joined && self.rotation.is_none()
    }

    /// The Last Will for the next connection: an offline presence numbered
    /// above the online one sent once it is up (both numbers taken now), so
    /// the will is newer than what precedes it and older than anything
    /// after the next connect.
    pub fn will(&mut self) -> (String, Vec<u8>) {
        let online = self.seq.take();
        self.online_seq = Some(online);
        let mut p = Presence {
            online: false,
            since: String::new(),
            boot_id: self.settings.boot_id.clone(),
            seq: self.seq.take(),
            sig: String::new(),
        };
        if let Some(id) = &self.settings.identity {
            p.sign(&self.settings.node, &id.key);
        }
        (self.topic(NodeTopic::Presence), p.to_json())
    }

    /// Events waiting to be published.
    pub fn queued_events(&self) -> usize {
        self.events.len()
    }

    fn topic(&self, which: NodeTopic) -> String {
        topics::node_topic(&self.settings.prefix, &self.settings.node, which)
    }

    pub fn handle(&mut self, input: Input, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        match input {
            Input::Connected => {
                self.connected = true;
                out.push(Action::Connected(true));
                if self.joined {
                    self.session(now, &mut out);
                    if let Some(r) = self.rotation.as_mut() {
                        r.retry = None;
                        self.rotate(now, &mut out);
                    }
                } else {
                    out.push(Action::Subscribe { topic: self.answer_topic.clone() });
                    self.join_retry = None;
                    self.join(now, &mut out);
                }
            }
            Input::Disconnected => {
                if self.connected {
                    out.push(Action::Connected(false));
                }
                self.connected = false;
            }
            Input::Message { topic, payload } => self.message(&topic, &payload, now, &mut out),
            Input::Report(r) => {
                self.report = Some(*r);
                self.flush(now, &mut out);
            }
            Input::Event(ev) => {
                self.push_event(ev);
                self.flush(now, &mut out);
            }
            Input::EventsLost(n) => {
                self.dropped += n;
                crate::metrics::counters().outbox_dropped.inc_by(n);
            }
            Input::Tick => {
                if self.connected && !self.joined {
                    if self.subscribe_pending {
                        self.subscribe_pending = false;
                        out.push(Action::Subscribe { topic: self.answer_topic.clone() });
                    }
                    if self.join_retry.is_some_and(|(at, _)| now >= at) {
                        self.join(now, &mut out);
                    }
                }
                if self.connected && self.joined {
                    if self.subscribe_pending {
                        self.subscribe_pending = false;
                        self.subscribe_joined(&mut out);
                    }
                    if self.presence_pending {
                        self.presence_pending = false;
                        out.push(self.presence(true));
                    }
                    if self.rotation.as_ref().is_some_and(|r| r.retry.is_none_or(|(at, _)| now >= at)) {
                        self.rotate(now, &mut out);
                    }
                }
                self.flush(now, &mut out);
            }
            Input::Rotate(next) => {
                if self.wants_rotation() {
                    let nonce = kedge_common::sign::random_text(16).unwrap_or_default();
                    tracing::info!(key = %next.key.public(), "asking the controller to take this node's new key");
                    self.rotation = Some(Rotation { next, nonce, retry: None });
                    if self.connected {
                        self.rotate(now, &mut out);
                    }
                }
            }
            Input::SessionRefused(message) => {
                tracing::warn!(%message, "session message refused");
                self.reject("SessionRefused", message);
                self.flush(now, &mut out);
            }
            Input::Stop => {
                if self.connected && self.joined {
                    // A clean DISCONNECT does not fire the Last Will: say it ourselves.
                    out.push(self.presence(false));
                    out.push(Action::Disconnect);
                }
                self.connected = false;
            }
        }
        out
    }

    /// The driver could not hand `action` to the client (its queue was
    /// full): it is tried again at the next tick, or the event goes back to
    /// the front of the queue.
    pub fn refused(&mut self, action: Action) {
        match action {
            Action::Subscribe { .. } => self.subscribe_pending = true,
            Action::Publish(p) => match p.what {
                Outgoing::Presence { online: true, seq } => {
                    // The same number again: it must stay below the will's.
                    self.presence_pending = true;
                    self.online_seq = Some(seq);
                }
                Outgoing::Presence { online: false, .. } => {}
                Outgoing::Report { events_dropped } => {
                    // Not published after all: the drop count goes with the next one.
                    self.dropped += events_dropped;
                    self.published = None;
                }
                Outgoing::Event(ev) => {
                    if self.events.push_front(ev).is_err() {
                        self.dropped += 1;
                        crate::metrics::counters().outbox_dropped.inc();
                    }
                }
                // Asked again at the retry already set.
                Outgoing::Join | Outgoing::Rotate => {}
            },
            Action::Connected(_)
            | Action::Deliver(_)
            | Action::DeliverNetwork { .. }
            | Action::Disconnect
            | Action::Joined
            | Action::Rotated
            | Action::RotationRefused(_) => {}
        }
    }

    /// The joined session on a fresh connection: the controller's topics,
    /// presence, and the report again (whatever the broker had of us may
    /// be gone).
    fn session(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.subscribe_joined(out);
        // This connection's presence: one refused on an earlier one is not
        // sent again above this connection's will.
        self.presence_pending = false;
        out.push(self.presence(true));
        self.published = None;
        self.flush(now, out);
    }

    /// The controller's topics of a joined node.
    fn subscribe_joined(&self, out: &mut Vec<Action>) {
        let topics = [&self.desired_topic, &self.network_topic].into_iter().chain(&self.settings.extra_topics);
        out.extend(topics.map(|t| Action::Subscribe { topic: t.clone() }));
    }

    /// The pinned controller key, if joined.
    pub fn controller_key(&self) -> Option<&PublicKey> {
        self.settings.controller_key.as_ref()
    }

    /// This node's current sealing key.
    pub fn seal(&self) -> Option<&kedge_common::seal::SealSecret> {
        self.settings.identity.as_ref().map(|i| &i.seal)
    }

    /// Sends the join request (and sets when it is asked again).
    fn join(&mut self, now: Instant, out: &mut Vec<Action>) {
        let (Some(id), Some(token)) =
            (&self.settings.identity, self.settings.identity.as_ref().and_then(|i| i.join_token.as_ref()))
        else {
            if self.join_retry.is_none() {
                tracing::error!("{NOT_JOINED}");
                self.join_retry = Some((now + JOIN_BACKOFF_MAX, JOIN_BACKOFF_MAX));
            }
            return;
        };
        let key = id.key.public();
        let request = JoinRequest {
            node: self.settings.node.clone(),
            key: key.to_string(),
            token_id: token.id.clone(),
            proof: kedge_common::sign::signature_text(&kedge_common::sign::join_proof(
                &token.secret,
                &self.settings.node,
                &token.id,
                &key,
            )),
            nonce: self.join_nonce.clone(),
            seal_key: id.seal.public().to_string(),
        };
        let wait = self.join_retry.map_or(JOIN_BACKOFF, |(_, w)| (w * 2).min(JOIN_BACKOFF_MAX));
        self.join_retry = Some((now + wait, wait));
        match envelope::encode_signed(&request, Purpose::Join, &id.key) {
            Ok(payload) => {
                tracing::info!(token = %token.id, key = %key, "asking the controller to join");
                out.push(Action::Publish(Publish {
                    topic: topics::join_topic(&self.settings.prefix, &self.settings.node),
                    payload,
                    retain: false,
                    what: Outgoing::Join,
                }));
            }
            Err(e) => tracing::error!(error = %e, "cannot encode the join request"),
        }
    }

    /// Asks the controller to take the waiting key pair: signed with the
    /// current key, proven with the new one (and sets when it is asked again).
    fn rotate(&mut self, now: Instant, out: &mut Vec<Action>) {
        let (Some(r), Some(id)) = (self.rotation.as_mut(), self.settings.identity.as_ref()) else { return };
        let req =
            kedge_common::wire::RotateRequest::new(&self.settings.node, &r.next.key, &r.next.seal.public(), &r.nonce);
        let wait = r.retry.map_or(JOIN_BACKOFF, |(_, w)| (w * 2).min(JOIN_BACKOFF_MAX));
        r.retry = Some((now + wait, wait));
        match envelope::encode_signed(&req, Purpose::Rotate, &id.key) {
            Ok(payload) => {
                // The answer comes where join answers do.
                out.push(Action::Subscribe { topic: self.answer_topic.clone() });
                out.push(Action::Publish(Publish {
                    topic: self.topic(NodeTopic::Rotate),
                    payload,
                    retain: false,
                    what: Outgoing::Rotate,
                }));
            }
            Err(e) => tracing::error!(error = %e, "cannot encode the key rotation request"),
        }
    }

    /// An answer signed by the controller (to a `what` request); one that is
    /// not is counted and told.
    fn signed_answer(&mut self, payload: &[u8], what: &str) -> Option<JoinAnswer> {
        let ckey = self.settings.controller_key.as_ref()?;
        match envelope::decode_verified::<JoinAnswer>(payload, self.settings.max_payload, Purpose::JoinAnswer, ckey) {
            Ok(a) => Some(a),
            Err(e) => {
                self.rejected += 1;
                tracing::warn!(bytes = payload.len(), error = %e, "{what} answer refused");
                None
            }
        }
    }

    /// The controller's answer to our key rotation request.
    fn rotation_answer(&mut self, payload: &[u8], out: &mut Vec<Action>) {
        if self.rotation.is_none() {
            return;
        }
        let Some(answer) = self.signed_answer(payload, "key rotation") else { return };
        let Some(r) = &self.rotation else { return };
        if answer.node != self.settings.node || answer.key != r.next.key.public().to_string() || answer.nonce != r.nonce
        {
            tracing::info!("an answer for another request; ignored");
            return;
        }
        let Some(r) = self.rotation.take() else { return };
        if !answer.accepted {
            tracing::error!(reason = %answer.reason, "the controller refused this node's new key; the current one stays");
            out.push(Action::RotationRefused(answer.reason));
            return;
        }
        if let Some(id) = self.settings.identity.as_mut() {
            tracing::info!(old = %id.key.public(), new = %r.next.key.public(), "the controller took this node's new key");
            self.previous_seal = Some(std::mem::replace(&mut id.seal, r.next.seal));
            id.key = r.next.key;
        }
        out.push(Action::Rotated);
    }

    /// The controller's answer to our join request (or key rotation).
    fn answer(&mut self, payload: &[u8], now: Instant, out: &mut Vec<Action>) {
        if payload.is_empty() {
            return;
        }
        if self.joined {
            return self.rotation_answer(payload, out);
        }
        let Some(answer) = self.signed_answer(payload, "join") else { return };
        let Some(id) = &self.settings.identity else { return };
        if answer.node != self.settings.node
            || answer.key != id.key.public().to_string()
            || answer.nonce != self.join_nonce
        {
            tracing::info!("a join answer for another request; ignored");
            return;
        }
        if !answer.accepted {
            let wait = self.join_retry.map_or(JOIN_BACKOFF, |(_, w)| w);
            tracing::warn!(reason = %answer.reason, retry_in = ?wait, "the controller refused to join this node");
            return;
        }
        tracing::info!(key = %id.key.public(), "joined: the controller accepted this node's key");
        self.joined = true;
        self.join_retry = None;
        out.push(Action::Joined);
        if self.connected {
            self.session(now, out);
        }
    }

    fn presence(&mut self, online: bool) -> Action {
        let since = if online { jiff::Timestamp::now().to_string() } else { String::new() };
        let seq = match self.online_seq.take() {
            Some(s) if online => s,
            _ => self.seq.take(),
        };
        let mut p = Presence { online, since, boot_id: self.settings.boot_id.clone(), seq, sig: String::new() };
        if let Some(id) = &self.settings.identity {
            p.sign(&self.settings.node, &id.key);
        }
        Action::Publish(Publish {
            topic: self.topic(NodeTopic::Presence),
            payload: p.to_json(),
            retain: true,
            what: Outgoing::Presence { online, seq },
        })
    }

    fn push_event(&mut self, ev: Event) {
        if self.events.is_full() {
            self.events.pop_front();
            self.dropped += 1;
            crate::metrics::counters().outbox_dropped.inc();
        }
        // Cannot fail: there is room now.
        let _ = self.events.push_back(ev);
    }

    /// While connected: the report if it changed or is due, then every
    /// queued event.
    fn flush(&mut self, now: Instant, out: &mut Vec<Action>) {
        let Some(id) = self.settings.identity.as_ref().filter(|_| self.connected && self.joined) else {
            return;
        };
        if let Some(r) = &self.report {
            let cmp = comparable(r);
            let due = match &self.published {
                None => true,
                Some((p, at)) => *p != cmp || now.saturating_duration_since(*at) >= self.settings.report_refresh,
            };
            if due {
                let mut r = r.clone();
                r.events_dropped = std::mem::take(&mut self.dropped);
                r.rejected = self.rejected;
                r.seq = self.seq.take();
                match envelope::encode_signed(&r, Purpose::Report, &id.key) {
                    Ok(payload) => {
                        self.published = Some((cmp, now));
                        out.push(Action::Publish(Publish {
                            topic: self.topic(NodeTopic::Status),
                            payload,
                            retain: true,
                            what: Outgoing::Report { events_dropped: r.events_dropped },
                        }));
                    }
                    Err(e) => {
                        self.dropped = r.events_dropped;
                        tracing::error!(error = %e, "cannot encode the node report");
                    }
                }
            }
        }
        while let Some(mut ev) = self.events.pop_front() {
            ev.seq = self.seq.take();
            match envelope::encode_signed(&ev, Purpose::Event, &id.key) {
                Ok(payload) => out.push(Action::Publish(Publish {
                    topic: self.topic(NodeTopic::Events),
                    payload,
                    retain: false,
                    what: Outgoing::Event(ev),
                })),
                Err(e) => tracing::error!(error = %e, "cannot encode an event; dropped"),
            }
        }
    }

    fn message(&mut self, topic: &str, payload: &[u8], now: Instant, out: &mut Vec<Action>) {
        if topic == self.answer_topic {
            return self.answer(payload, now, out);
        }
        if topic == self.network_topic {
            return self.network(payload, now, out);
        }
        if topic != self.desired_topic {
            tracing::debug!(%topic, "message on a topic we did not ask for; ignored");
            return;
        }
        if payload.is_empty() {
            tracing::info!("the desired snapshot was cleared on the broker; keeping the last accepted one");
            return;
        }
        let open = |key: &PublicKey, seal: Option<&kedge_common::seal::SealSecret>| {
            kedge_common::wire::decode_opened_for::<NodeDesired>(
                payload,
                &self.settings.node,
                self.settings.max_payload,
                Purpose::Desired,
                key,
                seal,
            )
            .map_err(|e| e.to_string())
        };
        let decoded = match &self.settings.controller_key {
            Some(key) => open(key, self.settings.identity.as_ref().map(|i| &i.seal)).or_else(|e| {
                // Sealed before a key rotation reached the controller.
                match &self.previous_seal {
                    Some(previous) => open(key, Some(previous)).map_err(|_| e),
                    None => Err(e),
                }
            }),
            None => Err(NOT_JOINED.to_owned()),
        };
        match decoded {
            Ok(d) if d.generation <= self.delivered => {
                // Also what a replayed old snapshot meets: said, not acted on.
                tracing::info!(
                    generation = d.generation,
                    have = self.delivered,
                    "desired snapshot not newer than the one applied; ignored"
                );
            }
            Ok(d) => {
                self.delivered = d.generation;
                out.push(Action::Deliver(d));
            }
            Err(e) => {
                tracing::warn!(%topic, bytes = payload.len(), error = %e, "desired snapshot rejected; keeping the last accepted one");
                self.reject("SnapshotRejected", format!("desired snapshot of {} bytes rejected: {e}", payload.len()));
                self.flush(now, out);
            }
        }
    }

    /// The cluster network table: the same rules as a snapshot (decodes,
    /// within the cap, newer), without a node name.
    fn network(&mut self, payload: &[u8], now: Instant, out: &mut Vec<Action>) {
        if payload.is_empty() {
            tracing::info!("the network table was cleared on the broker; keeping the last accepted one");
            return;
        }
        let decoded = match &self.settings.controller_key {
            Some(key) => {
                envelope::decode_verified::<ClusterNetwork>(payload, self.settings.max_payload, Purpose::Network, key)
                    .map_err(|e| e.to_string())
            }
            None => Err(NOT_JOINED.to_owned()),
        };
        match decoded {
            Ok(t) if t.generation <= self.network_delivered => {
                tracing::info!(
                    generation = t.generation,
                    have = self.network_delivered,
                    "network table not newer than the one applied; ignored"
                );
            }
            Ok(t) => {
                self.network_delivered = t.generation;
                out.push(Action::DeliverNetwork { table: Box::new(t), payload: payload.to_vec() });
            }
            Err(e) => {
                tracing::warn!(bytes = payload.len(), error = %e, "network table rejected; keeping the last accepted one");
                self.reject("NetworkTableRejected", format!("network table of {} bytes rejected: {e}", payload.len()));
                self.flush(now, out);
            }
        }
    }

    fn reject(&mut self, reason: &str, message: String) {
        self.rejected += 1;
        self.push_event(Event {
            time: jiff::Timestamp::now().as_second(),
            normal: false,
            reason: reason.into(),
            message,
            pod: None,
            seq: 0,
        });
    }
}

#[cfg(test)]
mod tests;
