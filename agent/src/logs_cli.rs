//! `kedge-agent logs POD [CONTAINER] [-f] [-p]`: reads the CRI log files on
//! the node, with or without a running agent.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::runtime::Paths;
use crate::runtime::logs::{parse_record, rotated};
use crate::runtime::records::{self, ContainerRecord, ContainerState, SandboxRecord};

#[derive(Debug, thiserror::Error)]
pub enum LogsError {
    #[error("no pod {0:?} on this node")]
    NoPod(String),
    #[error("pod {pod} has several containers ({names}); name one")]
    WhichContainer { pod: String, names: String },
    #[error("pod {pod} has no container {container:?}")]
    NoContainer { pod: String, container: String },
    #[error("container {0} has no previous attempt")]
    NoPrevious(String),
    #[error("container {0} has no log file")]
    NoLog(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
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
    let ids: Vec<&str> = sandboxes.iter().map(|s| s.id.as_str()).collect();
    let mut containers: Vec<ContainerRecord> = records::load_all::<ContainerRecord>(&paths.containers())
        .into_iter()
        .filter(|c| ids.contains(&c.sandbox_id.as_str()))
        .collect();
    containers.sort_by_key(|c| (c.created_at, c.attempt()));
    let mut names: Vec<String> = containers.iter().map(|c| c.name().to_string()).collect();
    names.dedup();
    names.sort();
    names.dedup();
    let name = match container {
        Some(c) => c.to_string(),
        None if names.len() == 1 => names[0].clone(),
        None => return Err(LogsError::WhichContainer { pod: pod.into(), names: names.join(", ") }),
    };
    let mut attempts: Vec<ContainerRecord> = containers.into_iter().filter(|c| c.name() == name).collect();
    if attempts.is_empty() {
        return Err(LogsError::NoContainer { pod: pod.into(), container: name });
    }
    if previous {
        attempts.pop();
        return attempts.pop().ok_or(LogsError::NoPrevious(name));
    }
    attempts.pop().ok_or(LogsError::NoContainer { pod: pod.into(), container: name })
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> LogsError + '_ {
    move |source| LogsError::Io { path: path.to_path_buf(), source }
}

/// Prints a log's lines (the text of each record, partial records joined);
/// returns how far it read.
fn print_from(path: &Path, offset: u64, out: &mut impl Write) -> Result<u64, LogsError> {
    let mut file = File::open(path).map_err(io_err(path))?;
    file.seek(SeekFrom::Start(offset)).map_err(io_err(path))?;
    let mut reader = BufReader::new(file);
    let mut pos = offset;
    let mut line = String::new();
    let mut partial = String::new();
    loop {
        line.clear();
        let n = reader.read_line(&mut line).map_err(io_err(path))?;
        if n == 0 || !line.ends_with('\n') {
            break; // a record still being written is read next time
        }
        pos += n as u64;
        if let Some(rec) = parse_record(line.trim_end_matches('\n')) {
            partial.push_str(rec.text);
            if !rec.partial {
                let _ = writeln!(out, "{partial}");
                partial.clear();
            }
        }
    }
    Ok(pos)
}

pub fn print_logs(
    paths: &Paths,
    pod: &str,
    container: Option<&str>,
    follow: bool,
    previous: bool,
) -> Result<(), LogsError> {
    let mut c = pick(paths, pod, container, previous)?;
    if c.log_path.as_os_str().is_empty() {
        return Err(LogsError::NoLog(c.name().into()));
    }
    let stdout = io::stdout();
    let mut out = stdout.lock();
    // Rotated files first, oldest first.
    let mut rotated_files: Vec<PathBuf> = (1..10).map(|i| rotated(&c.log_path, i)).filter(|p| p.exists()).collect();
    rotated_files.reverse();
    for p in rotated_files {
        print_from(&p, 0, &mut out)?;
    }
    let mut offset = if c.log_path.exists() { print_from(&c.log_path, 0, &mut out)? } else { 0 };
    let _ = out.flush();
    if !follow {
        return Ok(());
    }
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let len = std::fs::metadata(&c.log_path).map(|m| m.len()).unwrap_or(0);
        if len < offset {
            offset = 0; // rotated: the live file starts over
        }
        if len > offset {
            offset = print_from(&c.log_path, offset, &mut out)?;
            let _ = out.flush();
        }
        let current = records::load_all::<ContainerRecord>(&paths.containers()).into_iter().find(|r| r.id == c.id);
        match current {
            Some(r) if r.state != ContainerState::Exited => c = r,
            _ => {
                // Exited (or removed): print what is left and stop, like `kubectl logs -f`.
                if c.log_path.exists() {
                    print_from(&c.log_path, offset, &mut out)?;
                }
                let _ = out.flush();
                return Ok(());
            }
        }
    }
}
