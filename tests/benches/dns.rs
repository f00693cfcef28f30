//! Cluster DNS latency as a pod sees it (method in BENCHMARKS.md, "Pod
//! network"). Needs root and kubectl.
//!
//! A controller and one agent with its pod network, each on a lab machine
//! (network namespaces joined by a LAN, `kedge_tests::netlab`); a ClusterIP
//! Service `web` and a client pod. From a thread that entered the client
//! pod's network namespace, one UDP socket asks the pod's nameserver (from
//! the pod's own `/etc/resolv.conf`: the agent on the bridge gateway) for
//! `web.default.svc.cluster.local` A, 2,000 times one after the other after
//! 100 warm-ups, and times each question → answer. Each answer is checked:
//! same id, NOERROR, the Service's cluster IP.
//!
//! `cargo bench -p kedge-tests --bench dns`

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use kedge_tests::netlab::Lab;
use kedge_tests::{percentile, wait_for};

const QUERIES: usize = 2000;
const WARMUP: usize = 100;
const NAME: &str = "web.default.svc.cluster.local.";

const OBJECTS: &str = "apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports:
  - {port: 80, targetPort: 8080}
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  nodeName: node-a
  terminationGracePeriodSeconds: 1
  containers:
  - name: sh
    image: kedge.local/busybox:latest
    imagePullPolicy: IfNotPresent
    command: [sleep, '3600']
";

/// One question and its answer: the addresses in it, and how long it took.
fn ask(sock: &UdpSocket, id: u16) -> Result<(Vec<IpAddr>, Duration)> {
    let mut q = Message::new(id, MessageType::Query, OpCode::Query);
    q.metadata.recursion_desired = true;
    q.add_query(Query::query(Name::from_ascii(NAME)?, RecordType::A));
    let bytes = q.to_vec()?;
    let mut buf = [0u8; 1500];
    let started = Instant::now();
    sock.send(&bytes)?;
    let len = sock.recv(&mut buf)?;
    let took = started.elapsed();
    let m = Message::from_vec(&buf[..len])?;
    ensure!(m.metadata.id == id, "answer to another question");
    ensure!(m.metadata.response_code == ResponseCode::NoError, "{:?}", m.metadata.response_code);
    let ips = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            _ => None,
        })
        .collect();
    Ok((ips, took))
}

fn main() -> Result<()> {
    // `cargo test --benches` runs bench binaries without --bench.
    if !std::env::args().any(|a| a == "--bench") {
        return Ok(());
    }
    if !kedge_tests::is_root() {
        bail!("the DNS benchmark needs root (network namespaces, containers)");
    }
    let tmp = tempfile::tempdir()?;
    let mut lab = Lab::new()?;
    let server = lab.machine("server")?;
    let node = lab.machine("node-a")?;
    let (ctl, k) = lab.controller(&server, &tmp.path().join("server"), &[])?.context("kubectl is not installed")?;
    let ip = node.ip().to_string();
    let mut agent = lab.agent(&ctl, &node, &tmp.path().join("node-a"), &["--node-ip", &ip])?;
    agent.start()?;
    let objects = tmp.path().join("objects.yaml");
    std::fs::write(&objects, OBJECTS)?;
    wait_for("the node registered", Duration::from_secs(60), || {
        Ok(k.run(&["get", "node", "node-a"])?.status.success().then_some(()))
    })?;
    k.ok(&["apply", "-f", &objects.display().to_string()])?;
    let cluster_ip: IpAddr = k.ok(&["get", "service", "web", "-o", "jsonpath={.spec.clusterIP}"])?.trim().parse()?;
    let pid = wait_for("the client pod running", Duration::from_secs(90), || {
        let ps: serde_json::Value = serde_json::from_str(&agent.cli(&["ps", "-o", "json"])?)?;
        Ok(ps
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["name"] == "client")
            .find_map(|p| p["containers"].as_array()?.iter().find(|c| c["state"] == "Running")?["pid"].as_i64()))
    })?;
    let resolv = std::fs::read_to_string(format!("/proc/{pid}/root/etc/resolv.conf"))?;
    let nameserver: IpAddr = resolv
        .lines()
        .find_map(|l| l.strip_prefix("nameserver "))
        .context("the pod's resolv.conf names no nameserver")?
        .trim()
        .parse()?;

    let netns = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
    let times = std::thread::spawn(move || -> Result<Vec<Duration>> {
        nix::sched::setns(netns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)?;
        let sock = UdpSocket::bind("0.0.0.0:0")?;
        sock.set_read_timeout(Some(Duration::from_secs(2)))?;
        sock.connect(SocketAddr::new(nameserver, 53))?;
        // The Service reaches the node with the next network table.
        wait_for("the agent's DNS answering for web", Duration::from_secs(30), || {
            Ok(ask(&sock, 1).ok().filter(|(ips, _)| ips.contains(&cluster_ip)).map(drop))
        })?;
        let mut times = Vec::with_capacity(QUERIES);
        for i in 0..WARMUP + QUERIES {
            let (ips, took) = ask(&sock, i as u16)?;
            ensure!(ips == [cluster_ip], "answered {ips:?}, not {cluster_ip}");
            if i >= WARMUP {
                times.push(took);
            }
        }
        Ok(times)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the query thread panicked"))??;

    let mut times = times;
    times.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "cluster DNS from a pod ({NAME} A, UDP, nameserver {nameserver}) n={} p50 {:.0} µs  p99 {:.0} µs",
        times.len(),
        us(percentile(&times, 0.5)),
        us(percentile(&times, 0.99))
    );
    drop(agent);
    Ok(())
}
