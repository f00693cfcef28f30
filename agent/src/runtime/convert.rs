//! Records → CRI response types, and the CRI's list filters.

use k8s_cri::v1 as cri;

use super::records::{ContainerRecord, SandboxRecord, SandboxState, labels_match};
use crate::images::Image;

fn sandbox_state(s: &SandboxRecord) -> cri::PodSandboxState {
    match s.state {
        SandboxState::Ready => cri::PodSandboxState::SandboxReady,
        SandboxState::NotReady => cri::PodSandboxState::SandboxNotready,
    }
}

pub fn sandbox(s: &SandboxRecord) -> cri::PodSandbox {
    cri::PodSandbox {
        id: s.id.clone(),
        metadata: s.config.metadata.clone(),
        state: sandbox_state(s) as i32,
        created_at: s.created_at,
        labels: s.config.labels.clone(),
        annotations: s.config.annotations.clone(),
        runtime_handler: s.runtime_handler.clone(),
    }
}

pub fn sandbox_status(s: &SandboxRecord) -> cri::PodSandboxStatus {
    let mode = |node: bool| if node { cri::NamespaceMode::Node } else { cri::NamespaceMode::Pod } as i32;
    cri::PodSandboxStatus {
        id: s.id.clone(),
        metadata: s.config.metadata.clone(),
        state: sandbox_state(s) as i32,
        created_at: s.created_at,
        network: Some(cri::PodSandboxNetworkStatus { ip: s.ip.clone(), additional_ips: vec![] }),
        linux: Some(cri::LinuxPodSandboxStatus {
            namespaces: Some(cri::Namespace {
                options: Some(cri::NamespaceOption {
                    network: mode(s.host_network()),
                    pid: cri::NamespaceMode::Container as i32,
                    ipc: mode(s.host_ipc()),
                    ..Default::default()
                }),
            }),
        }),
        labels: s.config.labels.clone(),
        annotations: s.config.annotations.clone(),
        runtime_handler: s.runtime_handler.clone(),
    }
}

pub fn sandbox_matches(s: &SandboxRecord, filter: Option<&cri::PodSandboxFilter>) -> bool {
    let Some(f) = filter else { return true };
    (f.id.is_empty() || s.id.starts_with(&f.id))
        && f.state.as_ref().is_none_or(|st| st.state == sandbox_state(s) as i32)
        && labels_match(&s.config.labels, &f.label_selector)
}

fn image_spec(c: &ContainerRecord) -> Option<cri::ImageSpec> {
    c.config.image.clone()
}

pub fn container(c: &ContainerRecord) -> cri::Container {
    cri::Container {
        id: c.id.clone(),
        pod_sandbox_id: c.sandbox_id.clone(),
        metadata: c.config.metadata.clone(),
        image: image_spec(c),
        image_ref: c.image_ref.clone(),
        state: c.state.cri() as i32,
        created_at: c.created_at,
        labels: c.config.labels.clone(),
        annotations: c.config.annotations.clone(),
        image_id: c.image_id.clone(),
    }
}

pub fn container_status(c: &ContainerRecord) -> cri::ContainerStatus {
    cri::ContainerStatus {
        id: c.id.clone(),
        metadata: c.config.metadata.clone(),
        state: c.state.cri() as i32,
        created_at: c.created_at,
        started_at: c.started_at,
        finished_at: c.finished_at,
        exit_code: c.exit_code,
        image: image_spec(c),
        image_ref: c.image_ref.clone(),
        reason: c.reason.map(|r| r.as_str().to_string()).unwrap_or_default(),
        message: c.message.clone(),
        labels: c.config.labels.clone(),
        annotations: c.config.annotations.clone(),
        mounts: c.config.mounts.clone(),
        log_path: c.log_path.display().to_string(),
        resources: c
            .config
            .linux
            .as_ref()
            .and_then(|l| l.resources.clone())
            .map(|r| cri::ContainerResources { linux: Some(r), windows: None }),
        image_id: c.image_id.clone(),
        user: None,
    }
}

pub fn container_matches(c: &ContainerRecord, filter: Option<&cri::ContainerFilter>) -> bool {
    let Some(f) = filter else { return true };
    (f.id.is_empty() || c.id.starts_with(&f.id))
        && (f.pod_sandbox_id.is_empty() || c.sandbox_id.starts_with(&f.pod_sandbox_id))
        && f.state.as_ref().is_none_or(|st| st.state == c.state.cri() as i32)
        && labels_match(&c.config.labels, &f.label_selector)
}

pub fn image(img: &Image) -> cri::Image {
    let user = img.config.config().as_ref().and_then(|c| c.user().clone()).unwrap_or_default();
    let (uid, username) = match user.split(':').next().unwrap_or("") {
        "" => (Some(cri::Int64Value { value: 0 }), String::new()),
        u => match u.parse::<i64>() {
            Ok(n) => (Some(cri::Int64Value { value: n }), String::new()),
            Err(_) => (None, u.to_string()),
        },
    };
    cri::Image {
        id: img.id.clone(),
        repo_tags: img.repo_tags(),
        repo_digests: img.repo_digests(),
        size: img.size,
        uid,
        username,
        spec: None,
        pinned: img.pinned,
    }
}
