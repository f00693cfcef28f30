//! One agent per data dir: two would fight over the same containers.
//! `DATA/agent.pid` names the running agent by pid and start time, so a pid
//! reused after a crash is not mistaken for it. (Not a file lock: every
//! container is forked from the agent and would inherit the lock until it
//! execs.)

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::runtime::records::{alive, process_start};

#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error("{dir}: another kedge-agent already runs on this data dir (pid {pid})")]
    Running { dir: PathBuf, pid: i32 },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// Claims `data_dir` for this process (making it 0700), or names the agent
/// that has it.
pub fn claim(data_dir: &Path) -> Result<(), InstanceError> {
    let path = data_dir.join("agent.pid");
    std::fs::create_dir_all(data_dir).map_err(|source| InstanceError::Io { path: data_dir.to_path_buf(), source })?;
    // Secret volumes, the cache and the containers' specs live below: for
    // root alone, whoever made the directory and whatever the umask.
    std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|source| InstanceError::Io { path: data_dir.to_path_buf(), source })?;
    let me = std::process::id() as i32;
    if let Ok(text) = std::fs::read_to_string(&path) {
        let mut fields = text.split_whitespace().map(|f| f.parse::<i64>().ok());
        let pid = fields.next().flatten().and_then(|p| i32::try_from(p).ok());
        let start = fields.next().flatten().and_then(|s| u64::try_from(s).ok());
        if let Some(pid) = pid.filter(|p| *p != me) {
            let is_agent =
                std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "kedge-agent");
            if is_agent && alive(Some(pid), start) {
                return Err(InstanceError::Running { dir: data_dir.to_path_buf(), pid });
            }
        }
    }
    let record = format!("{me} {}\n", process_start(me).unwrap_or(0));
    crate::fsutil::write_atomic(&path, record.as_bytes()).map_err(|source| InstanceError::Io { path, source })
}
