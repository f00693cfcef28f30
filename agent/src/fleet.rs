//! The controller as a pod source: accepting snapshots (newer generations
//! only, stored before acted on) and turning what the node observes into
//! events for the controller.

use std::collections::BTreeMap;

use kedge_common::wire::{ContainerState, Event, NodeDesired, NodeReport, WaitingReason};

use crate::cache::{Cache, CacheError};
use crate::pods::DesiredPod;

/// Source prefix of the controller's pods: `controller:{namespace}/{name}`.
pub const CONTROLLER_PREFIX: &str = "controller:";

/// The controller's pods this node runs, as last accepted.
#[derive(Debug, Default)]
pub struct ControllerSource {
    pub generation: u64,
    pub pods: Vec<DesiredPod>,
}

/// What became of a received snapshot.
#[derive(Debug, PartialEq, Eq)]
pub enum Accepted {
    /// Stored; act on it. Pods that could not be taken are named.
    New { skipped: Vec<String> },
    /// Not newer than what the node has.
    Stale,
}

impl ControllerSource {
    /// The controller's pods from the local cache (the reboot path).
    pub fn from_cache(cache: &Cache) -> Result<ControllerSource, CacheError> {
        let pods = cache.desired()?.into_values().filter(|d| d.source.starts_with(CONTROLLER_PREFIX)).collect();
        Ok(ControllerSource { generation: cache.generation()?, pods })
    }

    /// Takes a snapshot if its generation is newer: its pods are validated
    /// (a bad one is skipped, the rest still run), stored, then adopted.
    /// (The node loop does the same in three steps, storing off its thread.)
    pub fn accept(&mut self, cache: &Cache, snapshot: NodeDesired) -> Result<Accepted, CacheError> {
        let Some(p) = self.prepare(snapshot) else { return Ok(Accepted::Stale) };
        cache.store_snapshot(CONTROLLER_PREFIX, p.generation, &p.pods)?;
        Ok(self.adopt(p))
    }

    /// The snapshot's pods, validated, if it is newer than what the node
    /// has; `None` for a stale one. Nothing is stored or changed yet.
    pub fn prepare(&self, snapshot: NodeDesired) -> Option<Prepared> {
        if snapshot.generation <= self.generation {
            return None;
        }
        let mut skipped = Vec::new();
        let mut pods = BTreeMap::new();
        for mut pod in snapshot.pods {
            let ns = pod.metadata.namespace.get_or_insert_with(|| "default".into()).clone();
            let label = format!("{ns}/{}", pod.metadata.name);
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            // Both name files and directories on the node.
            if uid.is_empty() || uid.len() > 64 || !uid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                skipped.push(format!("{label}: metadata.uid {uid:?} is not a UID"));
                continue;
            }
            if !kedge_common::pod::is_dns_label(&ns) {
                skipped.push(format!("{label}: metadata.namespace {ns:?} is not a DNS label"));
                continue;
            }
            if pods.values().any(|d: &DesiredPod| d.uid == uid) {
                skipped.push(format!("{label}: metadata.uid {uid} is used twice in the snapshot"));
                continue;
            }
            if let Err(e) = pod.validate() {
                skipped.push(format!("{label}: {e}"));
                continue;
            }
            let source = format!("{CONTROLLER_PREFIX}{label}");
            pods.insert(source.clone(), DesiredPod { uid, pod, source });
        }
        Some(Prepared { generation: snapshot.generation, pods, skipped })
    }

    /// Acts on a prepared snapshot once it is stored.
    pub fn adopt(&mut self, p: Prepared) -> Accepted {
        self.generation = p.generation;
        self.pods = p.pods.into_values().collect();
        Accepted::New { skipped: p.skipped }
    }
}

/// A newer snapshot, validated, to be stored and then adopted.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub generation: u64,
    /// By source (`controller:{namespace}/{name}`), as the cache keeps them.
    pub pods: BTreeMap<String, DesiredPod>,
    /// Pods not taken, with why.
    pub skipped: Vec<String>,
}

fn event(reason: &str, message: String, pod: (&str, &str, &str), normal: bool) -> Event {
    Event {
        time: jiff::Timestamp::now().as_second(),
        normal,
        reason: reason.into(),
        message,
        pod: Some((pod.0.to_string(), pod.1.to_string(), pod.2.to_string())),
        seq: 0,
    }
}

/// Events for what changed between two reports: containers started,
/// restarted after a crash, and image pulls that failed.
pub fn events_between(prev: Option<&NodeReport>, cur: &NodeReport) -> Vec<Event> {
    let mut out = Vec::new();
    // The first report after a start has nothing to compare with: what it
    // shows happened before (and was told then).
    let Some(prev) = prev else { return out };
    let prev = Some(prev);
    for p in &cur.pods {
        let before = prev.and_then(|r| r.pods.iter().find(|x| x.uid == p.uid));
        let id = (p.namespace.as_str(), p.name.as_str(), p.uid.as_str());
        for c in &p.containers {
            let old = before.and_then(|b| b.containers.iter().find(|x| x.name == c.name));
            let was_running = old.is_some_and(|o| matches!(o.state, ContainerState::Running { .. }));
            let restarts_before = old.map_or(0, |o| o.restart_count);
            if c.restart_count > restarts_before {
                let exit = match &c.last_state {
                    Some(ContainerState::Terminated { exit_code, reason, .. }) => {
                        format!(" (exit {exit_code}, {reason})")
                    }
                    _ => String::new(),
                };
                out.push(event("BackOff", format!("Restarted container {}{exit}", c.name), id, false));
            }
            if matches!(c.state, ContainerState::Running { .. }) && !was_running && c.restart_count == 0 {
                out.push(event("Started", format!("Started container {}", c.name), id, true));
            }
            if let ContainerState::Waiting { reason, message } = &c.state {
                let same =
                    old.is_some_and(|o| matches!(&o.state, ContainerState::Waiting { reason: r, .. } if r == reason));
                if !same && matches!(reason, WaitingReason::ErrImagePull | WaitingReason::CreateContainerError) {
                    out.push(event("Failed", format!("{reason}: {message}"), id, false));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use kedge_common::pod::Pod;

    fn pod(name: &str, uid: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "default", "uid": uid},
            "spec": {"containers": [{"name": "c", "image": "kedge.local/busybox:latest"}]}
        }))
        .expect("pod")
    }

    #[test]
    fn only_newer_snapshots_are_taken_and_they_survive_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = Cache::open(&dir.path().join("agent.redb")).expect("cache");
        let mut src = ControllerSource::from_cache(&cache).expect("empty");
        assert_eq!(src.generation, 0);
        let snap = |g, pods| NodeDesired { node: "n1".into(), generation: g, pods, delete_volumes: Vec::new() };
        assert_eq!(
            src.accept(&cache, snap(3, vec![pod("a", "1")])).expect("accept"),
            Accepted::New { skipped: vec![] }
        );
        assert_eq!(src.accept(&cache, snap(3, vec![])).expect("same"), Accepted::Stale);
        assert_eq!(src.accept(&cache, snap(2, vec![])).expect("older"), Accepted::Stale);
        assert_eq!(src.pods.len(), 1, "a stale snapshot changed nothing");
        let mut bad = pod("b", "2");
        bad.spec.containers.clear();
        let Accepted::New { skipped } =
            src.accept(&cache, snap(4, vec![pod("a", "1"), bad, pod("c", "")])).expect("accept")
        else {
            panic!("generation 4 is newer")
        };
        assert_eq!(skipped.len(), 2, "{skipped:?}");
        let again = ControllerSource::from_cache(&cache).expect("reload");
        assert_eq!((again.generation, again.pods.len()), (4, 1));
        assert_eq!(again.pods[0].source, "controller:default/a");
    }
}
