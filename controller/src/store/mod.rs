//! The object store: Kubernetes objects as JSON in redb, one global revision
//! used as `resourceVersion` (as etcd does), and a bounded in-memory watch
//! history (see [`watch`]).
//!
//! Every write is one redb transaction that also bumps the revision; the
//! caller only hears back after the commit, so an API answer means the write
//! is durable. Semantics (defaults, validation, uid, generation) live in the
//! API layer; the store only knows keys, revisions and preconditions.

mod watch;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde_json::Value;

pub use watch::{EventType, Gone, WatchEvent, WatchHub, WatchStart};

const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const REVISION_KEY: &str = "revision";
/// Small records of the control plane that are not API objects (the fleet
/// link's published network table): no revision, no watch event.
const RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("records");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] redb::Error),
    #[error("stored object {key} is corrupt: {source}")]
    Corrupt { key: String, source: serde_json::Error },
    #[error("cannot encode object: {0}")]
    Encode(serde_json::Error),
    #[error("the store is closed after an I/O error and could not be reopened: {0}")]
    Closed(String),
}

impl StoreError {
    /// A failure of the disk under the store (ENOSPC, EIO), after which
    /// redb answers every call with `PreviousIo` until it is reopened.
    fn is_io(&self) -> bool {
        matches!(
            self,
            // Not `DatabaseClosed`: that is a read in flight on the database
            // a reopen replaced, not a new failure.
            StoreError::Db(redb::Error::Io(_) | redb::Error::PreviousIo) | StoreError::Closed(_)
        )
    }
}

macro_rules! redb_from {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(redb::Error::from(e))
            }
        }
    )*};
}
redb_from!(redb::DatabaseError, redb::TransactionError, redb::TableError, redb::StorageError, redb::CommitError);

/// Where an object lives: resource (`group/plural`, e.g. `apps/deployments`),
/// namespace (empty for cluster-scoped kinds) and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub resource: &'static str,
    pub namespace: String,
    pub name: String,
}

impl Key {
    pub fn new(resource: &'static str, namespace: &str, name: &str) -> Self {
        Key { resource, namespace: namespace.to_owned(), name: name.to_owned() }
    }

    fn encode(&self) -> String {
        format!("{}/{}/{}", self.resource, self.namespace, self.name)
    }

    /// The key range prefix of one resource, optionally within a namespace.
    fn prefix(resource: &str, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) => format!("{resource}/{ns}/"),
            None => format!("{resource}/"),
        }
    }
}

/// What a mutation closure decides to do with the object it was shown.
pub enum Mutation {
    /// Store this object (its `metadata.resourceVersion` is set by the store).
    Put(Value),
    /// Remove the object.
    Delete,
    /// Leave everything as it is (no revision is used).
    Keep,
}

/// What a mutation did: the object as now stored (or as last stored, for a
/// delete) and the revision of the write (`None` when nothing was written).
#[derive(Debug)]
pub struct Outcome {
    pub object: Option<Value>,
    pub revision: Option<u64>,
}

pub struct Store {
    /// The open database; `None` once closed after an I/O failure until a
    /// reopen succeeds (see [`Store::db`]).
    db: Mutex<Slot>,
    /// Set by an I/O failure: the next operation reopens the database
    /// first (redb refuses everything after one until it is reopened).
    reopen: AtomicBool,
    /// The last write's I/O failure, until a write succeeds: `/readyz`.
    write_failure: Mutex<Option<(String, Instant)>>,
    /// When [`Store::writable`] last tried a write.
    probed: Mutex<Option<Instant>>,
    path: std::path::PathBuf,
    revision: AtomicU64,
    hub: WatchHub,
    /// Each write transaction's commit, in seconds (`/metrics`).
    commits: prometheus_client::metrics::histogram::Histogram,
    /// The kinds this store holds: the built-in ones and its CRDs' (kept
    /// here because everything that reads or writes objects has the store).
    kinds: crate::resources::Registry,
}

impl Store {
    /// Opens (or creates) the store at `path`; `history` is how many watch
    /// events are kept in memory for watches that resume from a revision.
    pub fn open(path: &std::path::Path, history: usize) -> Result<Self, StoreError> {
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
        let revision = {
            txn.open_table(OBJECTS)?;
            txn.open_table(RECORDS)?;
            let meta = txn.open_table(META)?;
            meta.get(REVISION_KEY)?.map(|g| g.value()).unwrap_or(0)
        };
        txn.commit()?;
        Ok(Store {
            db: Mutex::new(Slot { db: Some(Arc::new(db)), tried: None }),
            reopen: AtomicBool::new(false),
            write_failure: Mutex::new(None),
            probed: Mutex::new(None),
            path: path.to_owned(),
            revision: AtomicU64::new(revision),
            hub: WatchHub::new(history, revision),
            commits: crate::telemetry::latency_histogram(),
            kinds: crate::resources::Registry::default(),
        })
    }

    /// The database file's size in bytes.
    pub fn size(&self) -> std::io::Result<u64> {
        std::fs::metadata(&self.path).map(|m| m.len())
    }

    /// How long write transactions take to commit.
    pub fn commit_latency(&self) -> &prometheus_client::metrics::histogram::Histogram {
        &self.commits
    }

    /// Commits `txn`, timing it; a success clears a write failure.
    fn commit(&self, txn: redb::WriteTransaction) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        txn.commit().map_err(|e| self.failed(e, true))?;
        self.commits.observe(started.elapsed().as_secs_f64());
        let mut failure = self.write_failure.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((why, _)) = failure.take() {
            tracing::info!(was = %why, "the store writes again");
        }
        Ok(())
    }

    /// Notes an error of the database: an I/O failure makes the next
    /// operation reopen it, and one while `writing` fails `/readyz` until a
    /// write succeeds.
    fn failed(&self, e: impl Into<StoreError>, writing: bool) -> StoreError {
        let e = e.into();
        if e.is_io() {
            self.reopen.store(true, Ordering::SeqCst);
            if writing {
                tracing::error!(error = %e, "a write to the store failed; reads go on, writes are refused until one succeeds");
                let mut failure = self.write_failure.lock().unwrap_or_else(|p| p.into_inner());
                *failure = Some((e.to_string(), failure.as_ref().map_or_else(Instant::now, |f| f.1)));
            }
        }
        e
    }

    /// The open database, reopened first after an I/O failure: redb answers
    /// every call with `PreviousIo` after one (an `ENOSPC`, say) until it is
    /// closed and opened again, which also repairs what the failed write
    /// left (copy-on-write: the last commit stands). A reopen that fails
    /// (the disk still refuses) is tried again a second later at most.
    fn db(&self) -> Result<Arc<Database>, StoreError> {
        let mut slot = self.db.lock().unwrap_or_else(|p| p.into_inner());
        if !self.reopen.load(Ordering::SeqCst) {
            if let Some(db) = &slot.db {
                return Ok(db.clone());
            }
        }
        if let Some((when, why)) = &slot.tried {
            if slot.db.is_none() && when.elapsed() < Duration::from_secs(1) {
                return Err(StoreError::Closed(why.clone()));
            }
        }
        // Closes once the operations in flight (which fail fast now) let
        // go of it; only then can the file be opened again.
        slot.db = None;
        let deadline = Instant::now() + Duration::from_secs(2);
        let opened = loop {
            match Database::create(&self.path) {
                Err(redb::DatabaseError::DatabaseAlreadyOpen) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                r => break r,
            }
        };
        self.reopen.store(false, Ordering::SeqCst);
        match opened {
            Ok(db) => {
                let db = Arc::new(db);
                let stored = db
                    .begin_read()
                    .map_err(StoreError::from)
                    .and_then(|t| Ok(t.open_table(META)?.get(REVISION_KEY)?.map(|g| g.value()).unwrap_or(0)));
                match stored {
                    Ok(rev) if rev != self.revision() => {
                        // A commit reported failed reached the disk after all:
                        // its watch events were never sent.
                        tracing::error!(
                            stored = rev,
                            known = self.revision(),
                            "the store reopened at another revision than the last acknowledged"
                        );
                        self.revision.store(rev, Ordering::SeqCst);
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "reading the revision after a reopen"),
                }
                tracing::warn!(path = %self.path.display(), "the store was reopened after an I/O failure");
                slot.db = Some(db.clone());
                slot.tried = None;
                Ok(db)
            }
            Err(e) => {
                let why = e.to_string();
                tracing::error!(path = %self.path.display(), error = %why, "reopening the store failed");
                self.reopen.store(true, Ordering::SeqCst);
                slot.tried = Some((Instant::now(), why.clone()));
                Err(StoreError::Closed(why))
            }
        }
    }

    /// Whether writes succeed: `Err` after a write failed on I/O until one
    /// succeeds. While failing, a probe write (a tiny record) is tried at
    /// most once a second, so readiness comes back by itself once the disk
    /// takes writes again (space freed).
    pub fn writable(&self) -> Result<(), String> {
        let since = {
            let failure = self.write_failure.lock().unwrap_or_else(|p| p.into_inner());
            match &*failure {
                None => return Ok(()),
                Some((why, since)) => (why.clone(), *since),
            }
        };
        let due = {
            let mut last = self.probed.lock().unwrap_or_else(|p| p.into_inner());
            let due = last.is_none_or(|l| l.elapsed() >= Duration::from_secs(1));
            if due {
                *last = Some(Instant::now());
            }
            due
        };
        // A full disk may still take a tiny write into pages the file has
        // free while an object of any size would fail: wait for room.
        let free = self.path.parent().and_then(free_bytes);
        let room = free.is_none_or(|f| f >= WRITE_RESERVE);
        if due && room && self.put_record(WRITE_PROBE, &now_secs().to_be_bytes()).is_ok() {
            return Ok(());
        }
        let free = free.map(|f| format!(" ({f} bytes free)")).unwrap_or_default();
        Err(format!("writes fail since {}s ago: {}{free}", since.1.elapsed().as_secs(), since.0))
    }

    /// The revision of the last committed write.
    pub fn revision(&self) -> u64 {
        self.revision.load(Ordering::SeqCst)
    }

    /// The kinds served, custom ones included.
    pub fn kinds(&self) -> &crate::resources::Registry {
        &self.kinds
    }

    pub fn hub(&self) -> &WatchHub {
        &self.hub
    }

    pub fn get(&self, key: &Key) -> Result<Option<Value>, StoreError> {
        let read = || -> Result<Option<Value>, StoreError> {
            let txn = self.db()?.begin_read()?;
            let table = txn.open_table(OBJECTS)?;
            let k = key.encode();
            match table.get(k.as_str())? {
                Some(v) => Ok(Some(decode(&k, v.value())?)),
                None => Ok(None),
            }
        };
        read().map_err(|e| self.failed(e, false))
    }

    /// Lists one resource (in one namespace, or all) from one consistent
    /// snapshot, with the revision that snapshot reflects. Objects come in key
    /// order (namespace, then name); `after` skips keys up to and including
    /// the given `namespace/name` (list continuation).
    pub fn list(
        &self,
        resource: &str,
        namespace: Option<&str>,
        after: Option<&str>,
    ) -> Result<(Vec<Value>, u64), StoreError> {
        self.list_once(resource, namespace, after).map_err(|e| self.failed(e, false))
    }

    fn list_once(
        &self,
        resource: &str,
        namespace: Option<&str>,
        after: Option<&str>,
    ) -> Result<(Vec<Value>, u64), StoreError> {
        let txn = self.db()?.begin_read()?;
        // The revision of exactly this snapshot.
        let rev = txn.open_table(META)?.get(REVISION_KEY)?.map(|g| g.value()).unwrap_or(0);
        let table = txn.open_table(OBJECTS)?;
        let prefix = Key::prefix(resource, namespace);
        let start = match after {
            Some(a) => format!("{resource}/{a}\u{0}"),
            None => prefix.clone(),
        };
        let mut out = Vec::new();
        for item in table.range(start.as_str()..)? {
            let (k, v) = item?;
            let k = k.value();
            if !k.starts_with(&prefix) {
                break;
            }
            out.push(decode(k, v.value())?);
        }
        Ok((out, rev))
    }

    /// Reads the object at `key`, lets `f` decide, and commits the result as
    /// one transaction with a fresh revision. `f` may fail with its own error
    /// type; then nothing is written.
    pub fn mutate<E, F>(&self, key: &Key, f: F) -> Result<Outcome, E>
    where
        E: From<StoreError>,
        F: FnOnce(Option<Value>) -> Result<Mutation, E>,
    {
        let mut out = self.mutate_many(std::slice::from_ref(key), |current| {
            let cur = current.first().cloned().flatten();
            f(cur).map(|m| vec![m])
        })?;
        Ok(out.pop().unwrap_or(Outcome { object: None, revision: None }))
    }

    /// Like [`Store::mutate`] for several keys in one transaction: `f` sees the
    /// current objects in `keys` order and returns one mutation per key.
    /// Each write gets its own revision, in `keys` order.
    pub fn mutate_many<E, F>(&self, keys: &[Key], f: F) -> Result<Vec<Outcome>, E>
    where
        E: From<StoreError>,
        F: FnOnce(&[Option<Value>]) -> Result<Vec<Mutation>, E>,
    {
        let txn = self.db().and_then(|db| Ok(db.begin_write()?)).map_err(|e| self.failed(e, true))?;
        let mut events = Vec::new();
        let mut outcomes = Vec::with_capacity(keys.len());
        {
            let mut table = txn.open_table(OBJECTS).map_err(|e| self.failed(e, true))?;
            let mut current = Vec::with_capacity(keys.len());
            for key in keys {
                let k = key.encode();
                let v = match table.get(k.as_str()).map_err(|e| self.failed(e, true))? {
                    Some(v) => Some(decode(&k, v.value())?),
                    None => None,
                };
                current.push(v);
            }
            let mutations = f(&current)?;
            let mut rev = txn
                .open_table(META)
                .map_err(|e| self.failed(e, true))?
                .get(REVISION_KEY)
                .map_err(|e| self.failed(e, true))?
                .map(|g| g.value())
                .unwrap_or(0);
            for ((key, old), m) in keys.iter().zip(current).zip(mutations) {
                let k = key.encode();
                match m {
                    Mutation::Keep => outcomes.push(Outcome { object: old, revision: None }),
                    Mutation::Put(mut obj) => {
                        rev += 1;
                        set_resource_version(&mut obj, rev);
                        let bytes = serde_json::to_vec(&obj).map_err(StoreError::Encode)?;
                        table.insert(k.as_str(), bytes.as_slice()).map_err(|e| self.failed(e, true))?;
                        let kind = if old.is_some() { EventType::Modified } else { EventType::Added };
                        events.push(WatchEvent::new(rev, key, kind, obj.clone(), old));
                        outcomes.push(Outcome { object: Some(obj), revision: Some(rev) });
                    }
                    Mutation::Delete => {
                        let Some(mut last) = old.clone() else {
                            outcomes.push(Outcome { object: None, revision: None });
                            continue;
                        };
                        rev += 1;
                        table.remove(k.as_str()).map_err(|e| self.failed(e, true))?;
                        set_resource_version(&mut last, rev);
                        events.push(WatchEvent::new(rev, key, EventType::Deleted, last.clone(), old));
                        outcomes.push(Outcome { object: Some(last), revision: Some(rev) });
                    }
                }
            }
            if events.is_empty() {
                drop(table);
                txn.abort().map_err(|e| self.failed(e, true))?;
                return Ok(outcomes);
            }
            let mut meta = txn.open_table(META).map_err(|e| self.failed(e, true))?;
            meta.insert(REVISION_KEY, rev).map_err(|e| self.failed(e, true))?;
        }
        self.commit(txn)?;
        if let Some(last) = events.last() {
            self.revision.store(last.rev, Ordering::SeqCst);
        }
        self.hub.publish(events);
        Ok(outcomes)
    }
}

impl Store {
    /// A record written with [`Store::put_record`], if there is one.
    pub fn record(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let read = || -> Result<Option<Vec<u8>>, StoreError> {
            let txn = self.db()?.begin_read()?;
            let table = txn.open_table(RECORDS)?;
            Ok(table.get(name)?.map(|v| v.value().to_vec()))
        };
        read().map_err(|e| self.failed(e, false))
    }

    /// Writes a record durably (one transaction; no revision, no watch event).
    pub fn put_record(&self, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
        self.put_records(&[(name.to_owned(), bytes.to_vec())])
    }

    /// Writes records durably, all in one transaction.
    pub fn put_records(&self, records: &[(String, Vec<u8>)]) -> Result<(), StoreError> {
        let write = || -> Result<redb::WriteTransaction, StoreError> {
            let txn = self.db()?.begin_write()?;
            {
                let mut table = txn.open_table(RECORDS)?;
                for (name, bytes) in records {
                    table.insert(name.as_str(), bytes.as_slice())?;
                }
            }
            Ok(txn)
        };
        let txn = write().map_err(|e| self.failed(e, true))?;
        self.commit(txn)
    }
}

/// The database and how its last reopen went.
struct Slot {
    db: Option<Arc<Database>>,
    /// When a reopen last failed, and why.
    tried: Option<(Instant, String)>,
}

/// The record `/readyz` writes while writes fail, to see them succeed again.
const WRITE_PROBE: &str = "store/write-probe";

/// Free space the data dir's filesystem must have again before the store
/// counts as writable after a write failed: room for the largest object
/// (3 MiB) twice over, copy-on-write, and then some.
const WRITE_RESERVE: u64 = 8 << 20;

/// Bytes an unprivileged writer may still use on the filesystem of `dir`.
#[allow(unsafe_code)]
fn free_bytes(dir: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs reads a NUL-terminated path and fills the struct it is given.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    #[allow(clippy::useless_conversion)]
    Some(u64::from(st.f_bavail).saturating_mul(u64::from(st.f_frsize)))
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn decode(key: &str, bytes: &[u8]) -> Result<Value, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Corrupt { key: key.to_owned(), source })
}

fn set_resource_version(obj: &mut Value, rev: u64) {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), Value::String(rev.to_string()));
    }
}

/// Shared handle used by the API server and the control loops.
pub type SharedStore = Arc<Store>;

#[cfg(test)]
mod tests;
