//! A minimal HTTP/1.1 client and server start-up for the API tests.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use kedge_controller::server::{self, Options, Running};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

pub async fn call(addr: SocketAddr, method: &str, path: &str, ct: &str, body: &[u8]) -> Resp {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Type: {ct}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.expect("write");
    // A server may answer (413) before reading a large body.
    let _ = s.write_all(body).await;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.expect("read");
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("header end");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|c| c.parse().ok()).expect("status");
    let headers =
        lines.filter_map(|l| l.split_once(": ").map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))).collect();
    Resp { status, headers, body: raw[split + 4..].to_vec() }
}

pub async fn get(addr: SocketAddr, path: &str) -> Resp {
    call(addr, "GET", path, "application/json", b"").await
}

pub async fn post(addr: SocketAddr, path: &str, v: &Value) -> Resp {
    call(addr, "POST", path, "application/json", v.to_string().as_bytes()).await
}

pub async fn put(addr: SocketAddr, path: &str, v: &Value) -> Resp {
    call(addr, "PUT", path, "application/json", v.to_string().as_bytes()).await
}

pub async fn patch(addr: SocketAddr, path: &str, ct: &str, body: &str) -> Resp {
    call(addr, "PATCH", path, ct, body.as_bytes()).await
}

/// Starts a server with options adjusted by `f`.
pub async fn start_with(f: impl FnOnce(&mut Options)) -> (Running, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tmp");
    let mut opts = Options::local(dir.path().to_path_buf(), "127.0.0.1:0".parse().expect("addr"));
    f(&mut opts);
    (server::start(opts).await.expect("start"), dir)
}

/// Starts a server with a short node grace period (for lifecycle tests).
pub async fn start_with_grace(grace: Duration) -> (Running, tempfile::TempDir) {
    start_with(|o| o.nodes.grace = grace).await
}

pub async fn start(history: usize) -> (Running, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tmp");
    let mut opts = Options::local(dir.path().to_path_buf(), "127.0.0.1:0".parse().expect("addr"));
    opts.watch_history = history;
    let running = server::start(opts).await.expect("start");
    (running, dir)
}

/// Polls `f` every 20 ms for up to 5 s until it returns `Some`.
pub async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    for _ in 0..250 {
        if let Some(v) = f().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Polls `f` every 20 ms for up to `limit` until it returns `Ok`; past the
/// deadline it panics with `what` and the last `Err` (what was last seen).
pub async fn until<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(seen) if tokio::time::Instant::now() >= deadline => {
                panic!("timed out after {limit:?} waiting for {what}; last seen: {seen}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}
