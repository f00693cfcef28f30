//! Sessions relayed to nodes through the broker ([`kedge_common::session`]):
//! the controller's end of `kubectl logs` (and, later, exec, attach and
//! port-forward). A node needs nothing but its one outbound connection to
//! the broker: no port to open, no address to reach, behind any NAT.
//!
//! [`Relay::open`] checks the node is online (an offline one is answered at
//! once, naming when it was last seen), publishes the signed open sealed to
//! the node, and waits at most [`OPEN_TIMEOUT`] for its first frame. The
//! link task hands every frame from a node to [`Relay::incoming`], which
//! opens it with its session's key and passes it on; a frame that does not
//! open is counted against the node and dropped. A [`Session`] dropped
//! before its end tells the node to stop; nothing stays behind on either
//! side.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kedge_common::session::{
    self, DEFAULT_WINDOW, Dir, Frame, Opener, PING_EVERY, Request, SILENT_LIMIT, Sealer, SessionOpen, Usage,
};
use kedge_common::sign::{Purpose, SigningKey};
use kedge_common::topics;
use rumqttc::{AsyncClient, QoS};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::FleetState;
use crate::client::Client;

/// How long a node has to answer a session open.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("node {node:?} is offline (last seen {last_seen})")]
    Offline { node: String, last_seen: String },
    #[error("node {node:?} did not answer within {}s (last seen {last_seen})", OPEN_TIMEOUT.as_secs())]
    NoAnswer { node: String, last_seen: String },
    #[error("node {0:?} has not joined: there is no key to open a session with")]
    NotJoined(String),
    #[error("the controller is not connected to the fleet broker")]
    NoBroker,
    /// The node refused the session; `code` as HTTP status codes go.
    #[error("{message}")]
    Node { code: u16, message: String },
    #[error("cannot open a session: {0}")]
    Internal(String),
}

struct Slot {
    opener: Opener,
    to_handler: mpsc::Sender<Frame>,
}

pub struct Relay {
    mqtt: AsyncClient,
    prefix: String,
    key: Arc<SigningKey>,
    state: Arc<FleetState>,
    client: Client,
    max_payload: usize,
    /// The last open counter used.
    counter: AtomicU64,
    sessions: Mutex<HashMap<(String, String), Slot>>,
    /// Each node's last usage answer (`kubectl top`), kept briefly.
    usage: Mutex<HashMap<String, (Instant, Arc<Usage>)>>,
}

/// How long a node's usage answer serves `kubectl top` (metrics-server
/// scrapes every 15 s).
pub const USAGE_FRESH: Duration = Duration::from_secs(10);

/// "2026-12-06T10:00:00Z, 3m ago", or "never, …" — when a node was last heard.
fn last_seen(at: i64) -> String {
    if at <= 0 {
        return "never, since this controller started".into();
    }
    let now = jiff::Timestamp::now().as_second();
    let ago = (now - at).max(0);
    let when = jiff::Timestamp::from_second(at).map(|t| t.to_string()).unwrap_or_default();
    let ago = match ago {
        0..=119 => format!("{ago}s"),
        120..=7199 => format!("{}m", ago / 60),
        _ => format!("{}h", ago / 3600),
    };
    format!("{when}, {ago} ago")
}

impl Relay {
    pub fn new(
        mqtt: AsyncClient,
        prefix: String,
        key: Arc<SigningKey>,
        state: Arc<FleetState>,
        client: Client,
        max_payload: usize,
    ) -> Arc<Relay> {
        Arc::new(Relay {
            mqtt,
            prefix,
            key,
            state,
            client,
            max_payload,
            counter: AtomicU64::new(0),
            sessions: Mutex::new(HashMap::new()),
            usage: Mutex::new(HashMap::new()),
        })
    }

    fn with<R>(&self, f: impl FnOnce(&mut HashMap<(String, String), Slot>) -> R) -> R {
        f(&mut self.sessions.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// The filter of every node's session frames.
    pub fn filter(&self) -> String {
        topics::session_out_filter(&self.prefix)
    }

    /// Above every counter used before, by this controller or (wall clock
    /// in microseconds) an earlier run.
    fn next_counter(&self) -> u64 {
        let now = u64::try_from(jiff::Timestamp::now().as_microsecond()).unwrap_or(0);
        let prev = self.counter.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |c| Some(now.max(c + 1)));
        prev.map_or(now, |c| now.max(c + 1))
    }

    /// When the node was last heard from, in words.
    fn last_seen(&self, node: &str) -> String {
        let live = self.state.node(node).map_or(0, |n| n.presence_at.max(n.report_at));
        last_seen(live)
    }

    /// Sessions open now.
    pub fn open_sessions(&self) -> usize {
        self.with(|m| m.len())
    }

    /// Opens a session on `node`; the node has answered when this returns.
    pub async fn open(self: &Arc<Self>, node: &str, request: Request) -> Result<Session, RelayError> {
        let kind = match &request {
            Request::Logs(_) => "log",
            Request::Exec(_) => "exec",
            Request::PortForward(_) => "portforward",
            Request::Usage => "usage",
        };
        let opened = self.open_inner(node, request).await;
        let result = match &opened {
            Ok(_) => "started",
            Err(RelayError::Offline { .. } | RelayError::NoBroker) => "offline",
            Err(RelayError::NoAnswer { .. }) => "no answer",
            Err(RelayError::Node { .. }) => "refused",
            Err(_) => "error",
        };
        self.state.metrics().sessions.get_or_create(&crate::telemetry::SessionLabels { kind, result }).inc();
        opened
    }

    async fn open_inner(self: &Arc<Self>, node: &str, request: Request) -> Result<Session, RelayError> {
        if !self.state.connected() {
            return Err(RelayError::NoBroker);
        }
        if !self.state.online(node) {
            return Err(RelayError::Offline { node: node.into(), last_seen: self.last_seen(node) });
        }
        let n = self.client.get::<Node>("", node).map_err(|e| RelayError::Internal(e.to_string()))?;
        let seal = n.as_ref().and_then(super::trust::seal_key).ok_or_else(|| RelayError::NotJoined(node.into()))?;
        let internal = |e: session::SessionError| RelayError::Internal(e.to_string());
        let key = session::new_key().map_err(internal)?;
        let sid = session::new_sid().map_err(internal)?;
        let open = SessionOpen {
            node: node.into(),
            sid: sid.clone(),
            counter: self.next_counter(),
            key: key.to_vec().into(),
            window: DEFAULT_WINDOW,
            request,
        };
        let payload = kedge_common::envelope::encode_sealed(&open, Purpose::SessionOpen, &self.key, Some(&seal))
            .map_err(|e| RelayError::Internal(e.to_string()))?;
        let (to_handler, from_relay) = mpsc::channel(session::QUEUE);
        let opener = Opener::new(&key, Dir::ToController, &sid, self.max_payload).map_err(internal)?;
        self.with(|m| m.insert((node.to_owned(), sid.clone()), Slot { opener, to_handler }));
        let mut s = Session {
            relay: self.clone(),
            node: node.to_owned(),
            sid: sid.clone(),
            topic: topics::session_topic(&self.prefix, node, &sid, Dir::ToNode),
            sealer: Sealer::new(&key, Dir::ToNode, &sid).map_err(internal)?,
            from_relay,
            heard: Instant::now(),
            sent: Instant::now(),
            taken: 0,
            credit: i64::from(DEFAULT_WINDOW),
            ended: false,
        };
        self.mqtt
            .publish(topics::session_open_topic(&self.prefix, node), QoS::AtLeastOnce, false, payload)
            .await
            .map_err(|e| RelayError::Internal(e.to_string()))?;
        let first = tokio::time::timeout(OPEN_TIMEOUT, s.from_relay.recv()).await;
        match first {
            Ok(Some(Frame::Started)) => Ok(s),
            Ok(Some(Frame::Error { code, message })) => {
                s.ended = true;
                Err(RelayError::Node { code, message })
            }
            Ok(Some(other)) => Err(RelayError::Internal(format!("node {node:?} began the session with {other:?}"))),
            Ok(None) | Err(_) => Err(RelayError::NoAnswer { node: node.into(), last_seen: self.last_seen(node) }),
        }
    }

    /// The node's CPU and memory and its pods' (asked through a session,
    /// unless asked less than [`USAGE_FRESH`] ago).
    pub async fn usage(self: &Arc<Self>, node: &str) -> Result<Arc<Usage>, RelayError> {
        let cached = self.usage.lock().unwrap_or_else(PoisonError::into_inner).get(node).cloned();
        if let Some((_, u)) = cached.filter(|(at, _)| at.elapsed() < USAGE_FRESH) {
            return Ok(u);
        }
        let mut s = self.open(node, Request::Usage).await?;
        let mut body = Vec::new();
        loop {
            match s.recv().await {
                Some(Frame::Data { data, .. }) => {
                    s.consumed(data.0.len()).await;
                    body.extend_from_slice(&data.0);
                    if body.len() > self.max_payload.saturating_mul(64) {
                        return Err(RelayError::Internal(format!("node {node:?} sent an oversized usage answer")));
                    }
                }
                Some(Frame::End) => break,
                Some(Frame::Error { code, message }) => return Err(RelayError::Node { code, message }),
                Some(_) => {}
                None => return Err(RelayError::NoAnswer { node: node.into(), last_seen: self.last_seen(node) }),
            }
        }
        let usage = Arc::new(Usage::from_cbor(&body).map_err(|e| RelayError::Internal(format!("node {node:?}: {e}")))?);
        self.usage
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(node.to_owned(), (Instant::now(), usage.clone()));
        Ok(usage)
    }

    /// Takes a message if it is a session frame from a node (true), passing
    /// it to its session; one that does not open is counted and dropped.
    pub fn incoming(&self, topic: &str, payload: &[u8]) -> bool {
        let Some((node, sid, dir)) = topics::parse_session_topic(&self.prefix, topic) else { return false };
        if dir != Dir::ToController {
            return true;
        }
        let verdict = self.with(|m| {
            let slot = m.get_mut(&(node.to_owned(), sid.to_owned()))?;
            Some(slot.opener.open(payload).map(|f| slot.to_handler.try_send(f).is_ok()))
        });
        match verdict {
            None => tracing::debug!(%node, %sid, "a frame for no open session; ignored"),
            Some(Ok(true)) => {}
            Some(Ok(false)) => tracing::debug!(%node, %sid, "session handler gone or full; frame dropped"),
            Some(Err(e)) => {
                tracing::warn!(%node, %sid, bytes = payload.len(), error = %e, "session frame refused");
                self.state.count_rejected(node, "session", "refused");
            }
        }
        true
    }
}

/// One open session, as its HTTP handler holds it.
pub struct Session {
    relay: Arc<Relay>,
    node: String,
    sid: String,
    topic: String,
    sealer: Sealer,
    from_relay: mpsc::Receiver<Frame>,
    /// When the node was last heard, and when we last sent.
    heard: Instant,
    sent: Instant,
    /// Data bytes taken since the last credit.
    taken: u64,
    /// Data bytes the node still takes (stdin of an exec).
    credit: i64,
    ended: bool,
}

impl Session {
    /// The next frame from the node; `None` once the session is over. A
    /// node that goes offline or silent ends it with an error. A credit is
    /// counted (for [`Session::send_data`]) and returned too.
    pub async fn recv(&mut self) -> Option<Frame> {
        if self.ended {
            return None;
        }
        loop {
            if self.sent.elapsed() >= PING_EVERY {
                self.send(&Frame::Ping).await;
            }
            let gone = !self.relay.state.online(&self.node);
            if gone || self.heard.elapsed() >= SILENT_LIMIT {
                self.ended = true;
                let message = format!(
                    "node {:?} went {} during the session (last seen {})",
                    self.node,
                    if gone { "offline" } else { "silent" },
                    self.relay.last_seen(&self.node)
                );
                return Some(Frame::Error { code: 503, message });
            }
            match tokio::time::timeout(Duration::from_secs(1), self.from_relay.recv()).await {
                Err(_) => continue,
                Ok(None) => {
                    self.ended = true;
                    return None;
                }
                Ok(Some(f)) => {
                    self.heard = Instant::now();
                    match f {
                        Frame::Ping => continue,
                        // Returned, so a caller waiting for credit looks again.
                        Frame::Credit(n) => self.credit += i64::from(n),
                        _ => {}
                    }
                    self.ended |= f.is_last();
                    return Some(f);
                }
            }
        }
    }

    /// Sends a frame to the node; false if the link refused it.
    pub async fn send(&mut self, frame: &Frame) -> bool {
        let Ok(payload) = self.sealer.seal(frame) else { return false };
        self.sent = Instant::now();
        self.relay.mqtt.publish(self.topic.clone(), QoS::AtLeastOnce, false, payload).await.is_ok()
    }

    /// Whether the node takes more data now (its credit is not spent).
    pub fn can_send_data(&self) -> bool {
        self.credit > 0
    }

    /// Sends data (input) to the node, within its credit: call only while
    /// [`Session::can_send_data`]; larger data goes in several frames.
    pub async fn send_data(&mut self, stream: u8, data: &[u8]) -> bool {
        for chunk in data.chunks(session::MAX_FRAME_DATA) {
            self.credit -= session::cost(chunk.len());
            if !self.send(&Frame::Data { stream, data: chunk.to_vec().into() }).await {
                return false;
            }
        }
        true
    }

    /// Notes that `n` data bytes were passed on to the client; grants the
    /// node more once half its window is used.
    pub async fn consumed(&mut self, n: usize) {
        self.taken += session::cost(n).unsigned_abs();
        if self.taken >= u64::from(DEFAULT_WINDOW / 2) {
            let grant = u32::try_from(self.taken).unwrap_or(u32::MAX);
            self.taken = 0;
            self.send(&Frame::Credit(grant)).await;
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.relay.with(|m| m.remove(&(self.node.clone(), self.sid.clone())));
        if !self.ended {
            // The client went away first: the node stops (or notices the
            // silence, should this not get through).
            if let Ok(payload) = self.sealer.seal(&Frame::Cancel) {
                let _ = self.relay.mqtt.try_publish(self.topic.clone(), QoS::AtLeastOnce, false, payload);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_seen_says_when_in_words() {
        assert!(last_seen(0).starts_with("never"));
        let now = jiff::Timestamp::now().as_second();
        let s = last_seen(now - 190);
        assert!(
            s.ends_with(", 3m ago") && s.starts_with(&jiff::Timestamp::from_second(now - 190).expect("t").to_string()),
            "{s}"
        );
        assert!(last_seen(now - 5).ends_with(", 5s ago"));
        assert!(last_seen(now - 3 * 3600).ends_with(", 3h ago"));
    }
}
