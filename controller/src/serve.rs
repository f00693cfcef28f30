//! Serving the API over HTTP/1.1, plain (loopback) or TLS, with limits a
//! hostile client cannot wear down. Anyone who can reach the port can open
//! connections before authenticating, so:
//!
//! - a TLS handshake must finish within [`Limits::handshake_timeout`];
//! - a request's headers must arrive within [`Limits::header_timeout`],
//!   which is also the longest a connection may sit idle between requests
//!   (hyper times the wait for a request head, including the first);
//! - at most [`Limits::max_connections`] connections are served, at most
//!   [`Limits::max_per_peer`] from one address. At a limit, the oldest
//!   connection that is not serving a request (handshaking, sending headers
//!   slowly, or idle) is closed for the newcomer, as nginx reuses idle
//!   keep-alive connections when out of them; with none idle the newcomer is
//!   refused. Idle connections thus cannot lock an administrator out, and a
//!   watch or exec in progress is never cut for one;
//! - an `accept` that fails (EMFILE: out of file descriptors) pauses accepts
//!   instead of retrying at once, and says so once a second at most.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;

/// What a connection may cost the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once.
    pub max_connections: usize,
    /// Connections served at once from one address.
    pub max_per_peer: usize,
    /// Time to send a request's headers; also the longest idle time between
    /// requests on a kept-alive connection.
    pub header_timeout: Duration,
    /// Time to finish a TLS handshake.
    pub handshake_timeout: Duration,
}

impl Limits {
    /// A quarter of the process's file descriptors (the broker, the store
    /// and the agents' sessions need the rest), between 64 and 8,192; half
    /// of that per address. Headers and idle: 30 s (Go's API server: 32 s).
    pub fn for_this_process() -> Self {
        Self::with_max((fd_limit() / 4).clamp(64, 8192) as usize)
    }

    /// `max` connections, half of them per address, default timeouts.
    pub fn with_max(max: usize) -> Self {
        let max = max.max(1);
        Limits {
            max_connections: max,
            max_per_peer: (max / 2).max(1),
            header_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// The soft limit on open files (`ulimit -n`).
#[allow(unsafe_code)]
fn fd_limit() -> u64 {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return 1024;
    }
    // rlim_t is 32 bits on armv7.
    #[allow(clippy::useless_conversion)]
    u64::try_from(r.rlim_cur).unwrap_or(u64::MAX)
}

/// Raises the soft limit on open files to the hard limit, as Go programs
/// (the Kubernetes API server among them) do at start: the default soft
/// limit of 1,024 is far below what thousands of agents and clients need.
#[allow(unsafe_code)]
pub fn raise_fd_limit() {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit read and write the struct they are given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            let was = r.rlim_cur;
            r.rlim_cur = r.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &r) == 0 {
                tracing::debug!(from = was, to = r.rlim_max, "raised the open-file limit");
            }
        }
    }
}

/// The connections being served.
struct Table {
    limits: Limits,
    next: u64,
    /// By age: the oldest first.
    open: BTreeMap<u64, Conn>,
    per_peer: HashMap<IpAddr, usize>,
}

struct Conn {
    peer: IpAddr,
    /// Requests in progress: from their headers to their response's last
    /// byte (a watch stays busy for as long as it runs).
    busy: Arc<AtomicUsize>,
    close: oneshot::Sender<()>,
}

/// A connection's place in the table, given back when its task ends.
struct Slot {
    table: Arc<Mutex<Table>>,
    id: u64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        t.remove(self.id);
    }
}

impl Table {
    fn new(limits: Limits) -> Self {
        Table { limits, next: 0, open: BTreeMap::new(), per_peer: HashMap::new() }
    }

    /// Makes room for a connection from `peer` (closing the oldest idle one
    /// where a limit is reached) and records it; `None`: refused.
    fn admit(&mut self, peer: IpAddr) -> Option<(u64, Arc<AtomicUsize>, oneshot::Receiver<()>)> {
        if self.per_peer.get(&peer).copied().unwrap_or(0) >= self.limits.max_per_peer && !self.evict(Some(peer)) {
            return None;
        }
        if self.open.len() >= self.limits.max_connections && !self.evict(None) {
            return None;
        }
        let id = self.next;
        self.next += 1;
        let busy = Arc::new(AtomicUsize::new(0));
        let (close, closed) = oneshot::channel();
        self.open.insert(id, Conn { peer, busy: busy.clone(), close });
        *self.per_peer.entry(peer).or_default() += 1;
        Some((id, busy, closed))
    }

    /// Closes the oldest connection serving no request (of `peer`, if
    /// given); false when every one is busy.
    fn evict(&mut self, peer: Option<IpAddr>) -> bool {
        let idle = self
            .open
            .iter()
            .find(|(_, c)| peer.is_none_or(|p| c.peer == p) && c.busy.load(Ordering::SeqCst) == 0)
            .map(|(id, _)| *id);
        let Some(conn) = idle.and_then(|id| self.remove(id)) else { return false };
        let _ = conn.close.send(());
        true
    }

    fn remove(&mut self, id: u64) -> Option<Conn> {
        let conn = self.open.remove(&id)?;
        if let Some(n) = self.per_peer.get_mut(&conn.peer) {
            *n -= 1;
            if *n == 0 {
                self.per_peer.remove(&conn.peer);
            }
        }
        Some(conn)
    }
}

/// Logs a repeated condition once a second at most, with how often it
/// happened in between.
struct Throttled {
    last: Option<Instant>,
    missed: u64,
}

impl Throttled {
    fn new() -> Self {
        Throttled { last: None, missed: 0 }
    }

    /// `Some(times since the last log)` when this one should be logged.
    fn hit(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self.last.is_some_and(|l| now.duration_since(l) < Duration::from_secs(1)) {
            self.missed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.missed) + 1)
    }
}

/// Serves `app` on `listener` (TLS with `tls`) until `stop` flips; then
/// stops accepting, lets each connection finish the request it serves, and
/// returns once all have closed.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let table = Arc::new(Mutex::new(Table::new(limits)));
    let mut conns = JoinSet::new();
    let (mut accept_errors, mut refusals) = (Throttled::new(), Throttled::new());
    tracing::debug!(?limits, "serving the API");
    loop {
        while conns.try_join_next().is_some() {}
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.wait_for(|v| *v) => break,
        };
        let (tcp, peer) = match accepted {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors the error comes back at once until one
                // is freed: pause rather than spin.
                if let Some(times) = accept_errors.hit() {
                    tracing::warn!(error = %e, times, "accepting a connection failed; pausing accepts for 100 ms");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let admitted = table.lock().unwrap_or_else(|p| p.into_inner()).admit(peer.ip());
        let Some((id, busy, closed)) = admitted else {
            if let Some(times) = refusals.hit() {
                tracing::warn!(%peer, times, max = limits.max_connections, per_address = limits.max_per_peer,
                    "too many connections, none of them idle: refused");
            }
            continue;
        };
        let slot = Slot { table: table.clone(), id };
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let stop = stop.clone();
        match acceptor.clone() {
            None => conns.spawn(async move {
                let _slot = slot;
                connection(tcp, peer, app, busy, closed, limits, stop).await
            }),
            Some(acceptor) => conns.spawn(async move {
                let _slot = slot;
                let mut closed = closed;
                let tls = tokio::select! {
                    t = tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)) => t,
                    _ = &mut closed => return,
                };
                match tls {
                    Ok(Ok(s)) => connection(s, peer, app, busy, closed, limits, stop).await,
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            }),
        };
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
    Ok(())
}

/// Counts a request as in progress while it lives.
struct Busy(Arc<AtomicUsize>);

impl Busy {
    fn enter(n: &Arc<AtomicUsize>) -> Self {
        n.fetch_add(1, Ordering::SeqCst);
        Busy(n.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Serves one connection's requests until it closes, idles too long, is
/// closed for a newcomer (`closed`), or the server stops.
async fn connection<I>(
    io: I,
    peer: std::net::SocketAddr,
    app: axum::Router,
    busy: Arc<AtomicUsize>,
    mut closed: oneshot::Receiver<()>,
    limits: Limits,
    stop: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    use axum::response::IntoResponse as _;
    use futures_util::FutureExt as _;
    use http_body_util::BodyExt as _;
    use hyper::service::Service as _;
    use hyper_util::rt::{TokioIo, TokioTimer};
    let inner = hyper_util::service::TowerToHyperService::new(app);
    let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let guard = Busy::enter(&busy);
        let inner = inner.clone();
        let path = req.uri().path().to_owned();
        // A bug in one handler answers that request with a 500 and leaves
        // the connection, and every other, served (the controller unwinds:
        // profile release-controller).
        let response = std::panic::AssertUnwindSafe(async move { inner.call(req).await }).catch_unwind();
        async move {
            let response = match response.await {
                Ok(r) => r?,
                Err(panic) => {
                    let what = panic_message(panic.as_ref());
                    tracing::error!(%peer, path, panic = %what, "a request handler panicked; answered with a 500");
                    crate::api::error::ApiError::internal(format!("the server hit a bug handling this request: {what}"))
                        .into_response()
                }
            };
            // Busy until the body's last byte is sent (or the body dropped).
            Ok::<_, std::convert::Infallible>(response.map(|b| {
                axum::body::Body::new(b.map_frame(move |f| {
                    let _ = &guard;
                    f
                }))
            }))
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    tokio::pin!(conn);
    let stopping = async move {
        let mut stop = stop;
        let _ = stop.wait_for(|v| *v).await;
    };
    let served = tokio::select! {
        r = conn.as_mut() => r,
        _ = &mut closed => {
            tracing::debug!(%peer, "idle connection closed to make room for another");
            return;
        }
        () = stopping => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = served {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// What a panic said (its `&str` or `String` payload).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: usize, per_peer: usize) -> Limits {
        Limits { max_connections: max, max_per_peer: per_peer, ..Limits::with_max(max) }
    }

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn at_the_limit_the_oldest_idle_connection_makes_room() {
        let mut t = Table::new(limits(3, 3));
        let (_first, busy_first, _c0) = t.admit(A).expect("first");
        let (_second, _, mut second_closed) = t.admit(A).expect("second");
        let (_third, _, _c2) = t.admit(B).expect("third");
        busy_first.fetch_add(1, Ordering::SeqCst);
        // The oldest is busy (a watch): the second goes instead.
        let (fourth, _, _c3) = t.admit(B).expect("room made");
        assert!(second_closed.try_recv().is_ok(), "the oldest idle connection was told to close");
        assert_eq!(t.open.len(), 3);
        assert!(t.open.contains_key(&fourth));
    }

    #[test]
    fn with_every_connection_busy_a_newcomer_is_refused() {
        let mut t = Table::new(limits(2, 2));
        let held: Vec<_> = (0..2).map(|_| t.admit(A).expect("admitted")).collect();
        for (_, busy, _) in &held {
            busy.fetch_add(1, Ordering::SeqCst);
        }
        assert!(t.admit(B).is_none());
        held[0].1.fetch_sub(1, Ordering::SeqCst);
        assert!(t.admit(B).is_some(), "once one is idle it makes room");
    }

    #[test]
    fn one_address_cannot_take_every_slot() {
        let mut t = Table::new(limits(4, 2));
        let held: Vec<_> = (0..2).map(|_| t.admit(A).expect("admitted")).collect();
        for (_, busy, _) in &held {
            busy.fetch_add(1, Ordering::SeqCst);
        }
        assert!(t.admit(A).is_none(), "A is at its share, all busy");
        assert!(t.admit(B).is_some(), "B still gets in");
        // Giving slots back frees the address's share.
        t.remove(held[0].0);
        assert!(t.admit(A).is_some());
        assert_eq!(t.per_peer.get(&A), Some(&2));
    }

    #[test]
    fn a_repeated_warning_is_logged_once_a_second_with_its_count() {
        let mut w = Throttled::new();
        assert_eq!(w.hit(), Some(1));
        assert_eq!(w.hit(), None);
        assert_eq!(w.hit(), None);
        w.last = Some(Instant::now() - Duration::from_secs(2));
        assert_eq!(w.hit(), Some(3), "the two held back and this one");
    }
}
