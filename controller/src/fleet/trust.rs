//! Who may speak for a node (design.md §3a: the broker is hostile). A node's
//! key is recorded on its Node, in the [`NODE_KEY_ANNOTATION`] annotation,
//! when it joins ([`super::join`]); a message on a node's topics is taken
//! only if it carries that key's signature and a counter above the newest
//! taken of its kind. Deleting the Node (or removing the annotation:
//! `kedge-controller node revoke`) revokes the key.
//!
//! State is kept only for nodes whose messages verified: a flood of forged
//! ones costs a Node read and a signature check each, and leaves nothing.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kedge_common::sign::PublicKey;
use kedge_common::wire::Seq;

use crate::client::Client;

/// The annotation holding a joined node's public key.
pub const NODE_KEY_ANNOTATION: &str = "kedge.io/node-key";
/// The annotation holding the key a node's snapshots are sealed to.
pub const SEAL_KEY_ANNOTATION: &str = "kedge.io/node-seal-key";
/// How long a node's key is taken from the cache for events (reports and
/// presence read the Node every time): a revocation holds for events
/// within this long.
const KEY_TTL: Duration = Duration::from_secs(1);
/// Events a node may raise per second, and in a burst (the kubelet's
/// `--event-qps` and `--event-burst` defaults).
pub const EVENT_RATE: f64 = 50.0;
pub const EVENT_BURST: f64 = 100.0;
/// Reports of a node written per second, and in a burst: the kubelet's
/// `--kube-api-qps` and `--kube-api-burst` defaults (an agent sends a
/// report when a pod changes; starting 50 pods is a few reports a pod).
/// One over the rate waits, the newest only, rather than being lost.
pub const REPORT_RATE: f64 = 50.0;
pub const REPORT_BURST: f64 = 100.0;

/// The key recorded for a node, if it joined.
pub fn node_key(node: &Node) -> Option<PublicKey> {
    node.metadata.annotations.as_ref()?.get(NODE_KEY_ANNOTATION)?.parse().ok()
}

/// What `node revoke` leaves in [`NODE_KEY_ANNOTATION`]: no key, and no
/// join under the name until the Node is deleted.
pub const REVOKED: &str = "revoked";

/// Whether the node was revoked (and not deleted since).
pub fn revoked(node: &Node) -> bool {
    node.metadata.annotations.as_ref().and_then(|a| a.get(NODE_KEY_ANNOTATION)).is_some_and(|v| v == REVOKED)
}

/// The key a node's snapshots are sealed to, if it gave one when joining.
pub fn seal_key(node: &Node) -> Option<kedge_common::seal::SealPublic> {
    node.metadata.annotations.as_ref()?.get(SEAL_KEY_ANNOTATION)?.parse().ok()
}

/// A kind of message a node numbers on its own track.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Report = 0,
    Event = 1,
    Presence = 2,
}

/// A token bucket: `rate` per second, at most `burst` saved up.
#[derive(Debug, Clone)]
pub struct Bucket {
    tokens: f64,
    at: Instant,
    rate: f64,
    burst: f64,
}

impl Bucket {
    pub fn new(rate: f64, burst: f64, now: Instant) -> Bucket {
        Bucket { tokens: burst, at: now, rate, burst }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What is known of a node whose messages verified.
struct Peer {
    key: PublicKey,
    checked: Instant,
    /// Newest counter taken, per [`Kind`].
    last: [u64; 3],
    /// The newest start count seen (also kept in the store, so a controller
    /// restart does not make an older start's messages new again).
    floor: u32,
    /// `last` moved on since it was last kept in the store.
    dirty: bool,
    events: Bucket,
    reports: Bucket,
}

/// Why a node's message is not taken.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Untrusted {
    #[error("node {0} has not joined (or was revoked): no key is recorded for it")]
    NotJoined(String),
    #[error("replayed or out of order: counter {got} is not above {newest}")]
    Replay { got: u64, newest: u64 },
    #[error("over the rate limit; dropped")]
    RateLimited,
}

#[derive(Default)]
pub struct Trust {
    peers: HashMap<String, Peer>,
}

fn floor_record(key: &PublicKey) -> String {
    format!("seq/{key}")
}

/// The stored counters of a key: the start count, then the newest counter
/// taken of each [`Kind`] (4 + 3 × 8 bytes, big-endian; older records hold
/// the start count alone).
fn encode_counters(floor: u32, last: &[u64; 3]) -> Vec<u8> {
    let mut b = floor.to_be_bytes().to_vec();
    for l in last {
        b.extend_from_slice(&l.to_be_bytes());
    }
    b
}

fn decode_counters(b: &[u8]) -> (u32, [u64; 3]) {
    let floor = b.get(..4).and_then(|f| <[u8; 4]>::try_from(f).ok()).map_or(0, u32::from_be_bytes);
    let mut last = [0u64; 3];
    for (i, l) in last.iter_mut().enumerate() {
        if let Some(x) = b.get(4 + i * 8..12 + i * 8).and_then(|x| <[u8; 8]>::try_from(x).ok()) {
            *l = u64::from_be_bytes(x);
        }
    }
    (floor, last)
}

impl Trust {
    /// The node's recorded key: from `node` if the caller has just read it,
    /// else from the cache while it is fresh, else from the store.
    pub fn key(&mut self, client: &Client, name: &str, node: Option<&Node>) -> Result<PublicKey, Untrusted> {
        let now = Instant::now();
        let read;
        let node = match node {
            Some(n) => Some(n),
            None => {
                if let Some(p) = self.peers.get(name).filter(|p| now.duration_since(p.checked) < KEY_TTL) {
                    return Ok(p.key);
                }
                read = client.get::<Node>("", name).ok().flatten();
                read.as_ref()
            }
        };
        let Some(key) = node.and_then(node_key) else {
            self.peers.remove(name);
            return Err(Untrusted::NotJoined(name.to_owned()));
        };
        match self.peers.get_mut(name) {
            Some(p) if p.key == key => p.checked = now,
            _ => {
                let (floor, last) = client
                    .store()
                    .record(&floor_record(&key))
                    .ok()
                    .flatten()
                    .map_or((0, [0; 3]), |b| decode_counters(&b));
                self.peers.insert(
                    name.to_owned(),
                    Peer {
                        key,
                        checked: now,
                        last,
                        floor,
                        dirty: false,
                        events: Bucket::new(EVENT_RATE, EVENT_BURST, now),
                        reports: Bucket::new(REPORT_RATE, REPORT_BURST, now),
                    },
                );
            }
        }
        Ok(key)
    }

    /// Takes a verified message's counter: it must be above the newest of
    /// its kind (and of a start not older than the newest seen), and within
    /// the node's rate for its kind.
    pub fn admit(&mut self, client: &Client, name: &str, kind: Kind, seq: u64) -> Result<(), Untrusted> {
        let Some(p) = self.peers.get_mut(name) else { return Err(Untrusted::NotJoined(name.to_owned())) };
        // Before any message of this kind since this controller started, a
        // start older than the newest known is a replay; after, the counter
        // must go up.
        let newest = p.last[kind as usize];
        let fresh = if newest == 0 { Seq(seq).epoch() >= p.floor } else { seq > newest };
        if !fresh {
            return Err(Untrusted::Replay { got: seq, newest: newest.max(Seq::start(p.floor).0) });
        }
        // Reports are state, not news: one over the rate waits (the newest
        // only) rather than being lost — see `report_allowed`.
        if kind == Kind::Event && !p.events.take(Instant::now()) {
            return Err(Untrusted::RateLimited);
        }
        p.last[kind as usize] = seq;
        p.dirty = true;
        let epoch = Seq(seq).epoch();
        if epoch > p.floor {
            // A new start: kept at once (once per start of the node).
            p.floor = epoch;
            p.dirty = false;
            if let Err(e) = client.store().put_record(&floor_record(&p.key), &encode_counters(epoch, &p.last)) {
                tracing::warn!(node = %name, error = %e, "cannot keep the node's message counter");
            }
        }
        Ok(())
    }

    /// Keeps the counters that moved on since the last call in the store,
    /// in one write: called every few seconds and at shutdown, so that
    /// after a restart a message already taken is not taken again (nor,
    /// after a crash, one older than the last call).
    pub fn persist(&mut self, client: &Client) {
        let records: Vec<(String, Vec<u8>)> = self
            .peers
            .values_mut()
            .filter(|p| p.dirty)
            .map(|p| {
                p.dirty = false;
                (floor_record(&p.key), encode_counters(p.floor, &p.last))
            })
            .collect();
        if records.is_empty() {
            return;
        }
        if let Err(e) = client.store().put_records(&records) {
            tracing::warn!(nodes = records.len(), error = %e, "cannot keep the nodes' message counters");
        }
    }

    /// Whether a report of the node may be written now (its report rate).
    pub fn report_allowed(&mut self, name: &str) -> bool {
        self.peers.get_mut(name).is_some_and(|p| p.reports.take(Instant::now()))
    }

    /// Forgets what is known of a node (it joined anew).
    pub fn forget(&mut self, name: &str) {
        self.peers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(10.0, 5.0, t0);
        assert_eq!((0..20).filter(|_| b.take(t0)).count(), 5, "the burst");
        assert!(!b.take(t0));
        assert_eq!((0..20).filter(|_| b.take(t0 + Duration::from_millis(500))).count(), 5, "10/s for 0.5 s");
    }
}
