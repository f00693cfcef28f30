//! `kedge-agent logs POD [CONTAINER] [-f] [-p]`: reads the CRI log files on
//! the node, with or without a running agent, as `kubectl logs` reads them
//! through the controller ([`crate::sessions::logs`]).

use std::io::{self, Write};
use std::time::Duration;

use kedge_common::session::LogsRequest;

use crate::runtime::Paths;
use crate::runtime::records::{self, ContainerRecord, SandboxRecord};
use crate::sessions::logs::{LogError, LogReader, attempt, exited};

#[derive(Debug, thiserror::Error)]
pub enum LogsError {
    #[error("no pod {0:?} on this node")]
    NoPod(String),
    #[error("pod {pod} has several containers ({names}); name one")]
    WhichContainer { pod: String, names: String },
    #[error("pod {pod} has no container {container:?}")]
    NoContainer { pod: String, container: String },
    #[error(transparent)]
    Log(#[from] LogError),
}

/// The pod's sandboxes: by exact name, by `namespace/name`, or by the
/// manifest's own name (static pods are called `<name>-<node>`).
fn find_pod(paths: &Paths, pod: &str) -> Vec<SandboxRecord> {
    let all: Vec<SandboxRecord> = records::load_all(&paths.pods());
    let (ns, name) = pod.split_once('/').map(|(n, p)| (Some(n), p)).unwrap_or((None, pod));
    let matches = |s: &SandboxRecord, exact: bool| {
        let m = s.config.metadata.clone().unwrap_or_default();
        ns.is_none_or(|n| n == m.namespace)
            && (if exact { m.name == name } else { m.name.rsplit_once('-').is_some_and(|(base, _)| base == name) })
    };
    let exact: Vec<SandboxRecord> = all.iter().filter(|s| matches(s, true)).cloned().collect();
    if !exact.is_empty() {
        return exact;
    }
    all.into_iter().filter(|s| matches(s, false)).collect()
}

/// Picks the container attempt whose log to show.
fn pick(paths: &Paths, pod: &str, container: Option<&str>, previous: bool) -> Result<ContainerRecord, LogsError> {
    let sandboxes = find_pod(paths, pod);
    if sandboxes.is_empty() {
        return Err(LogsError::NoPod(pod.into()));
    }
    let mut names: Vec<String> = records::load_all::<ContainerRecord>(&paths.containers())
        .into_iter()
        .filter(|c| sandboxes.iter().any(|s| s.id == c.sandbox_id))
        .map(|c| c.name().to_string())
        .collect();
    names.sort();
    names.dedup();
    let name = match (container, names.as_slice()) {
        (Some(c), _) if names.iter().any(|n| n == c) => c.to_string(),
        (Some(c), _) => return Err(LogsError::NoContainer { pod: pod.into(), container: c.into() }),
        (None, [one]) => one.clone(),
        (None, _) => return Err(LogsError::WhichContainer { pod: pod.into(), names: names.join(", ") }),
    };
    Ok(attempt(paths, &sandboxes, pod, &name, previous)?)
}

pub fn print_logs(
    paths: &Paths,
    pod: &str,
    container: Option<&str>,
    follow: bool,
    previous: bool,
) -> Result<(), LogsError> {
    let c = pick(paths, pod, container, previous)?;
    let mut reader = LogReader::new(&c, &LogsRequest { follow, previous, ..Default::default() })?;
    let stdout = io::stdout();
    let mut out = stdout.lock();
    loop {
        // Looked at before reading: an exited container's last lines are in
        // what is read next.
        let done = !follow || exited(paths, &c.id);
        let chunk = reader.read_chunk(64 * 1024)?;
        if !chunk.is_empty() {
            if out.write_all(&chunk).and_then(|()| out.flush()).is_err() {
                return Ok(()); // the reader went away (a closed pipe)
            }
            continue;
        }
        if done {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
