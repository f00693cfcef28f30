//! The one reconcile shape every control loop here follows (kube-runtime's):
//! watched changes become keys, keys wait in a de-duplicated queue, one
//! reconcile runs per key at a time inside a tracing span, and each answers
//! "done" or "look again after …". Failures back off per key.
//!
//! Reconciles are synchronous (the store is) and run one after another on
//! the controller's single thread, yielding to the runtime between keys so
//! API requests are never starved.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::Duration;

use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::controllers::ControllerError;
use crate::store::{Key, SharedStore, WatchEvent};

/// What a reconcile asks for next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing until something this loop watches changes.
    Done,
    /// Look again after this long even if nothing changes (timeouts, delays).
    RequeueAfter(Duration),
}

pub trait Reconcile {
    /// The loop's name, for logs and spans.
    fn name(&self) -> &'static str;
    /// The keys a committed change should (re)visit.
    fn keys_for(&mut self, ev: &WatchEvent, out: &mut Vec<Key>);
    /// Every key worth a look at start-up, and after missing events.
    fn all_keys(&mut self) -> Result<Vec<Key>, ControllerError>;
    /// The keys to revisit when the resync signal of
    /// [`run_with_resync`] fires: all of them unless the loop knows which
    /// changed.
    fn signalled_keys(&mut self) -> Result<Vec<Key>, ControllerError> {
        self.all_keys()
    }
    /// Brings the world one step closer to what `key` asks for.
    fn reconcile(&mut self, key: &Key) -> Result<Action, ControllerError>;
    /// How many ready keys one call to [`Reconcile::reconcile_batch`] may
    /// take. Loops that can write a batch in one transaction raise it.
    fn batch(&self) -> usize {
        1
    }
    /// Reconciles several keys; one result per key, in order.
    fn reconcile_batch(&mut self, keys: &[Key]) -> Vec<Result<Action, ControllerError>> {
        keys.iter().map(|k| self.reconcile(k)).collect()
    }
}

const BACKOFF_BASE: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// The work queue: ready keys in arrival order without duplicates, plus
/// keys due later.
#[derive(Default)]
pub struct Queue {
    ready: VecDeque<Key>,
    queued: HashSet<Key>,
    later: BTreeMap<Instant, Vec<Key>>,
    /// The one pending deadline of each delayed key (the earliest asked
    /// for); `later` entries that disagree with it are stale and skipped.
    due: HashMap<Key, Instant>,
    failures: HashMap<Key, u32>,
}

impl Queue {
    pub fn push(&mut self, key: Key) {
        if self.queued.insert(key.clone()) {
            self.ready.push_back(key);
        }
    }

    /// Schedules `key` after `after`, unless it is already due sooner.
    pub fn push_after(&mut self, key: Key, after: Duration) {
        let at = Instant::now() + after;
        if self.due.get(&key).is_some_and(|d| *d <= at) {
            return;
        }
        self.due.insert(key.clone(), at);
        self.later.entry(at).or_default().push(key);
    }

    /// The next ready key. Reconciling it settles any pending deadline: the
    /// reconcile asks again if it still needs one.
    pub fn pop(&mut self) -> Option<Key> {
        let k = self.ready.pop_front()?;
        self.queued.remove(&k);
        self.due.remove(&k);
        Some(k)
    }

    /// Moves every key that is due into the ready queue.
    pub fn promote(&mut self, now: Instant) {
        let times: Vec<Instant> = self.later.range(..=now).map(|(t, _)| *t).collect();
        for t in times {
            for k in self.later.remove(&t).unwrap_or_default() {
                if self.due.get(&k) == Some(&t) {
                    self.due.remove(&k);
                    self.push(k);
                }
            }
        }
    }

    pub fn next_due(&self) -> Option<Instant> {
        self.later.keys().next().copied()
    }

    fn failed(&mut self, key: &Key) -> Duration {
        let n = self.failures.entry(key.clone()).or_insert(0);
        *n = n.saturating_add(1);
        BACKOFF_BASE.saturating_mul(1u32 << (*n).min(12)).min(BACKOFF_MAX)
    }

    fn succeeded(&mut self, key: &Key) {
        self.failures.remove(key);
    }
}

/// Runs `r` until `shutdown` flips.
pub async fn run<R: Reconcile>(r: R, store: SharedStore, shutdown: watch::Receiver<bool>) {
    // A sender that is never used: no resyncs beyond missed events.
    let (_never, resyncs) = watch::channel(0);
    run_with_resync(r, store, shutdown, resyncs).await
}

/// Like [`run`], and every change of `resyncs` queues all of `r`'s keys
/// (for loops that also react to something outside the store).
pub async fn run_with_resync<R: Reconcile>(
    mut r: R,
    store: SharedStore,
    mut shutdown: watch::Receiver<bool>,
    resyncs: watch::Receiver<u64>,
) {
    let name = r.name();
    let mut resyncs = Some(resyncs);
    let mut q = Queue::default();
    // Listing the keys and subscribing happen without an await in between:
    // no change can fall between them.
    let start = store.hub().subscribe(store.revision());
    let mut live = match start {
        Ok(s) => s.live,
        Err(e) => {
            tracing::error!(controller = name, error = %e, "cannot watch the store");
            return;
        }
    };
    resync(&mut r, &mut q);
    let mut found = Vec::new();
    loop {
        // Take in everything already committed before working, so keys dedupe.
        loop {
            match live.try_recv() {
                Ok(ev) => {
                    r.keys_for(&ev, &mut found);
                    found.drain(..).for_each(|k| q.push(k));
                }
                Err(TryRecvError::Lagged(_)) => resync(&mut r, &mut q),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Closed) => return,
            }
        }
        q.promote(Instant::now());
        let mut keys = Vec::new();
        while keys.len() < r.batch().max(1) {
            match q.pop() {
                Some(k) => keys.push(k),
                None => break,
            }
        }
        if !keys.is_empty() {
            let span = tracing::debug_span!("reconcile", controller = name, keys = keys.len(), first = %keys[0].name);
            let results = {
                let _g = span.enter();
                // A bug in one reconcile fails that batch (retried with
                // backoff), not the loop: the other objects are still
                // reconciled (the controller unwinds: release-controller).
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    #[cfg(debug_assertions)]
                    injected_panic(name, &keys);
                    r.reconcile_batch(&keys)
                }))
                .unwrap_or_else(|panic| {
                    let what = crate::serve::panic_message(panic.as_ref());
                    tracing::error!(controller = name, first = %keys[0].name, keys = keys.len(), panic = %what, "a reconcile panicked");
                    keys.iter().map(|_| Err(ControllerError::Panicked(what.clone()))).collect()
                })
            };
            for (key, result) in keys.into_iter().zip(results) {
                match result {
                    Ok(Action::Done) => q.succeeded(&key),
                    Ok(Action::RequeueAfter(d)) => {
                        q.succeeded(&key);
                        q.push_after(key, d);
                    }
                    Err(e) => {
                        let delay = q.failed(&key);
                        tracing::warn!(controller = name, namespace = %key.namespace, name = %key.name, error = %e, retry_in_ms = delay.as_millis() as u64, "reconcile failed");
                        q.push_after(key, delay);
                    }
                }
            }
            tokio::task::yield_now().await;
            continue;
        }
        let sleep = async {
            match q.next_due() {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = sleep => {}
            changed = async {
                match resyncs.as_mut() {
                    Some(rx) => rx.changed().await,
                    None => std::future::pending().await,
                }
            } => match changed {
                Ok(()) => match r.signalled_keys() {
                    Ok(keys) => keys.into_iter().for_each(|k| q.push(k)),
                    Err(e) => tracing::error!(controller = name, error = %e, "cannot list the keys to revisit"),
                },
                // The sender is gone: only the other branches are left.
                Err(_) => resyncs = None,
            },
            ev = live.recv() => match ev {
                Ok(ev) => {
                    r.keys_for(&ev, &mut found);
                    found.drain(..).for_each(|k| q.push(k));
                }
                Err(RecvError::Lagged(_)) => resync(&mut r, &mut q),
                Err(RecvError::Closed) => return,
            },
        }
    }
}

fn resync<R: Reconcile>(r: &mut R, q: &mut Queue) {
    match r.all_keys() {
        Ok(keys) => keys.into_iter().for_each(|k| q.push(k)),
        Err(e) => tracing::error!(controller = r.name(), error = %e, "cannot list keys to resync"),
    }
}

/// The test hook of issue 19: a reconcile of an object named by
/// `KEDGE_TEST_PANIC_RECONCILE` panics (debug builds only).
#[cfg(debug_assertions)]
fn injected_panic(controller: &str, keys: &[Key]) {
    if let Some(name) = std::env::var_os("KEDGE_TEST_PANIC_RECONCILE") {
        if let Some(k) = keys.iter().find(|k| name == k.name.as_str()) {
            panic!("injected into {controller}'s reconcile of {} (KEDGE_TEST_PANIC_RECONCILE)", k.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(n: &str) -> Key {
        Key::new("core/pods", "default", n)
    }

    #[test]
    fn queue_dedupes_and_orders() {
        let mut q = Queue::default();
        q.push(k("a"));
        q.push(k("b"));
        q.push(k("a"));
        assert_eq!(q.pop(), Some(k("a")));
        q.push(k("a"));
        assert_eq!(q.pop(), Some(k("b")));
        assert_eq!(q.pop(), Some(k("a")));
        assert_eq!(q.pop(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn delayed_keys_become_ready_when_due() {
        let mut q = Queue::default();
        q.push_after(k("later"), Duration::from_secs(5));
        q.promote(Instant::now());
        assert_eq!(q.pop(), None);
        tokio::time::advance(Duration::from_secs(5)).await;
        q.promote(Instant::now());
        assert_eq!(q.pop(), Some(k("later")));
    }

    #[tokio::test(start_paused = true)]
    async fn requeues_of_one_key_do_not_pile_up() {
        let mut q = Queue::default();
        for _ in 0..100 {
            q.push_after(k("node"), Duration::from_secs(40));
        }
        q.push_after(k("node"), Duration::from_secs(10));
        assert_eq!(q.due.len(), 1);
        tokio::time::advance(Duration::from_secs(41)).await;
        q.promote(Instant::now());
        assert_eq!(q.pop(), Some(k("node")), "due once, at the earliest deadline");
        assert_eq!(q.pop(), None, "stale later entries are skipped");
        assert!(q.due.is_empty());
        q.push_after(k("node"), Duration::from_secs(5));
        q.push(k("node"));
        assert_eq!(q.pop(), Some(k("node")));
        tokio::time::advance(Duration::from_secs(6)).await;
        q.promote(Instant::now());
        assert_eq!(q.pop(), None, "an event-driven reconcile settled the pending deadline");
    }

    #[test]
    fn failures_back_off_exponentially_up_to_a_cap() {
        let mut q = Queue::default();
        let d1 = q.failed(&k("x"));
        let d2 = q.failed(&k("x"));
        assert_eq!(d2, d1 * 2);
        for _ in 0..20 {
            q.failed(&k("x"));
        }
        assert_eq!(q.failed(&k("x")), BACKOFF_MAX);
        q.succeeded(&k("x"));
        assert_eq!(q.failed(&k("x")), d1);
    }
}
