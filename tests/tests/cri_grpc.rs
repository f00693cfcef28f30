//! The agent's CRI socket driven by the `k8s-cri` client, as crictl or a
//! kubelet would: sandbox → create → start → status → exec → stop → remove.
//! Needs root.

use std::time::Duration;

use anyhow::Result;
use k8s_cri::v1 as cri;
use kedge_tests::agent::Agent;
use kedge_tests::cri::CriClient;

const BUSYBOX: &str = "kedge.local/busybox:latest";

#[tokio::test(flavor = "current_thread")]
async fn cri_socket_runs_a_container_through_its_whole_life() -> Result<()> {
    if !kedge_tests::require(kedge_tests::is_root(), "root (the agent runs real containers)") {
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let mut agent = Agent::new(tmp.path(), &[])?;
    agent.start()?;
    let socket = agent.socket.clone();
    agent.wait_for("the CRI socket", Duration::from_secs(20), || Ok(socket.exists().then_some(())))?;
    let mut cri = CriClient::connect(&socket).await?;

    let version = cri.runtime.version(cri::VersionRequest { version: "v1".into() }).await?.into_inner();
    assert_eq!((version.runtime_name.as_str(), version.runtime_api_version.as_str()), ("kedge", "v1"));
    let status = cri
        .images
        .image_status(cri::ImageStatusRequest {
            image: Some(cri::ImageSpec { image: BUSYBOX.into(), ..Default::default() }),
            verbose: false,
        })
        .await?
        .into_inner();
    let image = status.image.expect("busybox is present");
    assert!(image.repo_tags.contains(&BUSYBOX.to_string()) && image.id.starts_with("sha256:"));

    let (sandbox, id) = cri.run_pod("grpc", BUSYBOX, &["sleep", "3600"], false).await?;
    let st = cri
        .runtime
        .container_status(cri::ContainerStatusRequest { container_id: id.clone(), verbose: false })
        .await?
        .into_inner();
    let st = st.status.expect("status");
    assert_eq!(st.state, cri::ContainerState::ContainerRunning as i32);
    assert!(st.started_at > 0 && st.image_ref.contains("sha256:"));
    let sb = cri
        .runtime
        .pod_sandbox_status(cri::PodSandboxStatusRequest { pod_sandbox_id: sandbox.clone(), verbose: false })
        .await?
        .into_inner();
    assert_eq!(sb.status.map(|s| s.state), Some(cri::PodSandboxState::SandboxReady as i32));
    assert_eq!(sb.containers_statuses.len(), 1);

    let out = cri
        .runtime
        .exec_sync(cri::ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec![
                "sh".into(),
                "-c".into(),
                "hostname; grep -E '^(Seccomp|NoNewPrivs):' /proc/1/status; exit 4".into(),
            ],
            timeout: 10,
        })
        .await?
        .into_inner();
    // The default seccomp profile applies even without no_new_privs (the CRI default).
    assert_eq!(
        (String::from_utf8_lossy(&out.stdout).as_ref(), out.exit_code),
        ("grpc\nNoNewPrivs:\t0\nSeccomp:\t2\n", 4)
    );

    let filter = cri::ContainerFilter {
        state: Some(cri::ContainerStateValue { state: cri::ContainerState::ContainerRunning as i32 }),
        ..Default::default()
    };
    let listed =
        cri.runtime.list_containers(cri::ListContainersRequest { filter: Some(filter) }).await?.into_inner().containers;
    assert_eq!(listed.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), vec![id.as_str()]);

    cri.runtime.stop_container(cri::StopContainerRequest { container_id: id.clone(), timeout: 1 }).await?;
    let st = cri
        .runtime
        .container_status(cri::ContainerStatusRequest { container_id: id.clone(), verbose: false })
        .await?
        .into_inner()
        .status
        .expect("status");
    assert_eq!(
        (st.state, st.exit_code),
        (cri::ContainerState::ContainerExited as i32, 137),
        "busybox sleep ignores SIGTERM: killed after the grace period"
    );
    let err = cri
        .runtime
        .exec_sync(cri::ExecSyncRequest { container_id: id.clone(), cmd: vec!["true".into()], timeout: 5 })
        .await
        .expect_err("exec into an exited container");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);

    cri.runtime.remove_container(cri::RemoveContainerRequest { container_id: id.clone() }).await?;
    let err = cri
        .runtime
        .container_status(cri::ContainerStatusRequest { container_id: id, verbose: false })
        .await
        .expect_err("removed");
    assert_eq!(err.code(), tonic::Code::NotFound);
    cri.remove_pod(&sandbox).await?;
    let left = cri.runtime.list_pod_sandbox(cri::ListPodSandboxRequest { filter: None }).await?.into_inner().items;
    assert!(left.is_empty(), "{left:?}");
    // Idempotent, as the CRI requires.
    cri.remove_pod(&sandbox).await?;
    Ok(())
}
