//! The network lab itself (tests/src/netlab.rs), on the real kernel: machines
//! reach each other over the LAN and through a router, nothing is left when
//! the lab goes, and a controller with two agents — each on its own machine,
//! as on separate hosts — makes a cluster over it. Needs root (namespaces,
//! containers) and, for the cluster, kubectl; skips loudly without them (a
//! failure under CI=true).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use kedge_tests::agent::Agent;
use kedge_tests::netlab::{Lab, lab_namespaces};
use kedge_tests::{Controller, Kubectl, is_root, require, wait_for};
use serde_json::Value;

/// Link names in this (the test's own) namespace.
fn host_links() -> Result<BTreeSet<String>> {
    let out = kedge_tests::run_ok(Command::new("ip").args(["-o", "link", "show"]))?;
    Ok(out.lines().filter_map(|l| l.split(": ").nth(1)).map(|n| n.split('@').next().unwrap_or(n).to_owned()).collect())
}

/// Nothing of the lab is left: no namespace with its stem, no link with its
/// tag in the host's namespace.
fn nothing_left(stem: &str, tag: &str) -> Result<()> {
    let left: Vec<String> = lab_namespaces()?.into_iter().filter(|n| n.starts_with(stem)).collect();
    ensure!(left.is_empty(), "namespaces left behind: {left:?}");
    let links: Vec<String> = host_links()?.into_iter().filter(|l| l.starts_with(tag)).collect();
    ensure!(links.is_empty(), "links left in the host's namespace: {links:?}");
    Ok(())
}

/// A socket listening on `port` in `/proc/net/tcp{,6}` text.
fn listening(proc_net_tcp: &str, port: u16) -> bool {
    let local = format!(":{port:04X}");
    proc_net_tcp.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 3 && f[1].ends_with(&local) && f[3] == "0A"
    })
}

fn in_cidr(ip: Ipv4Addr, cidr: &str) -> bool {
    let Some((net, len)) = cidr.split_once('/') else { return false };
    let (Ok(net), Ok(len)) = (net.parse::<Ipv4Addr>(), len.parse::<u32>()) else { return false };
    let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
    u32::from(ip) & mask == u32::from(net) & mask
}

fn ping(from: &kedge_tests::netlab::Machine, to: Ipv4Addr) -> bool {
    from.command("busybox")
        .args(["ping", "-c", "1", "-W", "2", &to.to_string()])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn machines_talk_over_the_lan_and_through_a_router_and_leave_nothing() -> Result<()> {
    if !require(is_root(), "root (network namespaces)") {
        return Ok(());
    }
    // A lab left behind by a test process that died (no pid can be above
    // pid_max): the next lab sweeps it away.
    let pid_max: u64 = std::fs::read_to_string("/proc/sys/kernel/pid_max")?.trim().parse()?;
    let stale = format!("kedge-lab-{}-0-a", pid_max + 1);
    kedge_tests::run_ok(Command::new("ip").args(["netns", "add", &stale]))?;
    let mut lab = Lab::new()?;
    ensure!(!lab_namespaces()?.contains(&stale), "a dead test's namespace is swept");
    let (stem, tag) = (lab.stem().to_owned(), lab.tag().to_owned());
    let a = lab.machine("a")?;
    let b = lab.machine("b")?;
    ensure!(a.ip() != b.ip() && a.ip().octets()[..3] == [192, 168, 77], "{} {}", a.ip(), b.ip());
    ensure!(ping(&a, b.ip()), "a reaches b on the LAN");
    // Each machine has only its own links: lo and eth0.
    let links = a.run("ip", &["-o", "link", "show"])?;
    ensure!(links.lines().count() == 2 && links.contains("eth0"), "{links}");

    // Two subnets: no route between them until a router joins them.
    let far = lab.add_lan("192.168.78.0/24")?;
    let c = lab.machine_on("c", &[far])?;
    ensure!(!ping(&a, c.ip()), "no route to the other subnet yet");
    let r = lab.router("router", &[lab.lan(), far])?;
    ensure!(r.ips().iter().map(|i| i.octets()[3]).all(|o| o == 1), "the router is .1: {:?}", r.ips());
    ensure!(ping(&a, c.ip()) && ping(&c, b.ip()), "a and b reach c through the router");
    // A process spawned on a machine runs in its namespace.
    let server = c.spawn("busybox", &["nc", "-l", "-p", "7777"])?;
    wait_for("the listener on c", Duration::from_secs(5), || {
        Ok(listening(&c.run("cat", &["/proc/net/tcp", "/proc/net/tcp6"])?, 7777).then_some(()))
    })?;
    let host = std::fs::read_to_string("/proc/net/tcp")? + &std::fs::read_to_string("/proc/net/tcp6")?;
    ensure!(!listening(&host, 7777), "the listener is not in the host's namespace");
    drop(server);

    drop(lab);
    nothing_left(&stem, &tag)
}

/// Ready condition of a Node or Pod.
fn ready(v: &Value) -> bool {
    v["status"]["conditions"].as_array().into_iter().flatten().any(|c| c["type"] == "Ready" && c["status"] == "True")
}

struct Cluster {
    // Dropped in this order: agents (they remove their pods), the
    // controller, then the lab with its namespaces.
    agents: Vec<Agent>,
    _ctl: Controller,
    k: Kubectl,
    _lab: Lab,
    _tmp: tempfile::TempDir,
}

const DAEMONSET: &str = "apiVersion: apps/v1
kind: DaemonSet
metadata: {name: probe}
spec:
  selector: {matchLabels: {app: probe}}
  template:
    metadata: {labels: {app: probe}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: kedge.local/busybox:latest
        imagePullPolicy: IfNotPresent
        command: [sleep, '3600']
";

#[test]
fn a_controller_and_two_agents_on_separate_machines() -> Result<()> {
    if !require(is_root(), "root (network namespaces, containers)") {
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let mut lab = Lab::new()?;
    let (stem, tag) = (lab.stem().to_owned(), lab.tag().to_owned());
    let server = lab.machine("server")?;
    let nodes = [lab.machine("node-a")?, lab.machine("node-b")?];
    let Some((ctl, k)) = lab.controller(&server, &tmp.path().join("server"), &[])? else { return Ok(()) };
    let broker = ctl.broker.clone().context("the controller runs no fleet link")?;
    ensure!(broker == format!("mqtts://{}:8883", server.ip()), "the broker is on the LAN, over TLS: {broker}");
    let mut agents = Vec::new();
    for m in &nodes {
        // Each node has a namespace of its own: it gets a pod network.
        let mut a = lab.agent(&ctl, m, &tmp.path().join(m.name()), &["--backoff-base", "1s"])?;
        a.start()?;
        agents.push(a);
    }
    let c = Cluster { agents, _ctl: ctl, k, _lab: lab, _tmp: tmp };
    let logs = |c: &Cluster| c.agents.iter().map(|a| a.log()).collect::<Vec<_>>().join("\n----\n");

    // Both nodes Ready, each with its own machine's address.
    wait_for("both nodes Ready", Duration::from_secs(60), || {
        let list = c.k.json(&["get", "nodes"])?;
        let ready: Vec<&str> = list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|n| ready(n))
            .filter_map(|n| n["metadata"]["name"].as_str())
            .collect();
        Ok((ready == ["node-a", "node-b"]).then_some(()))
    })
    .with_context(|| logs(&c))?;
    for m in &nodes {
        let n = c.k.json(&["get", "node", m.name()])?;
        let internal: Vec<&str> = n["status"]["addresses"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["type"] == "InternalIP")
            .filter_map(|a| a["address"].as_str())
            .collect();
        ensure!(internal == [m.ip().to_string()], "{}'s InternalIP is its LAN address: {internal:?}", m.name());
    }

    // A pod on each node, running where its node is.
    let path = c._tmp.path().join("ds.yaml");
    std::fs::write(&path, DAEMONSET)?;
    c.k.ok(&["apply", "-f", &path.to_string_lossy()])?;
    let pods = wait_for("a running, ready probe pod on each node", Duration::from_secs(90), || {
        let list = c.k.json(&["get", "pods", "-l", "app=probe"])?;
        let pods = list["items"].as_array().cloned().unwrap_or_default();
        let ok = pods.len() == 2 && pods.iter().all(|p| p["status"]["phase"] == "Running" && ready(p));
        Ok(ok.then_some(pods))
    })
    .with_context(|| format!("{}\n{}", c.k.ok(&["get", "pods", "-o", "wide"]).unwrap_or_default(), logs(&c)))?;
    let mut placed: Vec<(String, String)> = pods
        .iter()
        .map(|p| {
            (
                p["spec"]["nodeName"].as_str().unwrap_or_default().to_owned(),
                p["status"]["hostIP"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    placed.sort();
    let want: Vec<(String, String)> = nodes.iter().map(|m| (m.name().to_owned(), m.ip().to_string())).collect();
    ensure!(placed == want, "pods on each node, with that node's address: {placed:?}");
    // Pod addresses come from each node's pod CIDR, and a pod on node-a
    // reaches the one on node-b across the LAN.
    let mut pod_ips = Vec::new();
    for p in &pods {
        let node = c.k.json(&["get", "node", p["spec"]["nodeName"].as_str().unwrap_or_default()])?;
        let cidr = node["spec"]["podCIDR"].as_str().context("podCIDR")?.to_owned();
        let ip: Ipv4Addr = p["status"]["podIP"].as_str().with_context(|| format!("podIP of {p}"))?.parse()?;
        ensure!(in_cidr(ip, &cidr), "{ip} is in its node's pod CIDR {cidr}");
        pod_ips.push((
            p["metadata"]["name"].as_str().unwrap_or_default().to_owned(),
            p["spec"]["nodeName"].as_str().unwrap_or_default().to_owned(),
            ip,
        ));
    }
    let (from_pod, from_node, _) = &pod_ips[0];
    let (_, _, to) = &pod_ips[1];
    let agent = &c.agents[nodes.iter().position(|m| m.name() == from_node).context("agent")?];
    let pid =
        agent.container(from_pod, "main")?.and_then(|c| c["pid"].as_i64()).context("pid of the pod's container")?;
    let out = Command::new("nsenter")
        .args([&format!("--net=/proc/{pid}/ns/net"), "--", "busybox", "ping", "-c", "1", "-W", "2", &to.to_string()])
        .output()?;
    ensure!(out.status.success(), "{from_pod} on {from_node} pings {to}: {}", String::from_utf8_lossy(&out.stdout));
    c.k.ok(&["delete", "daemonset", "probe"])?;

    drop(c);
    nothing_left(&stem, &tag)
}
