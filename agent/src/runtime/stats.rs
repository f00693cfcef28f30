//! Resource usage for the CRI's stats verbs (ContainerStats, ListContainerStats,
//! PodSandboxStats, ListPodSandboxStats), read on demand from the cgroup of
//! each container (its `cgroup_path`) and pod (its `cgroup_parent`, which
//! holds its containers' cgroups). Both cgroup versions: v1 with one
//! hierarchy per controller (libcontainer's choice on a hybrid host, like
//! this build machine) and the v2 unified hierarchy (current Raspberry Pi
//! OS). Nothing samples in the background (flash and CPU stay idle): CPU
//! usage in nanocores is the rate since the previous call for the same
//! object, or since it started on the first call.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use k8s_cri::v1 as cri;

use super::records::{self, ContainerRecord, ContainerState, SandboxRecord, Snapshotter, labels_match};
use super::{Result, Runtime, RuntimeError, blocking};

/// A v1 memory limit at or above this is "no limit" (the kernel reports
/// PAGE_COUNTER_MAX pages, 9223372036854771712 bytes with 4 KiB pages).
const V1_NO_LIMIT: u64 = 1 << 62;

/// Where the cgroup hierarchies are mounted, from `/proc/self/mountinfo`.
#[derive(Debug, Default, Clone, PartialEq)]
struct Hierarchies {
    /// v1 hierarchies: mount point and the controllers it carries.
    v1: Vec<(PathBuf, Vec<String>)>,
    /// The v2 (unified) hierarchy's mount point.
    unified: Option<PathBuf>,
}

/// A cgroup's directory for one controller.
#[derive(Debug, Clone, PartialEq)]
enum CgroupDir {
    V1(PathBuf),
    V2(PathBuf),
}

impl Hierarchies {
    fn read() -> Hierarchies {
        fs::read_to_string("/proc/self/mountinfo").map(|t| Hierarchies::parse(&t)).unwrap_or_default()
    }

    /// Parses mountinfo lines: `id parent dev root mount-point options [optional…] - fstype source super-options`.
    fn parse(mountinfo: &str) -> Hierarchies {
        let mut h = Hierarchies::default();
        for line in mountinfo.lines() {
            let Some((left, right)) = line.split_once(" - ") else { continue };
            let Some(mount_point) = left.split(' ').nth(4) else { continue };
            let mut right = right.split(' ');
            let (Some(fstype), Some(_source), Some(options)) = (right.next(), right.next(), right.next()) else {
                continue;
            };
            let mount_point = PathBuf::from(mount_point);
            match fstype {
                "cgroup2" if h.unified.is_none() => h.unified = Some(mount_point),
                "cgroup" => {
                    let controllers = options.split(',').filter(|o| !["rw", "ro"].contains(o)).map(String::from);
                    h.v1.push((mount_point, controllers.collect()));
                }
                _ => {}
            }
        }
        h
    }

    /// The directory of cgroup `rel` (relative to the hierarchy's root) for
    /// `controller`: in its v1 hierarchy when one is mounted (as libcontainer
    /// picks on a hybrid host), else in the unified one.
    fn dir(&self, controller: &str, rel: &str) -> Option<CgroupDir> {
        let rel = rel.trim_start_matches('/');
        if let Some((mount, _)) = self.v1.iter().find(|(_, c)| c.iter().any(|c| c == controller)) {
            return Some(CgroupDir::V1(mount.join(rel)));
        }
        self.unified.as_ref().map(|u| CgroupDir::V2(u.join(rel)))
    }
}

/// What a cgroup's files say, at one moment.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Usage {
    /// Cumulative CPU time of every task in it, in nanoseconds.
    cpu_ns: Option<u64>,
    memory: Option<Memory>,
    processes: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Memory {
    usage: u64,
    /// Usage less inactive file cache (what the kubelet evicts on).
    working_set: u64,
    rss: Option<u64>,
    limit: Option<u64>,
    page_faults: Option<u64>,
    major_page_faults: Option<u64>,
}

fn read(path: PathBuf) -> Option<String> {
    fs::read_to_string(path).ok()
}

fn number(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// The `key value` lines of `memory.stat` and `cpu.stat`.
fn keyed(text: &str) -> BTreeMap<&str, u64> {
    text.lines().filter_map(|l| l.split_once(' ')).filter_map(|(k, v)| Some((k, v.trim().parse().ok()?))).collect()
}

/// v1 `cpuacct.usage`: nanoseconds.
fn cpu_v1(usage: &str) -> Option<u64> {
    number(usage)
}

/// v2 `cpu.stat`: `usage_usec`, in microseconds.
fn cpu_v2(stat: &str) -> Option<u64> {
    keyed(stat).get("usage_usec").map(|us| us.saturating_mul(1000))
}

/// v1: `memory.usage_in_bytes`, `memory.limit_in_bytes` and `memory.stat`
/// (the `total_` counters include the cgroups below, as a pod's must).
fn memory_v1(usage: &str, limit: &str, stat: &str) -> Option<Memory> {
    let usage = number(usage)?;
    let stat = keyed(stat);
    let get = |key: &str| stat.get(format!("total_{key}").as_str()).or_else(|| stat.get(key)).copied();
    Some(Memory {
        usage,
        working_set: usage.saturating_sub(get("inactive_file").unwrap_or(0)),
        rss: get("rss"),
        limit: number(limit).filter(|&l| l < V1_NO_LIMIT),
        page_faults: get("pgfault"),
        major_page_faults: get("pgmajfault"),
    })
}

/// v2: `memory.current`, `memory.max` (`max` = no limit) and `memory.stat`
/// (hierarchical already).
fn memory_v2(current: &str, max: &str, stat: &str) -> Option<Memory> {
    let usage = number(current)?;
    let stat = keyed(stat);
    Some(Memory {
        usage,
        working_set: usage.saturating_sub(stat.get("inactive_file").copied().unwrap_or(0)),
        rss: stat.get("anon").copied(),
        limit: number(max),
        page_faults: stat.get("pgfault").copied(),
        major_page_faults: stat.get("pgmajfault").copied(),
    })
}

/// Reads cgroup `rel`'s usage; what a missing controller or file does not
/// tell stays `None`.
fn usage(h: &Hierarchies, rel: &str) -> Usage {
    let cpu_ns = match h.dir("cpuacct", rel) {
        Some(CgroupDir::V1(d)) => read(d.join("cpuacct.usage")).and_then(|t| cpu_v1(&t)),
        Some(CgroupDir::V2(d)) => read(d.join("cpu.stat")).and_then(|t| cpu_v2(&t)),
        None => None,
    };
    let memory = match h.dir("memory", rel) {
        Some(CgroupDir::V1(d)) => {
            let (usage, limit) = (read(d.join("memory.usage_in_bytes")), read(d.join("memory.limit_in_bytes")));
            usage.and_then(|u| memory_v1(&u, &limit.unwrap_or_default(), &read(d.join("memory.stat"))?))
        }
        Some(CgroupDir::V2(d)) => {
            let (current, max) = (read(d.join("memory.current")), read(d.join("memory.max")));
            current.and_then(|c| memory_v2(&c, &max.unwrap_or_default(), &read(d.join("memory.stat"))?))
        }
        None => None,
    };
    let processes = match h.dir("pids", rel) {
        Some(CgroupDir::V1(d) | CgroupDir::V2(d)) => read(d.join("pids.current")).and_then(|t| number(&t)),
        None => None,
    };
    Usage { cpu_ns, memory, processes }
}

/// A cgroup's CPU used so far (nanoseconds) and memory working set
/// (bytes) — the counters ContainerStats reports — on either cgroup version.
pub fn cgroup_usage(cgroup_path: &str) -> (Option<u64>, Option<u64>) {
    let u = usage(&Hierarchies::read(), cgroup_path);
    (u.cpu_ns, u.memory.map(|m| m.working_set))
}

/// The previous CPU reading of each container and sandbox, for the rate.
#[derive(Default)]
pub(super) struct CpuRates(Mutex<BTreeMap<String, (i64, u64)>>);

impl CpuRates {
    /// CPU use in nanocores between the previous reading of `id` (or
    /// `started_ns`, when there is none) and this one, which it remembers.
    /// None across a counter reset or with no time between the two.
    fn rate(&self, id: &str, started_ns: i64, now_ns: i64, cpu_ns: u64) -> Option<u64> {
        let mut last = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let (then, before) = last.insert(id.to_string(), (now_ns, cpu_ns)).unwrap_or((started_ns, 0));
        let elapsed = u128::try_from(now_ns.checked_sub(then)?).ok().filter(|&e| e > 0)?;
        let used = u128::from(cpu_ns.checked_sub(before)?);
        u64::try_from(used * 1_000_000_000 / elapsed).ok()
    }

    /// Forgets objects that are gone.
    fn retain(&self, live: &BTreeSet<String>) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).retain(|id, _| live.contains(id));
    }
}

fn uint(value: u64) -> Option<cri::UInt64Value> {
    Some(cri::UInt64Value { value })
}

fn cpu_usage(rates: &CpuRates, id: &str, started_ns: i64, now: i64, u: &Usage) -> Option<cri::CpuUsage> {
    let cpu = u.cpu_ns?;
    Some(cri::CpuUsage {
        timestamp: now,
        usage_core_nano_seconds: uint(cpu),
        usage_nano_cores: rates.rate(id, started_ns, now, cpu).and_then(uint),
    })
}

fn memory_usage(now: i64, u: &Usage) -> Option<cri::MemoryUsage> {
    let m = u.memory?;
    Some(cri::MemoryUsage {
        timestamp: now,
        working_set_bytes: uint(m.working_set),
        available_bytes: m.limit.and_then(|l| uint(l.saturating_sub(m.working_set))),
        usage_bytes: uint(m.usage),
        rss_bytes: m.rss.and_then(uint),
        page_faults: m.page_faults.and_then(uint),
        major_page_faults: m.major_page_faults.and_then(uint),
    })
}

/// Bytes (allocated blocks) and inodes under `dir`, hard links counted once.
fn disk_usage(dir: &Path) -> Option<(u64, u64)> {
    let meta = fs::symlink_metadata(dir).ok()?;
    let mut seen = BTreeSet::new();
    let (mut bytes, mut inodes) = (0u64, 0u64);
    let mut todo = vec![(dir.to_path_buf(), meta)];
    while let Some((path, meta)) = todo.pop() {
        if meta.nlink() > 1 && !meta.is_dir() && !seen.insert((meta.dev(), meta.ino())) {
            continue;
        }
        bytes = bytes.saturating_add(meta.blocks().saturating_mul(512));
        inodes += 1;
        if meta.is_dir() {
            let Ok(entries) = fs::read_dir(&path) else { continue };
            todo.extend(entries.flatten().filter_map(|e| Some((e.path(), e.metadata().ok()?))));
        }
    }
    Some((bytes, inodes))
}

/// The container's writable layer: the overlay's upper directory, or the
/// whole copied root file system.
fn writable_layer(dir: &Path, kind: Snapshotter, now: i64) -> Option<cri::FilesystemUsage> {
    let layer = dir.join(match kind {
        Snapshotter::Overlay => "upper",
        Snapshotter::Copy => "rootfs",
    });
    let (bytes, inodes) = disk_usage(&layer)?;
    Some(cri::FilesystemUsage {
        timestamp: now,
        fs_id: Some(cri::FilesystemIdentifier { mountpoint: layer.display().to_string() }),
        used_bytes: uint(bytes),
        inodes_used: uint(inodes),
    })
}

fn container_stats(rt: &Runtime, h: &Hierarchies, c: &ContainerRecord) -> cri::ContainerStats {
    let now = records::now_ns();
    let u = usage(h, &c.cgroup_path);
    let started = if c.started_at > 0 { c.started_at } else { c.created_at };
    cri::ContainerStats {
        attributes: Some(cri::ContainerAttributes {
            id: c.id.clone(),
            metadata: c.config.metadata.clone(),
            labels: c.config.labels.clone(),
            annotations: c.config.annotations.clone(),
        }),
        cpu: cpu_usage(&rt.inner.cpu_rates, &c.id, started, now, &u),
        memory: memory_usage(now, &u),
        writable_layer: writable_layer(&rt.inner.paths.container(&c.id), c.snapshotter, now),
        swap: None,
    }
}

fn sandbox_stats(
    rt: &Runtime,
    h: &Hierarchies,
    s: &SandboxRecord,
    containers: &[ContainerRecord],
) -> cri::PodSandboxStats {
    let now = records::now_ns();
    let u = usage(h, &s.cgroup_parent);
    cri::PodSandboxStats {
        attributes: Some(cri::PodSandboxAttributes {
            id: s.id.clone(),
            metadata: s.config.metadata.clone(),
            labels: s.config.labels.clone(),
            annotations: s.config.annotations.clone(),
        }),
        linux: Some(cri::LinuxPodSandboxStats {
            cpu: cpu_usage(&rt.inner.cpu_rates, &s.id, s.created_at, now, &u),
            memory: memory_usage(now, &u),
            network: None,
            process: u.processes.map(|n| cri::ProcessUsage { timestamp: now, process_count: uint(n) }),
            containers: containers
                .iter()
                .filter(|c| c.sandbox_id == s.id && c.state != ContainerState::Exited)
                .map(|c| container_stats(rt, h, c))
                .collect(),
        }),
        windows: None,
    }
}

impl Runtime {
    /// Everything the stats read, and the CPU readings of objects gone forgotten.
    fn stats_records(&self) -> (Vec<SandboxRecord>, Vec<ContainerRecord>) {
        let st = self.state();
        let live = st.sandboxes.keys().chain(st.containers.keys()).cloned().collect();
        self.inner.cpu_rates.retain(&live);
        (st.sandboxes.values().cloned().collect(), st.containers.values().cloned().collect())
    }

    pub async fn container_stats(&self, id: &str) -> Result<cri::ContainerStats> {
        let (_, containers) = self.stats_records();
        let c = containers
            .into_iter()
            .find(|c| c.id == id)
            .ok_or_else(|| RuntimeError::NotFound { kind: "container", id: id.into() })?;
        let rt = self.clone();
        blocking(move || Ok(container_stats(&rt, &Hierarchies::read(), &c))).await
    }

    /// Stats of the containers that have not exited (their cgroups are gone
    /// or frozen in time), as containerd lists them.
    pub async fn list_container_stats(
        &self,
        filter: Option<cri::ContainerStatsFilter>,
    ) -> Result<Vec<cri::ContainerStats>> {
        let (_, containers) = self.stats_records();
        let f = filter.unwrap_or_default();
        let wanted: Vec<ContainerRecord> = containers
            .into_iter()
            .filter(|c| c.state != ContainerState::Exited)
            .filter(|c| f.id.is_empty() || c.id.starts_with(&f.id))
            .filter(|c| f.pod_sandbox_id.is_empty() || c.sandbox_id.starts_with(&f.pod_sandbox_id))
            .filter(|c| labels_match(&c.config.labels, &f.label_selector))
            .collect();
        let rt = self.clone();
        blocking(move || {
            let h = Hierarchies::read();
            Ok(wanted.iter().map(|c| container_stats(&rt, &h, c)).collect())
        })
        .await
    }

    pub async fn pod_sandbox_stats(&self, id: &str) -> Result<cri::PodSandboxStats> {
        let (sandboxes, containers) = self.stats_records();
        let s = sandboxes
            .into_iter()
            .find(|s| s.id == id)
            .ok_or_else(|| RuntimeError::NotFound { kind: "sandbox", id: id.into() })?;
        let rt = self.clone();
        blocking(move || Ok(sandbox_stats(&rt, &Hierarchies::read(), &s, &containers))).await
    }

    /// Stats of the ready sandboxes.
    pub async fn list_pod_sandbox_stats(
        &self,
        filter: Option<cri::PodSandboxStatsFilter>,
    ) -> Result<Vec<cri::PodSandboxStats>> {
        let (sandboxes, containers) = self.stats_records();
        let f = filter.unwrap_or_default();
        let wanted: Vec<SandboxRecord> = sandboxes
            .into_iter()
            .filter(|s| s.state == records::SandboxState::Ready)
            .filter(|s| f.id.is_empty() || s.id.starts_with(&f.id))
            .filter(|s| labels_match(&s.config.labels, &f.label_selector))
            .collect();
        let rt = self.clone();
        blocking(move || {
            let h = Hierarchies::read();
            Ok(wanted.iter().map(|s| sandbox_stats(&rt, &h, s, &containers)).collect())
        })
        .await
    }
}

#[cfg(test)]
mod tests;
