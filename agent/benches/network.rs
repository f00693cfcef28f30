//! Service routing benchmark (method in BENCHMARKS.md, "Pod network"):
//! what an agent does between a network table arriving and its Service rules
//! being live in the kernel, for 1,000 Services × 4 endpoints on 50 nodes.
//!
//! Runs in a network namespace of its own (`unshare(CLONE_NEWNET)` of this
//! process: the host's nftables are untouched), so it needs root and the
//! `nft` binary. For each measured change one Service's endpoints move, and
//! the agent's own path is timed, as the node loop runs it:
//!
//! 1. check the controller's signature and decode the CBOR envelope (as
//!    the link does; the controller's signing of it is timed on its own),
//! 2. store it in the agent's redb cache (a fresh one in a temporary folder),
//! 3. apply this node's local health and render the ruleset,
//! 4. load it with the same `Applier` the agent keeps: only the changes.
//!
//! 50 changes after 3 warm-ups: p50 / p99 of the whole, and of each step.
//! Also timed: the whole table loaded from scratch (an agent's first apply,
//! 10 times), and the table's encoded size.
//!
//! `cargo bench -p kedge-agent --bench network`

use std::net::IpAddr;
use std::time::{Duration, Instant};

use kedge_agent::cache::Cache;
use kedge_agent::net::manager::{LocalPods, apply_local_health};
use kedge_agent::net::nft::{self, Applier};
use kedge_agent::net::{ClusterNetwork, NodeNetwork};
use kedge_common::envelope;
use kedge_common::network::{
    EndpointNet, EndpointPortNet, NodeNet, Protocol, ServiceKind, ServiceNet, ServicePortNet, SubsetNet,
};
use kedge_common::sign::{Purpose, SigningKey};
use kedge_tests::percentile;

const SERVICES: usize = 1000;
const ENDPOINTS: usize = 4;
const NODES: u8 = 50;
const CHANGES: usize = 50;
const WARMUP: usize = 3;
const FULL_LOADS: usize = 10;

/// The table with Service `moved`'s endpoints shifted by `shift`.
fn table(generation: u64, moved: usize, shift: usize) -> ClusterNetwork {
    let nodes = (0..NODES)
        .map(|i| NodeNet {
            name: format!("node-{i}"),
            pod_cidr: format!("10.42.{i}.0/24").parse().expect("cidr"),
            addresses: vec![IpAddr::from([192, 168, 1, i + 1])],
        })
        .collect();
    let services = (0..SERVICES)
        .map(|i| {
            let shift = if i == moved { shift } else { 0 };
            ServiceNet {
                namespace: "default".into(),
                name: format!("service-{i}"),
                kind: ServiceKind::ClusterIP,
                cluster_ips: vec![IpAddr::from([10, 43, (i / 256) as u8, (i % 256) as u8])],
                ports: vec![ServicePortNet { name: "http".into(), protocol: Protocol::TCP, port: 80, node_port: None }],
                subsets: vec![SubsetNet {
                    ready: (0..ENDPOINTS)
                        .map(|e| EndpointNet {
                            // Over the 50 nodes' pod CIDRs (node-0 is this one).
                            ip: IpAddr::from([10, 42, ((i + e + shift) % NODES as usize) as u8, (i % 250) as u8 + 2]),
                            hostname: None,
                        })
                        .collect(),
                    not_ready: vec![],
                    ports: vec![EndpointPortNet { name: "http".into(), protocol: Protocol::TCP, port: 8080 }],
                }],
                ..ServiceNet::default()
            }
        })
        .collect();
    ClusterNetwork {
        generation,
        cluster_cidr: Some("10.42.0.0/16".parse().expect("cidr")),
        service_cidr: Some("10.43.0.0/16".parse().expect("cidr")),
        nodes,
        services,
    }
}

/// This node's own pods: every endpoint address in node-0's CIDR, ready.
fn local_pods(t: &ClusterNetwork) -> LocalPods {
    let cidr: ipnet::IpNet = "10.42.0.0/24".parse().expect("cidr");
    let mut local = LocalPods::default();
    for s in &t.services {
        for sub in &s.subsets {
            for e in sub.ready.iter().filter(|e| cidr.contains(&e.ip)) {
                local.endpoints.insert(e.ip, true);
            }
        }
    }
    local
}

fn line(name: &str, mut v: Vec<Duration>) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{name:<52} n={:<3} p50 {:>7.2} ms   p99 {:>7.2} ms",
        v.len(),
        ms(percentile(&v, 0.5)),
        ms(percentile(&v, 0.99))
    );
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes --bench; `cargo test --benches` runs it with no
    // argument: only the benchmark proper measures.
    if !std::env::args().any(|a| a == "--bench") {
        return Ok(());
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("network bench: SKIPPED — needs root (a network namespace and nftables)");
        anyhow::ensure!(std::env::var_os("CI").is_none(), "skipped under CI");
        return Ok(());
    }
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)?;
    nft::available()?;

    let node = NodeNetwork {
        node: "node-0".into(),
        node_ips: vec![IpAddr::from([192, 168, 1, 1])],
        pod_cidr: "10.42.0.0/24".parse()?,
        cluster_cidr: "10.42.0.0/16".parse()?,
        bridge: "kedge0".into(),
        gateway: IpAddr::from([10, 42, 0, 1]),
        overlay_headroom: false,
    };
    let dir = tempfile::tempdir()?;
    let cache = Cache::open(&dir.path().join("cache.redb"))?;

    let first = table(1, usize::MAX, 0);
    let (key, _) = SigningKey::generate()?;
    let public = key.public();
    let payload = envelope::encode_signed(&first, Purpose::Network, &key)?;
    let ruleset = nft::render(&apply_local_health(&first, node.pod_cidr, &local_pods(&first)), &node, &[]);
    let script = ruleset.to_string();
    println!(
        "network table, {SERVICES} Services x {ENDPOINTS} endpoints on {NODES} nodes: {} bytes (cap {})",
        payload.len(),
        envelope::DEFAULT_MAX_PAYLOAD
    );
    println!("nft script of the whole table: {} bytes, {} lines", script.len(), script.lines().count());

    // The whole table from scratch: a fresh applier each time (the
    // transaction goes over the loaded table, as an agent's first apply).
    let mut fulls = Vec::new();
    for _ in 0..FULL_LOADS {
        let mut applier = Applier::new();
        let started = Instant::now();
        applier.apply(ruleset.clone())?;
        fulls.push(started.elapsed());
    }

    let mut applier = Applier::new();
    applier.apply(ruleset)?;
    let (mut total, mut decode, mut store, mut render, mut apply) = (vec![], vec![], vec![], vec![], vec![]);
    let (mut signs, mut verifies) = (vec![], vec![]);
    for i in 0..WARMUP + CHANGES {
        let moved = (i * 37) % SERVICES;
        let next = table(i as u64 + 2, moved, i + 1);
        let local = local_pods(&next);
        let signing = Instant::now();
        let next = envelope::encode_signed(&next, Purpose::Network, &key)?;
        let signed = signing.elapsed();
        // The same decode without the signature check, for what the check costs.
        let unchecked = Instant::now();
        let _: ClusterNetwork = envelope::decode(&next, envelope::DEFAULT_MAX_PAYLOAD)?;
        let unchecked = unchecked.elapsed();

        let t0 = Instant::now();
        let got: ClusterNetwork =
            envelope::decode_verified(&next, envelope::DEFAULT_MAX_PAYLOAD, Purpose::Network, &public)?;
        let t1 = Instant::now();
        cache.store_network(&next)?;
        let t2 = Instant::now();
        let ruleset = nft::render(&apply_local_health(&got, node.pod_cidr, &local), &node, &[]);
        let t3 = Instant::now();
        applier.apply(ruleset)?;
        let t4 = Instant::now();
        if i >= WARMUP {
            decode.push(t1 - t0);
            store.push(t2 - t1);
            render.push(t3 - t2);
            apply.push(t4 - t3);
            total.push(t4 - t0);
            signs.push(signed);
            verifies.push(unchecked);
        }
    }

    line("Service change -> rules live (the agent's whole path)", total);
    line("  check the signature and decode the table (CBOR)", decode);
    line("  the same decode without the signature check", verifies);
    line("  store it in the cache (redb)", store);
    line("  local health + render", render);
    line("  nft: load the changes", apply);
    line("whole table loaded from scratch (first apply)", fulls);
    line("controller: encode and sign the table", signs);
    Ok(())
}
