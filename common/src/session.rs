//! Sessions over the fleet link (design.md §3, `nodes/{node}/rpc/…`): what
//! `kubectl logs` (and exec, attach, port-forward) asks of the node that
//! runs the pod, relayed by the controller through the broker, so it
//! reaches any node that reaches the broker, behind any NAT.
//!
//! Opening. The controller publishes a [`SessionOpen`] on
//! `nodes/{node}/rpc/open`: signed with its key ([`Purpose::SessionOpen`])
//! and sealed to the node ([`crate::seal`]), so only that node reads it. It
//! carries a fresh session key and a counter above every earlier open's
//! (the node keeps the highest it took across restarts): a replayed open is
//! refused, so a recorded `exec` cannot be run again.
//!
//! Frames. Then both ends exchange [`Frame`]s on `rpc/{sid}/in` (to the
//! node) and `rpc/{sid}/out` (from it), each sealed with ChaCha20-Poly1305
//! (ring) under the session key; the nonce is the direction and the
//! frame's number, the session id is the associated data. Only the two
//! ends know the key: a frame that opens came from the other end — no
//! per-frame signature is needed — and one taken twice or out of order is
//! refused by its number. Nothing of a session is readable on the broker.
//!
//! Flow control. Whoever sends data may send [`SessionOpen::window`] bytes
//! before the first [`Frame::Credit`], then only as much as it was granted:
//! a fast producer cannot flood the broker or a slow reader. Each data
//! frame costs at least [`MIN_FRAME_COST`], so a window also bounds the
//! frames in flight, and a receiver's queue of [`QUEUE`] never overflows. An end that
//! hears nothing for [`SILENT_LIMIT`] ends the session; [`Frame::Ping`]
//! keeps a quiet one (a `logs -f` of a silent container) alive.

use std::time::Duration;

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::bytes::Bytes;

/// Largest data carried by one frame.
pub const MAX_FRAME_DATA: usize = 32 * 1024;
/// Bytes of data a sender may have in flight before its first credit.
pub const DEFAULT_WINDOW: u32 = 256 * 1024;
/// A session end that sent nothing for this long sends a [`Frame::Ping`].
pub const PING_EVERY: Duration = Duration::from_secs(15);
/// A session end that heard nothing for this long ends the session.
pub const SILENT_LIMIT: Duration = Duration::from_secs(45);
/// Sessions a node serves at once; more are refused.
pub const MAX_SESSIONS: usize = 32;
/// What a data frame costs of the window at least: small frames (a
/// terminal's keystrokes) count as this much, so a window holds at most
/// [`MAX_DATA_FRAMES`] frames and a receiver's queue of that many (plus
/// room for control frames) never overflows.
pub const MIN_FRAME_COST: usize = 4 * 1024;
/// Data frames a full window holds at most.
pub const MAX_DATA_FRAMES: usize = DEFAULT_WINDOW as usize / MIN_FRAME_COST;
/// A receiving end's queue: a window of data frames and control frames.
pub const QUEUE: usize = MAX_DATA_FRAMES + 32;

/// What `len` bytes of data cost of the window (see [`MIN_FRAME_COST`]).
pub fn cost(len: usize) -> i64 {
    len.max(MIN_FRAME_COST) as i64
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SessionError {
    #[error("cannot generate a session key")]
    Generate,
    #[error("a session key is 32 bytes")]
    BadKey,
    #[error("frame of {0} bytes is too short")]
    Short(usize),
    #[error("frame of {size} bytes is over the {cap} byte cap")]
    TooLarge { size: usize, cap: usize },
    #[error("frame does not open with the session key")]
    Open,
    #[error("frame {got} is not newer than frame {last}")]
    Replayed { got: u64, last: u64 },
    #[error("malformed frame: {0}")]
    Malformed(String),
}

/// The controller's request to open a session on a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionOpen {
    pub node: String,
    /// The session's id: its part of the frame topics (base64url).
    pub sid: String,
    /// Above every earlier open's (the node refuses one that is not).
    pub counter: u64,
    /// The session key (32 bytes).
    pub key: Bytes,
    /// Data the node may send before the first credit.
    pub window: u32,
    pub request: Request,
}

impl crate::wire::NodeMessage for SessionOpen {
    fn node(&self) -> &str {
        &self.node
    }
}

/// What a session is for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    Logs(LogsRequest),
    Exec(ExecRequest),
    PortForward(PortForwardRequest),
    /// The node's and its pods' CPU and memory now (`kubectl top`): the
    /// node answers a [`Usage`], CBOR in data frames, then ends.
    Usage,
}

/// CPU and memory in use, as `metrics.k8s.io` gives them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Sample {
    /// CPU over the window, in billionths of a core.
    pub cpu_nanocores: u64,
    /// Memory working set (in use minus inactive file cache), in bytes.
    pub memory_bytes: u64,
}

/// What a node answers to [`Request::Usage`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Usage {
    /// When the figures were taken (RFC 3339) and over how long the CPU
    /// rates were measured.
    pub timestamp: String,
    pub window_ms: u64,
    pub node: Sample,
    pub pods: Vec<PodUsage>,
}

impl Usage {
    /// The bytes a node sends (CBOR).
    pub fn to_cbor(&self) -> Result<Vec<u8>, SessionError> {
        let mut b = Vec::new();
        ciborium::into_writer(self, &mut b).map_err(|e| SessionError::Malformed(e.to_string()))?;
        Ok(b)
    }

    pub fn from_cbor(b: &[u8]) -> Result<Usage, SessionError> {
        ciborium::from_reader(b).map_err(|e| SessionError::Malformed(e.to_string()))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PodUsage {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// Running containers by name.
    pub containers: Vec<(String, Sample)>,
}

/// One connection of `kubectl port-forward`: TCP to `port` on the pod's
/// loopback, inside its network namespace (data stream 0 in, 1 out).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PortForwardRequest {
    pub namespace: String,
    pub pod: String,
    pub uid: String,
    pub port: u16,
}

/// `pods/{name}/exec` and `pods/{name}/attach` (Kubernetes'
/// `PodExecOptions`, `PodAttachOptions`), for one container of one pod.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ExecRequest {
    pub namespace: String,
    pub pod: String,
    /// The pod's uid: a pod of the same name created since is not this one.
    pub uid: String,
    pub container: String,
    /// The command to run; empty for attach (to the container's own process).
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    /// Ignored with `tty` (a terminal has one output), as the kubelet does.
    pub stderr: bool,
    pub tty: bool,
}

/// `GET pods/{name}/log`'s options (Kubernetes' `PodLogOptions`), for one
/// container of one pod.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct LogsRequest {
    pub namespace: String,
    pub pod: String,
    /// The pod's uid: a pod of the same name created since is not this one.
    pub uid: String,
    pub container: String,
    #[serde(default)]
    pub follow: bool,
    #[serde(default)]
    pub previous: bool,
    #[serde(default)]
    pub timestamps: bool,
    #[serde(default)]
    pub tail_lines: Option<u64>,
    /// Lines written at most this long ago (taken on the node's clock).
    #[serde(default)]
    pub since_seconds: Option<u64>,
    /// Lines written at or after this time (RFC 3339).
    #[serde(default)]
    pub since_time: Option<String>,
    #[serde(default)]
    pub limit_bytes: Option<u64>,
}

/// One message of an open session. On the wire (inside the seal): a type
/// byte, then the fields big-endian, a byte string last (see
/// [`Frame::encode`]) — written by hand, not CBOR: frames are the hot path
/// and serde's enum machinery cost the agent binary ~30 KB.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// The node took the session (its first frame, unless [`Frame::Error`]).
    Started,
    /// Output (stream 1 stdout, 2 stderr; a log is stream 1) or input (0).
    Data { stream: u8, data: Bytes },
    /// The receiver of data may be sent this many more bytes.
    Credit(u32),
    /// The stream ended as it should (a log read to its end).
    End,
    /// The session failed; `code` as HTTP status codes go (400: the request
    /// does not fit the pod, 404: no such pod or container on the node,
    /// 500: the node failed).
    Error { code: u16, message: String },
    /// The controller's client went away: stop.
    Cancel,
    /// Nothing else to say; the session is alive.
    Ping,
    /// The input stream (0, stdin) ends: the process reads end of file.
    Close { stream: u8 },
    /// The terminal's new size (exec with a TTY).
    Resize { width: u16, height: u16 },
    /// The process exited with this code (128 + signal when killed): the
    /// last frame of an exec.
    Exit(i32),
}

impl Frame {
    /// The frame's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(8 + self.data_len());
        match self {
            Frame::Started => b.push(0),
            Frame::Data { stream, data } => {
                b.extend([1, *stream]);
                b.extend_from_slice(&data.0);
            }
            Frame::Credit(n) => {
                b.push(2);
                b.extend(n.to_be_bytes());
            }
            Frame::End => b.push(3),
            Frame::Error { code, message } => {
                b.push(4);
                b.extend(code.to_be_bytes());
                b.extend_from_slice(message.as_bytes());
            }
            Frame::Cancel => b.push(5),
            Frame::Ping => b.push(6),
            Frame::Close { stream } => b.extend([7, *stream]),
            Frame::Resize { width, height } => {
                b.push(8);
                b.extend(width.to_be_bytes());
                b.extend(height.to_be_bytes());
            }
            Frame::Exit(code) => {
                b.push(9);
                b.extend(code.to_be_bytes());
            }
        }
        b
    }

    /// Reads what [`Frame::encode`] wrote.
    pub fn decode(b: &[u8]) -> Result<Frame, SessionError> {
        let bad = || SessionError::Malformed(format!("a frame of {} bytes does not parse", b.len()));
        let (&kind, rest) = b.split_first().ok_or_else(bad)?;
        let exact = |n: usize| if rest.len() == n { Ok(rest) } else { Err(bad()) };
        let frame = match kind {
            0 => exact(0).map(|_| Frame::Started)?,
            1 => {
                let (&stream, data) = rest.split_first().ok_or_else(bad)?;
                Frame::Data { stream, data: Bytes(data.to_vec()) }
            }
            2 => exact(4).map(|r| Frame::Credit(u32::from_be_bytes([r[0], r[1], r[2], r[3]])))?,
            3 => exact(0).map(|_| Frame::End)?,
            4 => {
                if rest.len() < 2 {
                    return Err(bad());
                }
                let message = String::from_utf8_lossy(&rest[2..]).into_owned();
                Frame::Error { code: u16::from_be_bytes([rest[0], rest[1]]), message }
            }
            5 => exact(0).map(|_| Frame::Cancel)?,
            6 => exact(0).map(|_| Frame::Ping)?,
            7 => exact(1).map(|r| Frame::Close { stream: r[0] })?,
            8 => exact(4).map(|r| Frame::Resize {
                width: u16::from_be_bytes([r[0], r[1]]),
                height: u16::from_be_bytes([r[2], r[3]]),
            })?,
            9 => exact(4).map(|r| Frame::Exit(i32::from_be_bytes([r[0], r[1], r[2], r[3]])))?,
            k => return Err(SessionError::Malformed(format!("unknown frame type {k}"))),
        };
        Ok(frame)
    }

    /// The data bytes it carries (what credit is counted in).
    pub fn data_len(&self) -> usize {
        match self {
            Frame::Data { data, .. } => data.0.len(),
            _ => 0,
        }
    }

    /// Whether it ends the session.
    pub fn is_last(&self) -> bool {
        matches!(self, Frame::End | Frame::Error { .. } | Frame::Cancel | Frame::Exit(_))
    }
}

/// Which way a frame travels (part of its nonce: a frame cannot be
/// reflected back to its sender).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Controller → node (`rpc/{sid}/in`).
    ToNode = 0,
    /// Node → controller (`rpc/{sid}/out`).
    ToController = 1,
}

/// A fresh session key.
pub fn new_key() -> Result<[u8; 32], SessionError> {
    let mut k = [0u8; 32];
    SystemRandom::new().fill(&mut k).map_err(|_| SessionError::Generate)?;
    Ok(k)
}

/// A fresh session id (base64url: safe in a topic).
pub fn new_sid() -> Result<String, SessionError> {
    crate::sign::random_text(12).map_err(|_| SessionError::Generate)
}

/// Whether `sid` can be a session id in a topic.
pub fn valid_sid(sid: &str) -> bool {
    (1..=64).contains(&sid.len()) && sid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn aead(key: &[u8]) -> Result<LessSafeKey, SessionError> {
    let k = UnboundKey::new(&CHACHA20_POLY1305, key).map_err(|_| SessionError::BadKey)?;
    Ok(LessSafeKey::new(k))
}

fn nonce(dir: Dir, seq: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[0] = dir as u8;
    n[4..].copy_from_slice(&seq.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

/// Seals the frames one end sends.
pub struct Sealer {
    key: LessSafeKey,
    dir: Dir,
    sid: String,
    next: u64,
}

impl Sealer {
    pub fn new(key: &[u8], dir: Dir, sid: &str) -> Result<Sealer, SessionError> {
        Ok(Sealer { key: aead(key)?, dir, sid: sid.to_owned(), next: 0 })
    }

    /// The payload of `frame`: its number (8 bytes) and the sealed frame.
    pub fn seal(&mut self, frame: &Frame) -> Result<Vec<u8>, SessionError> {
        let seq = self.next;
        self.next += 1;
        let mut body = frame.encode();
        body.reserve(16);
        self.key
            .seal_in_place_append_tag(nonce(self.dir, seq), Aad::from(self.sid.as_bytes()), &mut body)
            .map_err(|_| SessionError::Generate)?;
        let mut out = Vec::with_capacity(body.len() + 8);
        out.extend_from_slice(&seq.to_be_bytes());
        out.extend_from_slice(&body);
        Ok(out)
    }
}

/// Opens the frames one end receives, each once and in order.
pub struct Opener {
    key: LessSafeKey,
    dir: Dir,
    sid: String,
    last: Option<u64>,
    cap: usize,
}

impl Opener {
    /// `cap`: the largest payload taken.
    pub fn new(key: &[u8], dir: Dir, sid: &str, cap: usize) -> Result<Opener, SessionError> {
        Ok(Opener { key: aead(key)?, dir, sid: sid.to_owned(), last: None, cap })
    }

    pub fn open(&mut self, payload: &[u8]) -> Result<Frame, SessionError> {
        if payload.len() > self.cap {
            return Err(SessionError::TooLarge { size: payload.len(), cap: self.cap });
        }
        if payload.len() < 8 + 16 {
            return Err(SessionError::Short(payload.len()));
        }
        let (head, sealed) = payload.split_at(8);
        let mut seq = [0u8; 8];
        seq.copy_from_slice(head);
        let seq = u64::from_be_bytes(seq);
        if let Some(last) = self.last.filter(|l| seq <= *l) {
            return Err(SessionError::Replayed { got: seq, last });
        }
        let mut body = sealed.to_vec();
        let plain = self
            .key
            .open_in_place(nonce(self.dir, seq), Aad::from(self.sid.as_bytes()), &mut body)
            .map_err(|_| SessionError::Open)?;
        let frame = Frame::decode(plain)?;
        self.last = Some(seq);
        Ok(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(dir: Dir) -> (Sealer, Opener) {
        let key = new_key().expect("key");
        (Sealer::new(&key, dir, "s1").expect("sealer"), Opener::new(&key, dir, "s1", 64 * 1024).expect("opener"))
    }

    #[test]
    fn frames_open_once_in_order_with_their_key_only() {
        let (mut s, mut o) = pair(Dir::ToController);
        let secret = b"password=hunter2".to_vec();
        let a = s.seal(&Frame::Data { stream: 1, data: Bytes(secret.clone()) }).expect("seal");
        assert!(!a.windows(secret.len()).any(|w| w == secret), "nothing readable on the broker");
        let b = s.seal(&Frame::End).expect("seal");
        assert_eq!(o.open(&a).expect("open"), Frame::Data { stream: 1, data: Bytes(secret) });
        assert_eq!(o.open(&a), Err(SessionError::Replayed { got: 0, last: 0 }), "taken twice");
        assert_eq!(o.open(&b).expect("open"), Frame::End);

        // Another session's key, the other direction, another session id,
        // tampering and garbage: refused.
        let (mut other, _) = pair(Dir::ToController);
        let (mut o2, mut fresh) = {
            let key = new_key().expect("key");
            (
                Opener::new(&key, Dir::ToController, "s1", 1024).expect("o"),
                Opener::new(&key, Dir::ToController, "s2", 1024).expect("o"),
            )
        };
        let forged = other.seal(&Frame::Cancel).expect("seal");
        assert_eq!(o2.open(&forged), Err(SessionError::Open));
        let key = new_key().expect("key");
        let mut to_node = Sealer::new(&key, Dir::ToNode, "s1").expect("s");
        let mut back = Opener::new(&key, Dir::ToController, "s1", 1024).expect("o");
        assert_eq!(back.open(&to_node.seal(&Frame::Ping).expect("seal")), Err(SessionError::Open), "reflected");
        let mut same = Sealer::new(&key, Dir::ToController, "s1").expect("s");
        let mut elsewhere = Opener::new(&key, Dir::ToController, "s2", 1024).expect("o");
        assert_eq!(elsewhere.open(&same.seal(&Frame::Ping).expect("seal")), Err(SessionError::Open), "spliced");
        let mut t = same.seal(&Frame::Ping).expect("seal");
        let last = t.len() - 1;
        t[last] ^= 1;
        assert_eq!(back.open(&t), Err(SessionError::Open));
        assert_eq!(fresh.open(b"short"), Err(SessionError::Short(5)));
        assert!(matches!(fresh.open(&[0u8; 2048]), Err(SessionError::TooLarge { size: 2048, .. })));
    }

    #[test]
    fn frames_read_back_as_written_and_garbage_is_refused() {
        let frames = [
            Frame::Started,
            Frame::Data { stream: 2, data: Bytes(b"err\n".to_vec()) },
            Frame::Data { stream: 0, data: Bytes(Vec::new()) },
            Frame::Credit(131_072),
            Frame::End,
            Frame::Error { code: 404, message: "pod \"web\" is not running on this node".into() },
            Frame::Cancel,
            Frame::Ping,
            Frame::Close { stream: 0 },
            Frame::Resize { width: 100, height: 30 },
            Frame::Exit(-1),
            Frame::Exit(137),
        ];
        for f in frames {
            assert_eq!(Frame::decode(&f.encode()), Ok(f.clone()), "{f:?}");
        }
        for bad in [&b""[..], &[2, 0, 0], &[3, 1], &[8, 0, 1, 0], &[9, 0, 0, 0, 0, 0], &[4, 1], &[77]] {
            assert!(matches!(Frame::decode(bad), Err(SessionError::Malformed(_))), "{bad:?}");
        }
    }

    #[test]
    fn session_ids_are_topic_safe() {
        let sid = new_sid().expect("sid");
        assert!(valid_sid(&sid), "{sid}");
        assert_ne!(sid, new_sid().expect("sid"));
        for bad in ["", "a/b", "+", "#", "a b"] {
            assert!(!valid_sid(bad), "{bad:?}");
        }
    }

    #[test]
    fn an_open_is_signed_and_sealed_to_its_node() {
        let (key, _) = crate::sign::SigningKey::generate().expect("key");
        let node = crate::seal::SealSecret::generate().expect("seal");
        let other = crate::seal::SealSecret::generate().expect("seal");
        let open = SessionOpen {
            node: "n1".into(),
            sid: "s1".into(),
            counter: 7,
            key: Bytes(vec![9; 32]),
            window: DEFAULT_WINDOW,
            request: Request::Logs(LogsRequest { pod: "web".into(), container: "main".into(), ..Default::default() }),
        };
        let payload =
            crate::envelope::encode_sealed(&open, crate::sign::Purpose::SessionOpen, &key, Some(&node.public()))
                .expect("encode");
        assert!(!payload.windows(3).any(|w| w == b"web"), "the request is not readable on the broker");
        let got: SessionOpen = crate::wire::decode_opened_for(
            &payload,
            "n1",
            1 << 20,
            crate::sign::Purpose::SessionOpen,
            &key.public(),
            Some(&node),
        )
        .expect("opens");
        assert_eq!(got, open);
        let on_other = crate::wire::decode_opened_for::<SessionOpen>(
            &payload,
            "n1",
            1 << 20,
            crate::sign::Purpose::SessionOpen,
            &key.public(),
            Some(&other),
        );
        assert!(on_other.is_err(), "another node cannot open it");
        let (forger, _) = crate::sign::SigningKey::generate().expect("key");
        let forged =
            crate::envelope::encode_sealed(&open, crate::sign::Purpose::SessionOpen, &forger, Some(&node.public()))
                .expect("encode");
        let refused = crate::wire::decode_opened_for::<SessionOpen>(
            &forged,
            "n1",
            1 << 20,
            crate::sign::Purpose::SessionOpen,
            &key.public(),
            Some(&node),
        );
        assert!(refused.is_err(), "signed by another key");
    }
}
