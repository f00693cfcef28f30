//! `kubectl exec` on the node: the command runs in the container through
//! the libcontainer helper (`__libcontainer exec-stream`), with pipes for
//! stdin, stdout and stderr, or a terminal whose master the container sends
//! to a console socket. Output goes to the controller as data frames within
//! its credit; input is written as the process takes it, and credited back
//! once written, so neither end floods the broker. The last frame is the
//! exit code.

use std::path::Path;
use std::process::Stdio;

use kedge_common::session::{ExecRequest, Frame, LogsRequest};
use tokio::net::unix::pipe;
use tokio::time::Duration;

use super::pipes::{Output, Pipes, Pumped, Writer};
use super::{Session, SessionEnv, logs};
use crate::runtime::container::exec_status;
use crate::runtime::pty;
use crate::runtime::records::ContainerState;

/// How long output that is still open is read once the process exited (a
/// background child may hold it).
const DRAIN: Duration = Duration::from_millis(200);
/// How long the container has to send the terminal.
const CONSOLE_TIMEOUT: Duration = Duration::from_secs(10);

impl Session {
    pub(super) async fn exec(&mut self, env: &SessionEnv, req: ExecRequest) {
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
        if req.command.is_empty() {
            return self.attach(env, req, container).await;
        }
        let Some(helper) = env.exec_helper.clone() else {
            return self.fail(501, "this node's runtime cannot run commands in containers".into()).await;
        };
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
        let mut cmd = std::process::Command::new(&helper);
        cmd.arg("__libcontainer").arg("exec-stream").arg("--id").arg(&container.id);
        cmd.arg("--root").arg(env.paths.state()).arg("--status").arg(&status);
        if let Some(c) = &console {
            cmd.arg("--console-socket").arg(c.path());
        }
        cmd.arg("--").args(&req.command);
        let piped = |on: bool| if on && !req.tty { Stdio::piped() } else { Stdio::null() };
        cmd.stdin(piped(req.stdin)).stdout(piped(req.stdout)).stderr(piped(req.stderr));
        let spawned = {
            // The helper's fork must not carry a file the agent is writing.
            let _spawning = crate::forklock::forking();
            cmd.spawn()
        };
        let mut child = match spawned {
            Ok(c) => Helper(c),
            Err(e) => return self.fail(500, format!("cannot run the exec helper {}: {e}", helper.display())).await,
        };
        let (out, err, input, terminal): (Option<Output>, Option<Output>, Option<Writer>, _) = match &console {
            Some(c) => {
                let master = tokio::select! {
                    m = tokio::time::timeout(CONSOLE_TIMEOUT, c.master()) => m,
                    () = child.exited() => Ok(Err(std::io::Error::other("the process ended before its terminal came"))),
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
                child.0.stdout.take().and_then(|r| output(1, r.into())),
                child.0.stderr.take().and_then(|r| output(2, r.into())),
                child
                    .0
                    .stdin
                    .take()
                    .and_then(|w| pipe::Sender::from_owned_fd(w.into()).ok())
                    .map(|w| Box::new(w) as Writer),
                None,
            ),
        };
        drop(console);
        if !self.out.send(&Frame::Started).await {
            return;
        }
        tracing::info!(pod = %req.pod, container = %req.container, command = ?req.command, tty = req.tty, "exec started");
        let mut pipes = Pipes::new(out, err, input);
        let mut resize = |f: Frame| {
            if let (Frame::Resize { width, height }, Some(t)) = (f, terminal.as_ref())
                && let Err(e) = pty::resize(t, width, height)
            {
                tracing::debug!(error = %e, "cannot resize the terminal");
            }
        };
        let exited = std::pin::pin!(child.exited());
        let exit = match self.pump(&mut pipes, exited, false, &mut resize).await {
            Pumped::Until => exec_status(&std::fs::read_to_string(&status).unwrap_or_default()),
            Pumped::OutputsDone | Pumped::Stopped => {
                // The controller went away first: the process loses its
                // input and output (a shell reads end of file, a terminal
                // hangs up) and ends as it would under the kubelet; the
                // helper is reaped in the background.
                tracing::info!(pod = %req.pod, "exec client went away");
                let _ = std::fs::remove_file(&status);
                return;
            }
        };
        let _ = std::fs::remove_file(&status);
        // What the process wrote last (a background child may hold its
        // output open: not waited for past DRAIN).
        pipes.drop_input();
        let drained = std::pin::pin!(tokio::time::sleep(DRAIN));
        if let Pumped::Stopped = self.pump(&mut pipes, drained, true, &mut |_| {}).await {
            return;
        }
        match exit {
            Ok(code) => {
                tracing::info!(pod = %req.pod, code, "exec ended");
                self.out.send(&Frame::Exit(code)).await;
            }
            Err(message) => self.fail(500, message).await,
        }
    }
}

/// How the helper said the process ended, once it exited.
async fn ended(child: &mut Helper, status: &Path) -> Result<i32, String> {
    child.exited().await;
    exec_status(&std::fs::read_to_string(status).unwrap_or_default())
}

/// A pipe from the helper as an output of the session.
fn output(stream: u8, fd: std::os::fd::OwnedFd) -> Option<Output> {
    pipe::Receiver::from_owned_fd(fd).ok().map(|r| Output::new(stream, Box::new(r)))
}

/// The helper process, waited for through a pidfd (no SIGCHLD handling in
/// the agent) and reaped once it exits, also when the session ends first.
struct Helper(std::process::Child);

impl Helper {
    async fn exited(&mut self) {
        let pid = i32::try_from(self.0.id()).unwrap_or(0);
        if crate::runtime::pidfd::exited(pid).await.is_err() {
            while matches!(self.0.try_wait(), Ok(None)) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.0.try_wait() {
            return;
        }
        let pid = self.0.id();
        // Still running (its client went away): reaped when it ends.
        tokio::spawn(async move {
            let _ = crate::runtime::pidfd::exited(i32::try_from(pid).unwrap_or(0)).await;
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap_or(0)), None);
        });
    }
}
