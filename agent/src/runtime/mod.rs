//! The CRI runtime: pod sandboxes and containers on youki's libcontainer,
//! with the semantics of the CRI's RuntimeService and ImageService. The pod
//! workers call it in-process; `grpc.rs` serves the same object on a socket.
//!
//! Every container's init is this process's child (libcontainer forks it with
//! CLONE_PARENT): a pidfd per container tells when it exits, `waitpid` reaps
//! it and gives the exit status. Containers adopted from an earlier agent are
//! watched by pidfd too; their exit status went to their new parent, so they
//! end with exit code 255 and reason `Unknown`, as containerd reports them.

mod api;
pub mod container;
mod convert;
pub mod fake;
mod image_service;
pub mod logs;
mod netdev;
pub(crate) mod pidfd;
pub mod pty;
pub mod records;
mod sandbox;
mod seccomp;
mod snapshot;
mod spec;
pub mod stats;
pub mod stdio;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use k8s_cri::v1 as cri;
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::sync::watch;

use crate::images::{ImageError, ImageStore};
pub use api::CriRuntime;
use kedge_common::wire::TerminatedReason;
pub use records::{ContainerRecord, ContainerState, SandboxRecord, SandboxState, Snapshotter};

/// Exit code recorded when the real one could not be observed (containerd's value).
pub const UNKNOWN_EXIT_CODE: i32 = 255;

/// How long a `tty: true` container has to send its terminal at create.
const CONSOLE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{kind} {id:?} not found")]
    NotFound { kind: &'static str, id: String },
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("container {id}: {source}")]
    Libcontainer { id: String, source: libcontainer::error::LibcontainerError },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{what}: {source}")]
    Sys { what: String, source: nix::Error },
    #[error(transparent)]
    Network(#[from] crate::net::pod::NetError),
}

impl RuntimeError {
    /// A pull that never reached the registry (no route, refused, name
    /// not resolved, timed out), as opposed to one the registry answered
    /// (not found, unauthorized).
    pub fn registry_unreachable(&self) -> bool {
        matches!(self, RuntimeError::Image(ImageError::Pull(crate::images::registry::PullError::Unreachable { .. })))
    }

    pub(crate) fn io(path: impl AsRef<Path>) -> impl FnOnce(io::Error) -> RuntimeError {
        let path = path.as_ref().to_path_buf();
        move |source| RuntimeError::Io { path, source }
    }

    pub(crate) fn sys(what: impl AsRef<Path>) -> impl FnOnce(nix::Error) -> RuntimeError {
        let what = what.as_ref().display().to_string();
        move |source| RuntimeError::Sys { what, source }
    }
}

pub type Result<T> = std::result::Result<T, RuntimeError>;

#[derive(Debug, Clone)]
pub struct Options {
    pub data_dir: PathBuf,
    /// Force a snapshotter (default: overlay when the kernel has it).
    pub snapshotter: Option<Snapshotter>,
    /// pids.max for every container (None: unlimited).
    pub pids_limit: Option<i64>,
    pub log_rotation: logs::Rotation,
    /// Registries spoken to over plain HTTP besides loopback ones.
    pub insecure_registries: Vec<String>,
    /// The `kedge-agent` binary, run as the helper for every libcontainer
    /// call that clones (see `container.rs`); default: this executable.
    pub helper: PathBuf,
}

impl Options {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Options {
            data_dir: data_dir.into(),
            snapshotter: None,
            pids_limit: Some(4096),
            log_rotation: Default::default(),
            insecure_registries: Vec::new(),
            helper: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe")),
        }
    }
}

/// Where things live under the data dir.
#[derive(Debug, Clone)]
pub struct Paths {
    pub root: PathBuf,
}

impl Paths {
    pub fn images(&self) -> PathBuf {
        self.root.join("images")
    }
    pub fn pods(&self) -> PathBuf {
        self.root.join("pods")
    }
    pub fn pod(&self, id: &str) -> PathBuf {
        self.pods().join(id)
    }
    pub fn containers(&self) -> PathBuf {
        self.root.join("containers")
    }
    pub fn container(&self, id: &str) -> PathBuf {
        self.containers().join(id)
    }
    /// Namespace pins (a private mount).
    pub fn ns(&self) -> PathBuf {
        self.root.join("ns")
    }
    /// libcontainer's state root.
    pub fn state(&self) -> PathBuf {
        self.root.join("state")
    }
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }
}

#[derive(Default)]
struct State {
    sandboxes: BTreeMap<String, SandboxRecord>,
    containers: BTreeMap<String, ContainerRecord>,
}

struct Inner {
    opts: Options,
    paths: Paths,
    images: ImageStore,
    snapshotter: Snapshotter,
    boot_id: String,
    state: Mutex<State>,
    /// Bumped on every container or sandbox state change.
    changed: watch::Sender<u64>,
    /// The last CPU reading of each object, for the stats' nanocores.
    cpu_rates: stats::CpuRates,
    /// The pod network, once the node loop has one: sandboxes that are not
    /// host-network get an address on it. Without it (a standalone agent
    /// with no pod CIDR) they have only `lo`.
    network: std::sync::OnceLock<Arc<crate::net::pod::PodNet>>,
}

#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

fn random_id() -> String {
    let mut bytes = [0u8; 32];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    crate::images::hex(&bytes)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(RuntimeError::Io { path: PathBuf::from("blocking task"), source: io::Error::other(e.to_string()) })
    })
}

impl Runtime {
    /// Opens the runtime's state, adopting the containers an earlier agent
    /// left running. Must be called inside the tokio runtime.
    pub fn open(opts: Options) -> Result<Runtime> {
        let paths = Paths { root: opts.data_dir.clone() };
        for d in [paths.pods(), paths.containers(), paths.state(), paths.logs()] {
            fs::create_dir_all(&d).map_err(RuntimeError::io(&d))?;
        }
        sandbox::prepare_pin_dir(&paths.ns())?;
        // Container inits are the libcontainer helper's children; when it
        // exits they become ours, so their exits can be reaped here.
        nix::sys::prctl::set_child_subreaper(true).map_err(RuntimeError::sys("prctl(PR_SET_CHILD_SUBREAPER)"))?;
        let images = ImageStore::open(paths.images())?;
        let (changed, _) = watch::channel(0);
        let rt = Runtime {
            inner: Arc::new(Inner {
                snapshotter: snapshot::choose(opts.snapshotter),
                opts,
                images,
                boot_id: records::boot_id(),
                state: Mutex::new(State::default()),
                changed,
                paths,
                cpu_rates: Default::default(),
                network: std::sync::OnceLock::new(),
            }),
        };
        rt.recover();
        Ok(rt)
    }

    pub fn images(&self) -> &ImageStore {
        &self.inner.images
    }

    pub fn paths(&self) -> &Paths {
        &self.inner.paths
    }

    /// A receiver that changes whenever a container or sandbox does.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.changed.subscribe()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn notify(&self) {
        self.inner.changed.send_modify(|n| *n += 1);
    }

    fn save_container(&self, rec: &ContainerRecord) {
        if let Err(e) = records::save(&self.inner.paths.container(&rec.id), rec) {
            tracing::error!(container = %rec.id, error = %e, "cannot persist container state");
        }
    }

    fn save_sandbox(&self, rec: &SandboxRecord) {
        if let Err(e) = records::save(&self.inner.paths.pod(&rec.id), rec) {
            tracing::error!(sandbox = %rec.id, error = %e, "cannot persist sandbox state");
        }
    }

    /// Loads the records and re-attaches to every container still alive.
    fn recover(&self) {
        let boot = self.inner.boot_id.clone();
        let mut sandboxes: Vec<SandboxRecord> = records::load_all(&self.inner.paths.pods());
        for s in &mut sandboxes {
            let pins = sandbox::Namespaces { net: s.netns.clone(), ipc: s.ipcns.clone(), uts: s.utsns.clone() };
            if s.state == SandboxState::Ready && (s.boot_id != boot || !sandbox::namespaces_alive(&pins)) {
                s.state = SandboxState::NotReady;
                self.save_sandbox(s);
            }
        }
        let mut containers: Vec<ContainerRecord> = records::load_all(&self.inner.paths.containers());
        let mut adopt = Vec::new();
        for c in &mut containers {
            if c.state == ContainerState::Exited {
                continue;
            }
            let alive = c.boot_id == boot && records::alive(c.pid, c.pid_start);
            if alive && c.state == ContainerState::Created {
                // Its init waits for a start that will not come, holding copies of
                // the dead agent's descriptors: end it; the pod worker makes a new one.
                let _ = c.pid.map(|pid| container::signal(pid, Signal::SIGKILL));
                c.mark_exited(
                    UNKNOWN_EXIT_CODE,
                    TerminatedReason::Unknown,
                    "created by an earlier agent and never started",
                    records::now_ns(),
                );
                self.save_container(c);
            } else if alive {
                adopt.push(c.clone());
            } else {
                c.mark_exited(
                    UNKNOWN_EXIT_CODE,
                    TerminatedReason::Unknown,
                    "the container's process was gone when the agent started",
                    records::now_ns(),
                );
                self.save_container(c);
            }
        }
        self.remove_unrecorded(&containers);
        {
            let mut st = self.state();
            st.sandboxes = sandboxes.into_iter().map(|s| (s.id.clone(), s)).collect();
            st.containers = containers.into_iter().map(|c| (c.id.clone(), c)).collect();
        }
        for c in adopt {
            tracing::info!(container = %c.id, name = c.name(), pid = ?c.pid, "adopted running container");
            self.attach(&c, false);
        }
    }

    /// Containers an agent crash left half-made (killed between libcontainer's
    /// create and our record): their init waits forever for a start. Deletes
    /// them with their cgroup, root mount and directory.
    fn remove_unrecorded(&self, known: &[ContainerRecord]) {
        let paths = &self.inner.paths;
        let known: BTreeSet<&str> = known.iter().map(|c| c.id.as_str()).collect();
        for dir in [paths.state(), paths.containers()] {
            let Ok(entries) = fs::read_dir(&dir) else { continue };
            for e in entries.flatten() {
                let id = e.file_name().to_string_lossy().to_string();
                if known.contains(id.as_str()) {
                    continue;
                }
                tracing::warn!(container = %id, "removing a container left half-made by an earlier agent");
                if let Err(err) = container::delete(&id, &paths.state()) {
                    tracing::warn!(container = %id, error = %err, "could not delete it");
                }
                let cdir = paths.container(&id);
                snapshot::cleanup(self.inner.snapshotter, &cdir);
                self.inner.images.release_layers(&id);
                let _ = fs::remove_dir_all(&cdir);
            }
        }
    }

    /// Starts the log pumps and the exit watcher of a container.
    fn attach(&self, c: &ContainerRecord, child: bool) {
        let dir = self.inner.paths.container(&c.id);
        let writer = if c.log_path.as_os_str().is_empty() {
            None
        } else {
            match logs::LogWriter::open(&c.log_path, self.inner.opts.log_rotation) {
                Ok(w) => Some(Arc::new(Mutex::new(w))),
                Err(e) => {
                    tracing::warn!(container = %c.id, log = %c.log_path.display(), error = %e, "cannot open log file; output is discarded");
                    None
                }
            }
        };
        // A terminal's output is the log's stdout (the master, held from
        // create; an adopted container's terminal was lost with the agent).
        let terminal = stdio::terminal(&c.id).and_then(|m| m.try_clone().ok()).and_then(|m| pty::split(m).ok());
        let tap = stdio::tap(&c.id);
        match terminal {
            Some((r, _)) => {
                let console = dir.join("console");
                tokio::spawn(async move { logs::pump_from(r, &console, "stdout", writer, Some((tap, 1))).await });
            }
            // On a terminal the process never writes the pipes (an adopted
            // one's output is lost with the old agent's master): nothing to
            // pump, and a pipe no writer ever opens would be waited on forever.
            None if c.config.tty => {}
            None => {
                let pumps = [
                    logs::pump(dir.join("stdout"), "stdout", writer.clone(), Some((tap.clone(), 1))),
                    logs::pump(dir.join("stderr"), "stderr", writer, Some((tap, 2))),
                ];
                for p in pumps.into_iter().flatten() {
                    tokio::spawn(p);
                }
            }
        }
        if let Some(pid) = c.pid {
            let rt = self.clone();
            let id = c.id.clone();
            tokio::spawn(async move { rt.watch_exit(id, pid, child).await });
        }
    }

    async fn watch_exit(self, id: String, pid: i32, child: bool) {
        if let Err(e) = pidfd::exited(pid).await {
            tracing::warn!(container = %id, error = %e, "cannot watch container through a pidfd; polling instead");
            while records::process_start(pid).is_some() {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        let status = if child { waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)).ok() } else { None };
        let code = match status {
            Some(WaitStatus::Exited(_, code)) => Some(code),
            Some(WaitStatus::Signaled(_, sig, _)) => Some(128 + sig as i32),
            _ => None,
        };
        self.exited(&id, code);
    }

    fn exited(&self, id: &str, code: Option<i32>) {
        let rec = {
            let mut st = self.state();
            let Some(c) = st.containers.get_mut(id) else { return };
            if c.state == ContainerState::Exited {
                return;
            }
            let reason = if container::oom_killed(&c.cgroup_path) {
                TerminatedReason::OomKilled
            } else {
                TerminatedReason::for_exit(code)
            };
            let message = if code.is_none() {
                "exited while adopted from an earlier agent; its exit status was not observable"
            } else {
                ""
            };
            c.mark_exited(code.unwrap_or(UNKNOWN_EXIT_CODE), reason, message, records::now_ns());
            c.clone()
        };
        tracing::info!(container = %rec.id, name = rec.name(), exit_code = rec.exit_code, reason = ?rec.reason, "container exited");
        self.save_container(&rec);
        self.notify();
    }

    // ---- sandboxes ---------------------------------------------------------

    /// Gives non-host-network sandboxes an address on `net` from now on, and
    /// releases the addresses of sandboxes that are no longer ready (gone in
    /// a reboot, or an agent crash mid-way).
    pub async fn set_network(&self, net: Arc<crate::net::pod::PodNet>) -> Result<()> {
        let _ = self.inner.network.set(net.clone());
        let live: std::collections::BTreeSet<String> =
            self.state().sandboxes.values().filter(|s| s.state == SandboxState::Ready).map(|s| s.id.clone()).collect();
        let released = blocking(move || Ok(net.release_all_but(&live)?)).await?;
        if released > 0 {
            tracing::info!(released, "released the addresses of sandboxes that are gone");
        }
        Ok(())
    }

    pub async fn run_pod_sandbox(&self, config: cri::PodSandboxConfig, runtime_handler: String) -> Result<String> {
        let meta = config
            .metadata
            .clone()
            .ok_or_else(|| RuntimeError::InvalidArgument("sandbox config has no metadata".into()))?;
        if meta.name.is_empty() {
            return Err(RuntimeError::InvalidArgument("sandbox metadata has no name".into()));
        }
        let id = random_id();
        let dir = self.inner.paths.pod(&id);
        let hostname = if config.hostname.is_empty() { meta.name.clone() } else { config.hostname.clone() };
        let mut rec = SandboxRecord {
            id: id.clone(),
            cgroup_parent: config
                .linux
                .as_ref()
                .map(|l| l.cgroup_parent.clone())
                .filter(|c| !c.is_empty())
                .unwrap_or_else(|| format!("/kedge/{id}")),
            config,
            runtime_handler,
            state: SandboxState::Ready,
            created_at: records::now_ns(),
            netns: None,
            ipcns: None,
            utsns: None,
            hostname: hostname.clone(),
            ip: String::new(),
            boot_id: self.inner.boot_id.clone(),
        };
        let host_network = rec.host_network();
        let host_ipc = rec.host_ipc();
        let pin_dir = self.inner.paths.ns();
        let dns = rec.config.dns_config.clone();
        let hosts = crate::net::hosts::PodHosts::from_sandbox(&rec.config, &hostname);
        let setup_dir = dir.clone();
        let setup_id = id.clone();
        let hosts_again = hosts.clone();
        let ns = blocking(move || {
            sandbox::write_pod_files(&setup_dir, &hostname, dns.as_ref())?;
            // Rewritten with the pod IP below once the sandbox has one.
            sandbox::write_hosts_file(&setup_dir, &hosts, host_network, None)?;
            sandbox::create_namespaces(&pin_dir, &setup_id, !host_network, !host_ipc, &hostname)
        })
        .await;
        let ns = match ns {
            Ok(ns) => ns,
            Err(e) => {
                let _ = fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        rec.netns = ns.net;
        rec.ipcns = ns.ipc;
        rec.utsns = ns.uts;
        if host_network {
            rec.ip = host_ip().unwrap_or_default();
        } else if let (Some(net), Some(netns)) = (self.inner.network.get().cloned(), rec.netns.clone()) {
            let sandbox_id = id.clone();
            let pod_dir = dir.clone();
            let attached = blocking(move || {
                let ip = net.attach(&sandbox_id, &netns)?;
                sandbox::write_hosts_file(&pod_dir, &hosts_again, false, Some(ip))?;
                Ok(ip)
            });
            match attached.await {
                Ok(ip) => rec.ip = ip.to_string(),
                Err(e) => {
                    sandbox::release_namespaces(&sandbox::Namespaces {
                        net: rec.netns.clone(),
                        ipc: rec.ipcns.clone(),
                        uts: rec.utsns.clone(),
                    });
                    let _ = fs::remove_dir_all(&dir);
                    return Err(e);
                }
            }
        }
        self.save_sandbox(&rec);
        tracing::info!(sandbox = %id, pod = %rec.name(), "sandbox ready");
        self.state().sandboxes.insert(id.clone(), rec);
        self.notify();
        Ok(id)
    }

    fn sandbox(&self, id: &str) -> Result<SandboxRecord> {
        self.state().sandboxes.get(id).cloned().ok_or_else(|| RuntimeError::NotFound { kind: "sandbox", id: id.into() })
    }

    fn containers_of(&self, sandbox_id: &str) -> Vec<ContainerRecord> {
        self.state().containers.values().filter(|c| c.sandbox_id == sandbox_id).cloned().collect()
    }

    /// Stops every container of the sandbox (no grace: the kubelet has
    /// already stopped them gracefully) and releases its namespaces.
    pub async fn stop_pod_sandbox(&self, id: &str) -> Result<()> {
        let Ok(rec) = self.sandbox(id) else { return Ok(()) };
        for c in self.containers_of(id) {
            self.stop_container(&c.id, 0).await?;
        }
        // The CRI's StopPodSandbox reclaims the network (CNI DEL), once.
        if let (Some(net), SandboxState::Ready, false) =
            (self.inner.network.get().cloned(), rec.state, rec.host_network())
        {
            let sandbox_id = id.to_string();
            if let Err(e) = blocking(move || Ok(net.detach(&sandbox_id)?)).await {
                tracing::warn!(sandbox = %id, error = %e, "cannot release the pod's network");
            }
        }
        sandbox::release_namespaces(&sandbox::Namespaces {
            net: rec.netns.clone(),
            ipc: rec.ipcns.clone(),
            uts: rec.utsns.clone(),
        });
        let updated = {
            let mut st = self.state();
            let Some(s) = st.sandboxes.get_mut(id) else { return Ok(()) };
            s.state = SandboxState::NotReady;
            s.clone()
        };
        self.save_sandbox(&updated);
        self.notify();
        Ok(())
    }

    pub async fn remove_pod_sandbox(&self, id: &str) -> Result<()> {
        let Ok(rec) = self.sandbox(id) else { return Ok(()) };
        self.stop_pod_sandbox(id).await?;
        for c in self.containers_of(id) {
            self.remove_container(&c.id).await?;
        }
        let dir = self.inner.paths.pod(id);
        let cgroup = rec.cgroup_parent.clone();
        blocking(move || {
            sandbox::remove_cgroup(&cgroup);
            fs::remove_dir_all(&dir)
                .or_else(|e| if e.kind() == io::ErrorKind::NotFound { Ok(()) } else { Err(e) })
                .map_err(RuntimeError::io(&dir))
        })
        .await?;
        self.state().sandboxes.remove(id);
        tracing::info!(sandbox = %id, pod = %rec.name(), "sandbox removed");
        self.notify();
        Ok(())
    }

    pub fn pod_sandbox_status(&self, id: &str) -> Result<cri::PodSandboxStatus> {
        Ok(convert::sandbox_status(&self.sandbox(id)?))
    }

    pub fn list_pod_sandbox(&self, filter: Option<&cri::PodSandboxFilter>) -> Vec<cri::PodSandbox> {
        self.state().sandboxes.values().filter(|s| convert::sandbox_matches(s, filter)).map(convert::sandbox).collect()
    }

    // ---- containers --------------------------------------------------------

    pub async fn create_container(
        &self,
        sandbox_id: &str,
        config: cri::ContainerConfig,
        sandbox_config: Option<&cri::PodSandboxConfig>,
    ) -> Result<String> {
        let sandbox = self.sandbox(sandbox_id)?;
        check_create(&sandbox, &config)?;
        let image_name = config.image.as_ref().map(|i| i.image.clone()).unwrap_or_default();
        let image = self.inner.images.resolve(&image_name)?;
        let id = random_id();
        let dir = self.inner.paths.container(&id);
        let log_dir =
            sandbox_config.map(|c| c.log_directory.clone()).unwrap_or_else(|| sandbox.config.log_directory.clone());
        let log_path = if config.log_path.is_empty() {
            PathBuf::new()
        } else if log_dir.is_empty() {
            self.inner.paths.logs().join(sandbox_id).join(&config.log_path)
        } else {
            Path::new(&log_dir).join(&config.log_path)
        };
        let cgroup_path = format!("{}/{}", sandbox.cgroup_parent.trim_end_matches('/'), id);
        let mut rec = ContainerRecord {
            id: id.clone(),
            sandbox_id: sandbox_id.to_string(),
            image_id: image.id.clone(),
            image_ref: image.repo_digests().into_iter().next().unwrap_or_else(|| image.id.clone()),
            config,
            state: ContainerState::Created,
            created_at: records::now_ns(),
            started_at: 0,
            finished_at: 0,
            pid: None,
            pid_start: None,
            exit_code: 0,
            reason: None,
            message: String::new(),
            log_path,
            cgroup_path,
            snapshotter: self.inner.snapshotter,
            boot_id: self.inner.boot_id.clone(),
        };
        // A terminal: the container sends its master to this socket at create.
        let console = if rec.config.tty {
            fs::create_dir_all(&dir).map_err(RuntimeError::io(&dir))?;
            Some(pty::ConsoleSocket::bind(&dir, "console.sock").map_err(RuntimeError::io(&dir))?)
        } else {
            None
        };
        let inner = self.inner.clone();
        let setup = rec.clone();
        let bundle = dir.clone();
        let result = blocking(move || {
            let dir = bundle;
            let layers = inner.images.unpack(&image)?;
            inner.images.hold_layers(&layers, &setup.id)?;
            let rootfs = snapshot::prepare(setup.snapshotter, &layers, &dir)?;
            let spec = spec::build(&spec::SpecInput {
                config: &setup.config,
                sandbox: &sandbox,
                sandbox_dir: &inner.paths.pod(&sandbox.id),
                image: &image.config,
                rootfs: &rootfs,
                cgroup_path: &setup.cgroup_path,
                pids_limit: inner.opts.pids_limit,
            })?;
            let config_path = dir.join("config.json");
            let bytes = serde_json::to_vec_pretty(&spec)
                .map_err(|e| RuntimeError::Io { path: config_path.clone(), source: e.into() })?;
            // The spec carries the container's environment (Secret values).
            crate::fsutil::write_private(&config_path, &bytes).map_err(RuntimeError::io(&config_path))?;
            // On a terminal, the terminal is the stdin.
            let piped_stdin = setup.config.stdin && !setup.config.tty;
            let stdin = piped_stdin.then_some("stdin");
            for f in ["stdout", "stderr"].into_iter().chain(stdin) {
                let p = dir.join(f);
                nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600))
                    .map_err(RuntimeError::sys(&p))?;
            }
            // stdinOnce: the agent's writer, opened first (the container's
            // read-only open would wait for one).
            let keeper = if piped_stdin && setup.config.stdin_once {
                let marker = dir.join(container::STDIN_ONCE);
                fs::write(&marker, b"").map_err(RuntimeError::io(&marker))?;
                let p = dir.join("stdin");
                Some(fs::OpenOptions::new().read(true).write(true).open(&p).map_err(RuntimeError::io(&p))?)
            } else {
                None
            };
            let pid = container::create(&inner.opts.helper, &setup.id, &dir, &inner.paths.state())?;
            Ok((pid, keeper))
        })
        .await;
        let result = match (result, console) {
            (Ok(created), Some(console)) => match tokio::time::timeout(CONSOLE_TIMEOUT, console.master()).await {
                Ok(Ok(master)) => {
                    stdio::set_terminal(&id, Arc::new(master));
                    Ok(created)
                }
                Ok(Err(e)) => Err(RuntimeError::io(&dir)(e)),
                Err(_) => Err(RuntimeError::io(&dir)(io::Error::other("the container sent no terminal"))),
            },
            (r, _) => r,
        };
        match result {
            Ok((pid, keeper)) => {
                rec.pid = Some(pid);
                rec.pid_start = records::process_start(pid);
                if let Some(k) = keeper {
                    stdio::keep_stdin(&id, k.into());
                }
            }
            Err(e) => {
                let inner = self.inner.clone();
                let id = id.clone();
                let kind = rec.snapshotter;
                let _ = blocking(move || {
                    let _ = container::delete(&id, &inner.paths.state());
                    let dir = inner.paths.container(&id);
                    snapshot::cleanup(kind, &dir);
                    inner.images.release_layers(&id);
                    let _ = fs::remove_dir_all(&dir);
                    Ok(())
                })
                .await;
                return Err(e);
            }
        }
        self.save_container(&rec);
        self.state().containers.insert(id.clone(), rec.clone());
        self.attach(&rec, true);
        tracing::info!(container = %id, name = rec.name(), sandbox = %sandbox_id, "container created");
        self.notify();
        Ok(id)
    }

    fn container(&self, id: &str) -> Result<ContainerRecord> {
        self.state()
            .containers
            .get(id)
            .cloned()
            .ok_or_else(|| RuntimeError::NotFound { kind: "container", id: id.into() })
    }

    pub async fn start_container(&self, id: &str) -> Result<()> {
        let rec = self.container(id)?;
        if !rec.state.can_start() {
            return Err(RuntimeError::FailedPrecondition(format!("container {id} is {:?}, not Created", rec.state)));
        }
        let state_root = self.inner.paths.state();
        let cid = id.to_string();
        blocking(move || container::start(&cid, &state_root)).await?;
        let updated = {
            let mut st = self.state();
            let Some(c) = st.containers.get_mut(id) else { return Ok(()) };
            if c.state == ContainerState::Created {
                c.state = ContainerState::Running;
            }
            c.started_at = records::now_ns();
            c.clone()
        };
        self.save_container(&updated);
        tracing::info!(container = %id, name = updated.name(), pid = ?updated.pid, "container started");
        self.notify();
        Ok(())
    }

    /// Waits until the container has exited, up to `limit`.
    async fn wait_exited(&self, id: &str, limit: Duration) -> bool {
        let mut rx = self.subscribe();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match self.state().containers.get(id) {
                Some(c) if c.state != ContainerState::Exited => {}
                _ => return true,
            }
            if tokio::time::timeout_at(deadline, rx.changed()).await.is_err() {
                return false;
            }
        }
    }

    /// SIGTERM, up to `timeout` seconds, then SIGKILL.
    pub async fn stop_container(&self, id: &str, timeout: i64) -> Result<()> {
        let rec = self.container(id)?;
        let Some(pid) = rec.pid.filter(|_| rec.state != ContainerState::Exited) else { return Ok(()) };
        if timeout > 0 && rec.state == ContainerState::Running {
            container::signal(pid, Signal::SIGTERM)?;
            let grace = Duration::from_secs(u64::try_from(timeout).unwrap_or(0));
            if self.wait_exited(id, grace).await {
                return Ok(());
            }
            tracing::info!(container = %id, name = rec.name(), "grace period over; killing");
        }
        container::signal(pid, Signal::SIGKILL)?;
        if !self.wait_exited(id, Duration::from_secs(10)).await {
            return Err(RuntimeError::DeadlineExceeded(format!("container {id} did not exit after SIGKILL")));
        }
        Ok(())
    }

    pub async fn remove_container(&self, id: &str) -> Result<()> {
        let Ok(rec) = self.container(id) else { return Ok(()) };
        self.stop_container(id, 0).await?;
        let inner = self.inner.clone();
        let cid = id.to_string();
        blocking(move || {
            container::delete(&cid, &inner.paths.state())?;
            let dir = inner.paths.container(&cid);
            snapshot::cleanup(rec.snapshotter, &dir);
            inner.images.release_layers(&cid);
            fs::remove_dir_all(&dir)
                .or_else(|e| if e.kind() == io::ErrorKind::NotFound { Ok(()) } else { Err(e) })
                .map_err(RuntimeError::io(&dir))
        })
        .await?;
        self.state().containers.remove(id);
        stdio::forget(id);
        tracing::info!(container = %id, "container removed");
        self.notify();
        Ok(())
    }

    pub fn container_status(&self, id: &str) -> Result<cri::ContainerStatus> {
        let c = self.container(id)?;
        Ok(convert::container_status(&c))
    }

    pub fn list_containers(&self, filter: Option<&cri::ContainerFilter>) -> Vec<cri::Container> {
        self.state()
            .containers
            .values()
            .filter(|c| convert::container_matches(c, filter))
            .map(convert::container)
            .collect()
    }

    /// Every container record (the pod workers' view, with attempt counts).
    pub fn container_records(&self) -> Vec<ContainerRecord> {
        self.state().containers.values().cloned().collect()
    }

    pub fn sandbox_records(&self) -> Vec<SandboxRecord> {
        self.state().sandboxes.values().cloned().collect()
    }

    pub async fn exec_sync(
        &self,
        id: &str,
        cmd: Vec<String>,
        timeout: Option<Duration>,
    ) -> Result<cri::ExecSyncResponse> {
        let rec = self.container(id)?;
        if rec.state != ContainerState::Running {
            return Err(RuntimeError::FailedPrecondition(format!("cannot exec in a stopped container {id}")));
        }
        if cmd.is_empty() {
            return Err(RuntimeError::InvalidArgument("exec needs a command".into()));
        }
        let state_root = self.inner.paths.state();
        let scratch = self.inner.paths.container(id);
        let cid = id.to_string();
        let helper = self.inner.opts.helper.clone();
        let out = blocking(move || container::exec(&helper, &cid, &state_root, &scratch, cmd, timeout)).await?;
        Ok(cri::ExecSyncResponse { stdout: out.stdout, stderr: out.stderr, exit_code: out.exit_code })
    }

    pub fn version(&self) -> cri::VersionResponse {
        cri::VersionResponse {
            version: "0.1.0".into(),
            runtime_name: "kedge".into(),
            runtime_version: kedge_common::VERSION.into(),
            runtime_api_version: "v1".into(),
        }
    }

    pub fn status(&self) -> cri::StatusResponse {
        ready_status()
    }
}

/// The CRI's Status answer of a runtime that is up, with its network.
pub(crate) fn ready_status() -> cri::StatusResponse {
    let cond = |t: &str| cri::RuntimeCondition {
        r#type: t.into(),
        status: true,
        reason: String::new(),
        message: String::new(),
    };
    cri::StatusResponse {
        status: Some(cri::RuntimeStatus { conditions: vec![cond("RuntimeReady"), cond("NetworkReady")] }),
        ..Default::default()
    }
}

/// What CreateContainer demands of its sandbox and config, whatever the
/// runtime behind it: a ready sandbox and named metadata.
pub(crate) fn check_create(sandbox: &SandboxRecord, config: &cri::ContainerConfig) -> Result<()> {
    if sandbox.state != SandboxState::Ready {
        return Err(RuntimeError::FailedPrecondition(format!("sandbox {} is not ready", sandbox.id)));
    }
    match &config.metadata {
        None => Err(RuntimeError::InvalidArgument("container config has no metadata".into())),
        Some(m) if m.name.is_empty() => Err(RuntimeError::InvalidArgument("container metadata has no name".into())),
        Some(_) => Ok(()),
    }
}

/// The first non-loopback IPv4 address of the host, for host-network pods.
fn host_ip() -> Option<String> {
    // Connecting a UDP socket sends nothing; it only picks the route's source address.
    let sock = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    sock.connect("192.0.2.1:9").ok()?;
    sock.local_addr().ok().map(|a| a.ip().to_string()).filter(|ip| ip != "0.0.0.0")
}
