//! One run of a liveness, readiness or startup probe, as the kubelet runs it:
//! `exec` through the runtime's ExecSync; `tcpSocket` and `httpGet` connect
//! from inside the pod's network namespace (a short-lived thread joins it,
//! so no pooled thread is left in a pod's namespace), or from the host for
//! `hostNetwork` pods. `httpGet` succeeds on a status from 200 to 399.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use kedge_common::pod::{Container, Probe};

use crate::runtime::CriRuntime;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure(String),
}

/// Runs `probe` once against container `id` of a pod whose network
/// namespace is `netns` (`None`: the host's).
pub async fn run<R: CriRuntime>(rt: &R, id: &str, netns: Option<PathBuf>, c: &Container, probe: &Probe) -> Outcome {
    let timeout = probe.timeout();
    if let Some(e) = &probe.exec {
        return match rt.exec_sync(id, e.command.clone(), Some(timeout)).await {
            Ok(r) if r.exit_code == 0 => Outcome::Success,
            Ok(r) => {
                let out =
                    String::from_utf8_lossy(if r.stdout.is_empty() { &r.stderr } else { &r.stdout }).trim().to_string();
                Outcome::Failure(format!("command {:?} exited with {}: {out}", e.command, r.exit_code))
            }
            Err(err) => Outcome::Failure(format!("command {:?} could not run: {err}", e.command)),
        };
    }
    let (host, port, http) = match (&probe.tcp_socket, &probe.http_get) {
        (Some(t), _) => (t.host.clone(), t.port.resolve(c), None),
        (None, Some(h)) => {
            let path = h.path.clone().unwrap_or_else(|| "/".into());
            let headers: Vec<(String, String)> =
                h.http_headers.iter().map(|e| (e.name.clone(), e.value.clone())).collect();
            (h.host.clone(), h.port.resolve(c), Some((path, headers)))
        }
        (None, None) => return Outcome::Failure("the probe has no handler".into()),
    };
    let Some(port) = port else { return Outcome::Failure("the probe's port is not one of the container's".into()) };
    let host = host.unwrap_or_else(|| "127.0.0.1".into());
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new().name("probe".into()).spawn(move || {
        let result = in_netns(netns, || connect_and_check(&host, port, http, timeout));
        let _ = tx.send(result);
    });
    if let Err(e) = spawned {
        return Outcome::Failure(format!("cannot start the probe thread: {e}"));
    }
    match tokio::time::timeout(timeout + Duration::from_secs(1), rx).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(_)) => Outcome::Failure("the probe thread died".into()),
        Err(_) => Outcome::Failure(format!("timed out after {timeout:?}")),
    }
}

/// Runs `f` on this thread after joining the network namespace `netns`.
fn in_netns(netns: Option<PathBuf>, f: impl FnOnce() -> Outcome) -> Outcome {
    if let Some(path) = netns {
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                return Outcome::Failure(format!("cannot open the pod's network namespace {}: {e}", path.display()));
            }
        };
        if let Err(e) = nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET) {
            return Outcome::Failure(format!("cannot join the pod's network namespace: {e}"));
        }
    }
    f()
}

fn connect_and_check(
    host: &str,
    port: u16,
    http: Option<(String, Vec<(String, String)>)>,
    timeout: Duration,
) -> Outcome {
    let addr: Option<SocketAddr> = (host, port).to_socket_addrs().ok().and_then(|mut a| a.next());
    let Some(addr) = addr else { return Outcome::Failure(format!("cannot resolve {host}")) };
    let mut stream = match TcpStream::connect_timeout(&addr, timeout) {
        Ok(s) => s,
        Err(e) => return Outcome::Failure(format!("dial tcp {addr}: {e}")),
    };
    let Some((path, headers)) = http else { return Outcome::Success };
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    let mut req =
        format!("GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/1.32\r\nAccept: */*\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("Connection: close\r\n\r\n");
    if let Err(e) = stream.write_all(req.as_bytes()) {
        return Outcome::Failure(format!("Get \"http://{addr}{path}\": {e}"));
    }
    let mut head = [0u8; 64];
    let mut got = 0;
    while got < 12 {
        match stream.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) => return Outcome::Failure(format!("Get \"http://{addr}{path}\": {e}")),
        }
    }
    let line = String::from_utf8_lossy(&head[..got]);
    match line.split_whitespace().nth(1).and_then(|c| c.parse::<u16>().ok()) {
        Some(code) if (200..400).contains(&code) => Outcome::Success,
        Some(code) => Outcome::Failure(format!("HTTP probe failed with statuscode: {code}")),
        None => Outcome::Failure(format!("Get \"http://{addr}{path}\": not an HTTP response")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn tcp_and_http_checks_on_the_host() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let server = std::thread::spawn(move || {
            for (i, s) in l.incoming().take(3).enumerate() {
                let mut s = s.expect("accept");
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf);
                let answer =
                    if i == 1 { "HTTP/1.1 200 OK\r\n\r\n" } else { "HTTP/1.1 503 Service Unavailable\r\n\r\n" };
                let _ = s.write_all(answer.as_bytes());
            }
        });
        let t = Duration::from_secs(2);
        assert_eq!(connect_and_check("127.0.0.1", port, None, t), Outcome::Success);
        assert_eq!(connect_and_check("127.0.0.1", port, Some(("/".into(), vec![])), t), Outcome::Success);
        let Outcome::Failure(msg) = connect_and_check("127.0.0.1", port, Some(("/healthz".into(), vec![])), t) else {
            panic!("a 503 is a failure")
        };
        assert!(msg.contains("503"), "{msg}");
        server.join().expect("server");
        assert!(
            matches!(connect_and_check("127.0.0.1", port, None, t), Outcome::Failure(_)),
            "nothing listens any more"
        );
    }
}
