//! Fleet-link benchmark (method in BENCHMARKS.md). Needs root: the agents
//! run real containers. Release binaries, loopback only.
//!
//! 1. apply → Running: 50 pods created one after another through the API
//!    (POST, as `kubectl apply` ends up doing), each timed until the API
//!    shows it Running and Ready, polling every 2 ms; one node, image present.
//! 2. idle node traffic: one agent reaches the broker through a
//!    byte-counting TCP relay; once it has settled, every byte both ways is
//!    counted for `KEDGE_BENCH_IDLE_SECS` (default 180 s) and scaled to an
//!    hour, plus the report the agent republishes every `--report-refresh`
//!    (10 min: six per hour), whose size is taken from the relay.
//! 3. broker restart → every node reports its observed generation: three
//!    agents, one pod each; the controller (and its embedded broker) is
//!    stopped and started again on the same ports; timed from the new broker
//!    accepting connections until an MQTT client has seen, for every node,
//!    a report whose observed generation equals the generation of the
//!    snapshot the controller republished.
//! 4. controller + embedded broker RSS, idle with the three nodes connected;
//!    agent RSS of a fresh agent of part 3 (connected, one pod) and of the
//!    agent of part 2 once its 53 latency pods are gone.
//! 5. an event flood: 10,000 events a second for 10 s under the first node
//!    of part 3's name, signed with its own key (`kedge_tests::flood`); the
//!    controller's RSS sampled every 100 ms (the highest kept) and a
//!    `GET /api/v1/pods` timed back to back, against 20 quiet ones before.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kedge_common::topics::{self, NodeTopic};
use kedge_common::wire::{NodeDesired, NodeReport};
use kedge_tests::agent::Agent;
use kedge_tests::{Api, Controller, percentile};

const PODS: usize = 50;
const NODES: usize = 3;

fn pod_json(name: &str, node_selector: Option<&str>) -> String {
    let selector =
        node_selector.map(|n| format!(r#","nodeSelector":{{"kubernetes.io/hostname":"{n}"}}"#)).unwrap_or_default();
    format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{name}","namespace":"default"}},"spec":{{"terminationGracePeriodSeconds":0{selector},"containers":[{{"name":"main","image":"kedge.local/busybox:latest","imagePullPolicy":"IfNotPresent","command":["sleep","3600"]}}]}}}}"#
    )
}

fn running(api: &Api, name: &str) -> Result<bool> {
    let (code, body) =
        api.request("GET", &format!("/api/v1/namespaces/default/pods/{name}"), "application/json", "")?;
    if code != 200 {
        return Ok(false);
    }
    let v: serde_json::Value = serde_json::from_str(&body)?;
    Ok(v["status"]["phase"] == "Running"
        && v["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

fn wait(what: &str, limit: Duration, mut f: impl FnMut() -> Result<bool>) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f()? {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("timed out waiting for {what}")
}

fn agent(dir: &std::path::Path, node: &str, broker: &str, token: &str) -> Result<Agent> {
    let mut a = Agent::new(&dir.join(node), &["--broker", broker, "--token", token, "--node-name", node])?;
    a.start()?;
    Ok(a)
}

/// A TCP relay to `target` that counts the bytes it passes, both ways.
fn counting_relay(target: String) -> Result<(u16, Arc<AtomicU64>)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = TcpStream::connect(&target) else { continue };
            for (mut from, mut to) in
                [(client.try_clone(), server.try_clone()), (server.try_clone(), client.try_clone())]
                    .into_iter()
                    .filter_map(|(a, b)| Some((a.ok()?, b.ok()?)))
            {
                let c = c.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16384];
                    while let Ok(n) = from.read(&mut buf) {
                        if n == 0 || to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        c.fetch_add(n as u64, Ordering::SeqCst);
                    }
                    let _ = to.shutdown(std::net::Shutdown::Both);
                });
            }
        }
    });
    Ok((port, count))
}

/// What the bench needs to read a node's sealed snapshot as the node does:
/// the controller's public key and the node's sealing key.
struct Readers {
    controller: kedge_common::sign::PublicKey,
    seal: std::collections::HashMap<String, kedge_common::seal::SealSecret>,
}

impl Readers {
    fn new(data: &std::path::Path, agents: &[(String, &Agent)]) -> Result<Readers> {
        let controller = std::fs::read_to_string(data.join("tls/signing.pub"))?.trim().parse()?;
        let mut seal = std::collections::HashMap::new();
        for (name, a) in agents {
            let raw: [u8; 32] = std::fs::read(a.data.join("node.seal"))?
                .try_into()
                .map_err(|_| anyhow::anyhow!("{name}: node.seal is not 32 bytes"))?;
            seal.insert(name.clone(), kedge_common::seal::SealSecret::from_bytes(raw));
        }
        Ok(Readers { controller, seal })
    }
}

/// Watches the fleet topics until every node in `nodes` has reported the
/// generation of its snapshot; returns when that happened.
fn all_observed(broker: &str, nodes: &[String], readers: &Readers, limit: Duration) -> Result<Instant> {
    let (host, port) = broker.trim_start_matches("mqtt://").rsplit_once(':').context("broker url")?;
    let mut opts = rumqttc::MqttOptions::new(format!("bench-{}", std::process::id()), host, port.parse()?);
    opts.set_max_packet_size(4 << 20, 4 << 20);
    let (client, mut conn) = rumqttc::Client::new(opts, 64);
    client.subscribe(topics::all_nodes_filter("kedge", NodeTopic::Status), rumqttc::QoS::AtLeastOnce)?;
    client.subscribe(topics::all_nodes_filter("kedge", NodeTopic::Desired), rumqttc::QoS::AtLeastOnce)?;
    let mut desired = std::collections::HashMap::new();
    let mut observed = std::collections::HashMap::new();
    let start = Instant::now();
    for ev in conn.iter() {
        if start.elapsed() > limit {
            bail!(
                "not every node reported its generation within {limit:?}: desired {desired:?}, observed {observed:?}"
            );
        }
        let Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) = ev else { continue };
        let Some((node, which)) = topics::parse_node_topic("kedge", &p.topic) else { continue };
        match which {
            NodeTopic::Desired => {
                let opened = kedge_common::envelope::decode_opened::<NodeDesired>(
                    &p.payload,
                    1 << 22,
                    kedge_common::sign::Purpose::Desired,
                    &readers.controller,
                    readers.seal.get(node),
                );
                if let Ok(d) = opened {
                    desired.insert(node.to_string(), d.generation);
                }
            }
            NodeTopic::Status => {
                if let Ok(r) = kedge_common::envelope::decode::<NodeReport>(&p.payload, 1 << 22) {
                    observed.insert(node.to_string(), r.observed_generation);
                }
            }
            _ => {}
        }
        if nodes.iter().all(|n| desired.get(n).is_some_and(|d| observed.get(n) == Some(d))) {
            let _ = client.disconnect();
            return Ok(Instant::now());
        }
    }
    bail!("the MQTT connection ended")
}

fn main() -> Result<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    if !kedge_tests::is_root() {
        bail!("the fleet benchmark needs root (its agents run containers)");
    }
    let idle_secs: u64 = std::env::var("KEDGE_BENCH_IDLE_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(180);
    let tmp = tempfile::tempdir()?;
    let mut report = vec![format!("kedge fleet benchmark, {}", jiff::Timestamp::now())];
    let data = tmp.path().join("controller");
    let mut ctl = Controller::start_with(&data, "127.0.0.1:0", &[])?;
    // One client, its TLS connection kept alive (as kubectl's is).
    let mut api = ctl.api()?;
    let broker = ctl.broker.clone().context("no fleet broker")?;
    let broker_addr = broker.trim_start_matches("mqtt://").to_string();

    // --- 1. apply → Running, one node -------------------------------------------------
    let (relay_port, bytes) = counting_relay(broker_addr.clone())?;
    let relayed = format!("mqtt://127.0.0.1:{relay_port}");
    let token = ctl.token()?;
    let n0 = agent(tmp.path(), "n0", &relayed, &token)?;
    wait("node n0", Duration::from_secs(30), || {
        let (code, body) = api.request("GET", "/api/v1/nodes/n0", "application/json", "")?;
        Ok(code == 200 && body.contains("KubeletReady"))
    })?;
    let mut times = Vec::new();
    for i in 0..PODS + 3 {
        let name = format!("lat-{i}");
        let t = Instant::now();
        let (code, body) =
            api.request("POST", "/api/v1/namespaces/default/pods", "application/json", &pod_json(&name, None))?;
        if code != 201 {
            bail!("creating {name}: {code} {body}");
        }
        loop {
            if running(&api, &name)? {
                break;
            }
            if t.elapsed() > Duration::from_secs(30) {
                bail!("{name} not Running after 30 s\n{}", n0.log());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        if i >= 3 {
            times.push(t.elapsed());
        }
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    report.push(format!(
        "apply → Running (API create → Running+Ready in the API), one node, n={PODS}: p50 {:.1} ms, p99 {:.1} ms",
        ms(percentile(&times, 0.5)),
        ms(percentile(&times, 0.99))
    ));
    for i in 0..PODS + 3 {
        api.request("DELETE", &format!("/api/v1/namespaces/default/pods/lat-{i}"), "application/json", "")?;
    }
    wait("the latency pods to go", Duration::from_secs(120), || Ok(n0.ps()?.is_empty()))?;

    // --- 2. idle traffic of one node ---------------------------------------------------
    std::thread::sleep(Duration::from_secs(5));
    let before = bytes.load(Ordering::SeqCst);
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(idle_secs));
    let idle = bytes.load(Ordering::SeqCst) - before;
    let agent_rss = n0.pid().map_or(0, kedge_tests::rss_kib);
    let per_hour = idle as f64 * 3600.0 / start.elapsed().as_secs_f64();
    // The size of one report: the retained payload on the status topic.
    let report_bytes = {
        let out = std::process::Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", broker_addr.rsplit(':').next().unwrap_or("1883")])
            .args(["-t", &topics::node_topic("kedge", "n0", NodeTopic::Status), "-C", "1", "-N", "-W", "5"])
            .output()?;
        out.stdout.len()
    };
    // PUBLISH header (~2–5 bytes + topic) + PUBACK (4 bytes) around the payload.
    let topic_len = topics::node_topic("kedge", "n0", NodeTopic::Status).len();
    let refresh_per_hour = 6.0 * (report_bytes + topic_len + 2 + 5 + 4) as f64;
    report.push(format!(
        "idle node traffic: {idle} bytes in {:.0} s at the broker = {:.0} bytes/hour (keepalive), + {:.0} bytes/hour of 10-minute report refreshes ({report_bytes}-byte report) = {:.1} KB/hour",
        start.elapsed().as_secs_f64(),
        per_hour,
        refresh_per_hour,
        (per_hour + refresh_per_hour) / 1000.0
    ));
    report.push(format!(
        "agent RSS, connected, idle after the {} latency pods came and went: {:.1} MiB",
        PODS + 3,
        agent_rss as f64 / 1024.0
    ));
    drop(n0);

    // --- 3. broker restart → all nodes observed -----------------------------------------
    let mut agents = Vec::new();
    let mut names = Vec::new();
    for i in 1..=NODES {
        let name = format!("n{i}");
        agents.push(agent(tmp.path(), &name, &broker, &token)?);
        names.push(name);
    }
    for n in &names {
        let (code, body) = api.request(
            "POST",
            "/api/v1/namespaces/default/pods",
            "application/json",
            &pod_json(&format!("on-{n}"), Some(n)),
        )?;
        if code != 201 {
            bail!("creating on-{n}: {code} {body}");
        }
    }
    for n in &names {
        wait(&format!("on-{n} Running"), Duration::from_secs(60), || running(&api, &format!("on-{n}")))?;
    }
    std::thread::sleep(Duration::from_secs(3));
    let fresh = agents[0].pid().map_or(0, kedge_tests::rss_kib);
    report.push(format!("agent RSS, fresh, connected, one pod: {:.1} MiB", fresh as f64 / 1024.0));
    let rss = kedge_tests::rss_kib(ctl.child.id());
    report.push(format!(
        "controller + embedded broker RSS, idle, {NODES} nodes connected: {:.1} MiB",
        rss as f64 / 1024.0
    ));
    let named: Vec<(String, &Agent)> = names.iter().cloned().zip(agents.iter()).collect();
    let readers = Readers::new(&data, &named)?;
    let port = broker.rsplit(':').next().context("port")?.to_string();
    ctl.terminate()?;
    std::thread::sleep(Duration::from_secs(2));
    let t0;
    ctl = {
        let c = Controller::start_with(&data, "127.0.0.1:0", &["--mqtt-listen", &format!("127.0.0.1:{port}")])?;
        t0 = Instant::now();
        c
    };
    api = ctl.api()?;
    let done = all_observed(&broker, &names, &readers, Duration::from_secs(120))?;
    report.push(format!(
        "broker restart → all {NODES} nodes reported their observed generation: {:.2} s",
        done.duration_since(t0).as_secs_f64()
    ));
    for n in &names {
        api.request("DELETE", &format!("/api/v1/namespaces/default/pods/on-{n}"), "application/json", "")?;
    }
    for a in &agents {
        wait("pods to go", Duration::from_secs(60), || Ok(a.ps()?.is_empty()))?;
    }

    // --- 5. an event flood from one node ------------------------------------------------
    let list = || -> Result<Duration> {
        let t = Instant::now();
        let (code, _) = api.request("GET", "/api/v1/pods", "application/json", "")?;
        if code != 200 {
            bail!("GET /api/v1/pods: {code}");
        }
        Ok(t.elapsed())
    };
    let mut quiet: Vec<Duration> = (0..20).map(|_| list()).collect::<Result<_>>()?;
    quiet.sort();
    let rss_before = kedge_tests::rss_kib(ctl.child.id());
    let key = kedge_common::sign::SigningKey::from_pkcs8(&std::fs::read(agents[0].data.join("node.key"))?)?;
    let (host, port) = broker.trim_start_matches("mqtt://").rsplit_once(':').context("broker url")?;
    let flood = kedge_tests::flood::events(host, port.parse()?, &names[0], &key, 10_000, Duration::from_secs(10));
    let (mut busy, rss_max, sent) = std::thread::scope(|s| -> Result<(Vec<Duration>, u64, u64)> {
        let publisher = s.spawn(flood);
        let (mut busy, mut rss_max) = (Vec::new(), 0);
        while !publisher.is_finished() {
            busy.push(list()?);
            rss_max = rss_max.max(kedge_tests::rss_kib(ctl.child.id()));
            std::thread::sleep(Duration::from_millis(100));
        }
        let sent = publisher.join().map_err(|_| anyhow::anyhow!("the publisher panicked"))??;
        Ok((busy, rss_max, sent))
    })?;
    busy.sort();
    report.push(format!(
        "event flood, {sent} signed events in 10 s from one node: controller RSS {:.1} MiB before, {:.1} MiB at most during; GET /api/v1/pods p50 / p99 {:.1} / {:.1} ms quiet, {:.1} / {:.1} ms during ({} requests)",
        rss_before as f64 / 1024.0,
        rss_max as f64 / 1024.0,
        percentile(&quiet, 0.5).as_secs_f64() * 1e3,
        percentile(&quiet, 0.99).as_secs_f64() * 1e3,
        percentile(&busy, 0.5).as_secs_f64() * 1e3,
        percentile(&busy, 0.99).as_secs_f64() * 1e3,
        busy.len()
    ));
    drop(agents);
    let text = report.join("\n");
    println!("{text}");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(|p| p.join("target/bench-fleet.txt"));
    if let Some(out) = root {
        std::fs::write(&out, format!("{text}\n"))?;
        println!("(written to {})", out.display());
    }
    Ok(())
}
