//! The node report (design.md §3): this machine's identity, capacity and
//! pressure, read from /proc, /etc and the data dir, plus the status of the
//! controller's pods from the runtime's state files.

use std::collections::BTreeMap;
use std::path::Path;

use kedge_common::pod::Pod;
use kedge_common::wire::{
    ContainerReport, ContainerState, NodeInfo, NodeReport, NodeResources, PodPhase, PodReport, Pressure, Usage,
};

use crate::pods::status::{ContainerView, PodView, ViewState};

/// Pods a node takes by default, as the kubelet's `maxPods`.
pub const MAX_PODS: i64 = 110;
/// The kubelet's default hard eviction thresholds.
const MEMORY_AVAILABLE_MIN: i64 = 100 * 1024 * 1024;
const DISK_AVAILABLE_MIN_PERCENT: u64 = 10;

/// The Kubernetes name of this build's architecture (as images name it).
pub fn k8s_arch() -> &'static str {
    crate::images::node_platform().0
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// `MemTotal` and `MemAvailable` from /proc/meminfo, in bytes.
fn meminfo() -> (i64, i64) {
    let text = read("/proc/meminfo");
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("MemTotal:"), field("MemAvailable:"))
}

fn os_image() -> String {
    let text = read("/etc/os-release");
    text.lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| "Linux".into())
}

/// The facts about this machine that do not change while the agent runs.
#[derive(Debug, Clone)]
pub struct Machine {
    pub info: NodeInfo,
    pub cpu_milli: i64,
    pub addresses: Vec<(String, String)>,
    pub labels: BTreeMap<String, String>,
}

impl Machine {
    /// `node_ip`: the address other nodes reach this one on.
    pub fn detect(node: &str, node_ip: Option<String>) -> Machine {
        let kernel = read("/proc/sys/kernel/osrelease").trim().to_string();
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let info = NodeInfo {
            architecture: k8s_arch().into(),
            operating_system: "linux".into(),
            os_image: os_image(),
            kernel_version: kernel,
            machine_id: read("/etc/machine-id").trim().to_string(),
            container_runtime_version: format!("kedge://{}", kedge_common::VERSION),
        };
        let mut addresses = Vec::new();
        if let Some(ip) = node_ip {
            addresses.push(("InternalIP".to_string(), ip));
        }
        addresses.push(("Hostname".to_string(), node.to_string()));
        let labels = BTreeMap::from([
            ("kubernetes.io/arch".to_string(), k8s_arch().to_string()),
            ("kubernetes.io/os".to_string(), "linux".to_string()),
            ("kubernetes.io/hostname".to_string(), node.to_string()),
        ]);
        Machine { info, cpu_milli: i64::try_from(cpus).unwrap_or(1) * 1000, addresses, labels }
    }

    pub fn internal_ip(&self) -> Option<&str> {
        self.addresses.iter().find(|(t, _)| t == "InternalIP").map(|(_, a)| a.as_str())
    }
}

/// The address this machine uses to reach `host:port` (a UDP `connect`
/// picks the route; nothing is sent).
pub fn route_source_ip(host: &str, port: u16) -> Option<String> {
    use std::net::{ToSocketAddrs, UdpSocket};
    let target = (host, port).to_socket_addrs().ok()?.find(|a| a.is_ipv4())?;
    let sock = UdpSocket::bind("0.0.0.0:0").ok()?;
    sock.connect(target).ok()?;
    Some(sock.local_addr().ok()?.ip().to_string())
}

/// Total and available bytes of the file system holding `dir`.
fn disk(dir: &Path) -> (i64, i64) {
    match nix::sys::statvfs::statvfs(dir) {
        Ok(s) => {
            let frag = s.fragment_size() as i64;
            (s.blocks() as i64 * frag, s.blocks_available() as i64 * frag)
        }
        Err(_) => (0, 0),
    }
}

fn pressure(mem_available: i64, disk: (i64, i64)) -> Pressure {
    let loadavg = read("/proc/loadavg");
    // Field 4 is "running/total" scheduling entities.
    let threads = loadavg
        .split_whitespace()
        .nth(3)
        .and_then(|f| f.split_once('/'))
        .and_then(|(_, t)| t.parse::<u64>().ok())
        .unwrap_or(0);
    let pid_max = read("/proc/sys/kernel/pid_max").trim().parse::<u64>().unwrap_or(u64::MAX);
    Pressure {
        memory: mem_available > 0 && mem_available < MEMORY_AVAILABLE_MIN,
        disk: disk.0 > 0 && (disk.1 as u64) * 100 < (disk.0 as u64) * DISK_AVAILABLE_MIN_PERCENT,
        pid: pid_max != u64::MAX && threads * 10 > pid_max * 9,
    }
}

fn load_milli() -> i64 {
    read("/proc/loadavg")
        .split_whitespace()
        .next()
        .and_then(|l| l.parse::<f64>().ok())
        .map_or(0, |l| (l * 1000.0) as i64)
}

/// Longest message a report carries per container (the rest is on the node).
const MAX_MESSAGE: usize = 1024;

fn short(s: &str) -> String {
    if s.len() <= MAX_MESSAGE {
        return s.to_string();
    }
    let mut end = MAX_MESSAGE;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// A state with its message cut to what a report carries.
fn shortened(s: &ContainerState) -> ContainerState {
    match s {
        ContainerState::Waiting { reason, message } => {
            ContainerState::Waiting { reason: *reason, message: short(message) }
        }
        ContainerState::Terminated { exit_code, reason, message, started_at, finished_at } => {
            ContainerState::Terminated {
                exit_code: *exit_code,
                reason: *reason,
                message: short(message),
                started_at: *started_at,
                finished_at: *finished_at,
            }
        }
        ContainerState::Running { started_at } => ContainerState::Running { started_at: *started_at },
    }
}

fn container_report(c: &ContainerView) -> ContainerReport {
    let running = c.state == ViewState::Running;
    ContainerReport {
        name: c.name.clone(),
        image: c.image.clone(),
        image_id: c.image_id.clone(),
        container_id: if c.id.is_empty() { String::new() } else { format!("kedge://{}", c.id) },
        ready: running && c.ready,
        started: running && c.started,
        restart_count: c.restart_count,
        state: shortened(&c.current),
        last_state: c.last.as_ref().map(shortened),
    }
}

/// A static pod as its mirror pod shows it: the report is signed but not
/// sealed (anyone on the broker may read it), so the values of `env`
/// literals and the contents of inline volume files stay on the node;
/// names, images, commands and the rest go.
pub fn without_secrets(mut pod: Pod) -> Pod {
    for c in pod.spec.containers.iter_mut().chain(pod.spec.init_containers.iter_mut()) {
        for e in &mut c.env {
            e.value.clear();
        }
        // HTTP headers of probes and hooks (an Authorization, say).
        let hook = c.lifecycle.as_mut().and_then(|l| l.pre_stop.as_mut()).and_then(|h| h.http_get.as_mut());
        let probes = [c.liveness_probe.as_mut(), c.readiness_probe.as_mut(), c.startup_probe.as_mut()];
        for h in probes.into_iter().flatten().filter_map(|p| p.http_get.as_mut()).chain(hook) {
            h.http_headers.iter_mut().for_each(|e| e.value.clear());
        }
    }
    for v in &mut pod.spec.volumes {
        for d in [v.config_map.as_mut(), v.secret.as_mut()].into_iter().flatten() {
            d.data.clear();
            d.binary_data.clear();
        }
    }
    pod
}

/// One pod's report: from its view when the node has started on it, else Pending.
pub fn pod_report(pod: &Pod, view: Option<&PodView>, host_ip: Option<&str>) -> PodReport {
    let meta = &pod.metadata;
    let mut containers: Vec<ContainerReport> = Vec::new();
    for c in &pod.spec.containers {
        match view.and_then(|v| v.containers.iter().find(|x| x.name == c.name)) {
            Some(cv) => containers.push(container_report(cv)),
            None => {
                containers.push(ContainerReport { name: c.name.clone(), image: c.image.clone(), ..Default::default() })
            }
        }
    }
    let phase = view.map(|v| v.phase).filter(|p| *p != PodPhase::Unknown).unwrap_or(PodPhase::Pending);
    let ready = phase == PodPhase::Running && !containers.is_empty() && containers.iter().all(|c| c.ready);
    PodReport {
        uid: meta.uid.clone().unwrap_or_default(),
        namespace: meta.namespace.clone().unwrap_or_else(|| "default".into()),
        name: meta.name.clone(),
        phase,
        ready,
        pod_ip: if pod.spec.host_network { host_ip.map(str::to_string) } else { view.and_then(|v| v.pod_ip.clone()) },
        start_time: view.map(|v| v.created_at).filter(|t| *t > 0),
        containers,
        terminated: view.is_some_and(|v| v.terminated),
    }
}

/// The whole report for `pods` (the controller's pods this node runs).
pub fn build(
    machine: &Machine,
    node: &str,
    boot_id: &str,
    data_dir: &Path,
    observed_generation: u64,
    pods: &[Pod],
    views: &[PodView],
) -> NodeReport {
    let (mem_total, mem_available) = meminfo();
    let disk = disk(data_dir);
    let capacity = NodeResources {
        cpu_milli: machine.cpu_milli,
        memory_bytes: mem_total,
        ephemeral_storage_bytes: disk.0,
        pods: MAX_PODS,
    };
    let by_uid: BTreeMap<&str, &PodView> = views.iter().map(|v| (v.uid.as_str(), v)).collect();
    let host_ip = machine.internal_ip();
    NodeReport {
        node: node.to_string(),
        observed_generation,
        time: jiff::Timestamp::now().as_second(),
        boot_id: boot_id.to_string(),
        agent_version: kedge_common::VERSION.to_string(),
        info: machine.info.clone(),
        allocatable: capacity.clone(),
        capacity,
        addresses: machine.addresses.clone(),
        labels: machine.labels.clone(),
        pressure: pressure(mem_available, disk),
        usage: Usage { memory_bytes: (mem_total - mem_available).max(0), load_milli: load_milli() },
        pods: pods
            .iter()
            .map(|p| pod_report(p, p.metadata.uid.as_deref().and_then(|u| by_uid.get(u).copied()), host_ip))
            .collect(),
        events_dropped: 0,
        network: Default::default(),
        rejected: 0,
        seq: 0,
        static_pods: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_facts_are_read() {
        let m = Machine::detect("n1", Some("10.0.0.5".into()));
        assert!(m.cpu_milli >= 1000);
        assert_eq!(m.internal_ip(), Some("10.0.0.5"));
        assert_eq!(m.labels.get("kubernetes.io/arch").map(String::as_str), Some(k8s_arch()));
        let (total, avail) = meminfo();
        assert!(total > 0 && avail > 0 && avail <= total);
        assert_eq!(route_source_ip("127.0.0.1", 1883).as_deref(), Some("127.0.0.1"));
    }

    #[test]
    fn a_pod_the_node_has_not_started_is_pending() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u"},
            "spec": {"containers": [{"name": "c", "image": "i"}]}
        }))
        .expect("pod");
        let r = pod_report(&pod, None, Some("10.0.0.5"));
        assert_eq!((r.phase, r.ready, r.pod_ip.as_deref()), (PodPhase::Pending, false, None));
        assert_eq!(r.containers[0].state, ContainerState::default());
    }
}
