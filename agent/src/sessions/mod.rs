//! Sessions the controller opens on this node through the broker
//! ([`kedge_common::session`]): `kubectl logs` and `kubectl exec`.
//!
//! [`Sessions`] lives in the link task: it takes the opens (signed by the
//! pinned controller key, sealed to this node, counter above the highest
//! taken, which is kept in the local cache) and the frames of open sessions
//! (sealed with their session key, each once and in order), and runs each
//! session as a task of its own that publishes its frames through the
//! shared MQTT client. What is refused is told to the link state, which
//! counts it in the report and raises an Event. Nothing runs and nothing is
//! published while no session is open.

mod attach;
mod exec;
pub mod logs;
mod pipes;
mod portforward;
mod usage;

use std::collections::HashMap;
use std::sync::Arc;

use kedge_common::bytes::Bytes;
use kedge_common::seal::SealSecret;
use kedge_common::session::{
    self, Dir, Frame, LogsRequest, MAX_FRAME_DATA, MAX_SESSIONS, Opener, PING_EVERY, Request, SILENT_LIMIT, Sealer,
    SessionOpen,
};
use kedge_common::sign::{PublicKey, Purpose};
use kedge_common::topics;
use rumqttc::{AsyncClient, QoS};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Duration, Instant};

use crate::cache::Cache;
use crate::runtime::Paths;

/// What sessions need of the node.
#[derive(Clone)]
pub struct SessionEnv {
    /// Where the runtime keeps its records and logs.
    pub paths: Paths,
    /// Where the session open floor is kept.
    pub cache: Arc<Cache>,
    /// The helper that runs `kubectl exec` in containers (`None`: this
    /// runtime cannot).
    pub exec_helper: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for SessionEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionEnv").field("paths", &self.paths).finish_non_exhaustive()
    }
}

/// What became of an incoming message.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    /// Not a session topic: the link state takes it.
    NotOurs,
    Taken,
    /// Refused, for this reason (to be counted and told).
    Refused(String),
}

struct Live {
    opener: Opener,
    to_task: mpsc::Sender<Frame>,
    task: JoinHandle<()>,
}

pub struct Sessions {
    env: Option<SessionEnv>,
    client: AsyncClient,
    prefix: String,
    node: String,
    max_payload: usize,
    open_topic: String,
    /// The highest open counter taken.
    floor: u64,
    live: HashMap<String, Live>,
}

impl Sessions {
    pub fn new(env: Option<SessionEnv>, client: AsyncClient, prefix: &str, node: &str, max_payload: usize) -> Sessions {
        let floor = env.as_ref().map_or(0, |e| {
            e.cache.session_floor().unwrap_or_else(|e| {
                tracing::warn!(error = %e, "session floor unreadable; taking only opens from now on");
                u64::MAX
            })
        });
        Sessions {
            env,
            client,
            prefix: prefix.to_owned(),
            node: node.to_owned(),
            max_payload,
            open_topic: topics::session_open_topic(prefix, node),
            floor,
            live: HashMap::new(),
        }
    }

    /// The topics a joined node subscribes to for sessions.
    pub fn topics(prefix: &str, node: &str) -> [String; 2] {
        [topics::session_open_topic(prefix, node), topics::session_in_filter(prefix, node)]
    }

    /// Forgets sessions whose task ended.
    pub fn reap(&mut self) {
        self.live.retain(|_, l| !l.task.is_finished());
    }

    /// Takes a message if it is a session's. `key`: the pinned controller
    /// key; `seal`: this node's sealing key.
    pub fn handle(
        &mut self,
        topic: &str,
        payload: &[u8],
        key: Option<&PublicKey>,
        seal: Option<&SealSecret>,
    ) -> Incoming {
        if topic == self.open_topic {
            return match self.open(payload, key, seal) {
                Ok(()) => Incoming::Taken,
                Err(reason) => Incoming::Refused(reason),
            };
        }
        let Some((node, sid, Dir::ToNode)) = topics::parse_session_topic(&self.prefix, topic) else {
            return Incoming::NotOurs;
        };
        if node != self.node {
            return Incoming::NotOurs;
        }
        let Some(live) = self.live.get_mut(sid) else {
            tracing::debug!(%sid, "a frame for no open session; ignored");
            return Incoming::Taken;
        };
        match live.opener.open(payload) {
            Ok(frame) => {
                if live.to_task.try_send(frame).is_err() {
                    tracing::debug!(%sid, "session busy or ended; frame dropped");
                }
                Incoming::Taken
            }
            Err(e) => Incoming::Refused(format!("frame of {} bytes for session {sid} refused: {e}", payload.len())),
        }
    }

    fn open(&mut self, payload: &[u8], key: Option<&PublicKey>, seal: Option<&SealSecret>) -> Result<(), String> {
        let key = key.ok_or("session open refused: this node has not joined")?;
        let open: SessionOpen = kedge_common::wire::decode_opened_for(
            payload,
            &self.node,
            self.max_payload,
            Purpose::SessionOpen,
            key,
            seal,
        )
        .map_err(|e| format!("session open of {} bytes refused: {e}", payload.len()))?;
        if !session::valid_sid(&open.sid) {
            return Err(format!("session open refused: {:?} is not a session id", open.sid));
        }
        if open.counter <= self.floor {
            return Err(format!(
                "session open {} refused as a replay: its counter {} is not above {}",
                open.sid, open.counter, self.floor
            ));
        }
        self.floor = open.counter;
        if let Some(env) = &self.env {
            let (cache, counter) = (env.cache.clone(), open.counter);
            tokio::task::spawn_blocking(move || {
                if let Err(e) = cache.raise_session_floor(counter) {
                    tracing::warn!(error = %e, "cannot keep the session floor");
                }
            });
        }
        let sealer = Sealer::new(&open.key.0, Dir::ToController, &open.sid).map_err(|e| e.to_string())?;
        let opener = Opener::new(&open.key.0, Dir::ToNode, &open.sid, self.max_payload).map_err(|e| e.to_string())?;
        self.reap();
        let out = Out {
            client: self.client.clone(),
            topic: topics::session_topic(&self.prefix, &self.node, &open.sid, Dir::ToController),
            sealer,
            sent: Instant::now(),
        };
        let busy = self.live.len() >= MAX_SESSIONS;
        let (to_task, from_link) = mpsc::channel(session::QUEUE);
        let env = self.env.clone();
        tracing::info!(sid = %open.sid, request = ?open.request, "session opened by the controller");
        let SessionOpen { sid, window, request, .. } = open;
        let name = sid.clone();
        let task = tokio::spawn(async move {
            Session::run(out, from_link, window, busy, env, request).await;
            tracing::info!(sid = %name, "session ended");
        });
        self.live.insert(sid, Live { opener, to_task, task });
        Ok(())
    }
}

impl Session {
    async fn run(
        out: Out,
        from_link: mpsc::Receiver<Frame>,
        window: u32,
        busy: bool,
        env: Option<SessionEnv>,
        request: Request,
    ) {
        let mut s = Session { out, from_link, heard: Instant::now(), credit: i64::from(window) };
        if busy {
            s.fail(503, format!("the node serves {MAX_SESSIONS} sessions already; try again later")).await;
            return;
        }
        let Some(env) = env else {
            s.fail(500, "this agent runs no pods".into()).await;
            return;
        };
        match request {
            Request::Logs(r) => s.logs(&env.paths, r).await,
            Request::Exec(r) => s.exec(&env, r).await,
            Request::PortForward(r) => s.port_forward(&env, r).await,
            Request::Usage => s.usage(&env).await,
        }
    }
}

impl Drop for Sessions {
    fn drop(&mut self) {
        for l in self.live.values() {
            l.task.abort();
        }
    }
}

/// A session's way back to the controller.
struct Out {
    client: AsyncClient,
    topic: String,
    sealer: Sealer,
    /// When the last frame went.
    sent: Instant,
}

impl Out {
    /// Publishes `frame`; false if the link is gone.
    async fn send(&mut self, frame: &Frame) -> bool {
        let payload = match self.sealer.seal(frame) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "cannot seal a session frame");
                return false;
            }
        };
        self.sent = Instant::now();
        self.client.publish(self.topic.clone(), QoS::AtLeastOnce, false, payload).await.is_ok()
    }
}

/// How often a `logs -f` looks for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// One session's task.
struct Session {
    out: Out,
    from_link: mpsc::Receiver<Frame>,
    /// When the controller was last heard.
    heard: Instant,
    /// Bytes of data the controller still takes.
    credit: i64,
}

impl Session {
    async fn fail(&mut self, code: u16, message: String) {
        tracing::info!(code, %message, "session refused");
        self.out.send(&Frame::Error { code, message }).await;
    }

    /// Takes a frame from the controller; true when it ends the session.
    fn take(&mut self, frame: Frame) -> bool {
        self.heard = Instant::now();
        match frame {
            Frame::Credit(n) => self.credit += i64::from(n),
            Frame::Cancel => return true,
            _ => {}
        }
        false
    }

    /// Waits up to `d` for the controller (pinging it if we were quiet);
    /// true when it went away or ended the session.
    async fn wait(&mut self, d: Duration) -> bool {
        if self.out.sent.elapsed() >= PING_EVERY && !self.out.send(&Frame::Ping).await {
            return true;
        }
        if self.heard.elapsed() >= SILENT_LIMIT {
            tracing::info!("the controller went silent; session ended");
            return true;
        }
        tokio::select! {
            f = self.from_link.recv() => f.is_none_or(|f| self.take(f)),
            _ = tokio::time::sleep(d) => false,
        }
    }

    /// Takes the frames that arrived meanwhile; true if one ends the session.
    fn drain(&mut self) -> bool {
        while let Ok(f) = self.from_link.try_recv() {
            if self.take(f) {
                return true;
            }
        }
        false
    }

    async fn logs(&mut self, paths: &Paths, req: LogsRequest) {
        let opened = logs::pick(paths, &req).and_then(|c| Ok((logs::LogReader::new(&c, &req)?, c)));
        let (mut reader, container) = match opened {
            Ok(r) => r,
            Err(e) => return self.fail(e.code(), e.to_string()).await,
        };
        if !self.out.send(&Frame::Started).await {
            return;
        }
        // Set once a followed container has exited: one more read takes
        // what it wrote last, then the stream ends.
        let mut ending = false;
        loop {
            if self.drain() {
                return;
            }
            if self.credit > 0 {
                let max = MAX_FRAME_DATA.min(usize::try_from(self.credit).unwrap_or(MAX_FRAME_DATA));
                let chunk = match reader.read_chunk(max) {
                    Ok(c) => c,
                    Err(e) => return self.fail(e.code(), e.to_string()).await,
                };
                if !chunk.is_empty() {
                    self.credit -= session::cost(chunk.len());
                    if !self.out.send(&Frame::Data { stream: 1, data: Bytes(chunk) }).await {
                        return;
                    }
                    continue;
                }
                // At the end of what is there: done, unless following a
                // container that still runs (looked at only once caught up).
                if reader.exhausted() || !req.follow || ending {
                    self.out.send(&Frame::End).await;
                    return;
                }
                ending = logs::exited(paths, &container.id);
                if ending {
                    continue;
                }
            }
            if self.wait(FOLLOW_POLL).await {
                return;
            }
        }
    }
}
