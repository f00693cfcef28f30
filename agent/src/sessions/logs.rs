//! `kubectl logs` on the node: one container's CRI log files (rotated ones
//! first, oldest first), with the kubelet's options — `tailLines`,
//! `sinceSeconds`/`sinceTime`, `timestamps`, `limitBytes`, `previous`,
//! `follow` — read in chunks so the session sends as credit allows.
//!
//! Memory stays constant whatever the history: `tailLines` counts the
//! lines in a first pass and skips all but the last ones in the second.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use kedge_common::session::LogsRequest;

use crate::runtime::Paths;
use crate::runtime::logs::{parse_record, rotated};
use crate::runtime::records::{self, ContainerRecord, ContainerState, SandboxRecord};

/// Why a log cannot be served; `code` as the kubelet answers.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("pod {0:?} is not running on this node")]
    NoPod(String),
    #[error("container {container:?} in pod {pod:?} is waiting to start")]
    Waiting { pod: String, container: String },
    #[error("previous terminated container {container:?} in pod {pod:?} not found")]
    NoPrevious { pod: String, container: String },
    #[error("container {container:?} in pod {pod:?} keeps no log")]
    NoLog { pod: String, container: String },
    #[error("sinceTime {0:?} is not an RFC 3339 time")]
    SinceTime(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

impl LogError {
    pub fn code(&self) -> u16 {
        match self {
            LogError::NoPod(_) => 404,
            LogError::Io { .. } => 500,
            _ => 400,
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> LogError + '_ {
    move |source| LogError::Io { path: path.to_path_buf(), source }
}

/// The container attempt the request names: the newest of that name in the
/// pod (by uid, else by namespace and name), or the one before it.
pub fn pick(paths: &Paths, req: &LogsRequest) -> Result<ContainerRecord, LogError> {
    let pod = format!("{}/{}", req.namespace, req.pod);
    let sandboxes = sandboxes_of(paths, &req.namespace, &req.pod, &req.uid);
    if sandboxes.is_empty() {
        return Err(LogError::NoPod(pod));
    }
    attempt(paths, &sandboxes, &pod, &req.container, req.previous)
}

/// The sandboxes of a pod: by uid, or by namespace and name without one
/// (a pod of the same name created since is not the one asked for).
pub fn sandboxes_of(paths: &Paths, namespace: &str, pod: &str, uid: &str) -> Vec<SandboxRecord> {
    records::load_all::<SandboxRecord>(&paths.pods())
        .into_iter()
        .filter(|s| {
            let m = s.config.metadata.as_ref();
            match m {
                Some(m) if uid.is_empty() => m.namespace == namespace && m.name == pod,
                Some(m) => m.uid == uid,
                None => false,
            }
        })
        .collect()
}

/// The newest attempt of `container` in these sandboxes of `pod`, or
/// (`previous`) the one before it.
pub fn attempt(
    paths: &Paths,
    sandboxes: &[SandboxRecord],
    pod: &str,
    container: &str,
    previous: bool,
) -> Result<ContainerRecord, LogError> {
    let mut attempts: Vec<ContainerRecord> = records::load_all::<ContainerRecord>(&paths.containers())
        .into_iter()
        .filter(|c| sandboxes.iter().any(|s| s.id == c.sandbox_id) && c.name() == container)
        .collect();
    attempts.sort_by_key(|c| (c.created_at, c.attempt()));
    let newest = attempts.pop();
    let (pod, container) = (pod.to_owned(), container.to_owned());
    match if previous { attempts.pop() } else { newest } {
        Some(c) if c.log_path.as_os_str().is_empty() => Err(LogError::NoLog { pod, container }),
        Some(c) => Ok(c),
        None if previous => Err(LogError::NoPrevious { pod, container }),
        None => Err(LogError::Waiting { pod, container }),
    }
}

/// Reads one container's log as `kubectl logs` prints it.
pub struct LogReader {
    /// The files still to read, oldest first; the last is the live file.
    files: Vec<PathBuf>,
    /// The file being read: its reader, its inode when opened, and how far
    /// into it the lines taken reach.
    current: Option<(BufReader<File>, u64, u64)>,
    live: PathBuf,
    timestamps: bool,
    /// Records older than this (unix nanoseconds) are left out.
    since: Option<i128>,
    /// Lines still to skip (all but the last `tailLines`).
    skip: u64,
    /// Bytes still allowed (`limitBytes`).
    budget: Option<u64>,
    /// Text of `P` records waiting for the rest of their line.
    partial: Vec<u8>,
    line: Vec<u8>,
}

/// Unix nanoseconds of a log record's time.
fn record_time(time: &str) -> Option<i128> {
    time.parse::<jiff::Timestamp>().ok().map(|t| t.as_nanosecond())
}

impl LogReader {
    pub fn new(container: &ContainerRecord, req: &LogsRequest) -> Result<LogReader, LogError> {
        let live = container.log_path.clone();
        let mut files: Vec<PathBuf> = (1..10).map(|i| rotated(&live, i)).filter(|p| p.exists()).collect();
        files.reverse();
        files.push(live.clone());
        let since = match (&req.since_time, req.since_seconds) {
            (Some(t), _) => Some(record_time(t).ok_or_else(|| LogError::SinceTime(t.clone()))?),
            (None, Some(s)) => Some(jiff::Timestamp::now().as_nanosecond() - i128::from(s) * 1_000_000_000),
            (None, None) => None,
        };
        let mut r = LogReader {
            files,
            current: None,
            live,
            timestamps: req.timestamps,
            since,
            skip: 0,
            budget: req.limit_bytes,
            partial: Vec::new(),
            line: Vec::new(),
        };
        if let Some(n) = req.tail_lines {
            let total = r.count_lines()?;
            r.skip = total.saturating_sub(n);
        }
        Ok(r)
    }

    /// Lines the files hold now (after `since`): the first pass of `tailLines`.
    fn count_lines(&self) -> Result<u64, LogError> {
        let mut n = 0;
        for path in &self.files {
            let Ok(f) = File::open(path) else { continue };
            let mut reader = BufReader::new(f);
            let mut line = Vec::new();
            loop {
                line.clear();
                let got = reader.read_until(b'\n', &mut line).map_err(io_err(path))?;
                if got == 0 || line.last() != Some(&b'\n') {
                    break;
                }
                let text = String::from_utf8_lossy(&line[..line.len() - 1]);
                if let Some(rec) = parse_record(&text)
                    && !rec.partial
                    && self.since.is_none_or(|s| record_time(rec.time).is_none_or(|t| t >= s))
                {
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    /// Whether `limitBytes` is used up.
    pub fn exhausted(&self) -> bool {
        self.budget == Some(0)
    }

    /// Up to `max` bytes of output that are there now (empty: nothing new
    /// yet; at the end of the live file, call again later to follow it).
    pub fn read_chunk(&mut self, max: usize) -> Result<Vec<u8>, LogError> {
        let mut out = Vec::new();
        while out.len() < max && !self.exhausted() {
            if self.current.is_none() && !self.open_next()? {
                break;
            }
            let Some((reader, _, offset)) = self.current.as_mut() else { break };
            self.line.clear();
            let got = reader.read_until(b'\n', &mut self.line).map_err(io_err(&self.live))?;
            if got == 0 || self.line.last() != Some(&b'\n') {
                // A record still being written: read it whole next time.
                if got > 0 {
                    reader.seek(SeekFrom::Start(*offset)).map_err(io_err(&self.live))?;
                }
                if self.files.is_empty() && !self.rotated_away()? {
                    break; // the end of the live file, for now
                }
                self.current = None; // on to the next file
                continue;
            }
            *offset += got as u64;
            self.emit(&mut out);
        }
        if let Some(b) = self.budget.as_mut() {
            let keep = usize::try_from(*b).unwrap_or(usize::MAX).min(out.len());
            out.truncate(keep);
            *b -= keep as u64;
        }
        Ok(out)
    }

    /// Opens the next file; false when there is none (the live file is
    /// open, or does not exist yet).
    fn open_next(&mut self) -> Result<bool, LogError> {
        let Some(path) = self.files.first().cloned() else {
            // Following: the live file came back after a rotation.
            return self.reopen_live();
        };
        self.files.remove(0);
        match File::open(&path) {
            Ok(f) => {
                let ino = f.metadata().map_err(io_err(&path))?.ino();
                self.current = Some((BufReader::new(f), ino, 0));
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(!self.files.is_empty() || self.reopen_live()?),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    fn reopen_live(&mut self) -> Result<bool, LogError> {
        match File::open(&self.live) {
            Ok(f) => {
                let ino = f.metadata().map_err(io_err(&self.live))?.ino();
                self.current = Some((BufReader::new(f), ino, 0));
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err(&self.live)(e)),
        }
    }

    /// Whether the open live file was rotated away (renamed) and fully
    /// read: the new live file is read next.
    fn rotated_away(&mut self) -> Result<bool, LogError> {
        let Some((reader, ino, _)) = self.current.as_mut() else { return Ok(false) };
        let now = match std::fs::metadata(&self.live) {
            Ok(m) => m.ino(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_err(&self.live)(e)),
        };
        if now == *ino {
            return Ok(false);
        }
        // Read to its end? (Renamed files are written whole: a record
        // being written when we looked is there by now.)
        Ok(reader.fill_buf().map_err(io_err(&self.live))?.is_empty())
    }

    /// The line in `self.line` as output (if it is one to show).
    fn emit(&mut self, out: &mut Vec<u8>) {
        let text = String::from_utf8_lossy(&self.line[..self.line.len() - 1]).into_owned();
        let Some(rec) = parse_record(&text) else { return };
        if self.since.is_some_and(|s| record_time(rec.time).is_some_and(|t| t < s)) {
            return;
        }
        if self.partial.is_empty() && self.timestamps {
            self.partial.extend_from_slice(rec.time.as_bytes());
            self.partial.push(b' ');
        }
        self.partial.extend_from_slice(rec.text.as_bytes());
        if rec.partial {
            return;
        }
        if self.skip > 0 {
            self.skip -= 1;
            self.partial.clear();
            return;
        }
        out.append(&mut self.partial);
        out.push(b'\n');
    }
}

/// Whether the container has exited (or is gone): a follow ends once its
/// log is read to the end.
pub fn exited(paths: &Paths, id: &str) -> bool {
    record(paths, id).is_none_or(|r| r.state == ContainerState::Exited)
}

/// Container `id`'s record as the runtime last saved it.
pub fn record(paths: &Paths, id: &str) -> Option<ContainerRecord> {
    let path = paths.container(id).join("record.json");
    std::fs::read(&path).ok().and_then(|b| serde_json::from_slice::<ContainerRecord>(&b).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::logs::{LogWriter, Rotation};

    fn record(log: &Path) -> ContainerRecord {
        ContainerRecord {
            id: "c1".into(),
            sandbox_id: "s1".into(),
            config: Default::default(),
            image_id: String::new(),
            image_ref: String::new(),
            state: ContainerState::Running,
            created_at: 0,
            started_at: 0,
            finished_at: 0,
            pid: None,
            pid_start: None,
            exit_code: 0,
            reason: None,
            message: String::new(),
            log_path: log.to_path_buf(),
            cgroup_path: String::new(),
            snapshotter: crate::runtime::records::Snapshotter::Copy,
            boot_id: String::new(),
        }
    }

    fn all(r: &mut LogReader) -> String {
        let mut s = Vec::new();
        loop {
            let c = r.read_chunk(7).expect("read");
            if c.is_empty() {
                return String::from_utf8(s).expect("utf8");
            }
            s.extend(c);
        }
    }

    #[test]
    fn tail_since_limit_and_rotation_as_kubectl_expects() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("c/0.log");
        let mut w = LogWriter::open(&log, Rotation { max_bytes: 300, keep: 2 }).expect("open");
        for i in 0..12 {
            w.write_record("stdout", false, format!("line {i}").as_bytes()).expect("write");
        }
        w.write_record("stdout", true, b"split ").expect("write");
        w.write_record("stdout", false, b"line").expect("write");
        assert!(rotated(&log, 1).exists(), "the history spans rotated files");
        let c = record(&log);
        let req = LogsRequest::default();

        // Everything still kept, oldest first, in order, partial records joined.
        let text = all(&mut LogReader::new(&c, &req).expect("reader"));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.last(), Some(&"split line"));
        let numbers: Vec<u32> =
            lines.iter().filter_map(|l| l.strip_prefix("line ")).filter_map(|n| n.parse().ok()).collect();
        assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1) && numbers.last() == Some(&11), "{lines:?}");

        let tail = all(&mut LogReader::new(&c, &LogsRequest { tail_lines: Some(3), ..req.clone() }).expect("r"));
        assert_eq!(tail, "line 10\nline 11\nsplit line\n");
        let none = all(&mut LogReader::new(&c, &LogsRequest { tail_lines: Some(0), ..req.clone() }).expect("r"));
        assert_eq!(none, "");

        let limited = all(&mut LogReader::new(&c, &LogsRequest { limit_bytes: Some(10), ..req.clone() }).expect("r"));
        assert_eq!(limited.len(), 10);
        assert_eq!(limited, text[..10]);

        let stamped =
            all(&mut LogReader::new(&c, &LogsRequest { timestamps: true, tail_lines: Some(1), ..req.clone() })
                .expect("r"));
        let (time, rest) = stamped.split_once(' ').expect("a time first");
        assert!(time.parse::<jiff::Timestamp>().is_ok() && rest == "split line\n", "{stamped:?}");

        let future = LogsRequest { since_time: Some("2999-01-01T00:00:00Z".into()), ..req.clone() };
        assert_eq!(all(&mut LogReader::new(&c, &future).expect("r")), "");
        let recent = LogsRequest { since_seconds: Some(60), ..req.clone() };
        assert_eq!(all(&mut LogReader::new(&c, &recent).expect("r")), text);
        let bad = LogsRequest { since_time: Some("yesterday".into()), ..req };
        assert!(matches!(LogReader::new(&c, &bad), Err(LogError::SinceTime(_))));
    }

    #[test]
    fn a_follow_sees_new_lines_and_carries_on_past_a_rotation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("c/0.log");
        let mut w = LogWriter::open(&log, Rotation { max_bytes: 200, keep: 1 }).expect("open");
        w.write_record("stdout", false, b"first").expect("write");
        let c = record(&log);
        let mut r = LogReader::new(&c, &LogsRequest::default()).expect("reader");
        assert_eq!(all(&mut r), "first\n");
        for i in 0..10 {
            // Several rotations under the open reader.
            w.write_record("stderr", false, format!("more {i}").as_bytes()).expect("write");
        }
        // What the rotations left (a file rotated twice while the reader
        // looked away is gone, as with the kubelet): in order, to the end.
        let got = all(&mut r);
        let numbers: Vec<u32> =
            got.lines().filter_map(|l| l.strip_prefix("more ")).filter_map(|n| n.parse().ok()).collect();
        assert_eq!(numbers.len(), got.lines().count(), "{got:?}");
        assert!(numbers.windows(2).all(|w| w[0] < w[1]) && numbers.last() == Some(&9), "{got:?}");
        assert_eq!(all(&mut r), "", "nothing new");
    }
}
