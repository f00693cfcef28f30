//! The agent's local redb: the last accepted desired state of every pod
//! source, written before it is acted on, so a restarted agent — with no
//! controller, or with a manifest that has since been broken by an edit —
//! still runs what it last accepted. (The runtime's own state is plain JSON
//! records instead: `ps` reads those while the agent holds this database's
//! exclusive lock.) Written only when desired state changes: no timers, no
//! flash wear at idle.
//!
//! The database is opened for each read or write and closed again: a
//! container's init is forked from the agent and holds copies of the agent's
//! descriptors until it execs, and a redb file kept open would leave its lock
//! with a container created just before an agent crash.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::pods::DesiredPod;

/// Source (e.g. `file:/etc/kedge/manifests/web.yaml`) → desired pod (JSON;
/// volume bytes, `kedge_common::bytes::Bytes`, as base64 text).
const DESIRED: TableDefinition<&str, &[u8]> = TableDefinition::new("desired_pods");
/// Small facts: the generation of the accepted controller snapshot.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const GENERATION: &str = "controller_generation";
/// The highest session open counter taken ([`kedge_common::session`]): a
/// replayed open is refused across restarts too.
const SESSION_FLOOR: &str = "session_floor";
/// The last accepted cluster network table (its CBOR envelope, as received).
const NETWORK: TableDefinition<&str, &[u8]> = TableDefinition::new("network");
const NETWORK_KEY: &str = "cluster";

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("{path}: the local cache stayed locked")]
    InUse { path: String },
    #[error("local cache: {0}")]
    Db(#[from] redb::Error),
    #[error("local cache: encoding a pod: {0}")]
    Encode(#[from] serde_json::Error),
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for CacheError {
            fn from(e: $t) -> Self {
                CacheError::Db(redb::Error::from(e))
            }
        }
    )*};
}
from_redb!(redb::TransactionError, redb::TableError, redb::StorageError, redb::CommitError);

/// The database is opened per operation; users of one file in this process
/// take turns instead of retrying on "already open" (one lock per file: the
/// fleet simulator runs thousands of nodes, each with its own, in one process).
static OPEN: std::sync::LazyLock<std::sync::Mutex<HashMap<PathBuf, Arc<std::sync::Mutex<()>>>>> =
    std::sync::LazyLock::new(Default::default);

pub struct Cache {
    path: PathBuf,
    /// Taken around each use of the file.
    turn: Arc<std::sync::Mutex<()>>,
}

impl Cache {
    pub fn open(path: &Path) -> Result<Cache, CacheError> {
        let turn = OPEN.lock().unwrap_or_else(|p| p.into_inner()).entry(path.to_path_buf()).or_default().clone();
        let cache = Cache { path: path.to_path_buf(), turn };
        cache.write(|txn| {
            txn.open_table(DESIRED)?;
            txn.open_table(META)?;
            txn.open_table(NETWORK)?;
            txn.open_table(crate::net::ipam::ADDRESSES)?;
            Ok(())
        })?;
        // It holds the node's snapshot, Secrets included: root's alone.
        use std::os::unix::fs::PermissionsExt;
        if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
            tracing::warn!(path = %path.display(), error = %e, "cannot make the cache readable by root alone");
        }
        Ok(cache)
    }

    /// Runs `f` in one write transaction, committed if it succeeds.
    pub fn write<T>(&self, f: impl FnOnce(&redb::WriteTransaction) -> Result<T, CacheError>) -> Result<T, CacheError> {
        let _one_at_a_time = self.turn.lock().unwrap_or_else(|p| p.into_inner());
        let _no_fork_meanwhile = crate::forklock::writing();
        let db = self.db()?;
        let txn = db.begin_write()?;
        let out = f(&txn)?;
        txn.commit()?;
        Ok(out)
    }

    /// Runs `f` in one read transaction.
    pub fn read<T>(&self, f: impl FnOnce(&redb::ReadTransaction) -> Result<T, CacheError>) -> Result<T, CacheError> {
        let _one_at_a_time = self.turn.lock().unwrap_or_else(|p| p.into_inner());
        let _no_fork_meanwhile = crate::forklock::writing();
        let db = self.db()?;
        let txn = db.begin_read()?;
        f(&txn)
    }

    /// Opens the database, waiting a moment if a dying process still holds it.
    fn db(&self) -> Result<Database, CacheError> {
        for _ in 0..50 {
            match Database::create(&self.path) {
                Ok(db) => return Ok(db),
                Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                    std::thread::sleep(std::time::Duration::from_millis(100))
                }
                Err(e) => return Err(CacheError::Db(e.into())),
            }
        }
        Err(CacheError::InUse { path: self.path.display().to_string() })
    }

    /// Every stored desired pod, by source. Unreadable entries are skipped with a log line.
    pub fn desired(&self) -> Result<BTreeMap<String, DesiredPod>, CacheError> {
        self.read(|txn| {
            let table = txn.open_table(DESIRED)?;
            let mut out = BTreeMap::new();
            for row in table.iter()? {
                let (k, v) = row?;
                match serde_json::from_slice::<DesiredPod>(v.value()) {
                    Ok(d) => {
                        out.insert(k.value().to_string(), d);
                    }
                    Err(e) => tracing::warn!(source = k.value(), error = %e, "unreadable cached pod skipped"),
                }
            }
            Ok(out)
        })
    }

    /// Replaces the stored set for every source starting with `prefix`.
    pub fn replace(&self, prefix: &str, pods: &BTreeMap<String, DesiredPod>) -> Result<(), CacheError> {
        self.write(|txn| replace_in(txn, prefix, pods))
    }

    /// The generation of the last accepted controller snapshot (0: none).
    pub fn generation(&self) -> Result<u64, CacheError> {
        self.read(|txn| Ok(txn.open_table(META)?.get(GENERATION)?.map_or(0, |v| v.value())))
    }

    /// The highest session open counter taken (0: none yet).
    pub fn session_floor(&self) -> Result<u64, CacheError> {
        self.read(|txn| Ok(txn.open_table(META)?.get(SESSION_FLOOR)?.map_or(0, |v| v.value())))
    }

    /// Raises the session open floor to `counter` (never lowers it).
    pub fn raise_session_floor(&self, counter: u64) -> Result<(), CacheError> {
        self.write(|txn| {
            let mut t = txn.open_table(META)?;
            let have = t.get(SESSION_FLOOR)?.map_or(0, |v| v.value());
            if counter > have {
                t.insert(SESSION_FLOOR, counter)?;
            }
            Ok(())
        })
    }

    /// The last accepted network table, as received (a CBOR envelope).
    pub fn network(&self) -> Result<Option<Vec<u8>>, CacheError> {
        self.read(|txn| Ok(txn.open_table(NETWORK)?.get(NETWORK_KEY)?.map(|v| v.value().to_vec())))
    }

    /// Stores an accepted network table before it is applied.
    pub fn store_network(&self, payload: &[u8]) -> Result<(), CacheError> {
        self.write(|txn| {
            txn.open_table(NETWORK)?.insert(NETWORK_KEY, payload)?;
            Ok(())
        })
    }

    /// Stores an accepted controller snapshot: its pods (replacing every
    /// source under `prefix`) and its generation, in one transaction.
    pub fn store_snapshot(
        &self,
        prefix: &str,
        generation: u64,
        pods: &BTreeMap<String, DesiredPod>,
    ) -> Result<(), CacheError> {
        self.write(|txn| {
            replace_in(txn, prefix, pods)?;
            txn.open_table(META)?.insert(GENERATION, generation)?;
            Ok(())
        })
    }
}

fn replace_in(
    txn: &redb::WriteTransaction,
    prefix: &str,
    pods: &BTreeMap<String, DesiredPod>,
) -> Result<(), CacheError> {
    let mut table = txn.open_table(DESIRED)?;
    let stale: Vec<String> = table
        .iter()?
        .filter_map(|r| r.ok().map(|(k, _)| k.value().to_string()))
        .filter(|k| k.starts_with(prefix) && !pods.contains_key(k))
        .collect();
    for k in stale {
        table.remove(k.as_str())?;
    }
    for (k, d) in pods {
        let bytes = serde_json::to_vec(d)?;
        table.insert(k.as_str(), bytes.as_slice())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(source: &str, uid: &str) -> DesiredPod {
        DesiredPod { uid: uid.into(), pod: Default::default(), source: source.into() }
    }

    #[test]
    fn a_binary_secret_survives_the_cache_byte_for_byte() {
        use kedge_common::bytes::Bytes;
        use kedge_common::pod::{DataVolume, Volume};
        let key: Vec<u8> = (0..=255u8).chain([0xc3, 0x28, 0xed, 0xa0, 0x80]).collect();
        let mut d = pod("controller:default/tls", "5");
        d.pod.spec.volumes.push(Volume {
            name: "tls".into(),
            secret: Some(DataVolume {
                binary_data: [("key.der".to_string(), Bytes(key.clone()))].into(),
                ..Default::default()
            }),
            ..Default::default()
        });
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.redb");
        Cache::open(&path)
            .expect("open")
            .store_snapshot("controller:", 1, &BTreeMap::from([(d.source.clone(), d.clone())]))
            .expect("write");
        let stored = Cache::open(&path).expect("reopen").desired().expect("read");
        let back = stored.get(&d.source).expect("cached");
        assert_eq!(back, &d);
        let secret = back.pod.spec.volumes[0].secret.as_ref().expect("secret");
        assert_eq!(secret.binary_data.get("key.der").map(Bytes::as_slice), Some(key.as_slice()));
    }

    #[test]
    fn stores_replaces_and_survives_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.redb");
        let cache = Cache::open(&path).expect("open");
        let a = pod("file:/m/a.yaml", "1");
        let b = pod("file:/m/b.yaml", "2");
        let other = pod("mqtt:x", "3");
        cache
            .replace("file:", &BTreeMap::from([(a.source.clone(), a.clone()), (b.source.clone(), b.clone())]))
            .expect("write");
        cache.replace("mqtt:", &BTreeMap::from([(other.source.clone(), other.clone())])).expect("write");
        cache.replace("file:", &BTreeMap::from([(b.source.clone(), b.clone())])).expect("write");
        drop(cache);
        let stored = Cache::open(&path).expect("reopen").desired().expect("read");
        assert_eq!(
            stored.into_values().collect::<Vec<_>>(),
            vec![b.clone(), other.clone()],
            "a's removal kept the other source"
        );
        let cache = Cache::open(&path).expect("reopen");
        assert_eq!(cache.generation().expect("generation"), 0);
        let c = pod("controller:default/c", "4");
        cache.store_snapshot("controller:", 9, &BTreeMap::from([(c.source.clone(), c.clone())])).expect("snapshot");
        assert_eq!(cache.generation().expect("generation"), 9);
        let stored = cache.desired().expect("read");
        assert_eq!(
            stored.into_values().collect::<Vec<_>>(),
            vec![c, b, other],
            "only the controller's sources were replaced"
        );
    }
}
