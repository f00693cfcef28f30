//! A pod spec → the CRI configs the kubelet would send, and the pod's volume
//! directories (emptyDir, hostPath, ConfigMap/Secret files).

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use k8s_cri::v1 as cri;
use kedge_common::pod::{Container, Pod};

use crate::net::hosts::PodHosts;
use crate::net::resolv::{self, ClusterDns};

pub const LABEL_POD_NAME: &str = "io.kubernetes.pod.name";
pub const LABEL_POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
pub const LABEL_POD_UID: &str = "io.kubernetes.pod.uid";
pub const LABEL_CONTAINER_NAME: &str = "io.kubernetes.container.name";
/// Annotation with the pod as the agent was asked to run it (JSON), so `ps`
/// and a restarted agent know the restart policy without the source.
pub const ANNOTATION_SOURCE: &str = "kedge.io/source";

#[derive(Debug, thiserror::Error)]
pub enum TranslateError {
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("volume {volume}: {path}: {source}")]
    Volume { volume: String, path: PathBuf, source: std::io::Error },
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> TranslateError {
    TranslateError::Invalid { field: field.into(), message: message.into() }
}

pub fn pod_labels(pod: &Pod, uid: &str) -> HashMap<String, String> {
    let mut labels: HashMap<String, String> = pod.metadata.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    labels.insert(LABEL_POD_NAME.into(), pod.metadata.name.clone());
    labels.insert(LABEL_POD_NAMESPACE.into(), pod.namespace().into());
    labels.insert(LABEL_POD_UID.into(), uid.into());
    labels
}

/// Where a pod's logs go: `<logs>/<namespace>_<name>_<uid>`, as the kubelet lays them out.
pub fn log_directory(logs_root: &Path, pod: &Pod, uid: &str) -> PathBuf {
    logs_root.join(format!("{}_{}_{}", pod.namespace(), pod.metadata.name, uid))
}

/// The sandbox config, with the pod's DNS config per its `dnsPolicy` (read
/// against the node's resolv.conf now, as the kubelet does per sandbox) and
/// what its `/etc/hosts` needs beyond the hostname.
pub fn sandbox_config(
    pod: &Pod,
    uid: &str,
    attempt: u32,
    log_dir: &Path,
    source: &str,
    dns: &ClusterDns,
) -> cri::PodSandboxConfig {
    let mode = |host: bool| if host { cri::NamespaceMode::Node } else { cri::NamespaceMode::Pod } as i32;
    let mut annotations: HashMap<String, String> =
        pod.metadata.annotations.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    annotations.insert(ANNOTATION_SOURCE.into(), source.into());
    let hosts = PodHosts::for_pod(pod, &dns.domain);
    annotations.extend(hosts.annotations());
    let pod_dns = resolv::pod_dns_config(pod, dns, &dns.host.read());
    for warning in &pod_dns.warnings {
        tracing::warn!(pod = %pod.metadata.name, namespace = pod.namespace(), "{warning}");
    }
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: pod.metadata.name.clone(),
            uid: uid.into(),
            namespace: pod.namespace().into(),
            attempt,
        }),
        hostname: hosts.hostname,
        log_directory: log_dir.display().to_string(),
        dns_config: Some(pod_dns.config),
        labels: pod_labels(pod, uid),
        annotations,
        linux: Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    network: mode(pod.spec.host_network),
                    ipc: mode(pod.spec.host_ipc),
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

/// Creates each volume's directory under `volumes_root/<uid>/` (hostPath:
/// the host path; a node-local persistent volume: its directory under
/// `storage`) and returns volume name → host path.
pub fn prepare_volumes(
    pod: &Pod,
    volumes_root: &Path,
    storage: &Path,
) -> Result<HashMap<String, PathBuf>, TranslateError> {
    let mut out = HashMap::new();
    for v in &pod.spec.volumes {
        let err = |path: &Path| {
            let volume = v.name.clone();
            let path = path.to_path_buf();
            move |source| TranslateError::Volume { volume, path, source }
        };
        let path = if let Some(l) = &v.local_path {
            super::storage::volume_dir(storage, &l.volume).map_err(err(&storage.join(&l.volume)))?
        } else if let Some(h) = &v.host_path {
            let p = PathBuf::from(&h.path);
            match h.kind.as_deref().unwrap_or("") {
                "DirectoryOrCreate" => fs::create_dir_all(&p).map_err(err(&p))?,
                "FileOrCreate" if !p.exists() => {
                    if let Some(parent) = p.parent() {
                        fs::create_dir_all(parent).map_err(err(parent))?;
                    }
                    fs::write(&p, b"").map_err(err(&p))?;
                }
                "" | "FileOrCreate" => {}
                kind => {
                    if !p.exists() {
                        return Err(invalid(
                            format!("volume {}", v.name),
                            format!("hostPath {} ({kind}) does not exist", h.path),
                        ));
                    }
                }
            }
            p
        } else {
            let dir = volumes_root.join(&v.name);
            fs::create_dir_all(&dir).map_err(err(&dir))?;
            if let Some(data) = v.config_map.as_ref().or(v.secret.as_ref()) {
                // ConfigMaps often carry scripts: no fork while they are open for writing.
                let _no_fork_meanwhile = crate::forklock::writing();
                let mode = data.default_mode.unwrap_or(0o644) & 0o777;
                // Byte for byte: a Secret's values are bytes (a DER key, a keystore).
                for (key, value) in data.files() {
                    if key.contains('/') || key.starts_with("..") || key.is_empty() {
                        return Err(invalid(format!("volume {}", v.name), format!("invalid key {key:?}")));
                    }
                    let file = dir.join(key);
                    fs::write(&file, value).map_err(err(&file))?;
                    fs::set_permissions(&file, fs::Permissions::from_mode(mode)).map_err(err(&file))?;
                }
            }
            dir
        };
        out.insert(v.name.clone(), path);
    }
    Ok(out)
}

pub fn container_config(
    pod: &Pod,
    uid: &str,
    c: &Container,
    attempt: u32,
    volumes: &HashMap<String, PathBuf>,
) -> Result<cri::ContainerConfig, TranslateError> {
    let at = |f: &str| format!("container {}: {f}", c.name);
    let mut mounts = Vec::new();
    for m in &c.volume_mounts {
        let base =
            volumes.get(&m.name).ok_or_else(|| invalid(at("volumeMounts"), format!("no volume {:?}", m.name)))?;
        let host = match m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            Some(sub) => {
                let joined = crate::images::safe_join(base, Path::new(sub))
                    .ok_or_else(|| invalid(at("subPath"), format!("{sub:?} escapes the volume")))?;
                if !joined.exists() {
                    fs::create_dir_all(&joined).map_err(|source| TranslateError::Volume {
                        volume: m.name.clone(),
                        path: joined.clone(),
                        source,
                    })?;
                }
                joined
            }
            None => base.clone(),
        };
        mounts.push(cri::Mount {
            container_path: m.mount_path.clone(),
            host_path: host.display().to_string(),
            readonly: m.read_only,
            ..Default::default()
        });
    }
    let res = &c.resources;
    let memory = res.memory_limit().map_err(|e| invalid(at("resources.limits.memory"), e.to_string()))?.unwrap_or(0);
    let cpu_request = res.cpu_request_milli().map_err(|e| invalid(at("resources.requests.cpu"), e.to_string()))?;
    let cpu_limit = res.cpu_limit_milli().map_err(|e| invalid(at("resources.limits.cpu"), e.to_string()))?;
    // The kubelet's conversions: shares = milli * 1024 / 1000 (min 2), quota per 100 ms period.
    let cpu_shares = cpu_request.map(|m| (m * 1024 / 1000).max(2)).unwrap_or(2);
    let cpu_quota = cpu_limit.map(|m| (m * 100_000 / 1000).max(1000)).unwrap_or(0);
    let sc = c.security_context.clone().unwrap_or_default();
    let psc = pod.spec.security_context.clone().unwrap_or_default();
    let privileged = sc.privileged.unwrap_or(false);
    let run_as_user = sc.run_as_user.or(psc.run_as_user);
    let run_as_group = sc.run_as_group.or(psc.run_as_group);
    let caps = sc.capabilities.clone().unwrap_or_default();
    let mut labels = pod_labels(pod, uid);
    labels.insert(LABEL_CONTAINER_NAME.into(), c.name.clone());
    Ok(cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata { name: c.name.clone(), attempt }),
        image: Some(cri::ImageSpec { image: c.image.clone(), ..Default::default() }),
        command: c.command.clone(),
        args: c.args.clone(),
        working_dir: c.working_dir.clone().unwrap_or_default(),
        stdin: c.stdin,
        stdin_once: c.stdin && c.stdin_once,
        tty: c.tty,
        envs: c.env.iter().map(|e| cri::KeyValue { key: e.name.clone(), value: e.value.clone() }).collect(),
        mounts,
        labels,
        log_path: format!("{}/{attempt}.log", c.name),
        linux: Some(cri::LinuxContainerConfig {
            resources: Some(cri::LinuxContainerResources {
                cpu_period: if cpu_quota > 0 { 100_000 } else { 0 },
                cpu_quota,
                cpu_shares,
                memory_limit_in_bytes: memory,
                ..Default::default()
            }),
            security_context: Some(cri::LinuxContainerSecurityContext {
                capabilities: Some(cri::Capability {
                    add_capabilities: caps.add,
                    drop_capabilities: caps.drop,
                    ..Default::default()
                }),
                privileged,
                run_as_user: run_as_user.map(|value| cri::Int64Value { value }),
                run_as_group: run_as_group.map(|value| cri::Int64Value { value }),
                readonly_rootfs: sc.read_only_root_filesystem.unwrap_or(false),
                // Default on: a pod opts out with allowPrivilegeEscalation: true.
                no_new_privs: !privileged && !sc.allow_privilege_escalation.unwrap_or(false),
                seccomp: Some(cri::SecurityProfile {
                    profile_type: if privileged {
                        cri::security_profile::ProfileType::Unconfined
                    } else {
                        cri::security_profile::ProfileType::RuntimeDefault
                    } as i32,
                    localhost_ref: String::new(),
                }),
                ..Default::default()
            }),
        }),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use kedge_common::bytes::Bytes;
    use kedge_common::pod::{DataVolume, Volume};

    use super::*;

    #[test]
    fn configmap_and_secret_files_are_written_byte_for_byte() {
        let der: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
        assert!(std::str::from_utf8(&der).is_err(), "the test key is not UTF-8");
        let mut pod = Pod::default();
        pod.spec.volumes = vec![
            Volume {
                name: "tls".into(),
                secret: Some(DataVolume {
                    default_mode: Some(0o400),
                    binary_data: BTreeMap::from([("key.der".into(), Bytes(der.clone()))]),
                    ..Default::default()
                }),
                ..Default::default()
            },
            Volume {
                name: "cfg".into(),
                config_map: Some(DataVolume {
                    data: BTreeMap::from([("app.conf".into(), "port = 80\n".into())]),
                    binary_data: BTreeMap::from([("logo.bin".into(), Bytes(vec![0x89, 0x50, 0xff, 0x00]))]),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ];
        let root = tempfile::tempdir().expect("tempdir");
        let paths = prepare_volumes(&pod, root.path(), &root.path().join("storage")).expect("prepared");
        let tls = paths.get("tls").expect("tls volume");
        assert_eq!(fs::read(tls.join("key.der")).expect("key"), der);
        let mode = fs::metadata(tls.join("key.der")).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o400);
        let cfg = paths.get("cfg").expect("cfg volume");
        assert_eq!(fs::read(cfg.join("app.conf")).expect("conf"), b"port = 80\n");
        assert_eq!(fs::read(cfg.join("logo.bin")).expect("logo"), [0x89, 0x50, 0xff, 0x00]);
    }

    #[test]
    fn the_sandbox_carries_the_pod_dns_config_and_what_its_hosts_file_needs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let etc = dir.path().join("resolv.conf");
        fs::write(&etc, "nameserver 192.168.1.1\nsearch lan\n").expect("write");
        let dns = ClusterDns {
            servers: vec!["10.42.0.1".parse().expect("ip")],
            domain: "cluster.local".into(),
            host: resolv::HostResolv { etc, systemd_resolved: dir.path().join("none") },
        };
        let mut pod = Pod::default();
        pod.metadata.name = "db-0".into();
        pod.metadata.namespace = Some("shop".into());
        pod.spec.subdomain = Some("db".into());
        let config = sandbox_config(&pod, "uid-1", 0, Path::new("/logs"), "file:/m/db.yaml", &dns);
        let got = config.dns_config.clone().expect("dns config");
        assert_eq!(got.servers, ["10.42.0.1"]);
        assert_eq!(got.searches, ["shop.svc.cluster.local", "svc.cluster.local", "cluster.local", "lan"]);
        assert_eq!(got.options, ["ndots:5"]);
        assert_eq!(config.hostname, "db-0");
        let hosts = PodHosts::from_sandbox(&config, &config.hostname);
        assert_eq!(hosts.domain.as_deref(), Some("db.shop.svc.cluster.local"));
    }

    #[test]
    fn a_key_that_would_leave_the_volume_is_refused() {
        let mut pod = Pod::default();
        pod.spec.volumes = vec![Volume {
            name: "s".into(),
            secret: Some(DataVolume {
                binary_data: BTreeMap::from([("../../etc/passwd".into(), Bytes(b"x".to_vec()))]),
                ..Default::default()
            }),
            ..Default::default()
        }];
        let root = tempfile::tempdir().expect("tempdir");
        let err = prepare_volumes(&pod, root.path(), &root.path().join("storage")).expect_err("refused");
        assert!(matches!(err, TranslateError::Invalid { .. }) && err.to_string().contains("invalid key"), "{err}");
    }
}
