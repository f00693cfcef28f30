//! `kubectl exec` on the node: the command runs in the container through
//! the libcontainer helper (`__libcontainer exec-stream`), with pipes for
//! stdin, stdout and stderr, or a terminal whose master the container sends
//! to a console socket. Output goes to the controller as data frames within
//! its credit; input is written as the process takes it, and credited back
//! once written, so neither end floods the broker. The last frame is the
//! exit code.

use std::collections::VecDeque;
use std::path::Path;
use std::process::Stdio;

use kedge_common::bytes::Bytes;
use kedge_common::session::{self, DEFAULT_WINDOW, ExecRequest, Frame, LogsRequest, MAX_FRAME_DATA, PING_EVERY};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Duration, Instant};

use super::{Session, SessionEnv, logs};
use crate::runtime::container::exec_status;
use crate::runtime::pty;
use crate::runtime::records::ContainerState;

type Reader = Box<dyn AsyncRead + Unpin + Send>;
type Writer = Box<dyn AsyncWrite + Unpin + Send>;

/// How long output that is still open is read once the process exited (a
/// background child may hold it).
const DRAIN: Duration = Duration::from_millis(200);
/// How long the container has to send the terminal.
const CONSOLE_TIMEOUT: Duration = Duration::from_secs(10);

/// One output of the process.
struct Output {
    stream: u8,
    reader: Reader,
    buf: Vec<u8>,
}

impl Output {
    fn new(stream: u8, reader: Reader) -> Output {
        Output { stream, reader, buf: vec![0; MAX_FRAME_DATA] }
    }
}

/// Reads the next chunk of `out` (at most `max` bytes); `None` if there is
/// no such output. Empty at end of file (a terminal whose other side closed
/// answers EIO: that is its end too).
async fn read(out: &mut Option<Output>, max: usize) -> Option<(u8, Vec<u8>)> {
    let o = out.as_mut()?;
    let n = o.reader.read(&mut o.buf[..max.clamp(1, MAX_FRAME_DATA)]).await.unwrap_or(0);
    Some((o.stream, o.buf[..n].to_vec()))
}

/// What the controller's frames ask of the process.
enum Asked {
    Nothing,
    Stop,
}

impl Session {
    pub(super) async fn exec(&mut self, env: &SessionEnv, req: ExecRequest) {
        let Some(helper) = env.exec_helper.clone() else {
            return self.fail(501, "this node's runtime cannot run commands in containers".into()).await;
        };
        if req.command.is_empty() {
            return self.fail(501, "attach is not served by this node yet; use exec".into()).await;
        }
        let wanted = LogsRequest {
            namespace: req.namespace.clone(),
            pod: req.pod.clone(),
            uid: req.uid.clone(),
            container: req.container.clone(),
            ..LogsRequest::default()
        };
        let container = match logs::pick(&env.paths, &wanted) {
            Ok(c) => c,
            Err(e) => return self.fail(e.code(), e.to_string()).await,
        };
        if container.state != ContainerState::Running || logs::exited(&env.paths, &container.id) {
            let m = format!("container {:?} in pod {:?} is not running", req.container, req.pod);
            return self.fail(400, m).await;
        }
        let scratch = env.paths.container(&container.id);
        let tag = crate::fsutil::unique();
        let status = scratch.join(format!("exec-{tag}.status"));
        let console = if req.tty {
            match pty::ConsoleSocket::bind(&scratch, &format!("exec-{tag}.sock")) {
                Ok(c) => Some(c),
                Err(e) => return self.fail(500, format!("cannot make a console socket: {e}")).await,
            }
        } else {
            None
        };
        let mut cmd = tokio::process::Command::new(&helper);
        cmd.arg("__libcontainer").arg("exec-stream").arg("--id").arg(&container.id);
        cmd.arg("--root").arg(env.paths.state()).arg("--status").arg(&status);
        if let Some(c) = &console {
            cmd.arg("--console-socket").arg(c.path());
        }
        cmd.arg("--").args(&req.command);
        let piped = |on: bool| if on && !req.tty { Stdio::piped() } else { Stdio::null() };
        cmd.stdin(piped(req.stdin)).stdout(piped(req.stdout)).stderr(piped(req.stderr)).kill_on_drop(false);
        let spawned = {
            // The helper's fork must not carry a file the agent is writing.
            let _spawning = crate::forklock::forking();
            cmd.spawn()
        };
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => return self.fail(500, format!("cannot run the exec helper {}: {e}", helper.display())).await,
        };
        let (mut out, mut err, mut input, terminal): (Option<Output>, Option<Output>, Option<Writer>, _) =
            match &console {
                Some(c) => {
                    let master = tokio::select! {
                        m = tokio::time::timeout(CONSOLE_TIMEOUT, c.master()) => m,
                        _ = child.wait() => Ok(Err(std::io::Error::other("the process ended before its terminal came"))),
                    };
                    match master.map_err(|_| std::io::Error::other("timed out")).and_then(|m| m).and_then(pty::split) {
                        Ok((r, w)) => {
                            use std::os::fd::AsFd;
                            let fd = w.as_fd().try_clone_to_owned().ok();
                            (Some(Output::new(1, Box::new(r))), None, Some(Box::new(w) as Writer), fd)
                        }
                        Err(e) => {
                            drop(console);
                            let why = ended(&mut child, &status).await.err().unwrap_or_default();
                            return self.fail(500, format!("cannot get the terminal of the process: {e} {why}")).await;
                        }
                    }
                }
                None => (
                    child.stdout.take().map(|r| Output::new(1, Box::new(r))),
                    child.stderr.take().map(|r| Output::new(2, Box::new(r))),
                    child.stdin.take().map(|w| Box::new(w) as Writer),
                    None,
                ),
            };
        drop(console);
        if !self.out.send(&Frame::Started).await {
            return;
        }
        tracing::info!(pod = %req.pod, container = %req.container, command = ?req.command, tty = req.tty, "exec started");
        // Input taken from the controller and not yet written, with what
        // each frame cost of the window (credited back once written).
        let mut pending: VecDeque<(Vec<u8>, i64)> = VecDeque::new();
        let mut close_input = false;
        // Cost of the input written since it was last credited back.
        let mut written: i64 = 0;
        let mut exit: Option<Result<i32, String>> = None;
        let mut drain_until: Option<Instant> = None;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            if let Some(until) = drain_until
                && (Instant::now() >= until || (out.is_none() && err.is_none()))
            {
                break;
            }
            if close_input && pending.is_empty() && input.is_some() {
                if let Some(mut w) = input.take() {
                    let _ = w.shutdown().await;
                }
            }
            let room = usize::try_from(self.credit.max(0)).unwrap_or(0);
            let can_read = room > 0;
            let front_len = pending.front().map_or(0, |(b, _)| b.len());
            tokio::select! {
                f = self.from_link.recv() => {
                    let Some(f) = f else { break };
                    self.heard = Instant::now();
                    let taking = input.is_some() && !close_input;
                    match self.take_exec(f, taking, &mut pending, &mut written, &mut close_input, terminal.as_ref()) {
                        Asked::Stop => break,
                        Asked::Nothing => {}
                    }
                }
                r = read(&mut out, room), if can_read && out.is_some() => {
                    if !self.forward(r, &mut out).await {
                        break;
                    }
                }
                r = read(&mut err, room), if can_read && err.is_some() => {
                    if !self.forward(r, &mut err).await {
                        break;
                    }
                }
                w = async {
                    match (input.as_mut(), pending.front()) {
                        (Some(i), Some((b, _))) => i.write(b).await,
                        _ => std::future::pending().await,
                    }
                }, if front_len > 0 && input.is_some() => {
                    match w {
                        Ok(n) => {
                            if let Some((front, cost)) = pending.front_mut() {
                                front.drain(..n.min(front.len()));
                                if front.is_empty() {
                                    written += *cost;
                                    pending.pop_front();
                                }
                            }
                            if written >= i64::from(DEFAULT_WINDOW / 4) {
                                let grant = u32::try_from(written).unwrap_or(u32::MAX);
                                if !self.out.send(&Frame::Credit(grant)).await {
                                    break;
                                }
                                written = 0;
                            }
                        }
                        Err(_) => {
                            // The process closed its input: what comes is dropped.
                            input = None;
                            written += pending.drain(..).map(|(_, c)| c).sum::<i64>();
                        }
                    }
                }
                _ = child.wait(), if exit.is_none() => {
                    exit = Some(exec_status(&std::fs::read_to_string(&status).unwrap_or_default()));
                    drain_until = Some(Instant::now() + DRAIN);
                    // Input no longer matters; neither does a terminal's writer.
                    input = None;
                    pending.clear();
                }
                _ = tick.tick() => {
                    if self.out.sent.elapsed() >= PING_EVERY && !self.out.send(&Frame::Ping).await {
                        break;
                    }
                    if self.heard.elapsed() >= kedge_common::session::SILENT_LIMIT {
                        tracing::info!("the controller went silent; exec session ended");
                        break;
                    }
                }
            }
        }
        let _ = std::fs::remove_file(&status);
        match exit {
            Some(Ok(code)) => {
                tracing::info!(pod = %req.pod, code, "exec ended");
                self.out.send(&Frame::Exit(code)).await;
            }
            Some(Err(message)) => self.fail(500, message).await,
            None => {
                // The controller went away first: the process loses its
                // input and output (a shell reads end of file, a terminal
                // hangs up) and ends as it would under the kubelet; the
                // helper is reaped in the background.
                tracing::info!(pod = %req.pod, "exec client went away");
            }
        }
    }

    /// Sends a chunk read from `out`; end of file closes it. False when the
    /// link is gone.
    async fn forward(&mut self, r: Option<(u8, Vec<u8>)>, out: &mut Option<Output>) -> bool {
        match r {
            Some((stream, data)) if !data.is_empty() => {
                self.credit -= session::cost(data.len());
                self.out.send(&Frame::Data { stream, data: Bytes(data) }).await
            }
            _ => {
                *out = None;
                true
            }
        }
    }

    fn take_exec(
        &mut self,
        f: Frame,
        taking: bool,
        pending: &mut VecDeque<(Vec<u8>, i64)>,
        dropped: &mut i64,
        close_input: &mut bool,
        terminal: Option<&std::os::fd::OwnedFd>,
    ) -> Asked {
        match f {
            Frame::Data { stream: 0, data } => {
                let cost = session::cost(data.0.len());
                if taking {
                    pending.push_back((data.0, cost));
                } else {
                    // Nobody reads it; its window comes back all the same.
                    *dropped += cost;
                }
            }
            Frame::Close { stream: 0 } => *close_input = true,
            Frame::Resize { width, height } => {
                if let Some(t) = terminal
                    && let Err(e) = pty::resize(t, width, height)
                {
                    tracing::debug!(error = %e, "cannot resize the terminal");
                }
            }
            Frame::Credit(n) => self.credit += i64::from(n),
            Frame::Cancel => return Asked::Stop,
            _ => {}
        }
        Asked::Nothing
    }
}

/// How the helper said the process ended, once it exited.
async fn ended(child: &mut tokio::process::Child, status: &Path) -> Result<i32, String> {
    let _ = child.wait().await;
    exec_status(&std::fs::read_to_string(status).unwrap_or_default())
}
