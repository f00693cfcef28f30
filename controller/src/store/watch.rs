//! Watch fan-out: a bounded history of recent events (so a watch can resume
//! from a `resourceVersion`) plus a broadcast channel for live delivery.
//! A resume point older than the history answers "gone" (HTTP 410), exactly
//! like Kubernetes after an etcd compaction; clients then re-list.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use serde_json::Value;
use tokio::sync::broadcast;

use super::Key;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One committed change.
#[derive(Debug)]
pub struct WatchEvent {
    pub rev: u64,
    pub resource: &'static str,
    pub namespace: String,
    pub name: String,
    pub kind: EventType,
    /// The object after the change (for a delete: its last state, carrying the
    /// deletion revision).
    pub object: Value,
    /// The object before the change, used to turn selector transitions into
    /// ADDED/DELETED for filtered watches.
    pub prev: Option<Value>,
}

impl WatchEvent {
    pub(super) fn new(rev: u64, key: &Key, kind: EventType, object: Value, prev: Option<Value>) -> Arc<Self> {
        Arc::new(WatchEvent {
            rev,
            resource: key.resource,
            namespace: key.namespace.clone(),
            name: key.name.clone(),
            kind,
            object,
            prev,
        })
    }
}

struct History {
    events: VecDeque<Arc<WatchEvent>>,
    /// Every event with a revision above `floor` is still in `events`.
    floor: u64,
}

pub struct WatchHub {
    capacity: usize,
    history: Mutex<History>,
    tx: broadcast::Sender<Arc<WatchEvent>>,
}

/// The start of a watch: history to replay, then the live receiver.
pub struct WatchStart {
    pub replay: Vec<Arc<WatchEvent>>,
    pub live: broadcast::Receiver<Arc<WatchEvent>>,
}

/// The requested revision is older than the history kept.
#[derive(Debug, thiserror::Error)]
#[error("too old resource version: {requested} ({oldest})")]
pub struct Gone {
    pub requested: u64,
    pub oldest: u64,
}

impl WatchHub {
    pub fn new(capacity: usize, current_revision: u64) -> Self {
        let capacity = capacity.max(1);
        let (tx, _) = broadcast::channel(capacity);
        WatchHub {
            capacity,
            history: Mutex::new(History { events: VecDeque::with_capacity(capacity), floor: current_revision }),
            tx,
        }
    }

    pub(super) fn publish(&self, events: Vec<Arc<WatchEvent>>) {
        let mut h = self.history.lock().unwrap_or_else(PoisonError::into_inner);
        for ev in events {
            if h.events.len() == self.capacity {
                if let Some(old) = h.events.pop_front() {
                    h.floor = old.rev;
                }
            }
            h.events.push_back(ev.clone());
            // No receivers is fine: nobody is watching.
            let _ = self.tx.send(ev);
        }
    }

    /// The events of revisions `from + 1 ..= to` in the history, oldest
    /// first; `Gone` when `from` is older than the history. For listing as of an earlier revision
    /// (`resourceVersionMatch=Exact`): the caller undoes them.
    pub fn between(&self, from: u64, to: u64) -> Result<Vec<Arc<WatchEvent>>, Gone> {
        let h = self.history.lock().unwrap_or_else(PoisonError::into_inner);
        if from < h.floor {
            return Err(Gone { requested: from, oldest: h.floor + 1 });
        }
        Ok(h.events.iter().filter(|e| e.rev > from && e.rev <= to).cloned().collect())
    }

    /// Starts a watch that sees every event with a revision above `from`.
    pub fn subscribe(&self, from: u64) -> Result<WatchStart, Gone> {
        let h = self.history.lock().unwrap_or_else(PoisonError::into_inner);
        if from < h.floor {
            return Err(Gone { requested: from, oldest: h.floor + 1 });
        }
        let replay = h.events.iter().filter(|e| e.rev > from).cloned().collect();
        Ok(WatchStart { replay, live: self.tx.subscribe() })
    }
}
