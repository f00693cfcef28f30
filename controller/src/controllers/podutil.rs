//! Facts about pods and owner references that several loops need.

use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;

use crate::store::WatchEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};

/// The owner reference marked `controller: true`, if any.
pub fn controller_ref(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references.iter().flatten().find(|r| r.controller == Some(true))
}

/// A controller owner reference pointing at `owner`.
pub fn owner_ref(api_version: &str, kind: &str, owner: &ObjectMeta) -> OwnerReference {
    OwnerReference {
        api_version: api_version.to_owned(),
        kind: kind.to_owned(),
        name: owner.name.clone().unwrap_or_default(),
        uid: owner.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

pub fn phase(p: &Pod) -> &str {
    p.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("Pending")
}

/// Neither finished nor being deleted: counts toward replicas.
pub fn is_active(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none() && !matches!(phase(p), "Succeeded" | "Failed")
}

/// When the pod's Ready condition last became True, if it is True.
pub fn ready_since(p: &Pod) -> Option<Option<&Time>> {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .filter(|c| c.status == "True")
        .map(|c| c.last_transition_time.as_ref())
}

pub fn is_ready(p: &Pod) -> bool {
    ready_since(p).is_some()
}

/// Ready for at least `min_ready_secs` at `now` (seconds since the epoch).
pub fn is_available(p: &Pod, min_ready_secs: i64, now: i64) -> bool {
    match ready_since(p) {
        None => false,
        Some(_) if min_ready_secs <= 0 => true,
        Some(None) => false,
        Some(Some(t)) => now - t.0.as_second() >= min_ready_secs,
    }
}

/// Seconds until a ready pod becomes available, if it is not yet.
pub fn until_available(p: &Pod, min_ready_secs: i64, now: i64) -> Option<i64> {
    match ready_since(p) {
        Some(Some(t)) if min_ready_secs > 0 => {
            let left = min_ready_secs - (now - t.0.as_second());
            (left > 0).then_some(left)
        }
        _ => None,
    }
}

fn restarts(p: &Pod) -> i32 {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map_or(0, |cs| cs.iter().map(|c| c.restart_count).sum())
}

/// Kubernetes' order for scaling down: the pods to delete first sort first
/// (unscheduled, then pending, then not ready, then most restarted, then
/// newest).
pub fn deletion_rank(p: &Pod) -> (bool, u8, bool, std::cmp::Reverse<i32>, std::cmp::Reverse<i64>) {
    let scheduled = p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some_and(|n| !n.is_empty());
    let phase_rank = match phase(p) {
        "Pending" => 0,
        "Unknown" => 1,
        _ => 2,
    };
    let created = p.metadata.creation_timestamp.as_ref().map_or(0, |t| t.0.as_second());
    (scheduled, phase_rank, is_ready(p), std::cmp::Reverse(restarts(p)), std::cmp::Reverse(created))
}

/// The controller owner reference of a stored object (JSON), if any.
pub fn controller_of(obj: &Value) -> Option<&Value> {
    obj.pointer("/metadata/ownerReferences")?.as_array()?.iter().find(|r| r["controller"] == true)
}

/// The names of the `kind` controllers of an event's object, before and
/// after the change (a change of owner concerns both).
pub fn controller_names<'a>(ev: &'a WatchEvent, kind: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    std::iter::once(&ev.object)
        .chain(ev.prev.as_ref())
        .filter_map(controller_of)
        .filter(move |r| r["kind"] == kind)
        .filter_map(|r| r["name"].as_str())
}
