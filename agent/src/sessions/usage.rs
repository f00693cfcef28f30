//! `kubectl top` on the node: the node's CPU and memory and each running
//! container's, read from the kernel when the controller asks (nothing is
//! sampled or sent while nobody asks). CPU is a rate: between the previous
//! ask and this one when that was a few seconds to minutes ago, else over a
//! second measured now. Containers' figures come from their cgroups (v1
//! and v2), the counters CRI `ContainerStats` reports; the node's from
//! `/proc/stat` and `/proc/meminfo`.

use std::collections::HashMap;
use std::sync::Mutex;

use kedge_common::bytes::Bytes;
use kedge_common::session::{self, Frame, MAX_FRAME_DATA, PodUsage, Sample, Usage};
use tokio::time::{Duration, Instant};

use super::{Session, SessionEnv};
use crate::runtime::Paths;
use crate::runtime::records::{self, ContainerRecord, ContainerState, SandboxRecord};
use crate::runtime::stats::cgroup_usage;

/// The shortest and longest window a CPU rate is taken over.
const MIN_WINDOW: Duration = Duration::from_secs(1);
const MAX_WINDOW: Duration = Duration::from_secs(600);

/// One reading of the CPU counters.
#[derive(Clone)]
struct Reading {
    at: Instant,
    node_cpu_ns: Option<u64>,
    /// Per container id: CPU used so far.
    containers: HashMap<String, u64>,
}

/// The previous ask's reading.
static LAST: Mutex<Option<Reading>> = Mutex::new(None);

/// The node's busy CPU time so far, from `/proc/stat` (all but idle and
/// iowait), in nanoseconds.
fn node_cpu_ns() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line.split_whitespace().skip(1).filter_map(|n| n.parse().ok()).collect();
    let busy: u64 = f.iter().take(8).enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, v)| v).sum();
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().filter(|h| *h > 0).unwrap_or(100);
    Some(busy.saturating_mul(1_000_000_000) / u64::try_from(hz).unwrap_or(100))
}

/// Memory in use on the node (total less available), from `/proc/meminfo`.
fn node_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb = |key: &str| -> Option<u64> {
        info.lines().find_map(|l| l.strip_prefix(key)?.trim().trim_end_matches("kB").trim().parse().ok())
    };
    Some(kb("MemTotal:")?.saturating_sub(kb("MemAvailable:")?) * 1024)
}

fn running(paths: &Paths) -> Vec<ContainerRecord> {
    records::load_all::<ContainerRecord>(&paths.containers())
        .into_iter()
        .filter(|c| c.state == ContainerState::Running && !c.cgroup_path.is_empty())
        .collect()
}

fn read(containers: &[ContainerRecord]) -> Reading {
    let containers = containers.iter().filter_map(|c| Some((c.id.clone(), cgroup_usage(&c.cgroup_path).0?))).collect();
    Reading { at: Instant::now(), node_cpu_ns: node_cpu_ns(), containers }
}

fn rate(before: Option<u64>, now: Option<u64>, window: Duration) -> u64 {
    let used = now.unwrap_or(0).saturating_sub(before.unwrap_or(u64::MAX));
    u64::try_from(u128::from(used) * 1_000_000_000 / window.as_nanos().max(1)).unwrap_or(u64::MAX)
}

/// The node's usage now.
async fn measure(paths: &Paths) -> Usage {
    let containers = running(paths);
    let previous = LAST.lock().unwrap_or_else(|p| p.into_inner()).clone();
    // A recent reading that knew every running container will do;
    // otherwise one is taken now, a window before.
    let usable = previous.filter(|p| {
        (MIN_WINDOW..=MAX_WINDOW).contains(&p.at.elapsed())
            && containers.iter().all(|c| p.containers.contains_key(&c.id))
    });
    let before = match usable {
        Some(p) => p,
        None => {
            let r = read(&containers);
            tokio::time::sleep(MIN_WINDOW).await;
            r
        }
    };
    let now = read(&containers);
    *LAST.lock().unwrap_or_else(|p| p.into_inner()) = Some(now.clone());
    let window = now.at.duration_since(before.at);
    let sandboxes: HashMap<String, SandboxRecord> =
        records::load_all::<SandboxRecord>(&paths.pods()).into_iter().map(|s| (s.id.clone(), s)).collect();
    let mut pods: HashMap<String, PodUsage> = HashMap::new();
    for c in &containers {
        let Some(s) = sandboxes.get(&c.sandbox_id) else { continue };
        let m = s.config.metadata.clone().unwrap_or_default();
        let pod = pods.entry(c.sandbox_id.clone()).or_insert_with(|| PodUsage {
            namespace: m.namespace.clone(),
            name: m.name.clone(),
            uid: m.uid.clone(),
            containers: Vec::new(),
        });
        let sample = Sample {
            cpu_nanocores: rate(before.containers.get(&c.id).copied(), now.containers.get(&c.id).copied(), window),
            memory_bytes: cgroup_usage(&c.cgroup_path).1.unwrap_or(0),
        };
        pod.containers.push((c.name().to_owned(), sample));
    }
    Usage {
        timestamp: jiff::Timestamp::now().to_string(),
        window_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX),
        node: Sample {
            cpu_nanocores: rate(before.node_cpu_ns, now.node_cpu_ns, window),
            memory_bytes: node_memory().unwrap_or(0),
        },
        pods: pods.into_values().collect(),
    }
}

impl Session {
    pub(super) async fn usage(&mut self, env: &SessionEnv) {
        let usage = measure(&env.paths).await;
        let body = match usage.to_cbor() {
            Ok(b) => b,
            Err(e) => return self.fail(500, format!("cannot encode the usage: {e}")).await,
        };
        if !self.out.send(&Frame::Started).await {
            return;
        }
        for chunk in body.chunks(MAX_FRAME_DATA) {
            while self.credit <= 0 {
                if self.wait(Duration::from_secs(1)).await {
                    return;
                }
            }
            self.credit -= session::cost(chunk.len());
            if !self.out.send(&Frame::Data { stream: 1, data: Bytes(chunk.to_vec()) }).await {
                return;
            }
        }
        self.out.send(&Frame::End).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_per_second_of_the_window() {
        let w = Duration::from_millis(500);
        assert_eq!(rate(Some(1_000), Some(501_000), w), 1_000_000, "0.5 ms of CPU in 0.5 s is a thousandth of a core");
        assert_eq!(rate(None, Some(5), w), 0, "no earlier reading: no rate");
        assert_eq!(rate(Some(10), Some(5), w), 0, "a reset counter: no rate");
        assert!(node_cpu_ns().is_some() && node_memory().is_some_and(|m| m > 0));
    }
}
