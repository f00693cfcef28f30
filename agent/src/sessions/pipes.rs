//! Moving bytes between a session and something local — a process's
//! stdin/stdout/stderr (exec) or a TCP connection (port-forward): output
//! is read only as far as the controller's credit goes, input is written
//! as the other side takes it and credited back once written, so neither
//! end floods the broker or holds more than a window.

use std::collections::VecDeque;
use std::pin::Pin;

use kedge_common::bytes::Bytes;
use kedge_common::session::{self, DEFAULT_WINDOW, Frame, MAX_FRAME_DATA, PING_EVERY, SILENT_LIMIT};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Duration, Instant};

use super::Session;

pub type Reader = Box<dyn AsyncRead + Unpin + Send>;
pub type Writer = Box<dyn AsyncWrite + Unpin + Send>;

/// One output, sent as data frames of `stream`.
pub struct Output {
    stream: u8,
    reader: Reader,
    buf: Vec<u8>,
}

impl Output {
    pub fn new(stream: u8, reader: Reader) -> Output {
        Output { stream, reader, buf: vec![0; MAX_FRAME_DATA] }
    }
}

/// Reads the next chunk of `out` (at most `max` bytes): empty at its end
/// (an error, such as a terminal's EIO once its process is gone, is an
/// end too).
async fn read(out: &mut Option<Output>, max: usize) -> (u8, Vec<u8>) {
    let Some(o) = out.as_mut() else { return std::future::pending().await };
    let n = o.reader.read(&mut o.buf[..max.clamp(1, MAX_FRAME_DATA)]).await.unwrap_or(0);
    (o.stream, o.buf[..n].to_vec())
}

/// The local ends of a session.
#[derive(Default)]
pub struct Pipes {
    pub out: Option<Output>,
    pub err: Option<Output>,
    pub input: Option<Writer>,
    /// Input taken and not yet written, with what each frame cost of the
    /// window.
    pending: VecDeque<(Vec<u8>, i64)>,
    /// The cost of input written (or dropped) since it was credited back.
    written: i64,
    /// The controller ended the input: it is closed once written.
    closing: bool,
}

/// Why [`Session::pump`] returned.
pub enum Pumped {
    /// The future it was given resolved.
    Until,
    /// Every output ended (when asked to stop then).
    OutputsDone,
    /// The controller cancelled, went silent, or the link is gone.
    Stopped,
}

impl Pipes {
    pub fn new(out: Option<Output>, err: Option<Output>, input: Option<Writer>) -> Pipes {
        Pipes { out, err, input, ..Pipes::default() }
    }

    /// Stops taking input: what is queued is dropped (and credited back).
    pub fn drop_input(&mut self) {
        self.input = None;
        self.written += self.pending.drain(..).map(|(_, c)| c).sum::<i64>();
    }

    fn take(&mut self, data: Vec<u8>) {
        let cost = session::cost(data.len());
        if self.input.is_some() && !self.closing {
            self.pending.push_back((data, cost));
        } else {
            // Nobody reads it; its window comes back all the same.
            self.written += cost;
        }
    }

    /// Writes some of the first pending input (all of it is dropped if the
    /// other side closed its input).
    async fn write_some(input: &mut Option<Writer>, pending: &mut VecDeque<(Vec<u8>, i64)>, written: &mut i64) {
        let (Some(w), Some((front, cost))) = (input.as_mut(), pending.front_mut()) else {
            return std::future::pending().await;
        };
        match w.write(front).await {
            Ok(n) => {
                front.drain(..n.min(front.len()));
                if front.is_empty() {
                    *written += *cost;
                    pending.pop_front();
                }
            }
            Err(_) => {
                // The other side closed its input: what comes is dropped.
                *input = None;
                *written += pending.drain(..).map(|(_, c)| c).sum::<i64>();
            }
        }
    }
}

impl Session {
    /// Moves bytes both ways until `until` resolves, the outputs end (if
    /// `end_with_outputs`), or the session stops. Frames it does not take
    /// itself (a terminal's resize) go to `other`.
    ///
    /// Not generic, on purpose: one copy of this state machine serves exec
    /// and port-forward (each generic copy cost the agent binary ~10 KB).
    pub(super) async fn pump(
        &mut self,
        p: &mut Pipes,
        mut until: Pin<&mut (dyn Future<Output = ()> + Send)>,
        end_with_outputs: bool,
        other: &mut (dyn FnMut(Frame) + Send),
    ) -> Pumped {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            if end_with_outputs && p.out.is_none() && p.err.is_none() {
                return Pumped::OutputsDone;
            }
            if p.closing
                && p.pending.is_empty()
                && let Some(mut w) = p.input.take()
            {
                let _ = w.shutdown().await;
            }
            if p.written >= i64::from(DEFAULT_WINDOW / 4) {
                let grant = u32::try_from(p.written).unwrap_or(u32::MAX);
                p.written = 0;
                if !self.out.send(&Frame::Credit(grant)).await {
                    return Pumped::Stopped;
                }
            }
            let room = usize::try_from(self.credit.max(0)).unwrap_or(0);
            let writing = p.input.is_some() && !p.pending.is_empty();
            tokio::select! {
                () = &mut until => return Pumped::Until,
                f = self.from_link.recv() => {
                    let Some(f) = f else { return Pumped::Stopped };
                    self.heard = Instant::now();
                    match f {
                        Frame::Data { stream: 0, data } => p.take(data.0),
                        Frame::Close { stream: 0 } => p.closing = true,
                        Frame::Credit(n) => self.credit += i64::from(n),
                        Frame::Cancel => return Pumped::Stopped,
                        f => other(f),
                    }
                }
                (stream, data) = read(&mut p.out, room), if room > 0 && p.out.is_some() => {
                    if !self.send_output(stream, data, &mut p.out).await {
                        return Pumped::Stopped;
                    }
                }
                (stream, data) = read(&mut p.err, room), if room > 0 && p.err.is_some() => {
                    if !self.send_output(stream, data, &mut p.err).await {
                        return Pumped::Stopped;
                    }
                }
                () = Pipes::write_some(&mut p.input, &mut p.pending, &mut p.written), if writing => {}
                _ = tick.tick() => {
                    if self.out.sent.elapsed() >= PING_EVERY && !self.out.send(&Frame::Ping).await {
                        return Pumped::Stopped;
                    }
                    if self.heard.elapsed() >= SILENT_LIMIT {
                        tracing::info!("the controller went silent; session ended");
                        return Pumped::Stopped;
                    }
                }
            }
        }
    }

    /// Sends a chunk read from an output; an empty one is its end. False
    /// when the link is gone.
    async fn send_output(&mut self, stream: u8, data: Vec<u8>, out: &mut Option<Output>) -> bool {
        if data.is_empty() {
            *out = None;
            return true;
        }
        self.credit -= session::cost(data.len());
        self.out.send(&Frame::Data { stream, data: Bytes(data) }).await
    }
}
