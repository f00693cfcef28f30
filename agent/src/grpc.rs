//! The CRI over gRPC on a unix socket: a thin adapter from the generated
//! `k8s-cri` services to the in-process runtime (any [`CriRuntime`]: the
//! libcontainer one in the agent), so crictl or any CRI client drives exactly
//! what the pod workers use.

use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_server::{ImageService, ImageServiceServer};
use k8s_cri::v1::runtime_service_server::{RuntimeService, RuntimeServiceServer};
use tonic::codegen::tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

use crate::images::ImageError;
use crate::images::registry::Credentials;
use crate::runtime::{CriRuntime, RuntimeError};

type R<T> = Result<Response<T>, Status>;

fn status(e: RuntimeError) -> Status {
    match &e {
        RuntimeError::NotFound { .. } | RuntimeError::Image(ImageError::NotFound(_)) => {
            Status::not_found(e.to_string())
        }
        RuntimeError::InvalidArgument(_) | RuntimeError::Image(ImageError::Reference(_)) => {
            Status::invalid_argument(e.to_string())
        }
        RuntimeError::FailedPrecondition(_) => Status::failed_precondition(e.to_string()),
        RuntimeError::DeadlineExceeded(_) => Status::deadline_exceeded(e.to_string()),
        _ => Status::internal(e.to_string()),
    }
}

fn unimplemented(what: &str) -> Status {
    Status::unimplemented(format!("{what} is not supported by kedge"))
}

#[derive(Clone)]
pub struct CriService<Rt> {
    rt: Rt,
}

/// Binds `socket` (replacing a stale one) and serves the CRI on it.
pub fn serve<Rt: CriRuntime>(rt: Rt, socket: &Path) -> std::io::Result<()> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(socket);
    let listener = tokio::net::UnixListener::bind(socket)?;
    let svc = CriService { rt };
    let server = tonic::transport::Server::builder()
        .add_service(RuntimeServiceServer::new(svc.clone()))
        .add_service(ImageServiceServer::new(svc))
        .serve_with_incoming(UnixListenerStream::new(listener));
    tokio::spawn(async move {
        if let Err(e) = server.await {
            tracing::error!(error = %e, "CRI server stopped");
        }
    });
    Ok(())
}

#[tonic::async_trait]
impl<Rt: CriRuntime> RuntimeService for CriService<Rt> {
    async fn version(&self, _: Request<cri::VersionRequest>) -> R<cri::VersionResponse> {
        Ok(Response::new(self.rt.version()))
    }

    async fn run_pod_sandbox(&self, req: Request<cri::RunPodSandboxRequest>) -> R<cri::RunPodSandboxResponse> {
        let req = req.into_inner();
        let config = req.config.ok_or_else(|| Status::invalid_argument("config is required"))?;
        let id = self.rt.run_pod_sandbox(config, req.runtime_handler).await.map_err(status)?;
        Ok(Response::new(cri::RunPodSandboxResponse { pod_sandbox_id: id }))
    }

    async fn stop_pod_sandbox(&self, req: Request<cri::StopPodSandboxRequest>) -> R<cri::StopPodSandboxResponse> {
        self.rt.stop_pod_sandbox(&req.into_inner().pod_sandbox_id).await.map_err(status)?;
        Ok(Response::new(cri::StopPodSandboxResponse {}))
    }

    async fn remove_pod_sandbox(&self, req: Request<cri::RemovePodSandboxRequest>) -> R<cri::RemovePodSandboxResponse> {
        self.rt.remove_pod_sandbox(&req.into_inner().pod_sandbox_id).await.map_err(status)?;
        Ok(Response::new(cri::RemovePodSandboxResponse {}))
    }

    async fn pod_sandbox_status(&self, req: Request<cri::PodSandboxStatusRequest>) -> R<cri::PodSandboxStatusResponse> {
        let id = req.into_inner().pod_sandbox_id;
        let st = self.rt.pod_sandbox_status(&id).map_err(status)?;
        let filter = cri::ContainerFilter { pod_sandbox_id: id, ..Default::default() };
        let containers_statuses = self
            .rt
            .list_containers(Some(&filter))
            .iter()
            .filter_map(|c| self.rt.container_status(&c.id).ok())
            .collect();
        Ok(Response::new(cri::PodSandboxStatusResponse {
            status: Some(st),
            containers_statuses,
            timestamp: crate::runtime::records::now_ns(),
            ..Default::default()
        }))
    }

    async fn list_pod_sandbox(&self, req: Request<cri::ListPodSandboxRequest>) -> R<cri::ListPodSandboxResponse> {
        let items = self.rt.list_pod_sandbox(req.into_inner().filter.as_ref());
        Ok(Response::new(cri::ListPodSandboxResponse { items }))
    }

    async fn create_container(&self, req: Request<cri::CreateContainerRequest>) -> R<cri::CreateContainerResponse> {
        let req = req.into_inner();
        let config = req.config.ok_or_else(|| Status::invalid_argument("config is required"))?;
        let id =
            self.rt.create_container(&req.pod_sandbox_id, config, req.sandbox_config.as_ref()).await.map_err(status)?;
        Ok(Response::new(cri::CreateContainerResponse { container_id: id }))
    }

    async fn start_container(&self, req: Request<cri::StartContainerRequest>) -> R<cri::StartContainerResponse> {
        self.rt.start_container(&req.into_inner().container_id).await.map_err(status)?;
        Ok(Response::new(cri::StartContainerResponse {}))
    }

    async fn stop_container(&self, req: Request<cri::StopContainerRequest>) -> R<cri::StopContainerResponse> {
        let req = req.into_inner();
        self.rt.stop_container(&req.container_id, req.timeout).await.map_err(status)?;
        Ok(Response::new(cri::StopContainerResponse {}))
    }

    async fn remove_container(&self, req: Request<cri::RemoveContainerRequest>) -> R<cri::RemoveContainerResponse> {
        self.rt.remove_container(&req.into_inner().container_id).await.map_err(status)?;
        Ok(Response::new(cri::RemoveContainerResponse {}))
    }

    async fn list_containers(&self, req: Request<cri::ListContainersRequest>) -> R<cri::ListContainersResponse> {
        let containers = self.rt.list_containers(req.into_inner().filter.as_ref());
        Ok(Response::new(cri::ListContainersResponse { containers }))
    }

    async fn container_status(&self, req: Request<cri::ContainerStatusRequest>) -> R<cri::ContainerStatusResponse> {
        let st = self.rt.container_status(&req.into_inner().container_id).map_err(status)?;
        Ok(Response::new(cri::ContainerStatusResponse { status: Some(st), ..Default::default() }))
    }

    async fn update_container_resources(
        &self,
        _: Request<cri::UpdateContainerResourcesRequest>,
    ) -> R<cri::UpdateContainerResourcesResponse> {
        Err(unimplemented("UpdateContainerResources"))
    }

    async fn reopen_container_log(
        &self,
        _: Request<cri::ReopenContainerLogRequest>,
    ) -> R<cri::ReopenContainerLogResponse> {
        // The agent rotates logs itself; nothing to reopen.
        Ok(Response::new(cri::ReopenContainerLogResponse {}))
    }

    async fn exec_sync(&self, req: Request<cri::ExecSyncRequest>) -> R<cri::ExecSyncResponse> {
        let req = req.into_inner();
        let timeout = (req.timeout > 0).then(|| Duration::from_secs(req.timeout as u64));
        let out = self.rt.exec_sync(&req.container_id, req.cmd, timeout).await.map_err(status)?;
        Ok(Response::new(out))
    }

    async fn exec(&self, _: Request<cri::ExecRequest>) -> R<cri::ExecResponse> {
        Err(unimplemented("Exec (streaming)"))
    }

    async fn attach(&self, _: Request<cri::AttachRequest>) -> R<cri::AttachResponse> {
        Err(unimplemented("Attach"))
    }

    async fn port_forward(&self, _: Request<cri::PortForwardRequest>) -> R<cri::PortForwardResponse> {
        Err(unimplemented("PortForward"))
    }

    async fn container_stats(&self, req: Request<cri::ContainerStatsRequest>) -> R<cri::ContainerStatsResponse> {
        let stats = self.rt.container_stats(&req.into_inner().container_id).await.map_err(status)?;
        Ok(Response::new(cri::ContainerStatsResponse { stats: Some(stats) }))
    }

    async fn list_container_stats(
        &self,
        req: Request<cri::ListContainerStatsRequest>,
    ) -> R<cri::ListContainerStatsResponse> {
        let stats = self.rt.list_container_stats(req.into_inner().filter).await.map_err(status)?;
        Ok(Response::new(cri::ListContainerStatsResponse { stats }))
    }

    async fn pod_sandbox_stats(&self, req: Request<cri::PodSandboxStatsRequest>) -> R<cri::PodSandboxStatsResponse> {
        let stats = self.rt.pod_sandbox_stats(&req.into_inner().pod_sandbox_id).await.map_err(status)?;
        Ok(Response::new(cri::PodSandboxStatsResponse { stats: Some(stats) }))
    }

    async fn list_pod_sandbox_stats(
        &self,
        req: Request<cri::ListPodSandboxStatsRequest>,
    ) -> R<cri::ListPodSandboxStatsResponse> {
        let stats = self.rt.list_pod_sandbox_stats(req.into_inner().filter).await.map_err(status)?;
        Ok(Response::new(cri::ListPodSandboxStatsResponse { stats }))
    }

    async fn update_runtime_config(
        &self,
        _: Request<cri::UpdateRuntimeConfigRequest>,
    ) -> R<cri::UpdateRuntimeConfigResponse> {
        Ok(Response::new(cri::UpdateRuntimeConfigResponse {}))
    }

    async fn status(&self, _: Request<cri::StatusRequest>) -> R<cri::StatusResponse> {
        Ok(Response::new(self.rt.status()))
    }

    async fn checkpoint_container(
        &self,
        _: Request<cri::CheckpointContainerRequest>,
    ) -> R<cri::CheckpointContainerResponse> {
        Err(unimplemented("CheckpointContainer"))
    }

    type GetContainerEventsStream =
        Pin<Box<dyn tonic::codegen::tokio_stream::Stream<Item = Result<cri::ContainerEventResponse, Status>> + Send>>;

    async fn get_container_events(&self, _: Request<cri::GetEventsRequest>) -> R<Self::GetContainerEventsStream> {
        Err(unimplemented("GetContainerEvents"))
    }

    async fn list_metric_descriptors(
        &self,
        _: Request<cri::ListMetricDescriptorsRequest>,
    ) -> R<cri::ListMetricDescriptorsResponse> {
        Ok(Response::new(cri::ListMetricDescriptorsResponse::default()))
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _: Request<cri::ListPodSandboxMetricsRequest>,
    ) -> R<cri::ListPodSandboxMetricsResponse> {
        Ok(Response::new(cri::ListPodSandboxMetricsResponse::default()))
    }

    async fn runtime_config(&self, _: Request<cri::RuntimeConfigRequest>) -> R<cri::RuntimeConfigResponse> {
        Ok(Response::new(cri::RuntimeConfigResponse {
            linux: Some(cri::LinuxRuntimeConfiguration { cgroup_driver: cri::CgroupDriver::Cgroupfs as i32 }),
        }))
    }
}

#[tonic::async_trait]
impl<Rt: CriRuntime> ImageService for CriService<Rt> {
    async fn list_images(&self, _: Request<cri::ListImagesRequest>) -> R<cri::ListImagesResponse> {
        Ok(Response::new(cri::ListImagesResponse { images: self.rt.list_images().map_err(status)? }))
    }

    async fn image_status(&self, req: Request<cri::ImageStatusRequest>) -> R<cri::ImageStatusResponse> {
        let name = req.into_inner().image.map(|i| i.image).unwrap_or_default();
        let image = self.rt.image_status(&name).map_err(status)?;
        Ok(Response::new(cri::ImageStatusResponse { image, ..Default::default() }))
    }

    async fn pull_image(&self, req: Request<cri::PullImageRequest>) -> R<cri::PullImageResponse> {
        let req = req.into_inner();
        let name = req.image.map(|i| i.image).unwrap_or_default();
        let creds = req
            .auth
            .filter(|a| !a.username.is_empty())
            .map(|a| Credentials { username: a.username, password: a.password });
        let id = self.rt.pull_image(&name, creds).await.map_err(status)?;
        Ok(Response::new(cri::PullImageResponse { image_ref: id }))
    }

    async fn remove_image(&self, req: Request<cri::RemoveImageRequest>) -> R<cri::RemoveImageResponse> {
        let name = req.into_inner().image.map(|i| i.image).unwrap_or_default();
        self.rt.remove_image(&name).await.map_err(status)?;
        Ok(Response::new(cri::RemoveImageResponse {}))
    }

    async fn image_fs_info(&self, _: Request<cri::ImageFsInfoRequest>) -> R<cri::ImageFsInfoResponse> {
        Ok(Response::new(self.rt.image_fs_info()))
    }
}

#[cfg(test)]
mod tests {
    use kedge_tests::cri::CriClient;

    use super::*;
    use crate::runtime::fake::FakeRuntime;

    /// The server is generic over the seam: the recording fake behind the
    /// same socket answers a CRI client's whole pod cycle.
    #[tokio::test(flavor = "current_thread")]
    async fn serves_any_runtime_behind_the_seam() -> anyhow::Result<()> {
        let tmp = tempfile::tempdir()?;
        let socket = tmp.path().join("cri.sock");
        let fake = FakeRuntime::new();
        fake.add_image("busybox");
        serve(fake.clone(), &socket)?;
        let mut cri = CriClient::connect(&socket).await?;

        let (sandbox, id) = cri.run_pod("fake", "busybox", &["sleep", "1"], false).await?;
        let listed = cri.runtime.list_containers(cri::ListContainersRequest::default()).await?.into_inner();
        assert_eq!(listed.containers.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), [id.as_str()]);
        assert_eq!(listed.containers[0].state, cri::ContainerState::ContainerRunning as i32);
        let stats = cri.runtime.list_container_stats(cri::ListContainerStatsRequest::default()).await?.into_inner();
        assert_eq!(stats.stats.len(), 1);

        cri.remove_pod(&sandbox).await?;
        assert!(fake.sandbox_records().is_empty(), "RemovePodSandbox reached the fake");
        let missing =
            cri.runtime.container_status(cri::ContainerStatusRequest { container_id: id, verbose: false }).await;
        assert_eq!(missing.map(|_| ()).map_err(|s| s.code()), Err(tonic::Code::NotFound));
        Ok(())
    }
}
