//! What `kedge-agent ps` shows, built from files alone (the runtime's
//! records plus each pod worker's status file), so it works while the agent
//! is down. The pod workers write their file only when it changes.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use serde::{Deserialize, Serialize};

use kedge_common::wire::{ContainerState, PodPhase, TerminatedReason, WaitingReason};

use crate::runtime::Paths;
use crate::runtime::records::{self, ContainerRecord, ContainerState as RecordState, SandboxRecord};

use super::translate::LABEL_POD_UID;

/// Why a container is not running, as the kubelet words it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiting {
    pub reason: WaitingReason,
    pub message: String,
}

/// A pod worker's view that the runtime records do not hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodStatusFile {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub source: String,
    pub phase: PodPhase,
    pub waiting: BTreeMap<String, Waiting>,
    /// Spec order of the containers.
    pub containers: Vec<String>,
    /// Readiness of the containers that have a readiness or startup probe
    /// (the others are ready while they run).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ready: BTreeMap<String, bool>,
    /// Whether the startup probe passed, for the containers that have one.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub started: BTreeMap<String, bool>,
    /// The pod is being deleted and every container has stopped: the
    /// controller may remove the object.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub terminated: bool,
}

pub fn status_path(paths: &Paths, uid: &str) -> std::path::PathBuf {
    paths.root.join("status").join(format!("{uid}.json"))
}

/// The pod uids that have a status file. Temporary files of writes a
/// killed agent left half done (`UID.tmpN`) are removed on the way.
pub fn uids_on_disk(paths: &Paths) -> Vec<String> {
    let Ok(entries) = fs::read_dir(paths.root.join("status")) else { return Vec::new() };
    let mut uids = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        match name.strip_suffix(".json") {
            Some(uid) => uids.push(uid.to_owned()),
            None if name.contains(".tmp") => {
                let _ = fs::remove_file(e.path());
            }
            None => {}
        }
    }
    uids
}

pub fn write_status(paths: &Paths, status: &PodStatusFile) -> std::io::Result<()> {
    let path = status_path(paths, &status.uid);
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let bytes = serde_json::to_vec_pretty(status).map_err(std::io::Error::other)?;
    crate::fsutil::write_atomic(&path, &bytes)
}

/// What `ps` shows in its STATE column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ViewState {
    Waiting,
    Created,
    Running,
    Exited,
    /// The record says it runs, but its process is gone.
    Unknown,
}

#[derive(Debug, Clone, Serialize)]
pub struct ContainerView {
    pub name: String,
    pub id: String,
    pub state: ViewState,
    pub pid: Option<i32>,
    pub restart_count: u32,
    pub last_exit_code: Option<i32>,
    /// The waiting or termination reason, as `ps` prints it.
    pub reason: String,
    pub message: String,
    pub image: String,
    /// Seconds since the epoch when the current attempt started (0: never).
    pub started_at: i64,
    /// When the current attempt exited (0: it has not).
    pub finished_at: i64,
    pub image_id: String,
    /// Running and, with a readiness probe, passing it.
    pub ready: bool,
    /// Running and, with a startup probe, past it.
    pub started: bool,
    /// The current attempt as Kubernetes states it (the fleet report's `state`).
    #[serde(skip)]
    pub current: ContainerState,
    /// The previous attempt's end (the fleet report's `lastState`).
    #[serde(skip)]
    pub last: Option<ContainerState>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PodView {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub phase: PodPhase,
    pub source: String,
    pub created_at: i64,
    /// The address of the pod's ready sandbox (none for host-network pods:
    /// their address is the node's).
    pub pod_ip: Option<String>,
    pub containers: Vec<ContainerView>,
    /// Stopped for its deletion (`PodStatusFile::terminated`).
    pub terminated: bool,
}

/// The state a record claims; with `check_alive` (records read from files,
/// which a dead agent may have left behind) checked against the process
/// table: a "running" container whose process is gone shows as `Unknown`.
fn live_state(c: &ContainerRecord, check_alive: bool) -> ViewState {
    let alive = || !check_alive || records::alive(c.pid, c.pid_start);
    match c.state {
        RecordState::Exited => ViewState::Exited,
        RecordState::Created if alive() => ViewState::Created,
        RecordState::Running if alive() => ViewState::Running,
        _ => ViewState::Unknown,
    }
}

/// Every pod on this node, from the data dir (for `ps`, whether or not the
/// agent runs).
pub fn read_pods(paths: &Paths) -> Vec<PodView> {
    let sandboxes: Vec<SandboxRecord> = records::load_all(&paths.pods());
    let containers: Vec<ContainerRecord> = records::load_all(&paths.containers());
    let mut statuses: BTreeMap<String, PodStatusFile> = BTreeMap::new();
    if let Ok(entries) = fs::read_dir(paths.root.join("status")) {
        // `UID.json` only: a `UID.tmpN` is a write a killed agent left half done.
        for e in entries.flatten().filter(|e| e.path().extension().is_some_and(|x| x == "json")) {
            if let Ok(s) = fs::read(e.path())
                .map_err(|_| ())
                .and_then(|b| serde_json::from_slice::<PodStatusFile>(&b).map_err(|_| ()))
            {
                statuses.insert(s.uid.clone(), s);
            }
        }
    }
    views(&sandboxes, &containers, &statuses, true)
}

/// Every pod, from the runtime's records and the pod workers' statuses
/// (from files for `ps`, from memory for the fleet report).
pub fn views(
    sandboxes: &[SandboxRecord],
    containers: &[ContainerRecord],
    statuses: &BTreeMap<String, PodStatusFile>,
    check_alive: bool,
) -> Vec<PodView> {
    // One entry per pod uid: the status when there is one, else the newest sandbox.
    let mut uids: Vec<String> = statuses.keys().cloned().collect();
    for s in sandboxes {
        let uid = s
            .config
            .labels
            .get(LABEL_POD_UID)
            .cloned()
            .or_else(|| s.config.metadata.as_ref().map(|m| m.uid.clone()))
            .unwrap_or_default();
        if !uids.contains(&uid) {
            uids.push(uid);
        }
    }
    let mut pods = Vec::new();
    for uid in uids {
        let pod_sandboxes: Vec<&SandboxRecord> =
            sandboxes.iter().filter(|s| s.config.metadata.as_ref().is_some_and(|m| m.uid == uid)).collect();
        let status = statuses.get(&uid).cloned();
        let newest = pod_sandboxes.iter().max_by_key(|s| s.created_at);
        let meta = newest.and_then(|s| s.config.metadata.clone()).unwrap_or_default();
        let sandbox_ids: Vec<&str> = pod_sandboxes.iter().map(|s| s.id.as_str()).collect();
        let mut by_name: BTreeMap<String, Vec<&ContainerRecord>> = BTreeMap::new();
        for c in containers.iter().filter(|c| sandbox_ids.contains(&c.sandbox_id.as_str())) {
            by_name.entry(c.name().to_string()).or_default().push(c);
        }
        let status = status.unwrap_or_else(|| PodStatusFile { phase: PodPhase::Unknown, ..Default::default() });
        let mut names = status.containers.clone();
        names.extend(by_name.keys().filter(|n| !status.containers.contains(n)).cloned());
        let views = names
            .iter()
            .map(|name| {
                let attempts = by_name.get(name).map(Vec::as_slice).unwrap_or(&[]);
                let mut v = container_view(name, attempts, status.waiting.get(name), check_alive);
                v.ready = v.state == ViewState::Running && status.ready.get(name).copied().unwrap_or(true);
                v.started = v.state == ViewState::Running && status.started.get(name).copied().unwrap_or(true);
                v
            })
            .collect();
        pods.push(PodView {
            name: if status.name.is_empty() { meta.name.clone() } else { status.name.clone() },
            namespace: if status.namespace.is_empty() { meta.namespace.clone() } else { status.namespace.clone() },
            uid,
            phase: status.phase,
            source: status.source.clone(),
            created_at: newest.map(|s| s.created_at / 1_000_000_000).unwrap_or(0),
            pod_ip: newest
                .filter(|s| s.state == records::SandboxState::Ready && !s.host_network())
                .map(|s| s.ip.clone())
                .filter(|ip| !ip.is_empty()),
            containers: views,
            terminated: status.terminated,
        });
    }
    pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    pods
}

/// The termination of an exited attempt, as Kubernetes states it.
fn terminated(c: &ContainerRecord) -> ContainerState {
    ContainerState::Terminated {
        exit_code: c.exit_code,
        reason: c.reason.unwrap_or(TerminatedReason::Unknown),
        message: c.message.clone(),
        started_at: c.started_at / 1_000_000_000,
        finished_at: c.finished_at / 1_000_000_000,
    }
}

fn container_view(
    name: &str,
    attempts: &[&ContainerRecord],
    waiting: Option<&Waiting>,
    check_alive: bool,
) -> ContainerView {
    let mut sorted: Vec<&&ContainerRecord> = attempts.iter().collect();
    sorted.sort_by_key(|c| (c.attempt(), c.created_at));
    let current = sorted.last();
    let previous = sorted.len().checked_sub(2).and_then(|i| sorted.get(i));
    let record_state = current.map(|c| live_state(c, check_alive));
    let state = match (record_state, waiting) {
        (_, Some(_)) | (None, None) => ViewState::Waiting,
        (Some(s), None) => s,
    };
    let started_at = current.map(|c| c.started_at / 1_000_000_000).unwrap_or(0);
    let finished_at = current.map(|c| c.finished_at / 1_000_000_000).unwrap_or(0);
    let wire_state = match (state, waiting, current) {
        (ViewState::Running, _, _) => ContainerState::Running { started_at },
        (ViewState::Exited, _, Some(c)) => terminated(c),
        (ViewState::Unknown, _, _) => ContainerState::Terminated {
            exit_code: 137,
            reason: TerminatedReason::ContainerStatusUnknown,
            message: "The container could not be located when the pod was checked".into(),
            started_at,
            finished_at,
        },
        (_, Some(w), _) => ContainerState::Waiting { reason: w.reason, message: w.message.clone() },
        _ => ContainerState::default(),
    };
    let last_exit_code = match current {
        Some(c) if c.state == RecordState::Exited => Some(c.exit_code),
        _ => previous.map(|p| p.exit_code),
    };
    let (reason, message) = match (waiting, current) {
        (Some(w), _) => (w.reason.to_string(), w.message.clone()),
        (None, Some(c)) => (c.reason.map(|r| r.to_string()).unwrap_or_default(), c.message.clone()),
        (None, None) => (String::new(), String::new()),
    };
    ContainerView {
        name: name.to_string(),
        id: current.map(|c| c.id.clone()).unwrap_or_default(),
        state,
        pid: current.filter(|_| state == ViewState::Running).and_then(|c| c.pid),
        restart_count: current.map(|c| c.attempt()).unwrap_or(0),
        last_exit_code,
        reason,
        message,
        image: current.and_then(|c| c.config.image.as_ref().map(|i| i.image.clone())).unwrap_or_default(),
        started_at,
        finished_at,
        image_id: current.map(|c| c.image_id.clone()).unwrap_or_default(),
        ready: false,
        started: false,
        current: wire_state,
        last: previous.map(|p| terminated(p)),
    }
}

/// `ps` as a table.
pub fn render_table(pods: &[PodView], now: i64) -> String {
    let mut rows = vec![[
        "POD".to_string(),
        "CONTAINER".into(),
        "STATE".into(),
        "RESTARTS".into(),
        "LAST EXIT".into(),
        "PID".into(),
        "AGE".into(),
        "REASON".into(),
    ]];
    for p in pods {
        let pod = format!("{}/{}", p.namespace, p.name);
        if p.containers.is_empty() {
            rows.push([
                pod.clone(),
                "-".into(),
                p.phase.to_string(),
                "-".into(),
                "-".into(),
                "-".into(),
                age(now - p.created_at),
                String::new(),
            ]);
        }
        for c in &p.containers {
            rows.push([
                pod.clone(),
                c.name.clone(),
                format!("{:?}", c.state),
                c.restart_count.to_string(),
                c.last_exit_code.map(|e| e.to_string()).unwrap_or_else(|| "-".into()),
                c.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                if c.started_at > 0 { age(now - c.started_at) } else { "-".into() },
                c.reason.clone(),
            ]);
        }
    }
    let widths: Vec<usize> = (0..8).map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r.iter().enumerate().map(|(i, cell)| format!("{cell:<w$}", w = widths[i])).collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    out
}

/// `5s`, `3m`, `2h`, `4d`, as kubectl prints ages.
pub fn age(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0..120 => format!("{s}s"),
        120..7200 => format!("{}m", s / 60),
        7200..172_800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// Whether the data dir looks like an agent's (for a clear error in `ps`).
pub fn is_agent_dir(dir: &Path) -> bool {
    ["pods", "containers", "images"].iter().any(|d| dir.join(d).is_dir())
}
