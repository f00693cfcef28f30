//! Sessions through the broker (`kubectl logs`, `exec`, `port-forward`),
//! method in BENCHMARKS.md. Needs root (the agent runs containers) and
//! kubectl. Release binaries, one controller with its embedded broker and
//! one agent on loopback; every session crosses the broker as a node behind
//! NAT would. Each figure sits beside a baseline taken in the same run.
//!
//! 1. first log byte: `GET pods/NAME/log?tailLines=1` through the API, 50
//!    times back to back, each timed until its body is read (the log is one
//!    short line, so that is its first byte) — beside `GET pods/NAME` on
//!    the same keep-alive connection (the API without the relay).
//! 2. exec round trip: one `kubectl exec -i POD -- cat`; a 32-byte line is
//!    written to its stdin and timed until it comes back on its stdout, 200
//!    times — beside the same through a TCP echo on loopback.
//! 3. port-forward throughput: `kubectl port-forward` to busybox httpd in
//!    the pod, a 64 MiB file fetched through it (HTTP/1.0, read to the end),
//!    three times, the best kept — beside the same bytes from a TCP server
//!    on loopback.
//! 4. agent RSS while 10 `kubectl logs -f` and 2 `kubectl exec -i` sessions
//!    run (sampled every 250 ms for 10 s, highest kept), before, and 3 s and
//!    30 s after they end; the sessions the agent opened and ended.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use kedge_tests::agent::Agent;
use kedge_tests::{Kubectl, percentile};

const POD: &str = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"bench","namespace":"default"},
"spec":{"terminationGracePeriodSeconds":0,"containers":[{"name":"main","image":"kedge.local/busybox:latest",
"imagePullPolicy":"IfNotPresent","command":["sh","-c",
"mkdir -p /www && head -c 67108864 /dev/zero > /www/big && echo ready && exec httpd -f -p 127.0.0.1:8080 -h /www"]}]}}"#;
const BIG: usize = 64 << 20;

fn wait(what: &str, limit: Duration, mut f: impl FnMut() -> Result<bool>) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f()? {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("timed out waiting for {what}")
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// p50 / p99 of `times` in ms.
fn p50_p99(mut times: Vec<Duration>) -> (f64, f64) {
    times.sort();
    (ms(percentile(&times, 0.5)), ms(percentile(&times, 0.99)))
}

/// Fetches `path` over HTTP/1.0 from `port` on loopback; the bytes of the
/// body and the time it took.
fn fetch(port: u16, path: &str) -> Result<(usize, Duration)> {
    let t = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())?;
    let mut buf = vec![0u8; 1 << 20];
    let (mut total, mut head) = (0usize, Vec::new());
    let mut body = 0usize;
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n;
        if head.len() < 4096 {
            head.extend_from_slice(&buf[..n.min(4096)]);
        }
    }
    if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
        body = total - (end + 4);
    }
    Ok((body, t.elapsed()))
}

/// A loopback server that answers any request with `BIG` bytes.
fn local_server() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let port = l.local_addr()?.port();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let mut s = s;
            let mut req = [0u8; 1024];
            let _ = s.read(&mut req);
            let _ = s.write_all(b"HTTP/1.0 200 OK\r\n\r\n");
            let chunk = vec![0u8; 1 << 20];
            for _ in 0..BIG / chunk.len() {
                if s.write_all(&chunk).is_err() {
                    break;
                }
            }
        }
    });
    Ok(port)
}

/// A loopback TCP echo server.
fn echo_server() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let port = l.local_addr()?.port();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let mut s = s;
            let _ = s.set_nodelay(true);
            let mut buf = [0u8; 4096];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 || s.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    });
    Ok(port)
}

/// Round trips of a 32-byte line through `write` → `read`.
fn round_trips(w: &mut impl Write, r: &mut impl BufRead, n: usize) -> Result<Vec<Duration>> {
    let line = "0123456789abcdef0123456789abcde\n";
    let mut got = String::new();
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        got.clear();
        let t = Instant::now();
        w.write_all(line.as_bytes())?;
        w.flush()?;
        r.read_line(&mut got)?;
        ensure!(got == line, "echoed {got:?}");
        times.push(t.elapsed());
    }
    Ok(times)
}

fn exec_cat(k: &Kubectl) -> Result<Child> {
    Ok(k.command(&["exec", "-i", "bench", "--", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?)
}

fn main() -> Result<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    if !kedge_tests::is_root() {
        bail!("the sessions benchmark needs root (its agent runs containers)");
    }
    let tmp = tempfile::tempdir()?;
    let Some((ctl, k)) = kedge_tests::controller_and_kubectl(tmp.path(), &[])? else {
        bail!("the sessions benchmark needs kubectl");
    };
    let api = ctl.api()?;
    let broker = ctl.broker.clone().context("no fleet broker")?;
    let token = ctl.token()?;
    let mut agent = Agent::new(&tmp.path().join("n0"), &["--broker", &broker, "--token", &token, "--node-name", "n0"])?;
    agent.start()?;
    let mut report = vec![format!("kedge sessions benchmark, {}", jiff::Timestamp::now())];
    let (code, body) = api.request("POST", "/api/v1/namespaces/default/pods", "application/json", POD)?;
    ensure!(code == 201, "creating the pod: {code} {body}");
    wait("the pod's log line", Duration::from_secs(120), || {
        Ok(api.request("GET", "/api/v1/namespaces/default/pods/bench/log", "text/plain", "")?.1 == "ready\n")
    })?;

    // --- 1. first log byte ------------------------------------------------------------
    let (mut logs, mut gets) = (Vec::new(), Vec::new());
    for _ in 0..50 {
        let t = Instant::now();
        let (code, body) =
            api.request("GET", "/api/v1/namespaces/default/pods/bench/log?tailLines=1", "text/plain", "")?;
        ensure!(code == 200 && body == "ready\n", "{code} {body}");
        logs.push(t.elapsed());
        let t = Instant::now();
        let (code, _) = api.request("GET", "/api/v1/namespaces/default/pods/bench", "application/json", "")?;
        ensure!(code == 200);
        gets.push(t.elapsed());
    }
    let ((l50, l99), (g50, g99)) = (p50_p99(logs), p50_p99(gets));
    report.push(format!(
        "first log byte (GET pods/bench/log?tailLines=1), n=50: p50 {l50:.1} ms, p99 {l99:.1} ms; \
         baseline GET pods/bench: p50 {g50:.1} ms, p99 {g99:.1} ms"
    ));

    // --- 2. exec round trip -----------------------------------------------------------
    let mut cat = exec_cat(&k)?;
    let mut w = cat.stdin.take().context("stdin")?;
    let mut r = BufReader::new(cat.stdout.take().context("stdout")?);
    round_trips(&mut w, &mut r, 5)?; // the session is up
    let (e50, e99) = p50_p99(round_trips(&mut w, &mut r, 200)?);
    drop(w);
    cat.wait()?;
    let echo = TcpStream::connect(("127.0.0.1", echo_server()?))?;
    echo.set_nodelay(true)?;
    let mut er = BufReader::new(echo.try_clone()?);
    let mut ew = echo;
    let (t50, t99) = p50_p99(round_trips(&mut ew, &mut er, 200)?);
    report.push(format!(
        "exec round trip (kubectl exec -i bench -- cat, 32-byte lines), n=200: p50 {e50:.2} ms, p99 {e99:.2} ms; \
         baseline loopback TCP echo: p50 {t50:.3} ms, p99 {t99:.3} ms"
    ));

    // --- 3. port-forward throughput ---------------------------------------------------
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut pf = k
        .command(&["port-forward", "pod/bench", &format!("{port}:8080")])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut lines = BufReader::new(pf.stdout.take().context("stdout")?).lines();
    lines.next().context("kubectl port-forward printed nothing")??;
    std::thread::spawn(move || lines.for_each(drop));
    let mut best = Duration::MAX;
    for _ in 0..3 {
        let (n, d) = fetch(port, "/big")?;
        ensure!(n == BIG, "port-forward fetched {n} bytes of {BIG}");
        best = best.min(d);
    }
    let _ = pf.kill();
    let _ = pf.wait();
    let local = local_server()?;
    let mut base = Duration::MAX;
    for _ in 0..3 {
        let (n, d) = fetch(local, "/big")?;
        ensure!(n == BIG, "loopback fetched {n} bytes");
        base = base.min(d);
    }
    let mbs = |d: Duration| BIG as f64 / 1e6 / d.as_secs_f64();
    report.push(format!(
        "port-forward throughput (64 MiB over HTTP/1.0 from busybox httpd), best of 3: {:.1} MB/s; \
         baseline loopback TCP: {:.0} MB/s",
        mbs(best),
        mbs(base)
    ));

    // --- 4. agent RSS under 10 follows and 2 execs ------------------------------------
    let pid = agent.pid().context("agent pid")?;
    std::thread::sleep(Duration::from_secs(3));
    let before = kedge_tests::rss_kib(pid);
    let mut clients = Vec::new();
    for _ in 0..10 {
        clients.push(k.command(&["logs", "-f", "bench"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn()?);
    }
    let mut execs = Vec::new();
    for _ in 0..2 {
        let mut c = exec_cat(&k)?;
        let w = c.stdin.take().context("stdin")?;
        let r = BufReader::new(c.stdout.take().context("stdout")?);
        execs.push((c, w, r));
    }
    let mut highest = before;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        for (_, w, r) in &mut execs {
            round_trips(w, r, 1)?;
        }
        highest = highest.max(kedge_tests::rss_kib(pid));
        std::thread::sleep(Duration::from_millis(250));
    }
    for mut c in clients {
        let _ = c.kill();
        let _ = c.wait();
    }
    for (mut c, w, _) in execs {
        drop(w);
        let _ = c.wait();
    }
    std::thread::sleep(Duration::from_secs(3));
    let after3 = kedge_tests::rss_kib(pid);
    std::thread::sleep(Duration::from_secs(27));
    let after30 = kedge_tests::rss_kib(pid);
    let log = agent.log();
    let (opened, ended) = (log.matches("session opened").count(), log.matches("session ended").count());
    report.push(format!(
        "agent RSS, 10 logs -f + 2 exec -i: before {before} KiB, highest during {highest} KiB (+{} KiB), \
         3 s after {after3} KiB, 30 s after {after30} KiB; sessions opened {opened}, ended {ended}",
        highest.saturating_sub(before)
    ));

    api.request("DELETE", "/api/v1/namespaces/default/pods/bench", "application/json", "")?;
    wait("the pod to go", Duration::from_secs(60), || Ok(agent.ps()?.is_empty()))?;
    drop(agent);
    drop(ctl);
    for line in &report {
        println!("{line}");
    }
    Ok(())
}
