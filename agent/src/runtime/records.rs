//! What the runtime remembers about each sandbox and container, one JSON
//! file each, written on every lifecycle change (never on a timer: flash
//! wear). `kedge-agent ps` reads these files, so it works while the agent is
//! down, and a restarted agent adopts its containers from them.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use k8s_cri::v1 as cri;
use kedge_common::wire::TerminatedReason;
use serde::{Deserialize, Deserializer, Serialize};

/// The container states of the CRI, with their legal transitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerState {
    Created,
    Running,
    Exited,
}

impl ContainerState {
    pub fn can_start(self) -> bool {
        self == ContainerState::Created
    }

    pub fn cri(self) -> cri::ContainerState {
        match self {
            ContainerState::Created => cri::ContainerState::ContainerCreated,
            ContainerState::Running => cri::ContainerState::ContainerRunning,
            ContainerState::Exited => cri::ContainerState::ContainerExited,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SandboxState {
    Ready,
    NotReady,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxRecord {
    pub id: String,
    pub config: cri::PodSandboxConfig,
    pub runtime_handler: String,
    pub state: SandboxState,
    /// Nanoseconds since the epoch, as the CRI counts.
    pub created_at: i64,
    /// Bind-mount pins of the namespaces the agent created (None = host's).
    pub netns: Option<PathBuf>,
    pub ipcns: Option<PathBuf>,
    pub utsns: Option<PathBuf>,
    /// Pod cgroup, relative to the cgroup root (e.g. `/kedge/<id>`).
    pub cgroup_parent: String,
    pub hostname: String,
    pub ip: String,
    pub boot_id: String,
}

impl SandboxRecord {
    pub fn host_network(&self) -> bool {
        namespace_mode(&self.config, |n| n.network) == cri::NamespaceMode::Node
    }

    pub fn host_ipc(&self) -> bool {
        namespace_mode(&self.config, |n| n.ipc) == cri::NamespaceMode::Node
    }

    pub fn name(&self) -> String {
        let m = self.config.metadata.clone().unwrap_or_default();
        format!("{}/{}", m.namespace, m.name)
    }
}

fn namespace_mode(config: &cri::PodSandboxConfig, pick: impl Fn(&cri::NamespaceOption) -> i32) -> cri::NamespaceMode {
    config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref())
        .map(|n| cri::NamespaceMode::try_from(pick(n)).unwrap_or(cri::NamespaceMode::Pod))
        .unwrap_or(cri::NamespaceMode::Pod)
}

/// How a container's root file system was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Snapshotter {
    Overlay,
    Copy,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub sandbox_id: String,
    pub config: cri::ContainerConfig,
    pub image_id: String,
    /// The reference the image was resolved from (`image_ref` in the CRI).
    pub image_ref: String,
    pub state: ContainerState,
    pub created_at: i64,
    pub started_at: i64,
    pub finished_at: i64,
    pub pid: Option<i32>,
    /// Start time of `pid` in clock ticks after boot (/proc/PID/stat field
    /// 22): tells the container's process from a later one that reused its pid.
    pub pid_start: Option<u64>,
    pub exit_code: i32,
    /// Why it exited (None while it has not). Records of earlier versions
    /// spell "not exited" as "".
    #[serde(deserialize_with = "reason_or_empty")]
    pub reason: Option<TerminatedReason>,
    pub message: String,
    /// Absolute path of the CRI log file ("" = output discarded).
    pub log_path: PathBuf,
    pub cgroup_path: String,
    pub snapshotter: Snapshotter,
    pub boot_id: String,
}

impl ContainerRecord {
    pub fn name(&self) -> &str {
        self.config.metadata.as_ref().map(|m| m.name.as_str()).unwrap_or("")
    }

    /// Records the end of the container's process at `at_ns`.
    pub fn mark_exited(&mut self, exit_code: i32, reason: TerminatedReason, message: &str, at_ns: i64) {
        self.state = ContainerState::Exited;
        self.exit_code = exit_code;
        self.reason = Some(reason);
        self.message = message.into();
        self.finished_at = at_ns;
    }

    pub fn attempt(&self) -> u32 {
        self.config.metadata.as_ref().map(|m| m.attempt).unwrap_or(0)
    }
}

/// A stored reason: "" (not exited, as earlier versions wrote it) is None, a
/// spelling this version does not know is `Unknown`.
fn reason_or_empty<'de, D: Deserializer<'de>>(d: D) -> Result<Option<TerminatedReason>, D::Error> {
    let s: Option<String> = Option::deserialize(d)?;
    Ok(match s.as_deref() {
        None | Some("") => None,
        Some(name) => Some(TerminatedReason::from_name(name).unwrap_or(TerminatedReason::Unknown)),
    })
}

/// Reads every `*.json` record in `dir`; unreadable ones are reported and skipped.
pub fn load_all<T: for<'de> Deserialize<'de>>(dir: &Path) -> Vec<T> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let path = e.path().join("record.json");
        match fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(r) => out.push(r),
                Err(err) => tracing::warn!(path = %path.display(), error = %err, "unreadable runtime record skipped"),
            },
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => tracing::warn!(path = %path.display(), error = %err, "unreadable runtime record skipped"),
        }
    }
    out
}

pub fn save(dir: &Path, record: &impl Serialize) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let bytes = serde_json::to_vec_pretty(record).map_err(io::Error::other)?;
    crate::fsutil::write_atomic(&dir.join("record.json"), &bytes)
}

/// This boot's id: records from an earlier boot describe processes that are gone.
pub fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// Start time of a live process (field 22 of /proc/PID/stat), None when it is gone.
pub fn process_start(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: count
    // fields after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); field 22 is index 19.
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// Whether the process recorded as (`pid`, `start`) is still alive.
pub fn alive(pid: Option<i32>, start: Option<u64>) -> bool {
    match (pid, start) {
        (Some(pid), Some(start)) => process_start(pid) == Some(start),
        (Some(pid), None) => process_start(pid).is_some(),
        _ => false,
    }
}

pub fn labels_match(
    labels: &std::collections::HashMap<String, String>,
    selector: &std::collections::HashMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Now, in nanoseconds since the epoch.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Annotations and labels are maps in the CRI types; a sorted copy for display.
pub fn sorted(map: &std::collections::HashMap<String, String>) -> BTreeMap<String, String> {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}
