//! API benchmark: `cargo bench -p kedge-controller --bench api`.
//!
//! Method (also in BENCHMARKS.md):
//! - the release `kedge-controller` binary is started as its own process on
//!   127.0.0.1 with a fresh data dir on the local disk (redb, fsync per commit),
//!   over plain HTTP (`--insecure-http`: the API measured, not TLS);
//! - **idle RSS**: `VmRSS` from `/proc/PID/status` 2 s after start-up, before
//!   any request, and again after the create runs (thousands of objects stored);
//! - **creates/s**: `POST` of small ConfigMaps over keep-alive HTTP/1.1
//!   connections, each request waiting for its `201`; 1 client sends
//!   `CREATES` in sequence, then 16 clients send `CREATES` between them
//!   concurrently; rate = creates / wall time;
//! - **watch delivery latency**: one watch on ConfigMaps; a second connection
//!   patches one ConfigMap `WATCH_ROUNDS` times in sequence; latency = time
//!   from sending the PATCH to the matching MODIFIED event arriving on the
//!   watch; p50/p99/max reported.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kedge_tests::percentile;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const CREATES: usize = 2000;
const WATCH_ROUNDS: usize = 500;

/// A minimal keep-alive HTTP/1.1 client: the controller always answers
/// non-watch requests with a Content-Length.
struct Conn {
    r: BufReader<TcpStream>,
}

impl Conn {
    async fn open(addr: &str) -> Conn {
        let s = TcpStream::connect(addr).await.expect("connect");
        s.set_nodelay(true).expect("nodelay");
        Conn { r: BufReader::new(s) }
    }

    async fn send(&mut self, method: &str, path: &str, ct: &str, body: &str) {
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: {ct}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.r.get_mut().write_all(req.as_bytes()).await.expect("write");
    }

    async fn response(&mut self) -> u16 {
        let mut line = String::new();
        self.r.read_line(&mut line).await.expect("status line");
        let status: u16 = line.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status");
        let mut len = 0usize;
        loop {
            line.clear();
            self.r.read_line(&mut line).await.expect("header");
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().expect("length");
                }
            }
        }
        let mut body = vec![0; len];
        self.r.read_exact(&mut body).await.expect("body");
        status
    }

    async fn request(&mut self, method: &str, path: &str, ct: &str, body: &str) -> u16 {
        self.send(method, path, ct, body).await;
        self.response().await
    }
}

fn cm(name: &str) -> String {
    format!(r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"{name}"}},"data":{{"k":"v"}}}}"#)
}

async fn creates(addr: &str, clients: usize, prefix: &str) -> f64 {
    let per = CREATES / clients;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let addr = addr.to_owned();
        let prefix = prefix.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(&addr).await;
            for i in 0..per {
                let st = conn
                    .request(
                        "POST",
                        "/api/v1/namespaces/default/configmaps",
                        "application/json",
                        &cm(&format!("{prefix}-{c}-{i}")),
                    )
                    .await;
                assert_eq!(st, 201);
            }
        }));
    }
    for t in tasks {
        t.await.expect("client");
    }
    (per * clients) as f64 / start.elapsed().as_secs_f64()
}

async fn watch_latency(addr: &str) -> Vec<Duration> {
    let mut w = Conn::open(addr).await;
    let mut writer = Conn::open(addr).await;
    assert_eq!(
        writer.request("POST", "/api/v1/namespaces/default/configmaps", "application/json", &cm("watched")).await,
        201
    );
    w.send(
        "GET",
        "/api/v1/namespaces/default/configmaps?watch=true&fieldSelector=metadata.name%3Dwatched",
        "application/json",
        "",
    )
    .await;
    // Skip the response head and the initial ADDED event.
    let mut line = String::new();
    loop {
        line.clear();
        w.r.read_line(&mut line).await.expect("watch");
        if line.contains("\"ADDED\"") {
            break;
        }
    }
    let mut out = Vec::with_capacity(WATCH_ROUNDS);
    for i in 0..WATCH_ROUNDS {
        let marker = format!("m{i}x");
        let patch = format!(r#"{{"data":{{"k":"{marker}"}}}}"#);
        let t0 = Instant::now();
        writer
            .send("PATCH", "/api/v1/namespaces/default/configmaps/watched", "application/merge-patch+json", &patch)
            .await;
        loop {
            line.clear();
            w.r.read_line(&mut line).await.expect("watch event");
            if line.contains(&marker) {
                break;
            }
        }
        out.push(t0.elapsed());
        assert_eq!(writer.response().await, 200);
    }
    out.sort();
    out
}

fn main() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut child = Command::new(env!("CARGO_BIN_EXE_kedge-controller"))
        // Plain HTTP: the figures are the API's, not TLS's (the bench's
        // client speaks HTTP/1.1 over a bare socket).
        .args(["--data-dir", &dir.path().to_string_lossy(), "--listen", "127.0.0.1:0", "--insecure-http"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start controller");
    let mut first = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().expect("stdout")), &mut first)
        .expect("listening line");
    let addr = first.trim().rsplit("http://").next().expect("addr").to_owned();
    std::thread::sleep(Duration::from_secs(2));
    let idle = kedge_tests::rss_kib(child.id());

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let (one, sixteen, lat) = rt.block_on(async {
        let one = creates(&addr, 1, "a").await;
        let sixteen = creates(&addr, 16, "b").await;
        let lat = watch_latency(&addr).await;
        (one, sixteen, lat)
    });
    let loaded = kedge_tests::rss_kib(child.id());
    let _ = child.kill();
    let _ = child.wait();

    println!("| measure | value |");
    println!("|---|---|");
    println!("| controller idle RSS (fresh store) | {:.1} MiB |", idle as f64 / 1024.0);
    println!("| creates/s, 1 client ({CREATES} ConfigMaps) | {one:.0} |");
    println!("| creates/s, 16 clients ({CREATES} ConfigMaps) | {sixteen:.0} |");
    println!(
        "| watch delivery, PATCH sent → event received ({WATCH_ROUNDS} rounds) | p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms |",
        percentile(&lat, 0.5).as_secs_f64() * 1e3,
        percentile(&lat, 0.99).as_secs_f64() * 1e3,
        lat.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );
    println!(
        "| controller RSS after the runs ({} objects stored) | {:.1} MiB |",
        2 * CREATES + 1,
        loaded as f64 / 1024.0
    );
}
