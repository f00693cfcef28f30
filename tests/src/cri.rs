//! A CRI client over a unix socket (the `k8s-cri` generated client), the
//! same one for kedge's socket and containerd's, for tests and benchmarks.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

pub struct CriClient {
    pub runtime: RuntimeServiceClient<Channel>,
    pub images: ImageServiceClient<Channel>,
}

impl CriClient {
    pub async fn connect(socket: &Path) -> Result<CriClient> {
        let path: PathBuf = socket.to_path_buf();
        let channel = Endpoint::try_from("http://[::]:50051")?
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
            }))
            .await
            .with_context(|| format!("connecting to {}", socket.display()))?;
        Ok(CriClient { runtime: RuntimeServiceClient::new(channel.clone()), images: ImageServiceClient::new(channel) })
    }

    /// RunPodSandbox + CreateContainer + StartContainer of one busybox
    /// container; returns (sandbox id, container id).
    pub async fn run_pod(
        &mut self,
        name: &str,
        image: &str,
        command: &[&str],
        host_network: bool,
    ) -> Result<(String, String)> {
        let sandbox = sandbox_config(name, host_network);
        let sb = self.run_sandbox(name, host_network).await?;
        let config = cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata { name: "c".into(), attempt: 0 }),
            image: Some(cri::ImageSpec { image: image.into(), ..Default::default() }),
            command: command.iter().map(|s| s.to_string()).collect(),
            log_path: "c/0.log".into(),
            ..Default::default()
        };
        let id = self
            .runtime
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: sb.clone(),
                config: Some(config),
                sandbox_config: Some(sandbox),
            })
            .await?
            .into_inner()
            .container_id;
        self.runtime.start_container(cri::StartContainerRequest { container_id: id.clone() }).await?;
        Ok((sb, id))
    }

    /// RunPodSandbox alone; returns the sandbox id.
    pub async fn run_sandbox(&mut self, name: &str, host_network: bool) -> Result<String> {
        let config = Some(sandbox_config(name, host_network));
        let request = cri::RunPodSandboxRequest { config, runtime_handler: String::new() };
        Ok(self.runtime.run_pod_sandbox(request).await?.into_inner().pod_sandbox_id)
    }

    /// StopPodSandbox + RemovePodSandbox (which removes its containers).
    pub async fn remove_pod(&mut self, sandbox: &str) -> Result<()> {
        self.runtime.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: sandbox.into() }).await?;
        self.runtime.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: sandbox.into() }).await?;
        Ok(())
    }
}

pub fn sandbox_config(name: &str, host_network: bool) -> cri::PodSandboxConfig {
    let mode = if host_network { cri::NamespaceMode::Node } else { cri::NamespaceMode::Pod } as i32;
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "bench".into(),
            attempt: 0,
        }),
        // containerd refuses a hostname without a UTS namespace of the pod's own.
        hostname: if host_network { String::new() } else { name.into() },
        log_directory: std::env::temp_dir().join("kedge-cri-logs").join(name).display().to_string(),
        linux: Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    network: mode,
                    pid: cri::NamespaceMode::Container as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}
