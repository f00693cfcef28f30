//! The ReplicaSet controller: keeps `spec.replicas` pods matching the
//! selector, adopting orphans and releasing pods that stopped matching,
//! replacing finished pods, deleting surplus not-ready pods first, and
//! reporting replica counts in status.

use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::podutil::{self, controller_ref};
use super::runner::{Action, Reconcile};
use crate::client::{Client, Kind};
use crate::controllers::ControllerError;
use crate::selector::LabelSelector;
use crate::store::{Key, WatchEvent};

/// Most pods created or deleted in one reconcile; the rest follow at once
/// in the next pass (keeps one large scale-up from holding the thread).
const BURST: usize = 500;

pub struct ReplicaSetController {
    client: Client,
    rs_id: &'static str,
    pod_id: &'static str,
}

impl ReplicaSetController {
    pub fn new(client: Client) -> Result<Self, ControllerError> {
        Ok(ReplicaSetController { client, rs_id: ReplicaSet::rt()?.id, pod_id: Pod::rt()?.id })
    }
}

fn selector(rs: &ReplicaSet) -> Option<LabelSelector> {
    rs.spec.as_ref().and_then(|s| LabelSelector::from_k8s(&s.selector).ok()).filter(|s| !s.is_empty())
}

fn pod_json_labels(p: &Pod) -> serde_json::Value {
    serde_json::json!({"metadata": {"labels": p.metadata.labels}})
}

impl Reconcile for ReplicaSetController {
    fn name(&self) -> &'static str {
        "replicaset"
    }

    fn keys_for(&mut self, ev: &WatchEvent, out: &mut Vec<Key>) {
        if ev.resource == self.rs_id {
            out.push(Key::new(self.rs_id, &ev.namespace, &ev.name));
        } else if ev.resource == self.pod_id {
            let mut orphan = false;
            for o in std::iter::once(&ev.object).chain(ev.prev.as_ref()) {
                match podutil::controller_of(o) {
                    Some(r) if r["kind"] == "ReplicaSet" => {
                        out.push(Key::new(self.rs_id, &ev.namespace, r["name"].as_str().unwrap_or_default()))
                    }
                    Some(_) => {}
                    None => orphan = true,
                }
            }
            // An orphan may be adopted by any ReplicaSet whose selector matches it.
            if orphan {
                for rs in self.client.list::<ReplicaSet>(Some(&ev.namespace)).unwrap_or_default() {
                    if selector(&rs).is_some_and(|s| s.matches(&ev.object)) {
                        out.push(Key::new(self.rs_id, &ev.namespace, rs.metadata.name.as_deref().unwrap_or_default()));
                    }
                }
            }
        }
    }

    fn all_keys(&mut self) -> Result<Vec<Key>, ControllerError> {
        self.client.keys::<ReplicaSet>()
    }

    fn reconcile(&mut self, key: &Key) -> Result<Action, ControllerError> {
        let Some(rs) = self.client.get::<ReplicaSet>(&key.namespace, &key.name)? else { return Ok(Action::Done) };
        if rs.metadata.deletion_timestamp.is_some() {
            return Ok(Action::Done);
        }
        let Some(sel) = selector(&rs) else { return Ok(Action::Done) };
        let uid = rs.metadata.uid.clone().unwrap_or_default();
        let mut owned = Vec::new();
        for mut pod in self.client.list::<Pod>(Some(&key.namespace))? {
            let matches = sel.matches(&pod_json_labels(&pod));
            match controller_ref(&pod.metadata).map(|r| r.uid.clone()) {
                Some(owner) if owner == uid => {
                    if matches {
                        owned.push(pod);
                    } else {
                        // Release: the pod no longer matches our selector.
                        if let Some(refs) = pod.metadata.owner_references.as_mut() {
                            refs.retain(|r| r.uid != uid);
                        }
                        self.client.replace(&pod)?;
                    }
                }
                Some(_) => {}
                None if matches && pod.metadata.deletion_timestamp.is_none() => {
                    pod.metadata.owner_references.get_or_insert_with(Vec::new).push(podutil::owner_ref(
                        "apps/v1",
                        "ReplicaSet",
                        &rs.metadata,
                    ));
                    let adopted = self.client.replace(&pod)?;
                    tracing::info!(pod = adopted.metadata.name.as_deref().unwrap_or_default(), "adopted");
                    owned.push(adopted);
                }
                None => {}
            }
        }
        let spec = rs.spec.clone().unwrap_or_default();
        let want = usize::try_from(spec.replicas.unwrap_or(1)).unwrap_or(0);
        let mut active: Vec<Pod> = owned.into_iter().filter(podutil::is_active).collect();
        if active.len() < want {
            let template = spec.template.clone().unwrap_or_default();
            for _ in 0..(want - active.len()).min(BURST) {
                let tmeta = template.metadata.clone().unwrap_or_default();
                let pod = Pod {
                    metadata: ObjectMeta {
                        generate_name: Some(format!("{}-", key.name)),
                        namespace: Some(key.namespace.clone()),
                        labels: tmeta.labels,
                        annotations: tmeta.annotations,
                        owner_references: Some(vec![podutil::owner_ref("apps/v1", "ReplicaSet", &rs.metadata)]),
                        ..Default::default()
                    },
                    spec: template.spec.clone(),
                    status: None,
                };
                active.push(self.client.create(&pod)?);
            }
            tracing::info!(created = active.len().min(want), want, "scaled up");
        } else if active.len() > want {
            active.sort_by_key(podutil::deletion_rank);
            let surplus: Vec<Pod> = active.drain(..(active.len() - want).min(BURST)).collect();
            for p in &surplus {
                let (name, uid) = (p.metadata.name.as_deref().unwrap_or_default(), p.metadata.uid.as_deref());
                super::ignore_not_found(self.client.delete::<Pod>(&key.namespace, name, uid))?;
            }
            tracing::info!(deleted = surplus.len(), want, "scaled down");
        }
        let now = jiff::Timestamp::now().as_second();
        let min_ready = i64::from(spec.min_ready_seconds.unwrap_or(0));
        let template_labels = spec.template.as_ref().and_then(|t| t.metadata.as_ref()).and_then(|m| m.labels.clone());
        let count =
            |f: &dyn Fn(&Pod) -> bool| i32::try_from(active.iter().filter(|p| f(p)).count()).unwrap_or(i32::MAX);
        let status = ReplicaSetStatus {
            replicas: count(&|_| true),
            fully_labeled_replicas: Some(count(&|p| {
                template_labels
                    .iter()
                    .flatten()
                    .all(|(k, v)| p.metadata.labels.as_ref().and_then(|l| l.get(k)) == Some(v))
            })),
            ready_replicas: Some(count(&podutil::is_ready)),
            available_replicas: Some(count(&|p| podutil::is_available(p, min_ready, now))),
            observed_generation: rs.metadata.generation,
            conditions: rs.status.as_ref().and_then(|s| s.conditions.clone()),
            terminating_replicas: None,
        };
        if rs.status.as_ref() != Some(&status) {
            let mut updated = rs.clone();
            updated.status = Some(status);
            updated.metadata.resource_version = None;
            self.client.replace_status(&updated)?;
        }
        if active.len() != want {
            return Ok(Action::RequeueAfter(std::time::Duration::ZERO));
        }
        let next = active.iter().filter_map(|p| podutil::until_available(p, min_ready, now)).min();
        Ok(next.map_or(Action::Done, |s| Action::RequeueAfter(std::time::Duration::from_secs(s.unsigned_abs()))))
    }
}
