//! The seam between the agent's users of a container runtime (the pod
//! workers, probes, the node loop's report and the gRPC server) and the
//! runtime itself. It speaks the CRI's verbs with the CRI's types, plus the
//! runtime's in-memory records and a change feed, which the pod workers
//! reconcile against.
//!
//! Implementations: [`Runtime`](super::Runtime) (libcontainer, the default)
//! and [`FakeRuntime`](super::fake::FakeRuntime) (no containers: a recording
//! fake for unit tests and the fleet simulator, chosen explicitly by whoever
//! builds the pod manager). design.md §5 keeps room for a third, a client of
//! an existing CRI endpoint (containerd).

use std::future::Future;
use std::time::Duration;

use k8s_cri::v1 as cri;
use tokio::sync::watch;

use super::{ContainerRecord, Result, SandboxRecord};
use crate::images::registry::Credentials;

/// A CRI runtime as the agent drives it.
///
/// Time: records carry wall-clock nanoseconds from [`CriRuntime::now_ns`];
/// whoever compares them with "now" asks the runtime, so a fake on paused
/// tokio time stays consistent.
pub trait CriRuntime: Clone + Send + Sync + 'static {
    /// A receiver that changes whenever a container or sandbox does.
    fn subscribe(&self) -> watch::Receiver<u64>;
    /// Every sandbox the runtime knows, from memory.
    fn sandbox_records(&self) -> Vec<SandboxRecord>;
    /// Every container the runtime knows, with its attempts, from memory.
    fn container_records(&self) -> Vec<ContainerRecord>;
    /// Now, in nanoseconds since the epoch, on the clock the records use.
    fn now_ns(&self) -> i64 {
        super::records::now_ns()
    }
    /// The helper binary that runs streaming execs in containers
    /// (`kubectl exec`); `None` when this runtime has none.
    fn exec_helper(&self) -> Option<std::path::PathBuf> {
        None
    }

    // ---- RuntimeService ----------------------------------------------------

    fn version(&self) -> cri::VersionResponse;
    fn status(&self) -> cri::StatusResponse;
    fn run_pod_sandbox(
        &self,
        config: cri::PodSandboxConfig,
        runtime_handler: String,
    ) -> impl Future<Output = Result<String>> + Send;
    fn stop_pod_sandbox(&self, id: &str) -> impl Future<Output = Result<()>> + Send;
    fn remove_pod_sandbox(&self, id: &str) -> impl Future<Output = Result<()>> + Send;
    fn pod_sandbox_status(&self, id: &str) -> Result<cri::PodSandboxStatus>;
    fn list_pod_sandbox(&self, filter: Option<&cri::PodSandboxFilter>) -> Vec<cri::PodSandbox>;
    fn create_container(
        &self,
        sandbox_id: &str,
        config: cri::ContainerConfig,
        sandbox_config: Option<&cri::PodSandboxConfig>,
    ) -> impl Future<Output = Result<String>> + Send;
    fn start_container(&self, id: &str) -> impl Future<Output = Result<()>> + Send;
    /// SIGTERM, up to `timeout` seconds, then SIGKILL.
    fn stop_container(&self, id: &str, timeout: i64) -> impl Future<Output = Result<()>> + Send;
    fn remove_container(&self, id: &str) -> impl Future<Output = Result<()>> + Send;
    fn container_status(&self, id: &str) -> Result<cri::ContainerStatus>;
    fn list_containers(&self, filter: Option<&cri::ContainerFilter>) -> Vec<cri::Container>;
    fn exec_sync(
        &self,
        id: &str,
        cmd: Vec<String>,
        timeout: Option<Duration>,
    ) -> impl Future<Output = Result<cri::ExecSyncResponse>> + Send;

    // ---- ImageService ------------------------------------------------------

    fn list_images(&self) -> Result<Vec<cri::Image>>;
    /// `None` when the image is not present.
    fn image_status(&self, name: &str) -> Result<Option<cri::Image>>;
    /// Pulls `name` from its registry; returns the image ID.
    fn pull_image(&self, name: &str, creds: Option<Credentials>) -> impl Future<Output = Result<String>> + Send;
    fn remove_image(&self, name: &str) -> impl Future<Output = Result<()>> + Send;
    fn image_fs_info(&self) -> cri::ImageFsInfoResponse;
    /// Under disk pressure (the image file system fuller than
    /// `high_percent`), removes every image no container uses and no desired
    /// pod names. Returns the removed image IDs.
    fn collect_images_if_full(
        &self,
        high_percent: u8,
        wanted: &[String],
    ) -> impl Future<Output = Result<Vec<String>>> + Send;

    // ---- stats (kubectl top, the kubelet's summary) -------------------------

    fn container_stats(&self, id: &str) -> impl Future<Output = Result<cri::ContainerStats>> + Send;
    fn list_container_stats(
        &self,
        filter: Option<cri::ContainerStatsFilter>,
    ) -> impl Future<Output = Result<Vec<cri::ContainerStats>>> + Send;
    fn pod_sandbox_stats(&self, id: &str) -> impl Future<Output = Result<cri::PodSandboxStats>> + Send;
    fn list_pod_sandbox_stats(
        &self,
        filter: Option<cri::PodSandboxStatsFilter>,
    ) -> impl Future<Output = Result<Vec<cri::PodSandboxStats>>> + Send;
}

/// The libcontainer runtime behind the seam: each verb is the inherent
/// method of the same name.
impl CriRuntime for super::Runtime {
    fn subscribe(&self) -> watch::Receiver<u64> {
        super::Runtime::subscribe(self)
    }
    fn sandbox_records(&self) -> Vec<SandboxRecord> {
        super::Runtime::sandbox_records(self)
    }
    fn container_records(&self) -> Vec<ContainerRecord> {
        super::Runtime::container_records(self)
    }
    fn exec_helper(&self) -> Option<std::path::PathBuf> {
        Some(self.inner.opts.helper.clone())
    }
    fn version(&self) -> cri::VersionResponse {
        super::Runtime::version(self)
    }
    fn status(&self) -> cri::StatusResponse {
        super::Runtime::status(self)
    }
    fn run_pod_sandbox(
        &self,
        config: cri::PodSandboxConfig,
        runtime_handler: String,
    ) -> impl Future<Output = Result<String>> + Send {
        super::Runtime::run_pod_sandbox(self, config, runtime_handler)
    }
    fn stop_pod_sandbox(&self, id: &str) -> impl Future<Output = Result<()>> + Send {
        super::Runtime::stop_pod_sandbox(self, id)
    }
    fn remove_pod_sandbox(&self, id: &str) -> impl Future<Output = Result<()>> + Send {
        super::Runtime::remove_pod_sandbox(self, id)
    }
    fn pod_sandbox_status(&self, id: &str) -> Result<cri::PodSandboxStatus> {
        super::Runtime::pod_sandbox_status(self, id)
    }
    fn list_pod_sandbox(&self, filter: Option<&cri::PodSandboxFilter>) -> Vec<cri::PodSandbox> {
        super::Runtime::list_pod_sandbox(self, filter)
    }
    fn create_container(
        &self,
        sandbox_id: &str,
        config: cri::ContainerConfig,
        sandbox_config: Option<&cri::PodSandboxConfig>,
    ) -> impl Future<Output = Result<String>> + Send {
        super::Runtime::create_container(self, sandbox_id, config, sandbox_config)
    }
    fn start_container(&self, id: &str) -> impl Future<Output = Result<()>> + Send {
        super::Runtime::start_container(self, id)
    }
    fn stop_container(&self, id: &str, timeout: i64) -> impl Future<Output = Result<()>> + Send {
        super::Runtime::stop_container(self, id, timeout)
    }
    fn remove_container(&self, id: &str) -> impl Future<Output = Result<()>> + Send {
        super::Runtime::remove_container(self, id)
    }
    fn container_status(&self, id: &str) -> Result<cri::ContainerStatus> {
        super::Runtime::container_status(self, id)
    }
    fn list_containers(&self, filter: Option<&cri::ContainerFilter>) -> Vec<cri::Container> {
        super::Runtime::list_containers(self, filter)
    }
    fn exec_sync(
        &self,
        id: &str,
        cmd: Vec<String>,
        timeout: Option<Duration>,
    ) -> impl Future<Output = Result<cri::ExecSyncResponse>> + Send {
        super::Runtime::exec_sync(self, id, cmd, timeout)
    }
    fn list_images(&self) -> Result<Vec<cri::Image>> {
        super::Runtime::list_images(self)
    }
    fn image_status(&self, name: &str) -> Result<Option<cri::Image>> {
        super::Runtime::image_status(self, name)
    }
    fn pull_image(&self, name: &str, creds: Option<Credentials>) -> impl Future<Output = Result<String>> + Send {
        super::Runtime::pull_image(self, name, creds)
    }
    fn remove_image(&self, name: &str) -> impl Future<Output = Result<()>> + Send {
        super::Runtime::remove_image(self, name)
    }
    fn image_fs_info(&self) -> cri::ImageFsInfoResponse {
        super::Runtime::image_fs_info(self)
    }
    fn collect_images_if_full(
        &self,
        high_percent: u8,
        wanted: &[String],
    ) -> impl Future<Output = Result<Vec<String>>> + Send {
        super::Runtime::collect_images_if_full(self, high_percent, wanted)
    }
    fn container_stats(&self, id: &str) -> impl Future<Output = Result<cri::ContainerStats>> + Send {
        super::Runtime::container_stats(self, id)
    }
    fn list_container_stats(
        &self,
        filter: Option<cri::ContainerStatsFilter>,
    ) -> impl Future<Output = Result<Vec<cri::ContainerStats>>> + Send {
        super::Runtime::list_container_stats(self, filter)
    }
    fn pod_sandbox_stats(&self, id: &str) -> impl Future<Output = Result<cri::PodSandboxStats>> + Send {
        super::Runtime::pod_sandbox_stats(self, id)
    }
    fn list_pod_sandbox_stats(
        &self,
        filter: Option<cri::PodSandboxStatsFilter>,
    ) -> impl Future<Output = Result<Vec<cri::PodSandboxStats>>> + Send {
        super::Runtime::list_pod_sandbox_stats(self, filter)
    }
}
