//! The pod worker's state machine against the fake runtime, on paused tokio
//! time: restart backoff, pull backoff, probe thresholds, startup gating,
//! restart policies and teardown, as the kubelet behaves.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use kedge_common::pod::Pod;
use kedge_common::wire::{PodPhase, WaitingReason};

use super::super::{PodManager, status};
use super::*;
use crate::runtime::fake::{Call, FakeRuntime, Script};

const IMAGE: &str = "kedge.local/busybox:1";

struct Harness {
    rt: FakeRuntime,
    manager: PodManager<FakeRuntime>,
    _dir: tempfile::TempDir,
}

fn pod(spec: serde_json::Value) -> DesiredPod {
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "p", "namespace": "default", "uid": "u1"},
        "spec": spec,
    }))
    .expect("a pod");
    DesiredPod { uid: "u1".into(), pod, source: "file:/m/p.yaml".into() }
}

fn container(name: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut c = serde_json::json!({"name": name, "image": IMAGE, "imagePullPolicy": "IfNotPresent"});
    if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
        c.extend(extra.clone());
    }
    c
}

fn exec_probe(cmd: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut p = serde_json::json!({"exec": {"command": [cmd]}});
    if let (Some(p), Some(extra)) = (p.as_object_mut(), extra.as_object()) {
        p.extend(extra.clone());
    }
    p
}

fn start(rt: FakeRuntime, desired: DesiredPod) -> Harness {
    rt.add_image(IMAGE);
    let dir = tempfile::tempdir().expect("tempdir");
    let paths = Paths { root: dir.path().to_path_buf() };
    let mut manager = PodManager::new(WorkerContext::new(rt.clone(), paths, BackoffPolicy::default()));
    manager.set_desired(vec![desired]);
    Harness { rt, manager, _dir: dir }
}

fn script(rt: &FakeRuntime, name: &str, s: Script) -> FakeRuntime {
    rt.script(name, s);
    rt.clone()
}

fn codes(pairs: &[(&str, &[i32])]) -> HashMap<String, VecDeque<i32>> {
    pairs.iter().map(|(cmd, codes)| (cmd.to_string(), codes.iter().copied().collect())).collect()
}

/// Lets `secs` of (paused) time pass; everything due in between runs.
async fn advance(secs: u64) {
    tokio::time::sleep(Duration::from_secs(secs)).await;
}

impl Harness {
    /// Whole seconds at which `pick` matched a call.
    fn times(&self, pick: impl Fn(&Call) -> bool) -> Vec<u64> {
        self.rt.calls().iter().filter(|(_, c)| pick(c)).map(|(at, _)| at.as_secs()).collect()
    }

    fn starts(&self) -> Vec<u64> {
        self.times(|c| matches!(c, Call::StartContainer { .. }))
    }

    fn execs(&self, cmd: &str) -> Vec<u64> {
        self.times(|c| matches!(c, Call::ExecSync { cmd: words, .. } if words.join(" ") == cmd))
    }

    fn status(&self) -> PodStatusFile {
        self.manager.statuses().get("u1").cloned().expect("the worker keeps a status")
    }

    fn waiting(&self, name: &str) -> Option<WaitingReason> {
        self.status().waiting.get(name).map(|w| w.reason)
    }
}

#[tokio::test(start_paused = true)]
async fn a_crashing_container_restarts_at_once_then_with_doubling_backoff() {
    let rt = FakeRuntime::new();
    script(&rt, "c", Script { exits_after: Some(Duration::from_secs(1)), exit_code: 1, ..Default::default() });
    let h = start(rt, pod(serde_json::json!({"containers": [container("c", serde_json::json!({}))]})));
    advance(5).await;
    assert_eq!(h.waiting("c"), Some(WaitingReason::CrashLoopBackOff), "waiting out the first backoff");
    advance(195).await;
    // Runs 1 s each time: restart at once, then 10 s, 20 s, 40 s, 80 s, 160 s later.
    assert_eq!(h.starts(), vec![0, 1, 12, 33, 74, 155]);
    let attempts: Vec<u32> =
        h.rt.calls()
            .iter()
            .filter_map(|(_, c)| match c {
                Call::StartContainer { attempt, .. } => Some(*attempt),
                _ => None,
            })
            .collect();
    assert_eq!(attempts, vec![0, 1, 2, 3, 4, 5]);
    // The kubelet keeps the last dead attempt (for lastState); older ones go.
    let records = h.rt.container_records();
    assert!(records.len() <= 2, "{} container records kept", records.len());
    // As the kubelet: a crash-looping pod whose containers all started is Running.
    assert_eq!(h.status().phase, PodPhase::Running);
}

#[tokio::test(start_paused = true)]
async fn a_container_that_ran_ten_minutes_restarts_without_backoff() {
    let rt = FakeRuntime::new();
    script(&rt, "c", Script { exits_after: Some(Duration::from_secs(601)), exit_code: 1, ..Default::default() });
    let h = start(rt, pod(serde_json::json!({"containers": [container("c", serde_json::json!({}))]})));
    advance(1900).await;
    assert_eq!(h.starts(), vec![0, 601, 1202, 1803]);
}

#[tokio::test(start_paused = true)]
async fn restart_policies_decide_whether_an_exit_is_final() {
    // Never: an exit is final, whatever its code.
    let rt = FakeRuntime::new();
    script(&rt, "c", Script { exits_after: Some(Duration::from_secs(2)), exit_code: 3, ..Default::default() });
    let h = start(
        rt,
        pod(serde_json::json!({"restartPolicy": "Never", "containers": [container("c", serde_json::json!({}))]})),
    );
    advance(60).await;
    assert_eq!(h.starts(), vec![0]);
    assert_eq!(h.status().phase, PodPhase::Failed);

    // OnFailure: a failure restarts, a success ends it.
    let rt = FakeRuntime::new();
    script(&rt, "c", Script { exits_after: Some(Duration::from_secs(2)), exit_code: 0, ..Default::default() });
    let h = start(
        rt,
        pod(serde_json::json!({"restartPolicy": "OnFailure", "containers": [container("c", serde_json::json!({}))]})),
    );
    advance(60).await;
    assert_eq!(h.starts(), vec![0]);
    assert_eq!(h.status().phase, PodPhase::Succeeded);
}

#[tokio::test(start_paused = true)]
async fn liveness_failures_restart_the_container_at_the_threshold_only() {
    let rt = FakeRuntime::new();
    // Two passes, three failures (the threshold), then healthy for good.
    let exec = codes(&[("alive", &[0, 0, 1, 1, 1, 0])]);
    script(&rt, "web", Script { exec_codes: exec, ..Default::default() });
    let probe = exec_probe("alive", serde_json::json!({"initialDelaySeconds": 5, "periodSeconds": 10}));
    let h = start(
        rt,
        pod(serde_json::json!({"containers": [container("web", serde_json::json!({"livenessProbe": probe}))]})),
    );
    advance(44).await;
    assert_eq!(h.starts(), vec![0], "two failures in a row are below the threshold");
    advance(30).await;
    assert_eq!(h.execs("alive")[..5], [5, 15, 25, 35, 45], "after the initial delay, every period");
    let stops = h.times(|c| matches!(c, Call::StopContainer { timeout: 30, .. }));
    assert_eq!(stops, vec![45], "stopped with the pod's grace period at the third failure");
    assert_eq!(h.starts(), vec![0, 45], "and restarted at once (the first restart has no backoff)");
    // The new attempt's probes start over after the initial delay.
    assert_eq!(h.execs("alive")[5..], [50, 60, 70]);
}

#[tokio::test(start_paused = true)]
async fn the_startup_probe_gates_liveness_and_readiness() {
    let rt = FakeRuntime::new();
    let exec = codes(&[("started", &[1, 1, 1, 0]), ("alive", &[0]), ("ready", &[0])]);
    script(&rt, "c", Script { exec_codes: exec, ..Default::default() });
    let c = container(
        "c",
        serde_json::json!({
            "startupProbe": exec_probe("started", serde_json::json!({"failureThreshold": 5})),
            "livenessProbe": exec_probe("alive", serde_json::json!({})),
            "readinessProbe": exec_probe("ready", serde_json::json!({})),
        }),
    );
    let h = start(rt, pod(serde_json::json!({"containers": [c]})));
    advance(25).await;
    let s = h.status();
    assert_eq!((s.started.get("c"), s.ready.get("c")), (Some(&false), Some(&false)));
    assert!(h.execs("alive").is_empty() && h.execs("ready").is_empty(), "nothing but the startup probe yet");
    advance(10).await;
    assert_eq!(h.execs("started"), vec![0, 10, 20, 30], "passes on its fourth run and stops");
    let s = h.status();
    assert_eq!((s.started.get("c"), s.ready.get("c")), (Some(&true), Some(&true)));
    assert_eq!(h.execs("alive").first(), Some(&30), "liveness starts once started");
    assert_eq!(h.starts(), vec![0], "three startup failures are below its threshold of five");
}

#[tokio::test(start_paused = true)]
async fn a_startup_probe_that_never_passes_restarts_the_container() {
    let rt = FakeRuntime::new();
    script(&rt, "c", Script { exec_codes: codes(&[("started", &[1])]), ..Default::default() });
    let c = container("c", serde_json::json!({"startupProbe": exec_probe("started", serde_json::json!({}))}));
    let h = start(rt, pod(serde_json::json!({"containers": [c]})));
    advance(25).await;
    assert_eq!(h.starts(), vec![0, 20], "killed at the third failure (0, 10, 20 s)");
}

#[tokio::test(start_paused = true)]
async fn readiness_follows_its_thresholds() {
    let rt = FakeRuntime::new();
    // Ready, then three failures (the threshold), then ready again.
    script(&rt, "c", Script { exec_codes: codes(&[("ready", &[0, 1, 1, 1, 0])]), ..Default::default() });
    let c = container("c", serde_json::json!({"readinessProbe": exec_probe("ready", serde_json::json!({}))}));
    let h = start(rt, pod(serde_json::json!({"containers": [c]})));
    let mut seen = Vec::new();
    for _ in 0..5 {
        advance(5).await;
        seen.push(h.status().ready.get("c").copied());
        advance(5).await;
    }
    // At 5, 15, 25, 35, 45 s: ready after the first run; the first two
    // failures keep it; the third takes it away; one success brings it back.
    assert_eq!(seen, vec![Some(true), Some(true), Some(true), Some(false), Some(true)]);
    assert_eq!(h.starts(), vec![0], "readiness never restarts a container");
}

#[tokio::test(start_paused = true)]
async fn a_failed_pull_backs_off_and_the_pod_starts_once_the_image_comes() {
    let rt = FakeRuntime::new();
    let image = "registry.local/app:2";
    rt.fail_pull(image, "connection refused");
    let c = serde_json::json!({"name": "app", "image": image, "imagePullPolicy": "IfNotPresent"});
    let h = start(rt, pod(serde_json::json!({"containers": [c]})));
    advance(5).await;
    assert_eq!(h.waiting("app"), Some(WaitingReason::ImagePullBackOff), "waiting out the pull backoff");
    let message = h.status().waiting.get("app").map(|w| w.message.clone()).unwrap_or_default();
    assert!(message.contains("connection refused"), "the registry's reason is shown: {message}");
    advance(70).await;
    let pulls = h.times(|c| matches!(c, Call::PullImage { .. }));
    assert_eq!(pulls, vec![0, 10, 30, 70], "retried after 10, 20, 40 s");
    assert!(h.starts().is_empty());
    h.rt.fix_pull(image);
    advance(80).await;
    assert_eq!(h.starts(), vec![150], "the next attempt (80 s later) pulls and starts it");
    assert_eq!(h.waiting("app"), None);
}

/// Offline, `imagePullPolicy: Always` (the `:latest` default) runs the
/// image the node has, restarts after crashes included, with a Warning
/// event; an image the node does not have still fails, and so does a pull
/// the registry answered (not found, unauthorized), as in Kubernetes.
#[tokio::test(start_paused = true)]
async fn an_unreachable_registry_falls_back_to_the_cached_image() {
    let rt = FakeRuntime::new();
    let uncached = "registry.local/other:latest";
    rt.unreachable_pull(IMAGE);
    rt.unreachable_pull(uncached);
    script(&rt, "c", Script { exits_after: Some(Duration::from_secs(1)), exit_code: 1, ..Default::default() });
    let always =
        |name: &str, image: &str| serde_json::json!({"name": name, "image": image, "imagePullPolicy": "Always"});
    let h = start(rt, pod(serde_json::json!({"containers": [always("c", IMAGE), always("d", uncached)]})));
    advance(40).await;
    assert!(h.starts().len() >= 3, "the cached image ran and restarted after its crashes: {:?}", h.starts());
    assert!(matches!(h.waiting("d"), Some(WaitingReason::ErrImagePull | WaitingReason::ImagePullBackOff)));
    let notices = h.manager.take_notices();
    assert!(!notices.is_empty() && notices.iter().all(|e| e.reason == "PulledFromCache" && !e.normal), "{notices:?}");
    assert!(notices[0].message.contains("using the image already on the node"), "{}", notices[0].message);
    assert_eq!(notices[0].pod, Some(("default".into(), "p".into(), "u1".into())));

    // A registry that answers refuses the pull: no fallback.
    let rt = FakeRuntime::new();
    rt.fail_pull(IMAGE, "manifest unknown");
    let h = start(rt, pod(serde_json::json!({"containers": [always("c", IMAGE)]})));
    advance(5).await;
    assert!(h.starts().is_empty());
    assert!(matches!(h.waiting("c"), Some(WaitingReason::ErrImagePull | WaitingReason::ImagePullBackOff)));
    assert!(h.manager.take_notices().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_never_pull_policy_without_the_image_waits_without_pulling() {
    let rt = FakeRuntime::new();
    let c = serde_json::json!({"name": "app", "image": "absent:1", "imagePullPolicy": "Never"});
    let h = start(rt, pod(serde_json::json!({"containers": [c]})));
    advance(30).await;
    assert_eq!(h.waiting("app"), Some(WaitingReason::ErrImageNeverPull));
    assert!(h.times(|c| matches!(c, Call::PullImage { .. })).is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_removed_pod_is_stopped_with_its_grace_period_and_torn_down() {
    let rt = FakeRuntime::new();
    let mut h = start(
        rt,
        pod(
            serde_json::json!({"terminationGracePeriodSeconds": 7, "containers": [container("c", serde_json::json!({}))]}),
        ),
    );
    advance(3).await;
    assert_eq!(h.status().phase, PodPhase::Running);
    h.manager.set_desired(Vec::new());
    advance(1).await;
    assert!(h.manager.idle(), "the worker finished its teardown");
    assert_eq!(h.times(|c| matches!(c, Call::StopContainer { timeout: 7, .. })), vec![3]);
    assert_eq!(h.times(|c| matches!(c, Call::RemovePodSandbox { .. })), vec![3]);
    assert!(h.rt.sandbox_records().is_empty() && h.rt.container_records().is_empty());
    assert!(h.manager.statuses().is_empty(), "nothing is reported for it any more");
}

/// A pod that leaves the desired set and comes back while it is being torn
/// down (a node whose controller answered late) runs again once the
/// teardown is over, instead of staying gone.
#[tokio::test(start_paused = true)]
async fn a_pod_wanted_again_during_its_teardown_starts_anew() {
    let rt = FakeRuntime::new();
    script(&rt, "c", Script { ignores_sigterm: true, ..Default::default() });
    let spec =
        serde_json::json!({"terminationGracePeriodSeconds": 7, "containers": [container("c", serde_json::json!({}))]});
    let mut h = start(rt, pod(spec.clone()));
    advance(3).await;
    h.manager.set_desired(Vec::new());
    advance(1).await;
    h.manager.set_desired(vec![pod(spec)]);
    advance(15).await;
    assert_eq!(h.starts().len(), 2, "started again after the teardown: {:?}", h.starts());
    assert_eq!(h.status().phase, PodPhase::Running);
}

/// With a controller not heard from yet, running pods no source names stay
/// (the kubelet's `sourcesReady`); once it is heard from, they go.
#[tokio::test(start_paused = true)]
async fn unknown_pods_wait_for_every_source_before_they_are_removed() {
    let rt = FakeRuntime::new();
    let mut h = start(rt, pod(serde_json::json!({"containers": [container("c", serde_json::json!({}))]})));
    advance(3).await;
    // A new manager over the same runtime: an agent restarted with no cache.
    let dir = tempfile::tempdir().expect("tempdir");
    let paths = Paths { root: dir.path().to_path_buf() };
    let mut fresh = PodManager::new(WorkerContext::new(h.rt.clone(), paths, BackoffPolicy::default()));
    fresh.set_sources_ready(false);
    fresh.set_desired(Vec::new());
    advance(40).await;
    assert!(h.times(|c| matches!(c, Call::RemovePodSandbox { .. })).is_empty(), "kept");
    fresh.set_sources_ready(true);
    fresh.set_desired(Vec::new());
    advance(40).await;
    assert_eq!(h.times(|c| matches!(c, Call::RemovePodSandbox { .. })).len(), 1, "removed once the sources are heard");
    h.manager.set_desired(Vec::new());
}

/// A pod being deleted (its snapshot carries `deletionGracePeriodSeconds`):
/// the preStop hook runs first, the container is stopped with what is left
/// of the grace period, it is not restarted, and the status says
/// `terminated` (the report tells the controller) while the sandbox stays
/// until the pod leaves the desired set.
#[tokio::test(start_paused = true)]
async fn a_deleted_pod_runs_its_pre_stop_hook_then_stops_within_its_grace() {
    let rt = FakeRuntime::new();
    let hook = serde_json::json!({"lifecycle": {"preStop": {"exec": {"command": ["drain"]}}}});
    let spec = serde_json::json!({"terminationGracePeriodSeconds": 30, "containers": [container("c", hook)]});
    let mut h = start(rt, pod(spec));
    advance(3).await;
    assert_eq!(h.status().phase, PodPhase::Running);
    let mut deleting = pod(serde_json::json!({"terminationGracePeriodSeconds": 30,
        "containers": [container("c", serde_json::json!({"lifecycle": {"preStop": {"exec": {"command": ["drain"]}}}}))]}));
    deleting.pod.metadata.deletion_grace_period_seconds = Some(5);
    h.manager.set_desired(vec![deleting.clone()]);
    advance(1).await;
    assert_eq!(h.execs("drain"), vec![3], "the hook ran once, first");
    assert_eq!(
        h.times(|c| matches!(c, Call::StopContainer { timeout: 5, .. })),
        vec![3],
        "then the stop, with the grace left"
    );
    let status = h.status();
    assert!(status.terminated, "reported stopped");
    assert_eq!(status.phase, PodPhase::Failed, "killed (137): a terminal phase");
    advance(60).await;
    assert_eq!(h.starts(), vec![0], "a pod being deleted is not restarted");
    assert_eq!(h.execs("drain"), vec![3]);
    assert!(!h.rt.sandbox_records().is_empty(), "the sandbox stays until the pod leaves the snapshot");
    h.manager.set_desired(Vec::new());
    advance(1).await;
    assert!(h.manager.idle() && h.rt.sandbox_records().is_empty());
}

/// A pod whose deletion arrives with a hook that outlasts the grace period:
/// the container still gets the kubelet's minimum 2 s after it.
#[tokio::test(start_paused = true)]
async fn a_pre_stop_hook_cannot_use_up_the_whole_grace() {
    let rt = FakeRuntime::new();
    let hook = serde_json::json!({"lifecycle": {"preStop": {"sleep": {"seconds": 60}}}});
    let mut d = pod(serde_json::json!({"containers": [container("c", hook)]}));
    let h = start(rt, d.clone());
    advance(2).await;
    d.pod.metadata.deletion_grace_period_seconds = Some(3);
    let mut h = h;
    h.manager.set_desired(vec![d]);
    advance(10).await;
    assert_eq!(
        h.times(|c| matches!(c, Call::StopContainer { timeout: 2, .. })),
        vec![5],
        "3 s of hook, then the minimum"
    );
    assert!(h.status().terminated);
}

/// A controller's pod that leaves the snapshot without having been
/// deleted gracefully first was force-deleted: 1 s, as the kubelet.
#[tokio::test(start_paused = true)]
async fn a_force_deleted_pod_is_killed_at_once() {
    let rt = FakeRuntime::new();
    let mut d = pod(
        serde_json::json!({"terminationGracePeriodSeconds": 300, "containers": [container("c", serde_json::json!({}))]}),
    );
    d.source = format!("{}default/p", crate::fleet::CONTROLLER_PREFIX);
    let mut h = start(rt, d);
    advance(2).await;
    h.manager.set_desired(Vec::new());
    advance(1).await;
    assert!(h.manager.idle());
    assert_eq!(h.times(|c| matches!(c, Call::StopContainer { timeout: 1, .. })), vec![2]);
}

#[tokio::test(start_paused = true)]
async fn a_pod_left_with_only_its_status_file_is_forgotten_after_a_restart() {
    // A pod that never got a sandbox (its network was unavailable, say)
    // leaves only its status file; the restarted agent's sources no longer
    // name it, so `ps` must stop listing it.
    let dir = tempfile::tempdir().expect("tempdir");
    let paths = Paths { root: dir.path().to_path_buf() };
    let left =
        PodStatusFile { uid: "u9".into(), name: "boxed".into(), namespace: "default".into(), ..Default::default() };
    status::write_status(&paths, &left).expect("status written");
    std::fs::create_dir_all(paths.root.join("volumes/u9")).expect("volumes");
    // And a write a `kill -9` cut short: ps never shows it.
    let half = paths.root.join("status/u8.tmp12345");
    let ghost = PodStatusFile { uid: "u8".into(), name: "ghost".into(), ..Default::default() };
    std::fs::write(&half, serde_json::to_vec(&ghost).expect("json")).expect("tmp");
    assert_eq!(status::read_pods(&paths).len(), 1, "ps lists the pod with a status file, not the half write");
    let mut manager = PodManager::new(WorkerContext::new(FakeRuntime::new(), paths.clone(), BackoffPolicy::default()));
    manager.set_desired(Vec::new());
    advance(1).await;
    assert!(manager.idle());
    assert!(status::read_pods(&paths).is_empty(), "ps lists nothing after");
    assert!(!half.exists(), "the half write is removed");
    assert!(!paths.root.join("volumes/u9").exists(), "its volumes went too");
}
