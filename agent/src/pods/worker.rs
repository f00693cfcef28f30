//! One worker per pod (an actor, as in Ankaios): it owns the pod's restart
//! backoff and waiting reasons, and on every wake-up compares what the pod
//! should be with what the runtime has, then takes the next step — make the
//! sandbox, pull, create, start, restart after backoff, or tear down.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use kedge_common::pod::{Container, Pod, Probe, PullPolicy, RestartPolicy};
use kedge_common::wire::{PodPhase, WaitingReason};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::Instrument;

use super::backoff::{Backoff, BackoffPolicy};
use super::probe::{self, Outcome};
use super::status::{PodStatusFile, Waiting, write_status};
use super::translate;
use crate::net::pod::NetError;
use crate::net::resolv::ClusterDns;
use crate::runtime::{ContainerRecord, ContainerState, CriRuntime, Paths, RuntimeError, SandboxRecord, SandboxState};

/// A pod as a source (manifest file, controller snapshot) wants it run.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DesiredPod {
    pub uid: String,
    pub pod: Pod,
    /// Where it came from, e.g. `file:/etc/kedge/manifests/web.yaml`.
    pub source: String,
}

/// Events kept for the next fleet report at most.
const MAX_NOTICES: usize = 64;

/// What every pod worker shares.
pub struct WorkerContext<R> {
    pub runtime: R,
    /// The agent's data dir: pod volumes, logs and status files live there.
    pub paths: Paths,
    pub backoff: BackoffPolicy,
    /// Signalled after every pass of a worker, so the fleet report goes out
    /// when something happened rather than at the next tick.
    pub changed: Arc<tokio::sync::Notify>,
    /// Each worker's view of its pod, by pod uid: what the report is built
    /// from (the files under `status/` hold the same for `ps`).
    pub statuses: Mutex<BTreeMap<String, PodStatusFile>>,
    /// `--cluster-dns`, `--cluster-domain` and the node's resolv.conf: each
    /// sandbox's DNS config and hosts file come from them.
    pub dns: ClusterDns,
    /// The pod network's gateway, which serves cluster DNS: the pods'
    /// nameserver when `--cluster-dns` is not given. Set by the network
    /// once the node has a pod CIDR.
    pub dns_gateway: Arc<std::sync::RwLock<Option<std::net::IpAddr>>>,
    /// Where node-local persistent volumes live (`--storage-dir`), one
    /// directory per volume handle; they outlive their pods.
    pub storage: PathBuf,
    /// Events the workers noted (a pull that fell back to the cached
    /// image), taken by the next fleet report.
    pub notices: Mutex<Vec<kedge_common::wire::Event>>,
}

impl<R: CriRuntime> WorkerContext<R> {
    pub fn new(runtime: R, paths: Paths, backoff: BackoffPolicy) -> Self {
        WorkerContext {
            runtime,
            storage: paths.root.join("storage"),
            paths,
            backoff,
            changed: Arc::new(tokio::sync::Notify::new()),
            statuses: Mutex::new(BTreeMap::new()),
            dns: ClusterDns::default(),
            dns_gateway: Arc::default(),
            notices: Mutex::new(Vec::new()),
        }
    }

    fn volumes_dir(&self, uid: &str) -> PathBuf {
        self.paths.root.join("volumes").join(uid)
    }

    fn statuses(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, PodStatusFile>> {
        self.statuses.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct Worker<R> {
    ctx: Arc<WorkerContext<R>>,
    uid: String,
    restarts: HashMap<String, Backoff>,
    /// Image → (backoff, when the next pull may happen, last error,
    /// whether it failed for want of the registry).
    pulls: HashMap<String, (Backoff, Instant, String, bool)>,
    waiting: BTreeMap<String, Waiting>,
    written: Option<PodStatusFile>,
    /// Container name → its probes' state (for the running attempt).
    probes: HashMap<String, ProbeTrack>,
    /// The pod is being deleted: when its grace period ends.
    deadline: Option<Instant>,
    /// Containers (by id) whose preStop hook has run: it runs once.
    pre_stopped: std::collections::HashSet<String>,
    /// Every container has stopped for the pod's deletion.
    terminated: bool,
}

/// What the kubelet gives a container after its preStop hook used up the
/// grace period (`minimumGracePeriodInSeconds`).
const MINIMUM_GRACE: Duration = Duration::from_secs(2);

const STARTUP: usize = 0;
const LIVENESS: usize = 1;
const READINESS: usize = 2;

/// The probes of one container attempt, as the kubelet's prober keeps them.
#[derive(Debug, Default, Clone)]
struct ProbeTrack {
    id: String,
    /// The startup probe passed (or there is none): the others may run.
    started: bool,
    ready: bool,
    due: [Option<Instant>; 3],
    successes: [u32; 3],
    failures: [u32; 3],
}

fn probes_of(c: &Container) -> [Option<&Probe>; 3] {
    [c.startup_probe.as_ref(), c.liveness_probe.as_ref(), c.readiness_probe.as_ref()]
}

/// Time from `ns` to `now_ns` (nanoseconds since the epoch; 0 if in the future).
fn between(ns: i64, now_ns: i64) -> Duration {
    Duration::from_nanos(u64::try_from(now_ns.saturating_sub(ns)).unwrap_or(0))
}

fn ran_for(c: &ContainerRecord) -> Duration {
    Duration::from_nanos(u64::try_from(c.finished_at - c.started_at).unwrap_or(0))
}

fn waiting(reason: WaitingReason, message: impl Into<String>) -> Waiting {
    Waiting { reason, message: message.into() }
}

/// Runs a container's preStop hook: a command through ExecSync, an HTTP
/// GET from the pod's network (as a probe), or a pause. A failure is
/// logged; the stop goes on (the kubelet records `FailedPreStopHook`).
async fn pre_stop<R: CriRuntime>(
    rt: &R,
    id: &str,
    netns: Option<PathBuf>,
    c: &Container,
    h: &kedge_common::pod::LifecycleHandler,
) {
    if let Some(s) = &h.sleep {
        tokio::time::sleep(Duration::from_secs(s.seconds.max(0).unsigned_abs())).await;
        return;
    }
    // As a probe whose timeout is the whole grace period (the caller's).
    let as_probe = Probe {
        exec: h.exec.clone(),
        http_get: h.http_get.clone(),
        timeout_seconds: Some(i32::MAX),
        ..Default::default()
    };
    match probe::run(rt, id, netns, c, &as_probe).await {
        Outcome::Success => tracing::info!(container = %c.name, "preStop hook ran"),
        Outcome::Failure(msg) => tracing::warn!(container = %c.name, "preStop hook failed: {msg}"),
    }
}

/// Runs until the pod is gone from `desired` and torn down.
pub async fn run<R: CriRuntime>(
    ctx: Arc<WorkerContext<R>>,
    uid: String,
    mut desired: watch::Receiver<Option<Arc<DesiredPod>>>,
) {
    let name =
        desired.borrow().as_ref().map(|d| format!("{}/{}", d.pod.namespace(), d.pod.metadata.name)).unwrap_or_default();
    let span = tracing::info_span!("pod", pod = %name, uid = %uid);
    let mut w = Worker {
        ctx,
        uid,
        restarts: HashMap::new(),
        pulls: HashMap::new(),
        waiting: BTreeMap::new(),
        written: None,
        probes: HashMap::new(),
        deadline: None,
        pre_stopped: Default::default(),
        terminated: false,
    };
    async move {
        let mut changes = w.ctx.runtime.subscribe();
        let mut last: Option<Arc<DesiredPod>> = None;
        loop {
            changes.mark_unchanged();
            let current = desired.borrow_and_update().clone();
            let Some(d) = current else {
                w.teardown(last.as_deref()).await;
                // Wanted again while it was torn down: it starts afresh.
                if desired.borrow().is_some() {
                    tracing::info!("the pod is wanted again: starting it anew");
                    w.reset();
                    last = None;
                    continue;
                }
                return;
            };
            last = Some(d.clone());
            if let Some(grace) = d.pod.metadata.deletion_grace_period_seconds {
                // Being deleted: stop it (a shorter grace arriving meanwhile
                // starts the stop again with the earlier deadline), report it
                // stopped, and wait for the snapshot without it.
                let at = Instant::now() + Duration::from_secs(grace.max(0).unsigned_abs());
                w.deadline = Some(w.deadline.map_or(at, |d| d.min(at)));
                if !w.terminated {
                    tokio::select! {
                        () = w.terminate(&d) => {}
                        r = desired.changed() => if r.is_err() {
                            return;
                        },
                    }
                    continue;
                }
                if desired.changed().await.is_err() {
                    return;
                }
                continue;
            }
            let next = w.sync(&d).await;
            tokio::select! {
                // The manager went away (the agent is stopping): pods keep running.
                r = desired.changed() => if r.is_err() {
                    return;
                },
                _ = changes.changed() => {}
                _ = tokio::time::sleep_until(next.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600))) => {}
            }
        }
    }
    .instrument(span)
    .await
}

impl<R: CriRuntime> Worker<R> {
    fn rt(&self) -> &R {
        &self.ctx.runtime
    }

    /// Time since `ns` on the runtime's clock.
    fn since(&self, ns: i64) -> Duration {
        between(ns, self.rt().now_ns())
    }

    fn sandboxes(&self) -> Vec<SandboxRecord> {
        let mut v: Vec<SandboxRecord> = self
            .rt()
            .sandbox_records()
            .into_iter()
            .filter(|s| s.config.metadata.as_ref().is_some_and(|m| m.uid == self.uid))
            .collect();
        v.sort_by_key(|s| s.created_at);
        v
    }

    fn containers_in(&self, sandbox_id: &str) -> Vec<ContainerRecord> {
        let mut v: Vec<ContainerRecord> =
            self.rt().container_records().into_iter().filter(|c| c.sandbox_id == sandbox_id).collect();
        v.sort_by_key(|c| (c.attempt(), c.created_at));
        v
    }

    /// One step towards the desired pod; returns when to look again at the latest.
    async fn sync(&mut self, d: &DesiredPod) -> Option<Instant> {
        let pod = &d.pod;
        let mut next: Option<Instant> = None;
        let mut wake = |at: Instant| next = Some(next.map_or(at, |n: Instant| n.min(at)));
        let sandboxes = self.sandboxes();
        let sandbox = match sandboxes.iter().rev().find(|s| s.state == SandboxState::Ready) {
            Some(s) => s.clone(),
            None => match self.new_sandbox(d, &sandboxes).await {
                Ok(Some(s)) => s,
                Ok(None) => {
                    self.write_status(d, &[]);
                    return None;
                }
                Err(e) => {
                    // No pod network yet: the pod waits as ContainerCreating
                    // (the kubelet's NetworkNotReady) and looks again soon.
                    let (reason, retry) = match &e {
                        RuntimeError::Network(NetError::Unavailable(_)) => {
                            (WaitingReason::ContainerCreating, Duration::from_secs(2))
                        }
                        _ => (WaitingReason::CreatePodSandboxError, self.ctx.backoff.base),
                    };
                    tracing::warn!(error = %e, "cannot create the pod sandbox");
                    for c in &pod.spec.containers {
                        self.waiting.insert(c.name.clone(), waiting(reason, e.to_string()));
                    }
                    self.write_status(d, &[]);
                    return Some(Instant::now() + retry);
                }
            },
        };
        let records = self.containers_in(&sandbox.id);
        for c in &pod.spec.containers {
            let attempts: Vec<&ContainerRecord> = records.iter().filter(|r| r.name() == c.name).collect();
            match attempts.last() {
                None => {
                    if let Some(at) = self.start_new(d, c, &sandbox, 0).await {
                        wake(at);
                    }
                }
                Some(latest) if latest.state == ContainerState::Created => {
                    if let Err(e) = self.rt().start_container(&latest.id).await {
                        self.waiting.insert(c.name.clone(), waiting(WaitingReason::RunContainerError, e.to_string()));
                        wake(Instant::now() + self.ctx.backoff.base);
                    }
                }
                Some(latest) if latest.state == ContainerState::Running => {
                    self.waiting.remove(&c.name);
                    if let Some(at) = self.probe(d, c, latest, &sandbox).await {
                        wake(at);
                    }
                }
                Some(latest) => {
                    if !pod.spec.restart_policy.restarts(latest.exit_code) {
                        self.waiting.remove(&c.name);
                        continue;
                    }
                    let ran = ran_for(latest);
                    let backoff = self.restarts.entry(c.name.clone()).or_default();
                    let delay = backoff.delay(&self.ctx.backoff, ran);
                    let waited = self.since(latest.finished_at);
                    if waited < delay {
                        let msg = format!(
                            "back-off {delay:?} restarting failed container={} pod={}",
                            c.name, pod.metadata.name
                        );
                        self.waiting.insert(c.name.clone(), waiting(WaitingReason::CrashLoopBackOff, msg));
                        wake(Instant::now() + (delay - waited));
                        continue;
                    }
                    let attempt = latest.attempt() + 1;
                    let older: Vec<String> = attempts[..attempts.len() - 1].iter().map(|r| r.id.clone()).collect();
                    if let Some(at) = self.start_new(d, c, &sandbox, attempt).await {
                        wake(at);
                    } else {
                        self.restarts.entry(c.name.clone()).or_default().restarted(&self.ctx.backoff, ran);
                        crate::metrics::counters().restarts.inc();
                        // The kubelet keeps the last dead container for lastState; older ones go.
                        for id in older {
                            if let Err(e) = self.rt().remove_container(&id).await {
                                tracing::warn!(container = %id, error = %e, "cannot remove an old attempt");
                            }
                        }
                    }
                }
            }
        }
        let records = self.containers_in(&sandbox.id);
        self.write_status(d, &records);
        next
    }

    /// Runs the container's due probes; a failed liveness or startup probe
    /// stops the container (the restart policy then decides), readiness goes
    /// into the status file. Returns when a probe is next due.
    async fn probe(
        &mut self,
        d: &DesiredPod,
        c: &Container,
        rec: &ContainerRecord,
        sb: &SandboxRecord,
    ) -> Option<Instant> {
        let probes = probes_of(c);
        if probes.iter().all(Option::is_none) {
            return None;
        }
        let now = Instant::now();
        let mut t = self.probes.get(&c.name).filter(|t| t.id == rec.id).cloned().unwrap_or_else(|| {
            // A new attempt: probes start after their initial delay, counted
            // from the container's start.
            let due = |p: Option<&Probe>| p.map(|p| now + p.initial_delay().saturating_sub(self.since(rec.started_at)));
            ProbeTrack {
                id: rec.id.clone(),
                started: c.startup_probe.is_none(),
                ready: c.readiness_probe.is_none(),
                due: [due(probes[STARTUP]), due(probes[LIVENESS]), due(probes[READINESS])],
                ..Default::default()
            }
        });
        let mut kill: Option<String> = None;
        for k in [STARTUP, LIVENESS, READINESS] {
            let Some(p) = probes[k] else { continue };
            if (k == STARTUP) == t.started || t.due[k].is_none_or(|due| due > Instant::now()) {
                continue;
            }
            let outcome = probe::run(self.rt(), &rec.id, sb.netns.clone(), c, p).await;
            t.due[k] = Some(Instant::now() + p.period());
            match outcome {
                Outcome::Success => {
                    t.successes[k] += 1;
                    t.failures[k] = 0;
                }
                Outcome::Failure(msg) => {
                    t.failures[k] += 1;
                    t.successes[k] = 0;
                    let name = ["Startup", "Liveness", "Readiness"][k];
                    tracing::info!(container = %c.name, failures = t.failures[k], "{name} probe failed: {msg}");
                    if k != READINESS && t.failures[k] >= p.failure_threshold() {
                        kill = Some(format!("{name} probe failed: {msg}"));
                    }
                }
            }
            match k {
                STARTUP if t.successes[k] >= p.success_threshold() => t.started = true,
                READINESS if t.successes[k] >= p.success_threshold() => t.ready = true,
                READINESS if t.failures[k] >= p.failure_threshold() => t.ready = false,
                _ => {}
            }
            if kill.is_some() {
                break;
            }
        }
        if let Some(reason) = kill {
            tracing::warn!(container = %c.name, "{reason}; the container will be restarted");
            let grace = d.pod.spec.termination_grace_period_seconds.unwrap_or(30);
            if let Err(e) = self.rt().stop_container(&rec.id, grace).await {
                tracing::warn!(container = %c.name, error = %e, "cannot stop the container");
            }
            t.ready = c.readiness_probe.is_none();
            self.probes.insert(c.name.clone(), t);
            return Some(Instant::now());
        }
        let next = t.due.iter().enumerate().filter(|(k, _)| (*k == STARTUP) != t.started).filter_map(|(_, d)| *d).min();
        self.probes.insert(c.name.clone(), t);
        next
    }

    /// A new sandbox, unless the pod has finished for good (restartPolicy
    /// Never and every container has run).
    async fn new_sandbox(
        &mut self,
        d: &DesiredPod,
        old: &[SandboxRecord],
    ) -> Result<Option<SandboxRecord>, RuntimeError> {
        let all: Vec<ContainerRecord> = old.iter().flat_map(|s| self.containers_in(&s.id)).collect();
        let finished = |c: &Container| all.iter().any(|r| r.name() == c.name && r.state == ContainerState::Exited);
        let done = match d.pod.spec.restart_policy {
            RestartPolicy::Never => d.pod.spec.containers.iter().all(finished),
            RestartPolicy::OnFailure => d.pod.spec.containers.iter().all(|c| {
                all.iter().any(|r| r.name() == c.name && r.state == ContainerState::Exited && r.exit_code == 0)
            }),
            RestartPolicy::Always => false,
        };
        if done && !old.is_empty() {
            return Ok(None);
        }
        let attempt = old.iter().filter_map(|s| s.config.metadata.as_ref().map(|m| m.attempt + 1)).max().unwrap_or(0);
        for s in old {
            self.rt().remove_pod_sandbox(&s.id).await?;
        }
        let log_dir = translate::log_directory(&self.ctx.paths.logs(), &d.pod, &self.uid);
        let gateway = *self.ctx.dns_gateway.read().unwrap_or_else(|p| p.into_inner());
        let config = match gateway {
            Some(gw) if self.ctx.dns.servers.is_empty() => {
                let dns = ClusterDns { servers: vec![gw], ..self.ctx.dns.clone() };
                translate::sandbox_config(&d.pod, &self.uid, attempt, &log_dir, &d.source, &dns)
            }
            _ => translate::sandbox_config(&d.pod, &self.uid, attempt, &log_dir, &d.source, &self.ctx.dns),
        };
        let id = self.rt().run_pod_sandbox(config, String::new()).await?;
        Ok(self.rt().sandbox_records().into_iter().find(|s| s.id == id))
    }

    /// Pulls if the policy says so; Err carries the waiting reason.
    async fn ensure_image(&mut self, d: &DesiredPod, c: &Container) -> Result<(), (Waiting, Option<Instant>)> {
        let present = matches!(self.rt().image_status(&c.image), Ok(Some(_)));
        let policy = c.pull_policy();
        if present && policy != PullPolicy::Always {
            return Ok(());
        }
        if policy == PullPolicy::Never {
            let msg = format!("container image {:?} is not present with pull policy of Never", c.image);
            return Err((waiting(WaitingReason::ErrImageNeverPull, msg), None));
        }
        if let Some((_, not_before, err, offline)) = self.pulls.get(&c.image) {
            if Instant::now() < *not_before && present && *offline {
                // Still offline, as at the last try: the image here will do.
                return Ok(());
            }
            if Instant::now() < *not_before {
                let msg = format!("Back-off pulling image {:?}: {err}", c.image);
                return Err((waiting(WaitingReason::ImagePullBackOff, msg), Some(*not_before)));
            }
        }
        match self.rt().pull_image(&c.image, None).await {
            Ok(id) => {
                tracing::info!(image = %c.image, id = %id, "pulled image");
                self.pulls.remove(&c.image);
                Ok(())
            }
            // Offline, a node runs what it has: `Always` asks for the
            // newest image, and there is no newer one to be had now. (A
            // registry that answers — not found, unauthorized — still fails
            // the pull, as in Kubernetes.)
            Err(e) if present && e.registry_unreachable() => {
                tracing::warn!(image = %c.image, error = %e, "registry unreachable; running the image this node has");
                self.pull_failed(&c.image, &e, true);
                self.notice(
                    d,
                    "PulledFromCache",
                    format!("Failed to pull image {:?} ({e}); using the image already on the node", c.image),
                );
                Ok(())
            }
            Err(e) => {
                tracing::warn!(image = %c.image, error = %e, "image pull failed");
                let not_before = self.pull_failed(&c.image, &e, false);
                let msg = format!("failed to pull image {:?}: {e}", c.image);
                Err((waiting(WaitingReason::ErrImagePull, msg), Some(not_before)))
            }
        }
    }

    /// Counts a failed pull of `image` in its backoff; returns when the
    /// next may be tried.
    fn pull_failed(&mut self, image: &str, e: &impl std::fmt::Display, offline: bool) -> Instant {
        let entry = self
            .pulls
            .entry(image.to_owned())
            .or_insert_with(|| (Backoff::default(), Instant::now(), String::new(), offline));
        entry.0.restarted(&self.ctx.backoff, Duration::ZERO);
        entry.1 = Instant::now() + entry.0.delay(&self.ctx.backoff, Duration::ZERO);
        entry.2 = e.to_string();
        entry.3 = offline;
        entry.1
    }

    /// Forgets the last incarnation of the pod (after its teardown).
    fn reset(&mut self) {
        self.restarts.clear();
        self.pulls.clear();
        self.waiting.clear();
        self.written = None;
        self.probes.clear();
        self.deadline = None;
        self.pre_stopped = Default::default();
        self.terminated = false;
    }

    /// A Warning event about this pod for the fleet's next report.
    fn notice(&self, d: &DesiredPod, reason: &str, message: String) {
        let m = &d.pod.metadata;
        let ev = kedge_common::wire::Event {
            time: jiff::Timestamp::now().as_second(),
            normal: false,
            reason: reason.to_owned(),
            message,
            pod: Some((m.namespace.clone().unwrap_or_else(|| "default".to_owned()), m.name.clone(), d.uid.clone())),
            seq: 0,
        };
        let mut notices = self.ctx.notices.lock().unwrap_or_else(|p| p.into_inner());
        // Taken with each fleet report; without a link, only the latest.
        if notices.len() >= MAX_NOTICES {
            notices.remove(0);
        }
        notices.push(ev);
    }

    /// Creates and starts one attempt of a container. Some(when) = retry later.
    async fn start_new(
        &mut self,
        d: &DesiredPod,
        c: &Container,
        sandbox: &SandboxRecord,
        attempt: u32,
    ) -> Option<Instant> {
        if let Err((w, at)) = self.ensure_image(d, c).await {
            self.waiting.insert(c.name.clone(), w);
            return Some(at.unwrap_or_else(|| Instant::now() + self.ctx.backoff.base));
        }
        let volumes = match translate::prepare_volumes(&d.pod, &self.ctx.volumes_dir(&self.uid), &self.ctx.storage) {
            Ok(v) => v,
            Err(e) => {
                self.waiting.insert(c.name.clone(), waiting(WaitingReason::CreateContainerConfigError, e.to_string()));
                return Some(Instant::now() + self.ctx.backoff.base);
            }
        };
        let config = match translate::container_config(&d.pod, &self.uid, c, attempt, &volumes) {
            Ok(cfg) => cfg,
            Err(e) => {
                self.waiting.insert(c.name.clone(), waiting(WaitingReason::CreateContainerConfigError, e.to_string()));
                return Some(Instant::now() + self.ctx.backoff.base);
            }
        };
        let id = match self.rt().create_container(&sandbox.id, config, Some(&sandbox.config)).await {
            Ok(id) => id,
            Err(e) => {
                tracing::warn!(container = %c.name, error = %e, "create failed");
                self.waiting.insert(c.name.clone(), waiting(WaitingReason::CreateContainerError, e.to_string()));
                return Some(Instant::now() + self.ctx.backoff.base);
            }
        };
        if let Err(e) = self.rt().start_container(&id).await {
            tracing::warn!(container = %c.name, error = %e, "start failed");
            self.waiting.insert(c.name.clone(), waiting(WaitingReason::RunContainerError, e.to_string()));
            return Some(Instant::now() + self.ctx.backoff.base);
        }
        self.waiting.remove(&c.name);
        None
    }

    fn write_status(&mut self, d: &DesiredPod, records: &[ContainerRecord]) {
        let latest = |name: &str| records.iter().filter(|r| r.name() == name).max_by_key(|r| r.attempt());
        let states: Vec<Option<&ContainerRecord>> = d.pod.spec.containers.iter().map(|c| latest(&c.name)).collect();
        let policy = d.pod.spec.restart_policy;
        let exited_for_good = |r: &ContainerRecord| r.state == ContainerState::Exited && !policy.restarts(r.exit_code);
        let phase = if self.terminated {
            // Stopped for its deletion: a terminal phase, as the kubelet
            // gives a pod it has killed.
            if states.iter().all(|s| s.is_some_and(|r| r.state == ContainerState::Exited && r.exit_code == 0)) {
                PodPhase::Succeeded
            } else {
                PodPhase::Failed
            }
        } else if states.iter().all(|s| s.is_some_and(exited_for_good)) {
            if states.iter().all(|s| s.is_some_and(|r| r.exit_code == 0)) {
                PodPhase::Succeeded
            } else {
                PodPhase::Failed
            }
        } else if states.iter().all(|s| s.is_some())
            && states.iter().any(|s| s.is_some_and(|r| r.state != ContainerState::Created))
        {
            // As the kubelet's getPhase: every container has started at
            // least once, and some run or wait to be restarted.
            PodPhase::Running
        } else {
            PodPhase::Pending
        };
        let status = PodStatusFile {
            uid: self.uid.clone(),
            name: d.pod.metadata.name.clone(),
            namespace: d.pod.namespace().to_string(),
            source: d.source.clone(),
            phase,
            waiting: self.waiting.clone(),
            containers: d.pod.spec.containers.iter().map(|c| c.name.clone()).collect(),
            ready: self.probed(
                d,
                &latest,
                |c| c.readiness_probe.is_some() || c.startup_probe.is_some(),
                |t| t.started && t.ready,
            ),
            started: self.probed(d, &latest, |c| c.startup_probe.is_some(), |t| t.started),
            terminated: self.terminated,
        };
        if self.written.as_ref() != Some(&status) {
            if let Err(e) = write_status(&self.ctx.paths, &status) {
                tracing::warn!(error = %e, "cannot write pod status");
            }
            self.ctx.statuses().insert(self.uid.clone(), status.clone());
            self.written = Some(status);
        }
        self.ctx.changed.notify_one();
    }

    /// `flag` of the probes of the containers `which` selects, for their
    /// current attempt (false until its probes have run).
    fn probed<'r>(
        &self,
        d: &DesiredPod,
        latest: &dyn Fn(&str) -> Option<&'r ContainerRecord>,
        which: impl Fn(&Container) -> bool,
        flag: impl Fn(&ProbeTrack) -> bool,
    ) -> BTreeMap<String, bool> {
        d.pod
            .spec
            .containers
            .iter()
            .filter(|c| which(c))
            .map(|c| {
                let current = latest(&c.name).map(|r| r.id.as_str());
                let on = self.probes.get(&c.name).is_some_and(|t| Some(t.id.as_str()) == current && flag(t));
                (c.name.clone(), on)
            })
            .collect()
    }

    /// Stops the pod for its deletion, as the kubelet's killPod: each
    /// running container's preStop hook (once), then SIGTERM, and SIGKILL
    /// when the grace period is over (at least [`MINIMUM_GRACE`] after the
    /// hook). Then the status says `terminated`, and the report tells the
    /// controller the object may go.
    async fn terminate(&mut self, d: &DesiredPod) {
        let deadline = self.deadline.unwrap_or_else(Instant::now);
        let mut stops = tokio::task::JoinSet::new();
        for s in self.sandboxes() {
            for rec in self.containers_in(&s.id) {
                if rec.state == ContainerState::Exited {
                    continue;
                }
                let rt = self.rt().clone();
                let hook = (rec.state == ContainerState::Running && !self.pre_stopped.contains(&rec.id))
                    .then(|| {
                        let c = d.pod.spec.containers.iter().find(|c| c.name == rec.name())?;
                        Some((c.clone(), c.lifecycle.as_ref()?.pre_stop.clone()?))
                    })
                    .flatten();
                if hook.is_some() {
                    self.pre_stopped.insert(rec.id.clone());
                }
                let netns = s.netns.clone();
                stops.spawn(async move {
                    if let Some((c, h)) = hook {
                        let left = deadline.saturating_duration_since(Instant::now());
                        if tokio::time::timeout(left, pre_stop(&rt, &rec.id, netns, &c, &h)).await.is_err() {
                            tracing::info!(
                                container = rec.name(),
                                "preStop hook still running at the end of the grace period"
                            );
                        }
                    }
                    let left = deadline.saturating_duration_since(Instant::now()).max(MINIMUM_GRACE);
                    let secs = i64::try_from(left.as_secs_f64().ceil() as u64).unwrap_or(i64::MAX);
                    rt.stop_container(&rec.id, secs).await
                });
            }
        }
        while let Some(r) = stops.join_next().await {
            if let Ok(Err(e)) = r {
                tracing::warn!(error = %e, "stopping a container failed");
            }
        }
        tracing::info!("pod stopped for its deletion");
        self.terminated = true;
        let records: Vec<ContainerRecord> = self.sandboxes().iter().flat_map(|s| self.containers_in(&s.id)).collect();
        self.waiting.clear();
        self.write_status(d, &records);
    }

    /// Stops every container (SIGTERM, grace period, SIGKILL) and removes
    /// the pod's sandboxes, volumes, logs and status. A controller's pod
    /// that leaves the snapshot has stopped already (an ordinary deletion
    /// arrives first as a grace period) or was force-deleted, which the
    /// kubelet answers with a 1 s grace; a static pod whose file went gets
    /// its own grace period.
    async fn teardown(&mut self, last: Option<&DesiredPod>) {
        let grace = match last {
            Some(d) if d.source.starts_with(crate::fleet::CONTROLLER_PREFIX) => 1,
            _ => last.and_then(|d| d.pod.spec.termination_grace_period_seconds).unwrap_or(30),
        };
        let sandboxes = self.sandboxes();
        let mut stops = tokio::task::JoinSet::new();
        for s in &sandboxes {
            for c in self.containers_in(&s.id) {
                let rt = self.rt().clone();
                stops.spawn(async move { rt.stop_container(&c.id, grace).await });
            }
        }
        while let Some(r) = stops.join_next().await {
            if let Ok(Err(e)) = r {
                tracing::warn!(error = %e, "stopping a container failed");
            }
        }
        for s in &sandboxes {
            if let Err(e) = self.rt().remove_pod_sandbox(&s.id).await {
                tracing::warn!(sandbox = %s.id, error = %e, "removing the sandbox failed");
            }
            if let Some(meta) = &s.config.metadata {
                let _ = std::fs::remove_dir_all(
                    self.ctx.paths.logs().join(format!("{}_{}_{}", meta.namespace, meta.name, meta.uid)),
                );
            }
        }
        let _ = std::fs::remove_dir_all(self.ctx.volumes_dir(&self.uid));
        let _ = std::fs::remove_file(super::status::status_path(&self.ctx.paths, &self.uid));
        self.ctx.statuses().remove(&self.uid);
        tracing::info!("pod removed");
    }
}

#[cfg(test)]
mod tests;
