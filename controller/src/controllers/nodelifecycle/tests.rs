//! The node lifecycle on a clock the test moves: no sleeping, and the
//! requeue it asks for is checked against the grace period exactly.

use std::sync::atomic::{AtomicI64, Ordering};

use k8s_openapi::api::core::v1::NodeStatus;
use serde_json::json;

use super::*;
use crate::store::Store;
use crate::write::{DEFAULT_SERVICE_CIDR, Writer};

const T0: i64 = 1_700_000_000;
const GRACE: i64 = 40;

#[derive(Debug)]
struct ManualClock(AtomicI64);

impl Clock for ManualClock {
    fn now(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

impl ManualClock {
    fn set(&self, t: i64) {
        self.0.store(t, Ordering::SeqCst);
    }
}

/// Liveness from a fake fleet link: the listed nodes are alive now.
struct Alive(Vec<&'static str>, Arc<ManualClock>);

impl Liveness for Alive {
    fn heartbeat(&self, node: &str) -> Option<i64> {
        self.0.contains(&node).then(|| self.1.now())
    }
}

struct Fixture {
    client: Client,
    clock: Arc<ManualClock>,
    _dir: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tmp");
    let store = Arc::new(Store::open(&dir.path().join("s.redb"), 100).expect("store"));
    let writer = Writer::new(store, DEFAULT_SERVICE_CIDR);
    writer.system_namespaces().expect("namespaces");
    Fixture { client: Client::new(writer), clock: Arc::new(ManualClock(AtomicI64::new(T0))), _dir: dir }
}

impl Fixture {
    fn lifecycle(&self, liveness: Option<Arc<dyn Liveness>>) -> NodeLifecycle {
        let cfg = NodeLifecycleConfig {
            grace: Duration::from_secs(GRACE.unsigned_abs()),
            clock: self.clock.clone(),
            ..NodeLifecycleConfig::default()
        };
        NodeLifecycle::new(self.client.clone(), cfg, liveness).expect("lifecycle")
    }

    /// A Ready node whose last heartbeat was at `at`.
    fn node(&self, name: &str, at: i64) {
        let t = jiff::Timestamp::from_second(at).expect("time").to_string();
        let n: Node = serde_json::from_value(json!({"metadata": {"name": name},
            "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                "lastHeartbeatTime": t, "lastTransitionTime": t}]}}))
        .expect("node");
        self.client.create(&n).expect("create node");
    }

    fn heartbeat(&self, name: &str, at: i64) {
        let mut n = self.get_node(name);
        let t = jiff::Timestamp::from_second(at).expect("time");
        let status = n.status.get_or_insert_with(NodeStatus::default);
        status.conditions = Some(vec![NodeCondition {
            type_: "Ready".into(),
            status: "True".into(),
            reason: Some("KubeletReady".into()),
            last_heartbeat_time: Some(Time(t)),
            last_transition_time: Some(Time(t)),
            message: None,
        }]);
        n.metadata.resource_version = None;
        self.client.replace_status(&n).expect("heartbeat");
    }

    /// A pod bound to `node`, tolerating `unreachable:NoExecute` for `secs` when given.
    fn pod(&self, name: &str, node: &str, secs: Option<i64>) {
        let tolerations = secs.map_or(
            json!([]),
            |s| json!([{"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": s}]),
        );
        let p: Pod = serde_json::from_value(json!({"metadata": {"name": name, "namespace": "default"},
            "spec": {"nodeName": node, "tolerations": tolerations, "containers": [{"name": "c", "image": "x"}]}}))
        .expect("pod");
        self.client.create(&p).expect("create pod");
    }

    fn get_node(&self, name: &str) -> Node {
        self.client.get::<Node>("", name).expect("get").expect("node exists")
    }

    fn ready(&self, name: &str) -> String {
        ready_condition(&self.get_node(name)).map(|c| c.status.clone()).unwrap_or_default()
    }

    fn pod_ready(&self, name: &str) -> Option<String> {
        let p = self.client.get::<Pod>("default", name).expect("get")?;
        let conds = p.status?.conditions?;
        conds.into_iter().find(|c| c.type_ == "Ready").map(|c| c.status)
    }

    fn taints(&self, name: &str) -> Vec<String> {
        let n = self.get_node(name);
        n.spec.and_then(|s| s.taints).unwrap_or_default().iter().map(|t| format!("{}:{}", t.key, t.effect)).collect()
    }
}

fn key(node: &str) -> Key {
    Key::new("core/nodes", "", node)
}

fn after(secs: i64) -> Action {
    Action::RequeueAfter(Duration::from_secs(secs.unsigned_abs()))
}

#[test]
fn a_silent_node_turns_unknown_after_the_grace_period_and_only_tolerating_pods_go_on_time() {
    let f = fixture();
    f.node("n1", T0);
    f.pod("tolerant", "n1", Some(30));
    f.pod("stubborn", "n1", None);
    let mut nl = f.lifecycle(None);

    f.clock.set(T0 + 10);
    assert_eq!(nl.reconcile(&key("n1")).expect("reconcile"), after(GRACE - 10 + 1), "looks again when grace ends");
    assert_eq!(f.ready("n1"), "True");
    assert!(f.taints("n1").is_empty());
    assert_eq!(f.get_node("n1").spec.and_then(|s| s.pod_cidr).as_deref(), Some("10.42.0.0/24"));

    f.clock.set(T0 + GRACE);
    assert_eq!(nl.reconcile(&key("n1")).expect("reconcile"), after(1), "not before the grace period is over");
    assert_eq!(f.ready("n1"), "True");

    f.clock.set(T0 + GRACE + 1);
    assert_eq!(nl.reconcile(&key("n1")).expect("reconcile"), after(30), "next: the toleration runs out");
    assert_eq!(f.ready("n1"), "Unknown");
    assert_eq!(f.taints("n1"), [format!("{UNREACHABLE}:NoExecute"), format!("{UNREACHABLE}:NoSchedule")]);
    assert_eq!(f.pod_ready("tolerant").as_deref(), Some("False"));
    assert_eq!(f.pod_ready("stubborn").as_deref(), Some("False"));

    f.clock.set(T0 + GRACE + 30);
    assert_eq!(nl.reconcile(&key("n1")).expect("reconcile"), after(1));
    assert!(f.client.get::<Pod>("default", "tolerant").expect("get").is_some(), "tolerated for 30 s");

    f.clock.set(T0 + GRACE + 31);
    assert_eq!(nl.reconcile(&key("n1")).expect("reconcile"), Action::Done);
    let deleting = |name: &str| {
        f.client.get::<Pod>("default", name).expect("get").expect("kept").metadata.deletion_timestamp.is_some()
    };
    // Evicted when its time ran out: Terminating, as a graceful delete
    // leaves it until its node reports it stopped (the node is away).
    assert!(deleting("tolerant"), "evicted when its time ran out");
    assert!(!deleting("stubborn"), "no default eviction");

    // The node reports again: Ready, untainted.
    f.clock.set(T0 + 100);
    f.heartbeat("n1", T0 + 100);
    assert_eq!(nl.reconcile(&key("n1")).expect("reconcile"), after(GRACE + 1));
    assert_eq!(f.ready("n1"), "True");
    assert!(f.taints("n1").is_empty(), "{:?}", f.taints("n1"));
}

#[test]
fn the_fleet_links_liveness_counts_beyond_the_stored_heartbeat() {
    let f = fixture();
    f.node("alive", T0);
    f.node("silent", T0);
    let mut nl = f.lifecycle(Some(Arc::new(Alive(vec!["alive"], f.clock.clone()))));
    f.clock.set(T0 + 1000);
    assert_eq!(nl.reconcile(&key("alive")).expect("reconcile"), after(GRACE + 1));
    assert_eq!(f.ready("alive"), "True", "online and reporting: alive without a stored heartbeat");
    nl.reconcile(&key("silent")).expect("reconcile");
    assert_eq!(f.ready("silent"), "Unknown");
}

#[test]
fn a_restarted_controller_gives_every_node_a_full_grace_period() {
    let f = fixture();
    f.node("n1", T0);
    f.clock.set(T0 + 1000);
    let mut nl = f.lifecycle(None);
    assert_eq!(nl.reconcile(&key("n1")).expect("reconcile"), after(GRACE + 1));
    assert_eq!(f.ready("n1"), "True", "an hour-old heartbeat, but the controller only just started");
    f.clock.set(T0 + 1000 + GRACE + 1);
    nl.reconcile(&key("n1")).expect("reconcile");
    assert_eq!(f.ready("n1"), "Unknown");
}

#[test]
fn pods_of_a_deleted_node_are_deleted() {
    let f = fixture();
    f.node("gone", T0);
    f.pod("orphan", "gone", None);
    let mut nl = f.lifecycle(None);
    f.client.delete::<Node>("", "gone", None).expect("delete node");
    assert_eq!(nl.reconcile(&key("gone")).expect("reconcile"), Action::Done);
    assert!(f.client.get::<Pod>("default", "orphan").expect("get").is_none());
}

/// Pod ranges come from what the Node watch said, not a list per node: a
/// deleted node's range is given again, and a range a node was created
/// with is not given twice.
#[test]
fn pod_ranges_follow_the_node_watch() {
    let f = fixture();
    let store = f.client.store().clone();
    let mut events = store.hub().subscribe(store.revision()).expect("watch").live;
    let mut nl = f.lifecycle(None);
    let mut feed = |nl: &mut NodeLifecycle| {
        let mut keys = Vec::new();
        while let Ok(ev) = events.try_recv() {
            nl.keys_for(&ev, &mut keys);
        }
    };
    let cidr = |name: &str| f.get_node(name).spec.and_then(|s| s.pod_cidr).unwrap_or_default();
    for name in ["n1", "n2"] {
        f.node(name, T0);
        feed(&mut nl);
        nl.reconcile(&key(name)).expect("reconcile");
    }
    assert_eq!((cidr("n1"), cidr("n2")), ("10.42.0.0/24".into(), "10.42.1.0/24".into()));

    f.client.delete::<Node>("", "n1", None).expect("delete n1");
    let given: Node =
        serde_json::from_value(json!({"metadata": {"name": "n4"}, "spec": {"podCIDR": "10.42.2.0/24"}})).expect("node");
    f.client.create(&given).expect("create n4");
    feed(&mut nl);
    for name in ["n3", "n5"] {
        f.node(name, T0);
        feed(&mut nl);
        nl.reconcile(&key(name)).expect("reconcile");
    }
    assert_eq!(cidr("n3"), "10.42.0.0/24", "n1's range, free again");
    assert_eq!(cidr("n5"), "10.42.3.0/24", "past n4's own range");
}
