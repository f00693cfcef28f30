//! `kubectl attach` (and `kubectl run -i/-it`) on the node: the container's
//! own process. Its output comes live from the pumps that copy it into the
//! log ([`stdio::watch`]: stdout and stderr apart, or the terminal's);
//! input goes to its stdin FIFO or its terminal ([`stdio`]), within the
//! same credit as exec's. The session ends when the client detaches or the
//! container exits (with its exit code, as the kubelet's attach ends).

use std::pin::Pin;
use std::task::{Context, Poll};

use kedge_common::session::{ExecRequest, Frame};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Duration;

use super::pipes::{Output, Pipes, Pumped, Writer};
use super::{Session, SessionEnv, logs};
use crate::runtime::UNKNOWN_EXIT_CODE;
use crate::runtime::records::{ContainerRecord, ContainerState};
use crate::runtime::{pty, stdio};

/// How often a quiet attach looks whether the container has exited.
const EXIT_POLL: Duration = Duration::from_millis(250);
/// How long after the container's exit its output pumps have to end.
const DRAIN: Duration = Duration::from_secs(2);
/// Output an attach buffers towards the controller.
const BUFFER: usize = 64 * 1024;

impl Session {
    pub(super) async fn attach(&mut self, env: &SessionEnv, req: ExecRequest, container: ContainerRecord) {
        let cfg = &container.config;
        let what = format!("container {:?} in pod {:?}", req.container, req.pod);
        if req.stdin && !cfg.stdin {
            return self
                .fail(400, format!("{what} has no stdin to attach to (its spec does not set `stdin: true`)"))
                .await;
        }
        let terminal = if cfg.tty { stdio::terminal(&container.id) } else { None };
        if cfg.tty && terminal.is_none() {
            let m =
                format!("the terminal of {what} was lost when the node's agent restarted; exec a new shell instead");
            return self.fail(500, m).await;
        }
        let input: Option<Writer> = match (req.stdin, &terminal) {
            (false, _) => None,
            (true, Some(master)) => match master.try_clone().and_then(pty::split) {
                Ok((_, w)) => Some(Box::new(w)),
                Err(e) => return self.fail(500, format!("cannot write to the terminal of {what}: {e}")).await,
            },
            (true, None) if cfg.stdin_once && !stdio::stdin_once_open(&container.id) => {
                let m = format!("the stdin of {what} was closed when its first attach ended (`stdinOnce: true`)");
                return self.fail(400, m).await;
            }
            (true, None) => {
                let path = env.paths.container(&container.id).join("stdin");
                match pipe::OpenOptions::new().open_sender(&path) {
                    Ok(w) => {
                        let once = cfg.stdin_once.then(|| container.id.clone());
                        Some(Box::new(Stdin { inner: w, once }))
                    }
                    Err(e) => return self.fail(500, format!("cannot open the stdin of {what}: {e}")).await,
                }
            }
        };
        // Output from now on: what the container writes while attached.
        let mut watch = stdio::watch(&container.id);
        let wanted = |s: u8| if s == 2 && !cfg.tty { req.stderr } else { req.stdout };
        let (out_r, out_w) = tokio::io::simplex(BUFFER);
        let (err_r, err_w) = tokio::io::simplex(BUFFER);
        let out = req.stdout.then(|| Output::new(1, Box::new(out_r)));
        let err = (req.stderr && !cfg.tty).then(|| Output::new(2, Box::new(err_r)));
        let (paths, id) = (env.paths.clone(), container.id.clone());
        let (want_out, want_err) = (wanted(1), wanted(2));
        let notices = if req.stderr && !cfg.tty { 2 } else { 1 };
        let copier = tokio::spawn(async move {
            let mut w = [(out_w, want_out), (err_w, want_err)];
            // Set once the container has exited: the pumps should end
            // (closing the tap) by then; past it, the attach ends anyway.
            let mut deadline: Option<tokio::time::Instant> = None;
            loop {
                let wake = deadline.unwrap_or_else(|| tokio::time::Instant::now() + EXIT_POLL);
                let chunk = tokio::select! {
                    c = watch.recv() => c,
                    () = tokio::time::sleep_until(wake) => {
                        if deadline.is_some() {
                            break;
                        }
                        if logs::exited(&paths, &id) {
                            deadline = Some(tokio::time::Instant::now() + DRAIN);
                        }
                        continue;
                    }
                };
                match chunk {
                    Ok(c) => {
                        if !put(&mut w, c).await {
                            break;
                        }
                    }
                    // Output the client was too slow to take (the container
                    // is not held up for an attach): said, not silent.
                    Err(RecvError::Lagged(n)) => {
                        tracing::info!(chunks = n, "attach fell behind the container's output; chunks lost");
                        let notice = format!("[kedge: {n} pieces of output lost: this attach fell behind]\n");
                        if !put(&mut w, (notices, notice.into_bytes().into())).await {
                            break;
                        }
                    }
                    Err(RecvError::Closed) => break,
                }
            }
            // The end of output (a simplex pipe's reader sees it only then).
            for (pipe, _) in &mut w {
                let _ = pipe.shutdown().await;
            }
        });
        let _copier = Abort(copier);
        if !self.out.send(&Frame::Started).await {
            return;
        }
        tracing::info!(pod = %req.pod, container = %req.container, stdin = req.stdin, tty = cfg.tty, "attach started");
        let mut pipes = Pipes::new(out, err, input);
        let mut resize = |f: Frame| {
            if let (Frame::Resize { width, height }, Some(t)) = (f, terminal.as_ref())
                && let Err(e) = pty::resize(t.as_ref(), width, height)
            {
                tracing::debug!(error = %e, "cannot resize the terminal");
            }
        };
        let (paths, id) = (env.paths.clone(), container.id.clone());
        // The outputs end once the container has exited; without any, its
        // exit ends the session.
        let outputs = pipes.out.is_some() || pipes.err.is_some();
        let until = std::pin::pin!(async move {
            if outputs {
                std::future::pending::<()>().await;
            }
            while !logs::exited(&paths, &id) {
                tokio::time::sleep(EXIT_POLL).await;
            }
        });
        match self.pump(&mut pipes, until, true, &mut resize).await {
            Pumped::Stopped => tracing::info!(pod = %req.pod, "attach client went away"),
            Pumped::OutputsDone | Pumped::Until => {
                // This attempt's exit code (a restart may already run the
                // next); its output can end a moment before its exit is saved.
                let mut code = None;
                for _ in 0..20 {
                    code = logs::record(&env.paths, &container.id).map_or(Some(UNKNOWN_EXIT_CODE), |r| {
                        (r.state == ContainerState::Exited).then_some(r.exit_code)
                    });
                    if code.is_some() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                // Output ended while the process runs on: a clean end.
                let code = code.unwrap_or(0);
                tracing::info!(pod = %req.pod, code, "attach ended");
                self.out.send(&Frame::Exit(code)).await;
            }
        }
    }
}

/// Writes a chunk of output to its stream's pipe, if the client wants that
/// stream; false once the pipe is gone.
async fn put(
    w: &mut [(tokio::io::WriteHalf<tokio::io::SimplexStream>, bool); 2],
    (stream, bytes): stdio::Chunk,
) -> bool {
    let (pipe, on) = &mut w[usize::from(stream == 2)];
    !*on || pipe.write_all(&bytes).await.is_ok()
}

/// Stops a task when dropped.
struct Abort(tokio::task::JoinHandle<()>);

impl Drop for Abort {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// An attach's writer of the container's stdin FIFO. Of a `stdinOnce`
/// stdin, closing it also closes the agent's: the container reads end of
/// file (the client's stdin ended, or it detached).
struct Stdin {
    inner: pipe::Sender,
    once: Option<String>,
}

impl AsyncWrite for Stdin {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Drop for Stdin {
    fn drop(&mut self) {
        if let Some(id) = &self.once {
            stdio::close_stdin(id);
        }
    }
}
