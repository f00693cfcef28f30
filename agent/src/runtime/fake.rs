//! A recording fake of the [`CriRuntime`]: sandboxes and containers are
//! records in memory, nothing runs. For unit tests of the pod workers and for
//! the fleet simulator, which choose it explicitly; the agent binary never
//! does.
//!
//! Time is tokio's: records are stamped with a wall clock that advances with
//! `tokio::time`, so tests on paused time see backoffs and probe periods pass
//! without waiting. What a container does is scripted per container name
//! ([`Script`]): how long it runs and with what code it exits, whether create
//! or start fail, and the exit codes its exec probes return, in turn. Every
//! call is recorded ([`Call`]) with the tokio time it happened at.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use k8s_cri::v1 as cri;
use kedge_common::wire::TerminatedReason;
use tokio::sync::watch;
use tokio::time::Instant;

use super::{
    ContainerRecord, ContainerState, CriRuntime, Result, RuntimeError, SandboxRecord, SandboxState, Snapshotter,
    convert,
};
use crate::images::registry::Credentials;

/// What [`FakeRuntime::unreachable_pull`] records in place of a message.
const UNREACHABLE: &str = "\0unreachable";

/// What one container does when started.
#[derive(Debug, Clone, Default)]
pub struct Script {
    /// Exits this long after each start (None: runs until stopped).
    pub exits_after: Option<Duration>,
    /// The exit code when it exits on its own.
    pub exit_code: i32,
    /// CreateContainer fails with this message.
    pub create_error: Option<String>,
    /// StartContainer fails with this message.
    pub start_error: Option<String>,
    /// Exit codes of successive ExecSync calls, by command (its words
    /// joined by spaces); the last one repeats. Unlisted commands succeed.
    pub exec_codes: HashMap<String, VecDeque<i32>>,
    /// Ignores SIGTERM: a stop takes its whole timeout.
    pub ignores_sigterm: bool,
}

/// One call into the fake, with when it happened (tokio time since the fake
/// was made) and the container's name where there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    RunPodSandbox { uid: String, attempt: u32 },
    RemovePodSandbox { uid: String },
    CreateContainer { name: String, attempt: u32 },
    StartContainer { name: String, attempt: u32 },
    StopContainer { name: String, timeout: i64 },
    RemoveContainer { name: String, attempt: u32 },
    ExecSync { name: String, cmd: Vec<String> },
    PullImage { image: String },
}

#[derive(Default)]
struct State {
    sandboxes: BTreeMap<String, SandboxRecord>,
    containers: BTreeMap<String, ContainerRecord>,
    images: BTreeSet<String>,
    pull_errors: HashMap<String, String>,
    scripts: HashMap<String, Script>,
    calls: Vec<(Duration, Call)>,
    /// Calls are not recorded ([`FakeRuntime::quiet`]).
    quiet: bool,
    next_id: u64,
}

struct Inner {
    state: Mutex<State>,
    changed: watch::Sender<u64>,
    /// Wall-clock nanoseconds at `start`.
    base_ns: i64,
    start: Instant,
}

#[derive(Clone)]
pub struct FakeRuntime {
    inner: Arc<Inner>,
}

impl Default for FakeRuntime {
    fn default() -> Self {
        FakeRuntime::new()
    }
}

impl FakeRuntime {
    pub fn new() -> FakeRuntime {
        let (changed, _) = watch::channel(0);
        FakeRuntime {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                changed,
                base_ns: super::records::now_ns(),
                start: Instant::now(),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn notify(&self) {
        self.inner.changed.send_modify(|n| *n += 1);
    }

    fn elapsed(&self) -> Duration {
        self.inner.start.elapsed()
    }

    fn record(&self, call: Call) {
        let at = self.elapsed();
        let mut st = self.state();
        if !st.quiet {
            st.calls.push((at, call));
        }
    }

    /// Stops recording calls (the fleet simulator's nodes run for hours;
    /// the record would only grow).
    pub fn quiet(&self) {
        self.state().quiet = true;
    }

    /// Makes `image` present, as an import would.
    pub fn add_image(&self, image: &str) {
        self.state().images.insert(image.to_string());
    }

    /// Pulls of `image` fail with `message` (until [`FakeRuntime::fix_pull`]).
    /// Pulls of `image` fail with `message` (the registry answered).
    pub fn fail_pull(&self, image: &str, message: &str) {
        self.state().pull_errors.insert(image.to_string(), message.to_string());
    }

    /// Pulls of `image` fail as when the registry cannot be reached.
    pub fn unreachable_pull(&self, image: &str) {
        self.state().pull_errors.insert(image.to_string(), UNREACHABLE.to_string());
    }

    pub fn fix_pull(&self, image: &str) {
        self.state().pull_errors.remove(image);
    }

    /// What the container named `name` (in any pod) does from its next start on.
    pub fn script(&self, name: &str, script: Script) {
        self.state().scripts.insert(name.to_string(), script);
    }

    /// Every call so far, with its time since the fake was made.
    pub fn calls(&self) -> Vec<(Duration, Call)> {
        self.state().calls.clone()
    }

    /// Ends a running container now with `code`, as a crash would.
    pub fn exit(&self, id: &str, code: i32) {
        self.exited(id, code, None);
    }

    fn exited(&self, id: &str, code: i32, only_if_started_at: Option<i64>) {
        let now = self.now_ns();
        {
            let mut st = self.state();
            let Some(c) = st.containers.get_mut(id) else { return };
            if c.state != ContainerState::Running || only_if_started_at.is_some_and(|t| t != c.started_at) {
                return;
            }
            c.mark_exited(code, TerminatedReason::for_exit(Some(code)), "", now);
        }
        self.notify();
    }

    fn new_id(&self, prefix: &str) -> String {
        let mut st = self.state();
        st.next_id += 1;
        format!("{prefix}{:06}", st.next_id)
    }

    fn sandbox(&self, id: &str) -> Result<SandboxRecord> {
        self.state().sandboxes.get(id).cloned().ok_or_else(|| RuntimeError::NotFound { kind: "sandbox", id: id.into() })
    }

    fn container(&self, id: &str) -> Result<ContainerRecord> {
        self.state()
            .containers
            .get(id)
            .cloned()
            .ok_or_else(|| RuntimeError::NotFound { kind: "container", id: id.into() })
    }

    fn name_and_attempt(c: &ContainerRecord) -> (String, u32) {
        (c.name().to_string(), c.attempt())
    }
}

fn uid_of(config: &cri::PodSandboxConfig) -> String {
    config.metadata.as_ref().map(|m| m.uid.clone()).unwrap_or_default()
}

impl CriRuntime for FakeRuntime {
    fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.changed.subscribe()
    }

    fn sandbox_records(&self) -> Vec<SandboxRecord> {
        self.state().sandboxes.values().cloned().collect()
    }

    fn container_records(&self) -> Vec<ContainerRecord> {
        self.state().containers.values().cloned().collect()
    }

    fn now_ns(&self) -> i64 {
        self.inner.base_ns + i64::try_from(self.elapsed().as_nanos()).unwrap_or(i64::MAX)
    }

    fn version(&self) -> cri::VersionResponse {
        cri::VersionResponse {
            version: "0.1.0".into(),
            runtime_name: "kedge-fake".into(),
            runtime_version: kedge_common::VERSION.into(),
            runtime_api_version: "v1".into(),
        }
    }

    fn status(&self) -> cri::StatusResponse {
        super::ready_status()
    }

    async fn run_pod_sandbox(&self, config: cri::PodSandboxConfig, runtime_handler: String) -> Result<String> {
        let attempt = config.metadata.as_ref().map_or(0, |m| m.attempt);
        self.record(Call::RunPodSandbox { uid: uid_of(&config), attempt });
        let id = self.new_id("sandbox-");
        let rec = SandboxRecord {
            id: id.clone(),
            hostname: config.hostname.clone(),
            config,
            runtime_handler,
            state: SandboxState::Ready,
            created_at: self.now_ns(),
            netns: None,
            ipcns: None,
            utsns: None,
            cgroup_parent: format!("/kedge/{id}"),
            ip: String::new(),
            boot_id: String::new(),
        };
        self.state().sandboxes.insert(id.clone(), rec);
        self.notify();
        Ok(id)
    }

    async fn stop_pod_sandbox(&self, id: &str) -> Result<()> {
        let running: Vec<String> = self
            .state()
            .containers
            .values()
            .filter(|c| c.sandbox_id == id && c.state != ContainerState::Exited)
            .map(|c| c.id.clone())
            .collect();
        for c in running {
            self.stop_container(&c, 0).await?;
        }
        if let Some(s) = self.state().sandboxes.get_mut(id) {
            s.state = SandboxState::NotReady;
        }
        self.notify();
        Ok(())
    }

    async fn remove_pod_sandbox(&self, id: &str) -> Result<()> {
        let Ok(rec) = self.sandbox(id) else { return Ok(()) };
        self.record(Call::RemovePodSandbox { uid: uid_of(&rec.config) });
        self.stop_pod_sandbox(id).await?;
        {
            let mut st = self.state();
            st.containers.retain(|_, c| c.sandbox_id != id);
            st.sandboxes.remove(id);
        }
        self.notify();
        Ok(())
    }

    fn pod_sandbox_status(&self, id: &str) -> Result<cri::PodSandboxStatus> {
        Ok(convert::sandbox_status(&self.sandbox(id)?))
    }

    fn list_pod_sandbox(&self, filter: Option<&cri::PodSandboxFilter>) -> Vec<cri::PodSandbox> {
        self.state().sandboxes.values().filter(|s| convert::sandbox_matches(s, filter)).map(convert::sandbox).collect()
    }

    async fn create_container(
        &self,
        sandbox_id: &str,
        config: cri::ContainerConfig,
        _sandbox_config: Option<&cri::PodSandboxConfig>,
    ) -> Result<String> {
        let sandbox = self.sandbox(sandbox_id)?;
        super::check_create(&sandbox, &config)?;
        let meta = config.metadata.clone().unwrap_or_default();
        self.record(Call::CreateContainer { name: meta.name.clone(), attempt: meta.attempt });
        let script = self.state().scripts.get(&meta.name).cloned().unwrap_or_default();
        if let Some(e) = script.create_error {
            return Err(RuntimeError::FailedPrecondition(e));
        }
        let image = config.image.as_ref().map(|i| i.image.clone()).unwrap_or_default();
        if !self.state().images.contains(&image) {
            return Err(RuntimeError::NotFound { kind: "image", id: image });
        }
        let id = self.new_id("container-");
        let rec = ContainerRecord {
            id: id.clone(),
            sandbox_id: sandbox_id.to_string(),
            image_id: format!("sha256:{image}"),
            image_ref: image,
            config,
            state: ContainerState::Created,
            created_at: self.now_ns(),
            started_at: 0,
            finished_at: 0,
            pid: None,
            pid_start: None,
            exit_code: 0,
            reason: None,
            message: String::new(),
            log_path: Default::default(),
            cgroup_path: format!("{}/{id}", sandbox.cgroup_parent),
            snapshotter: Snapshotter::Copy,
            boot_id: String::new(),
        };
        self.state().containers.insert(id.clone(), rec);
        self.notify();
        Ok(id)
    }

    async fn start_container(&self, id: &str) -> Result<()> {
        let rec = self.container(id)?;
        let (name, attempt) = FakeRuntime::name_and_attempt(&rec);
        self.record(Call::StartContainer { name: name.clone(), attempt });
        if !rec.state.can_start() {
            return Err(RuntimeError::FailedPrecondition(format!("container {id} is {:?}, not Created", rec.state)));
        }
        let script = self.state().scripts.get(&name).cloned().unwrap_or_default();
        if let Some(e) = script.start_error {
            let now = self.now_ns();
            if let Some(c) = self.state().containers.get_mut(id) {
                c.started_at = now;
                c.mark_exited(128, TerminatedReason::Error, &e, now);
            }
            self.notify();
            return Err(RuntimeError::FailedPrecondition(e));
        }
        let started_at = self.now_ns();
        if let Some(c) = self.state().containers.get_mut(id) {
            c.state = ContainerState::Running;
            c.started_at = started_at;
        }
        if let Some(after) = script.exits_after {
            let me = self.clone();
            let id = id.to_string();
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                me.exited(&id, script.exit_code, Some(started_at));
            });
        }
        self.notify();
        Ok(())
    }

    async fn stop_container(&self, id: &str, timeout: i64) -> Result<()> {
        let rec = self.container(id)?;
        self.record(Call::StopContainer { name: rec.name().to_string(), timeout });
        if rec.state == ContainerState::Exited {
            return Ok(());
        }
        let ignores = self.state().scripts.get(rec.name()).is_some_and(|s| s.ignores_sigterm);
        if ignores {
            tokio::time::sleep(Duration::from_secs(timeout.max(0).unsigned_abs())).await;
        }
        let now = self.now_ns();
        if let Some(c) = self.state().containers.get_mut(id) {
            // As a PID 1 that ignores SIGTERM: killed.
            c.mark_exited(137, TerminatedReason::Error, "", now);
        }
        self.notify();
        Ok(())
    }

    async fn remove_container(&self, id: &str) -> Result<()> {
        let Ok(rec) = self.container(id) else { return Ok(()) };
        let (name, attempt) = FakeRuntime::name_and_attempt(&rec);
        self.record(Call::RemoveContainer { name, attempt });
        self.stop_container(id, 0).await?;
        self.state().containers.remove(id);
        self.notify();
        Ok(())
    }

    fn container_status(&self, id: &str) -> Result<cri::ContainerStatus> {
        Ok(convert::container_status(&self.container(id)?))
    }

    fn list_containers(&self, filter: Option<&cri::ContainerFilter>) -> Vec<cri::Container> {
        self.state()
            .containers
            .values()
            .filter(|c| convert::container_matches(c, filter))
            .map(convert::container)
            .collect()
    }

    async fn exec_sync(&self, id: &str, cmd: Vec<String>, _timeout: Option<Duration>) -> Result<cri::ExecSyncResponse> {
        let rec = self.container(id)?;
        let name = rec.name().to_string();
        self.record(Call::ExecSync { name: name.clone(), cmd: cmd.clone() });
        if rec.state != ContainerState::Running {
            return Err(RuntimeError::FailedPrecondition(format!("cannot exec in a stopped container {id}")));
        }
        let exit_code = {
            let mut st = self.state();
            match st.scripts.get_mut(&name).and_then(|s| s.exec_codes.get_mut(&cmd.join(" "))) {
                Some(codes) if codes.len() > 1 => codes.pop_front().unwrap_or(0),
                Some(codes) => codes.front().copied().unwrap_or(0),
                None => 0,
            }
        };
        Ok(cri::ExecSyncResponse { stdout: Vec::new(), stderr: Vec::new(), exit_code })
    }

    fn list_images(&self) -> Result<Vec<cri::Image>> {
        Ok(self.state().images.iter().map(|i| image(i)).collect())
    }

    fn image_status(&self, name: &str) -> Result<Option<cri::Image>> {
        Ok(self.state().images.get(name).map(|i| image(i)))
    }

    async fn pull_image(&self, name: &str, _creds: Option<Credentials>) -> Result<String> {
        self.record(Call::PullImage { image: name.to_string() });
        let mut st = self.state();
        if let Some(e) = st.pull_errors.get(name) {
            if e == UNREACHABLE {
                let registry = name.split('/').next().unwrap_or_default().to_owned();
                let message = "connection refused".to_owned();
                let e = crate::images::registry::PullError::Unreachable { registry, message };
                return Err(RuntimeError::Image(e.into()));
            }
            return Err(RuntimeError::FailedPrecondition(e.clone()));
        }
        st.images.insert(name.to_string());
        Ok(format!("sha256:{name}"))
    }

    async fn remove_image(&self, name: &str) -> Result<()> {
        self.state().images.remove(name);
        Ok(())
    }

    fn image_fs_info(&self) -> cri::ImageFsInfoResponse {
        cri::ImageFsInfoResponse::default()
    }

    async fn collect_images_if_full(&self, _high_percent: u8, _wanted: &[String]) -> Result<Vec<String>> {
        Ok(Vec::new())
    }

    // The fake runs nothing, so it measures nothing: stats name the object
    // and carry no usage.
    async fn container_stats(&self, id: &str) -> Result<cri::ContainerStats> {
        Ok(container_stats(&self.container(id)?))
    }

    async fn list_container_stats(
        &self,
        filter: Option<cri::ContainerStatsFilter>,
    ) -> Result<Vec<cri::ContainerStats>> {
        let f = filter.unwrap_or_default();
        Ok(self
            .container_records()
            .iter()
            .filter(|c| c.state != ContainerState::Exited)
            .filter(|c| f.id.is_empty() || c.id.starts_with(&f.id))
            .filter(|c| f.pod_sandbox_id.is_empty() || c.sandbox_id.starts_with(&f.pod_sandbox_id))
            .map(container_stats)
            .collect())
    }

    async fn pod_sandbox_stats(&self, id: &str) -> Result<cri::PodSandboxStats> {
        Ok(sandbox_stats(&self.sandbox(id)?))
    }

    async fn list_pod_sandbox_stats(
        &self,
        filter: Option<cri::PodSandboxStatsFilter>,
    ) -> Result<Vec<cri::PodSandboxStats>> {
        let f = filter.unwrap_or_default();
        Ok(self
            .sandbox_records()
            .iter()
            .filter(|s| s.state == SandboxState::Ready)
            .filter(|s| f.id.is_empty() || s.id.starts_with(&f.id))
            .map(sandbox_stats)
            .collect())
    }
}

fn container_stats(c: &ContainerRecord) -> cri::ContainerStats {
    let attributes = cri::ContainerAttributes {
        id: c.id.clone(),
        metadata: c.config.metadata.clone(),
        labels: c.config.labels.clone(),
        annotations: c.config.annotations.clone(),
    };
    cri::ContainerStats { attributes: Some(attributes), ..Default::default() }
}

fn sandbox_stats(s: &SandboxRecord) -> cri::PodSandboxStats {
    let attributes = cri::PodSandboxAttributes {
        id: s.id.clone(),
        metadata: s.config.metadata.clone(),
        labels: s.config.labels.clone(),
        annotations: s.config.annotations.clone(),
    };
    cri::PodSandboxStats { attributes: Some(attributes), ..Default::default() }
}

fn image(name: &str) -> cri::Image {
    cri::Image { id: format!("sha256:{name}"), repo_tags: vec![name.to_string()], ..Default::default() }
}
