//! `kedge-sim`: a fleet of simulated nodes in one process, for the fleet
//! figures of BENCHMARKS.md. Each node is the agent's own node loop, link,
//! join state, report and pod workers (`kedge_agent::node::run`) over the
//! fake runtime (containers are records; nothing runs), with its own MQTT
//! session to the controller's embedded broker: real broker, real wire,
//! real signatures and sealing, real generations. The controller is the
//! release build (`--profile release-controller`), its own process, as in
//! production.
//!
//! Method (written down in BENCHMARKS.md, "Fleet simulator"):
//! 1. start the controller (fresh data dir), then pre-join N nodes: each
//!    gets a new Ed25519 key and sealing key, and its Node is created with
//!    them, as the join handshake would (the handshake's 10/s rate would
//!    take 17 minutes for 10,000 nodes and is not what is measured);
//! 2. start the nodes, `--connect-rate` per second, spread over
//!    `--threads` current-thread runtimes (the agent's own runtime kind);
//!    wait until every Node is Ready; settle; read the controller's RSS;
//! 3. the scenario: `daemonset` — t0 just before the POST of a DaemonSet;
//!    each node's time is when its node loop accepted the first snapshot
//!    naming the DaemonSet's pod (the observer hook of `NodeConfig`);
//!    p50/p99/max over the nodes. `deployment` — a Deployment of
//!    `--pods-per-node` × N replicas; the time until its
//!    `status.readyReplicas` is all of them; RSS again after.
//!
//! Selected explicitly, never a default of anything: `cargo run --release
//! -p kedge-sim -- --nodes 1000 daemonset`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::{Parser, ValueEnum};
use kedge_agent::identity::Identity;
use kedge_agent::link::LinkConfig;
use kedge_agent::node::{NodeConfig, Observed, Observer};
use kedge_agent::pods::backoff::BackoffPolicy;
use kedge_agent::runtime::Paths;
use kedge_agent::runtime::fake::FakeRuntime;
use kedge_common::duration::parse_duration;
use kedge_common::seal::SealSecret;
use kedge_common::sign::{SigningKey, Token};
use kedge_common::topics::BrokerUrl;
use kedge_tests::{Api, Controller, percentile, rss_kib};

#[derive(Parser)]
#[command(name = "kedge-sim", version, about = "simulated nodes against a real controller and broker")]
struct Args {
    /// Simulated nodes.
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    /// Pods per node of the `deployment` scenario.
    #[arg(long, default_value_t = 30)]
    pods_per_node: usize,
    /// Runtimes (threads) the nodes are spread over.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Nodes started per second.
    #[arg(long, default_value_t = 200)]
    connect_rate: u32,
    /// The controller binary.
    #[arg(long, default_value = "target/release-controller/kedge-controller")]
    controller: PathBuf,
    /// Where the controller's and the nodes' data dirs go (tmpfs: the
    /// nodes' fsyncs are not what is measured).
    #[arg(long, default_value = "/dev/shm/kedge-sim")]
    data_root: PathBuf,
    /// Each node's report is republished this often when nothing changed.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    report_refresh: Duration,
    /// Each node loop's tick (static manifests, report rebuilt).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    tick: Duration,
    /// MQTT keepalive of each node.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    keepalive: Duration,
    /// How long to wait for nodes and scenarios.
    #[arg(long, default_value = "15m", value_parser = parse_duration)]
    timeout: Duration,
    /// An extra flag for the controller (repeatable), e.g.
    /// `--controller-arg=--cluster-cidr=10.0.0.0/8`.
    #[arg(long = "controller-arg", allow_hyphen_values = true)]
    controller_args: Vec<String>,
    /// What to measure once the nodes are Ready.
    #[arg(value_enum)]
    scenario: Scenario,
}

#[derive(Clone, Copy, ValueEnum)]
enum Scenario {
    /// Nodes Ready, controller RSS, then nothing.
    Idle,
    /// A DaemonSet: when each node accepted its pod.
    Daemonset,
    /// A Deployment of --pods-per-node × --nodes replicas: time to all ready.
    Deployment,
}

/// When each node first accepted a snapshot naming a pod with the wanted
/// prefix.
#[derive(Default)]
struct Seen {
    wanted: Mutex<Option<String>>,
    at: Mutex<HashMap<String, Instant>>,
    accepted: AtomicUsize,
}

fn main() -> Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt().with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "error".into())).init();
    raise_fd_limit()?;
    let _ = std::fs::remove_dir_all(&args.data_root);
    std::fs::create_dir_all(&args.data_root)?;
    let ctl = start_controller(&args)?;
    let api = ctl.api()?;
    let broker: BrokerUrl =
        ctl.broker.clone().context("the controller runs no broker")?.parse().map_err(|e: String| anyhow::anyhow!(e))?;
    let controller_key = controller_key(&args.controller, &ctl.data_dir)?;
    println!("controller pid {} at {}, broker {broker}", ctl.child.id(), ctl.addr);

    let started = Instant::now();
    let mut identities = Vec::with_capacity(args.nodes);
    for i in 0..args.nodes {
        let name = format!("sim-{i:05}");
        let (key, _) = SigningKey::generate()?;
        let seal = SealSecret::generate()?;
        let node = serde_json::json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "annotations": {
                "kedge.io/node-key": key.public().to_string(),
                "kedge.io/node-seal-key": seal.public().to_string(),
            }},
        });
        let (code, body) = api.request("POST", "/api/v1/nodes", "application/json", &node.to_string())?;
        ensure!(code == 201, "creating Node {name}: {code} {body}");
        identities.push((name, Identity::in_memory(Arc::new(key), seal, None, 1)));
    }
    println!("{} Nodes created with their keys in {:.1} s", args.nodes, started.elapsed().as_secs_f64());

    let seen = Arc::new(Seen::default());
    let threads = spawn_nodes(&args, identities, &broker, controller_key, &seen)?;
    let mut last = Instant::now();
    let ready = wait(&args, "every Node Ready", || {
        let n = ready_nodes(&api)?;
        if last.elapsed() >= Duration::from_secs(10) {
            last = Instant::now();
            println!(
                "  {:.0} s: {n} Ready, {} snapshots accepted, controller {:.1} MiB",
                started.elapsed().as_secs_f64(),
                seen.accepted.load(Ordering::SeqCst),
                mib(rss_kib(ctl.child.id()))
            );
        }
        Ok((n >= args.nodes).then_some(()))
    });
    println!(
        "{} nodes Ready {:.1} s after the first started ({} snapshots accepted)",
        args.nodes,
        started.elapsed().as_secs_f64(),
        seen.accepted.load(Ordering::SeqCst)
    );
    ready?;
    std::thread::sleep(Duration::from_secs(20));
    let rss = rss_kib(ctl.child.id());
    println!(
        "controller RSS, {} nodes idle: {:.1} MiB ({:.1} MiB per 1,000 nodes)",
        args.nodes,
        mib(rss),
        mib(rss) * 1000.0 / args.nodes as f64
    );
    println!("simulator RSS: {:.1} MiB", mib(rss_kib(std::process::id())));

    match args.scenario {
        Scenario::Idle => {}
        Scenario::Daemonset => daemonset(&args, &api, &seen)?,
        Scenario::Deployment => deployment(&args, &api, &ctl)?,
    }
    drop(threads);
    drop(ctl);
    let _ = std::fs::remove_dir_all(&args.data_root);
    // The node threads run until the process ends.
    std::process::exit(0)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Polls `check` every second per 1,000 nodes (at least every second)
/// until it answers or `--timeout` passes.
fn wait<T>(args: &Args, what: &str, mut check: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    let deadline = Instant::now() + args.timeout;
    loop {
        if let Some(v) = check()? {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        // Each check may list every Node: a second per 1,000 nodes keeps
        // the measuring from loading the controller it measures.
        std::thread::sleep(Duration::from_millis(args.nodes.max(1000) as u64));
    }
}

/// Raises the open-file limit to the hard limit (a socket per node).
fn raise_fd_limit() -> Result<()> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    limit.current = limit.maximum;
    setrlimit(Resource::Nofile, limit).with_context(|| format!("raising the open-file limit to {limit:?}"))
}

/// Starts the controller binary on a fresh data dir with its embedded
/// broker on a free loopback port.
fn start_controller(args: &Args) -> Result<Controller> {
    let data_dir = args.data_root.join("controller");
    let mut child = Command::new(&args.controller)
        .args(["--data-dir", &data_dir.to_string_lossy(), "--listen", "127.0.0.1:0", "--mqtt-listen", "127.0.0.1:0"])
        .args(&args.controller_args)
        .env("RUST_LOG", std::env::var("KEDGE_SIM_CONTROLLER_LOG").unwrap_or_else(|_| "off".into()))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| {
            format!(
                "starting {} (build it: cargo build --profile release-controller -p kedge-controller)",
                args.controller.display()
            )
        })?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let first = lines.next().context("the controller exited")??;
    let addr = first.rsplit("://").next().context("listening line")?.to_owned();
    let mut broker = None;
    for line in lines.by_ref().take(2) {
        if let Some(b) = line?.strip_prefix("fleet broker ") {
            broker = Some(b.to_owned());
        }
    }
    std::thread::spawn(move || for _ in lines {});
    Ok(Controller { child, addr, data_dir, broker, tls: first.contains("https://") })
}

/// The controller's public signing key, from a join token it makes.
fn controller_key(bin: &PathBuf, data_dir: &std::path::Path) -> Result<kedge_common::sign::PublicKey> {
    let out = Command::new(bin).arg("--data-dir").arg(data_dir).args(["token", "create"]).output()?;
    ensure!(out.status.success(), "token create: {}", String::from_utf8_lossy(&out.stderr));
    let token: Token = String::from_utf8_lossy(&out.stdout).trim().parse()?;
    Ok(token.key)
}

/// Starts the nodes on `--threads` threads, each a current-thread runtime.
fn spawn_nodes(
    args: &Args,
    identities: Vec<(String, Identity)>,
    broker: &BrokerUrl,
    controller_key: kedge_common::sign::PublicKey,
    seen: &Arc<Seen>,
) -> Result<Vec<std::thread::JoinHandle<()>>> {
    let observer = {
        let seen = seen.clone();
        Observer(Arc::new(move |node: &str, what: Observed<'_>| {
            let Observed::Accepted { pods, .. } = what;
            seen.accepted.fetch_add(1, Ordering::SeqCst);
            let wanted = seen.wanted.lock().unwrap_or_else(|p| p.into_inner()).clone();
            if let Some(w) = wanted {
                if pods.iter().any(|p| p.starts_with(&w)) {
                    seen.at
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .entry(node.to_owned())
                        .or_insert_with(Instant::now);
                }
            }
        }))
    };
    let mut senders = Vec::new();
    let mut handles = Vec::new();
    for t in 0..args.threads.max(1) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(NodeConfig, Paths)>();
        senders.push(tx);
        handles.push(std::thread::Builder::new().name(format!("sim-{t}")).spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => return eprintln!("runtime: {e}"),
            };
            let local = tokio::task::LocalSet::new();
            local.block_on(&rt, async move {
                while let Some((cfg, paths)) = rx.recv().await {
                    let node = cfg.node.clone();
                    tokio::task::spawn_local(async move {
                        let runtime = FakeRuntime::new();
                        runtime.quiet();
                        if let Err(e) = kedge_agent::node::run(cfg, runtime, paths, None, std::future::pending()).await
                        {
                            eprintln!("node {node}: {e}");
                        }
                    });
                }
                std::future::pending::<()>().await;
            });
        })?);
    }
    let pace = Duration::from_secs_f64(1.0 / f64::from(args.connect_rate.max(1)));
    for (i, (name, identity)) in identities.into_iter().enumerate() {
        let data_dir = args.data_root.join("nodes").join(&name);
        std::fs::create_dir_all(&data_dir)?;
        let link = LinkConfig {
            broker: broker.clone(),
            node: name.clone(),
            prefix: "kedge".into(),
            keepalive: args.keepalive,
            report_refresh: args.report_refresh,
            max_payload: 1 << 20,
            boot_id: format!("sim-boot-{name}"),
            credentials: None,
            tls: None,
            controller_key: Some(controller_key),
            identity: Some(identity),
            sessions: None,
        };
        let cfg = NodeConfig {
            node: name.clone(),
            data_dir: data_dir.clone(),
            manifests: data_dir.join("manifests"),
            backoff: BackoffPolicy::default(),
            image_gc_high_threshold: 100,
            link: Some(link),
            node_ip: Some(format!("10.{}.{}.{}", 100 + i / 65536, (i / 256) % 256, i % 256)),
            tick: args.tick,
            cluster_dns: None,
            cluster_domain: "cluster.local".into(),
            storage_dir: data_dir.join("storage"),
            observer: Some(observer.clone()),
        };
        senders[i % senders.len()]
            .send((cfg, Paths { root: data_dir }))
            .map_err(|_| anyhow::anyhow!("a node thread ended"))?;
        std::thread::sleep(pace);
    }
    Ok(handles)
}

/// Nodes whose Ready condition is True.
fn ready_nodes(api: &Api) -> Result<usize> {
    let (code, body) = api.request("GET", "/api/v1/nodes", "application/json", "")?;
    ensure!(code == 200, "listing nodes: {code}");
    let list: serde_json::Value = serde_json::from_str(&body)?;
    Ok(list["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter(|n| {
                    n["status"]["conditions"]
                        .as_array()
                        .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
                })
                .count()
        })
        .unwrap_or(0))
}

const IMAGE: &str = "kedge.local/busybox:latest";

fn daemonset(args: &Args, api: &Api, seen: &Seen) -> Result<()> {
    *seen.wanted.lock().unwrap_or_else(|p| p.into_inner()) = Some("default/sim-ds-".into());
    let ds = serde_json::json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "sim-ds"},
        "spec": {"selector": {"matchLabels": {"app": "sim-ds"}}, "template": {
            "metadata": {"labels": {"app": "sim-ds"}},
            "spec": {"containers": [{"name": "main", "image": IMAGE, "imagePullPolicy": "IfNotPresent"}]}}},
    });
    let t0 = Instant::now();
    let (code, body) =
        api.request("POST", "/apis/apps/v1/namespaces/default/daemonsets", "application/json", &ds.to_string())?;
    ensure!(code == 201, "creating the DaemonSet: {code} {body}");
    // When the controller had made and placed every pod: what comes after
    // is the snapshots' way to the nodes.
    let mut scheduled = None;
    wait(args, "every node to accept the DaemonSet's pod", || {
        if scheduled.is_none() {
            let (code, body) =
                api.request("GET", "/apis/apps/v1/namespaces/default/daemonsets/sim-ds", "application/json", "")?;
            let ds: serde_json::Value =
                if code == 200 { serde_json::from_str(&body)? } else { serde_json::Value::Null };
            if ds["status"]["currentNumberScheduled"].as_u64() >= Some(args.nodes as u64) {
                scheduled = Some(t0.elapsed());
            }
        }
        let n = seen.at.lock().unwrap_or_else(|p| p.into_inner()).len();
        Ok((n >= args.nodes).then_some(()))
    })?;
    if let Some(s) = scheduled {
        println!("DaemonSet status: all {} pods created and placed after {:.1} s", args.nodes, s.as_secs_f64());
    }
    let mut times: Vec<Duration> =
        seen.at.lock().unwrap_or_else(|p| p.into_inner()).values().map(|t| t.duration_since(t0)).collect();
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "DaemonSet applied → accepted by each of {} nodes: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        times.len(),
        ms(percentile(&times, 0.5)),
        ms(percentile(&times, 0.99)),
        ms(times.last().copied().unwrap_or_default())
    );
    Ok(())
}

fn deployment(args: &Args, api: &Api, ctl: &Controller) -> Result<()> {
    let replicas = args.nodes * args.pods_per_node;
    let d = serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "sim-deploy"},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "sim-deploy"}}, "template": {
            "metadata": {"labels": {"app": "sim-deploy"}},
            "spec": {"containers": [{"name": "main", "image": IMAGE, "imagePullPolicy": "IfNotPresent"}]}}},
    });
    let t0 = Instant::now();
    let (code, body) =
        api.request("POST", "/apis/apps/v1/namespaces/default/deployments", "application/json", &d.to_string())?;
    ensure!(code == 201, "creating the Deployment: {code} {body}");
    let mut peak = 0;
    wait(args, "every replica ready", || {
        peak = peak.max(rss_kib(ctl.child.id()));
        let (code, body) =
            api.request("GET", "/apis/apps/v1/namespaces/default/deployments/sim-deploy", "application/json", "")?;
        ensure!(code == 200, "reading the Deployment: {code}");
        let d: serde_json::Value = serde_json::from_str(&body)?;
        Ok((d["status"]["readyReplicas"].as_u64() == Some(replicas as u64)).then_some(()))
    })?;
    println!(
        "Deployment of {replicas} pods over {} nodes: all ready in {:.1} s (controller RSS peak {:.1} MiB)",
        args.nodes,
        t0.elapsed().as_secs_f64(),
        mib(peak)
    );
    std::thread::sleep(Duration::from_secs(20));
    let rss = rss_kib(ctl.child.id());
    println!(
        "controller RSS with {} pods per node, settled: {:.1} MiB ({:.1} MiB per 1,000 nodes)",
        args.pods_per_node,
        mib(rss),
        mib(rss) * 1000.0 / args.nodes as f64
    );
    Ok(())
}
