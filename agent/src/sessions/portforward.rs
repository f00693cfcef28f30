//! One connection of `kubectl port-forward` on the node: TCP to the port
//! on the pod's loopback, dialled from inside the pod's network namespace
//! (as the kubelet's runtimes do), so it reaches what listens only on
//! 127.0.0.1 in the pod and needs no route to the pod's address. Bytes go
//! both ways within the session's credit; the pod closing its side ends
//! the session.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;

use kedge_common::session::{Frame, PortForwardRequest};
use tokio::time::Duration;

use super::pipes::{Output, Pipes, Pumped};
use super::{Session, SessionEnv};
use crate::runtime::records::SandboxState;

/// How long the pod has to accept the connection.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// Dials `port` on loopback inside `netns` (the host's with `None`), on a
/// thread of its own: the namespace is a thread's, and the thread ends
/// with the call, so no other work ever runs in the pod's namespace.
async fn dial(netns: Option<PathBuf>, port: u16) -> std::io::Result<TcpStream> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new().name("port-forward".into()).spawn(move || {
        let dialled = (|| {
            if let Some(path) = &netns {
                let ns = std::fs::File::open(path)?;
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
            }
            let s = TcpStream::connect_timeout(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)), DIAL_TIMEOUT)?;
            s.set_nonblocking(true)?;
            Ok(s)
        })();
        let _ = tx.send(dialled);
    })?;
    rx.await.unwrap_or_else(|_| Err(std::io::Error::other("the dialling thread ended")))
}

impl Session {
    pub(super) async fn port_forward(&mut self, env: &SessionEnv, req: PortForwardRequest) {
        let pod = format!("{}/{}", req.namespace, req.pod);
        let sandboxes = super::logs::sandboxes_of(&env.paths, &req.namespace, &req.pod, &req.uid);
        let Some(sandbox) = sandboxes.into_iter().find(|s| s.state == SandboxState::Ready) else {
            return self.fail(404, format!("pod {pod:?} is not running on this node")).await;
        };
        let netns = if sandbox.host_network() { None } else { sandbox.netns.clone() };
        let stream = match dial(netns, req.port).await.and_then(tokio::net::TcpStream::from_std) {
            Ok(s) => s,
            Err(e) => {
                // The kubelet's words (Go's), which kubectl prints.
                let why = match e.raw_os_error() {
                    Some(n) => format!("connect: {}", nix::errno::Errno::from_raw(n).desc().to_lowercase()),
                    None => e.to_string(),
                };
                let m = format!(
                    "error forwarding port {} to pod {}, uid {}: dial tcp4 127.0.0.1:{}: {why}",
                    req.port, req.pod, req.uid, req.port
                );
                return self.fail(500, m).await;
            }
        };
        if !self.out.send(&Frame::Started).await {
            return;
        }
        tracing::debug!(%pod, port = req.port, "port-forward connected");
        let (r, w) = stream.into_split();
        let mut pipes = Pipes::new(Some(Output::new(1, Box::new(r))), None, Some(Box::new(w)));
        let forever = std::pin::pin!(std::future::pending::<()>());
        match self.pump(&mut pipes, forever, true, &mut |_| {}).await {
            // The pod closed the connection: everything it sent went.
            Pumped::OutputsDone => {
                self.out.send(&Frame::End).await;
            }
            Pumped::Until | Pumped::Stopped => {}
        }
    }
}
