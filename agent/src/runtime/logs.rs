//! Container output. A container's stdout and stderr are named pipes in its
//! directory, which the container holds open read-write: its writes never
//! fail with EPIPE while the agent is away (a restarted agent reopens the
//! pipes and carries on; up to a pipe buffer of output waits for it). The
//! agent copies each line into the CRI log file:
//! `<RFC3339Nano> <stream> <F|P> <text>`, rotating by size.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;

/// Longest line written as one record; longer ones are split (`P` records).
const MAX_LINE: usize = 16 * 1024;

#[derive(Debug, Clone, Copy)]
pub struct Rotation {
    pub max_bytes: u64,
    /// Rotated files kept besides the live one.
    pub keep: u32,
}

impl Default for Rotation {
    fn default() -> Self {
        // SD-card friendly: 10 MiB of history per container at most.
        Rotation { max_bytes: 5 << 20, keep: 1 }
    }
}

pub struct LogWriter {
    path: PathBuf,
    file: Option<File>,
    size: u64,
    rotation: Rotation,
}

impl LogWriter {
    pub fn open(path: &Path, rotation: Rotation) -> io::Result<LogWriter> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(LogWriter { path: path.to_path_buf(), file: Some(file), size, rotation })
    }

    pub fn write_record(&mut self, stream: &str, partial: bool, text: &[u8]) -> io::Result<()> {
        let ts = jiff::Timestamp::now();
        let mut rec = Vec::with_capacity(text.len() + 48);
        rec.extend_from_slice(format!("{ts:.9} {stream} {} ", if partial { 'P' } else { 'F' }).as_bytes());
        rec.extend_from_slice(text);
        rec.push(b'\n');
        if let Some(f) = self.file.as_mut() {
            f.write_all(&rec)?;
        }
        self.size += rec.len() as u64;
        if self.size >= self.rotation.max_bytes {
            self.rotate()?;
        }
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file = None;
        for i in (1..self.rotation.keep).rev() {
            let _ = fs::rename(rotated(&self.path, i), rotated(&self.path, i + 1));
        }
        if self.rotation.keep > 0 {
            fs::rename(&self.path, rotated(&self.path, 1))?;
        } else {
            fs::remove_file(&self.path)?;
        }
        self.file = Some(OpenOptions::new().create(true).append(true).open(&self.path)?);
        self.size = 0;
        Ok(())
    }
}

pub fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// Copies one pipe into the log until every writer has closed it (the
/// container has exited); lines are split at `\n`, long ones at MAX_LINE.
/// The pipe is opened here, at once, and only the copying is left to the
/// returned future: a process that writes and exits before the future first
/// runs would otherwise take its output with it (a pipe's buffer goes with
/// its last open end).
pub fn pump(
    fifo: PathBuf,
    stream: &'static str,
    writer: Option<Arc<Mutex<LogWriter>>>,
    tap: Tap,
) -> Option<impl std::future::Future<Output = ()>> {
    match pipe::OpenOptions::new().open_receiver(&fifo) {
        Ok(rx) => Some(async move { pump_from(rx, &fifo, stream, writer, tap).await }),
        Err(e) => {
            tracing::warn!(fifo = %fifo.display(), error = %e, "cannot read container output");
            None
        }
    }
}

/// Where a pump also sends what it reads, as it reads it (attaches), and
/// under which stream number (1 stdout, 2 stderr).
pub type Tap = Option<(tokio::sync::broadcast::Sender<super::stdio::Chunk>, u8)>;

/// Copies `rx` (a container's output pipe, or its terminal) into the log
/// as `stream` until it ends. A terminal ends with EIO once the process
/// has closed its side.
pub async fn pump_from(
    mut rx: impl tokio::io::AsyncRead + Unpin,
    fifo: &Path,
    stream: &'static str,
    writer: Option<Arc<Mutex<LogWriter>>>,
    tap: Tap,
) {
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 8192];
    let emit = |line: &[u8], partial: bool| {
        if let Some(w) = &writer {
            if let Ok(mut w) = w.lock() {
                if let Err(e) = w.write_record(stream, partial, line) {
                    tracing::warn!(log = %w.path.display(), error = %e, "cannot write container log");
                }
            }
        }
    };
    loop {
        let n = match rx.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.raw_os_error() == Some(libc::EIO) => break,
            Err(e) => {
                tracing::warn!(fifo = %fifo.display(), error = %e, "reading container output failed");
                break;
            }
        };
        if let Some((t, s)) = &tap
            && t.receiver_count() > 0
        {
            let _ = t.send((*s, Arc::from(&buf[..n])));
        }
        pending.extend_from_slice(&buf[..n]);
        while let Some(i) = pending.iter().position(|b| *b == b'\n') {
            emit(&pending[..i], false);
            pending.drain(..=i);
        }
        while pending.len() >= MAX_LINE {
            emit(&pending[..MAX_LINE], true);
            pending.drain(..MAX_LINE);
        }
    }
    if !pending.is_empty() {
        emit(&pending, false);
    }
}

/// One record of a CRI log file.
#[derive(Debug, PartialEq, Eq)]
pub struct Record<'a> {
    pub time: &'a str,
    pub stream: &'a str,
    pub partial: bool,
    pub text: &'a str,
}

pub fn parse_record(line: &str) -> Option<Record<'_>> {
    let mut parts = line.splitn(4, ' ');
    let time = parts.next()?;
    let stream = parts.next()?;
    let tag = parts.next()?;
    let text = parts.next().unwrap_or("");
    Some(Record { time, stream, partial: tag == "P", text })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_follow_the_cri_format_and_rotate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c/0.log");
        let mut w = LogWriter::open(&path, Rotation { max_bytes: 200, keep: 2 }).expect("open");
        w.write_record("stdout", false, b"hello world").expect("write");
        let text = fs::read_to_string(&path).expect("read");
        let rec = parse_record(text.trim_end()).expect("parses");
        assert_eq!((rec.stream, rec.partial, rec.text), ("stdout", false, "hello world"));
        assert!(rec.time.parse::<jiff::Timestamp>().is_ok(), "RFC 3339: {}", rec.time);
        assert_eq!(rec.time.split('.').nth(1).map(str::len), Some(10), "nanoseconds and Z: {}", rec.time);
        for i in 0..20 {
            w.write_record("stderr", false, format!("line {i}").as_bytes()).expect("write");
        }
        assert!(rotated(&path, 1).exists() && rotated(&path, 2).exists());
        assert!(!rotated(&path, 3).exists(), "only `keep` rotated files stay");
        let total: u64 = [path.clone(), rotated(&path, 1), rotated(&path, 2)]
            .iter()
            .map(|p| fs::metadata(p).map(|m| m.len()).unwrap_or(0))
            .sum();
        assert!(total <= 3 * 200 + 100, "size-capped: {total} bytes");
    }
}
