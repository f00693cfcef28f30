//! The namespace controller: a namespace marked `Terminating` (it has a
//! `deletionTimestamp`) loses its contents and then disappears itself.
//!
//! Like Kubernetes' it acts a moment after the delete, not inside it, so
//! `kubectl delete -f` of a file that holds a namespace and objects in it can
//! still delete those objects one by one.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::watch;

use crate::api::{self, ApiError, meta};
use crate::resources;
use crate::store::{Key, Mutation, SharedStore};

/// How long a terminating namespace is left alone before it is emptied.
pub const PURGE_DELAY: Duration = Duration::from_secs(1);

pub async fn run(store: SharedStore, mut shutdown: watch::Receiver<bool>) {
    let ns_id = resources::namespaces().id;
    let mut live = match store.hub().subscribe(store.revision()) {
        Ok(s) => s.live,
        Err(e) => {
            tracing::error!(error = %e, "namespace controller cannot watch");
            return;
        }
    };
    // When this process first saw each namespace terminating.
    let mut seen: HashMap<String, Instant> = HashMap::new();
    loop {
        let pending = match reconcile(&store, &mut seen) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "namespace reconcile failed; retrying");
                true
            }
        };
        // Wait for a namespace change, or poll once a second while a
        // namespace is terminating (its contents may be draining).
        let tick = async {
            if pending { tokio::time::sleep(Duration::from_secs(1)).await } else { std::future::pending().await }
        };
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick => {}
            ev = next_namespace_event(&mut live, ns_id) => if !ev { return },
        }
    }
}

/// Purges every namespace that has been terminating long enough. Returns
/// whether any namespace is still terminating.
fn reconcile(store: &SharedStore, seen: &mut HashMap<String, Instant>) -> Result<bool, ApiError> {
    let (nss, _) = store.list(resources::namespaces().id, None, None)?;
    let terminating: Vec<String> = nss
        .iter()
        .filter(|ns| meta::get(ns, "deletionTimestamp").is_some())
        .filter_map(|ns| meta::get_str(ns, "name").map(str::to_owned))
        .collect();
    seen.retain(|n, _| terminating.contains(n));
    let pending = !terminating.is_empty();
    for name in terminating {
        if seen.entry(name.clone()).or_insert_with(Instant::now).elapsed() < PURGE_DELAY {
            continue;
        }
        let _span = tracing::info_span!("namespace", namespace = %name).entered();
        purge(store, &name)?;
    }
    Ok(pending)
}

fn purge(store: &SharedStore, ns: &str) -> Result<(), ApiError> {
    let mut keys = Vec::new();
    for rt in resources::RESOURCES.iter().filter(|r| r.namespaced) {
        let (items, _) = store.list(rt.id, Some(ns), None)?;
        keys.extend(items.iter().map(|it| Key::new(rt.id, ns, meta::get_str(it, "name").unwrap_or_default())));
    }
    if !keys.is_empty() {
        let n = keys.len();
        store.mutate_many::<ApiError, _>(&keys, |cur| {
            Ok(cur.into_iter().map(|o| o.map_or(Mutation::Keep, api::deletion)).collect())
        })?;
        tracing::info!(objects = n, "deleted namespace contents");
    }
    let left: usize = resources::RESOURCES
        .iter()
        .filter(|r| r.namespaced)
        .map(|rt| store.list(rt.id, Some(ns), None).map(|(v, _)| v.len()))
        .sum::<Result<usize, _>>()?;
    if left > 0 {
        return Ok(());
    }
    store.mutate::<ApiError, _>(&Key::new(resources::namespaces().id, "", ns), |cur| {
        let Some(mut o) = cur else {
            return Ok(Mutation::Keep);
        };
        let before = o.clone();
        if let Some(f) = o.pointer_mut("/spec/finalizers").and_then(Value::as_array_mut) {
            f.retain(|v| v.as_str() != Some("kubernetes"));
        }
        let nonempty = |v: Option<&Value>| v.and_then(Value::as_array).is_some_and(|f| !f.is_empty());
        let finalizers_left = nonempty(meta::get(&o, "finalizers")) || nonempty(o.pointer("/spec/finalizers"));
        Ok(match (finalizers_left, o == before) {
            (false, _) => Mutation::Delete,
            (true, true) => Mutation::Keep,
            (true, false) => Mutation::Put(o),
        })
    })?;
    tracing::info!("namespace deleted");
    Ok(())
}

/// Waits for the next change to a namespace (or missed changes); `false`
/// when the store's event stream has ended.
async fn next_namespace_event(
    live: &mut tokio::sync::broadcast::Receiver<std::sync::Arc<crate::store::WatchEvent>>,
    ns_id: &str,
) -> bool {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        match live.recv().await {
            Ok(ev) if ev.resource != ns_id => continue,
            Ok(_) | Err(RecvError::Lagged(_)) => return true,
            Err(RecvError::Closed) => return false,
        }
    }
}
