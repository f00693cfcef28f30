//! Binding pods to nodes (the `pods/binding` subresource), many at a time:
//! one store transaction binds a batch of pods, sets their `PodScheduled`
//! condition and records the `Scheduled` events, so the scheduler pays one
//! durable commit per batch instead of three per pod.

use serde_json::{Value, json};

use super::{WriteError, Writer};
use crate::meta;
use crate::resources;
use crate::store::{Key, Mutation};

/// One pod to bind to one node.
#[derive(Debug, Clone)]
pub struct Binding {
    pub namespace: String,
    pub name: String,
    pub node: String,
}

/// Sets `PodScheduled=True` on a pod object.
fn scheduled_condition(pod: &mut Value, now: &str) {
    let conds = &mut pod["status"]["conditions"];
    if !conds.is_array() {
        *conds = json!([]);
    }
    let Some(list) = conds.as_array_mut() else { return };
    let cond = json!({"type": "PodScheduled", "status": "True", "lastTransitionTime": now});
    match list.iter_mut().find(|c| c["type"] == "PodScheduled") {
        Some(c) if c["status"] == "True" => {}
        Some(c) => *c = cond,
        None => list.push(cond),
    }
}

/// A `Scheduled` event about `pod`. Built complete here (every field is
/// ours and valid), so it skips the admission round trip: binding is the
/// scheduler's hot path.
fn scheduled_event(pod: &Value, node: &str, source: &str, ev_name: &str) -> Value {
    let ns = meta::get_str(pod, "namespace").unwrap_or_default();
    let name = meta::get_str(pod, "name").unwrap_or_default();
    let now = meta::now();
    json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": ev_name, "namespace": ns, "uid": meta::new_uid(), "creationTimestamp": now},
        "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": name, "namespace": ns, "uid": meta::get(pod, "uid")},
        "reason": "Scheduled", "message": format!("Successfully assigned {ns}/{name} to {node}"), "type": "Normal",
        "source": {"component": source}, "reportingComponent": source,
        "firstTimestamp": now, "lastTimestamp": now, "count": 1,
    })
}

impl Writer {
    /// Binds each pod in `binds` to its node in one transaction. A pod that is
    /// gone, already bound or being deleted fails alone; the rest are bound.
    /// With `events_from`, a `Scheduled` event is recorded for each pod bound.
    pub fn bind_many(
        &self,
        binds: &[Binding],
        events_from: Option<&str>,
    ) -> Result<Vec<Result<(), WriteError>>, WriteError> {
        let pods = resources::find("", "v1", "pods").ok_or(WriteError::NotServed { plural: "pods" })?;
        let mut keys: Vec<Key> = binds.iter().map(|b| Key::new(pods.id, &b.namespace, &b.name)).collect();
        let n = keys.len();
        // The events are written in the same transaction; their names are
        // fixed now, their bodies once the pods (and their uids) are read.
        let events = resources::find("", "v1", "events").ok_or(WriteError::NotServed { plural: "events" })?;
        let stamp = jiff::Timestamp::now().as_nanosecond();
        let event_names: Vec<String> =
            binds.iter().enumerate().map(|(i, b)| format!("{}.{stamp:x}{i:x}", b.name)).collect();
        let mut event_objs: Vec<Option<Value>> = vec![None; n];
        if events_from.is_some() {
            for (b, en) in binds.iter().zip(&event_names) {
                keys.push(Key::new(events.id, &b.namespace, en));
            }
        }
        let mut results: Vec<Result<(), WriteError>> = Vec::with_capacity(n);
        self.store.mutate_many::<WriteError, _>(&keys, |cur| {
            let now = meta::now();
            let mut muts = Vec::with_capacity(keys.len());
            for (i, (b, pod)) in binds.iter().zip(cur.iter().take(n)).enumerate() {
                let Some(pod) = pod else {
                    results.push(Err(WriteError::NotFound { resource: "pods".into(), name: b.name.clone() }));
                    muts.push(Mutation::Keep);
                    continue;
                };
                if let Some(cur_node) = pod.pointer("/spec/nodeName").and_then(Value::as_str).filter(|s| !s.is_empty())
                {
                    results.push(Err(WriteError::AlreadyBound { name: b.name.clone(), node: cur_node.to_owned() }));
                    muts.push(Mutation::Keep);
                    continue;
                }
                if meta::get(pod, "deletionTimestamp").is_some() {
                    results.push(Err(WriteError::BeingDeleted { name: b.name.clone() }));
                    muts.push(Mutation::Keep);
                    continue;
                }
                let mut p = pod.clone();
                p["spec"]["nodeName"] = json!(b.node);
                scheduled_condition(&mut p, &now);
                if let Some(g) = meta::get(&p, "generation").and_then(Value::as_i64) {
                    meta::set(&mut p, "generation", json!(g + 1));
                }
                if let Some(source) = events_from {
                    event_objs[i] = Some(scheduled_event(pod, &b.node, source, &event_names[i]));
                }
                results.push(Ok(()));
                muts.push(Mutation::Put(p));
            }
            for e in event_objs.iter_mut().take(keys.len() - n) {
                muts.push(e.take().map_or(Mutation::Keep, Mutation::Put));
            }
            Ok(muts)
        })?;
        Ok(results)
    }
}
