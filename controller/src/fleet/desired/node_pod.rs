//! One API pod → the pod its node runs (`kedge_common::pod::Pod`), from the
//! typed k8s-openapi structs, with everything it references resolved: the
//! ConfigMaps and Secrets of its volumes, `env` and `envFrom`, and the pod's
//! own fields (`fieldRef`).
//!
//! Values keep their type: a ConfigMap's `data` stays text, its `binaryData`
//! and a Secret's `data` travel as bytes (the volume's `binaryData`) and are
//! written to the node's files unchanged. Environment variables follow the
//! kubelet: `configMapKeyRef` and `envFrom.configMapRef` read `data` only, a
//! Secret's bytes become the variable's value as they are — which, being a
//! CRI string, means invalid UTF-8 turns into U+FFFD, as it does between the
//! kubelet and containerd (the OCI spec is JSON).
//!
//! Wire structs are written out field by field (no `..Default::default()`),
//! so a field added to the wire pod does not compile until it is filled here.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use k8s_openapi::api::core::v1 as api;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kedge_common::bytes::Bytes;
use kedge_common::pod as wire;

/// The ConfigMaps, Secrets and claims of the namespaces in play, by
/// (namespace, name), and the persistent volumes by name.
#[derive(Default)]
pub struct Refs {
    pub config_maps: HashMap<(String, String), api::ConfigMap>,
    pub secrets: HashMap<(String, String), api::Secret>,
    pub claims: HashMap<(String, String), api::PersistentVolumeClaim>,
    pub volumes: HashMap<String, api::PersistentVolume>,
    /// The `kubernetes` Service's cluster IP: every container's
    /// `KUBERNETES_SERVICE_HOST` and friends.
    pub master: Option<String>,
    /// ServiceAccount tokens minted for projected volumes, by
    /// [`token_key`].
    pub tokens: HashMap<TokenKey, String>,
}

/// A projected token: (pod uid, audience, lifetime asked for).
pub type TokenKey = (String, String, i64);

/// The key of a pod's projected `serviceAccountToken` source.
pub fn token_key(pod_uid: &str, src: &api::ServiceAccountTokenProjection) -> TokenKey {
    (pod_uid.to_owned(), src.audience.clone().unwrap_or_default(), src.expiration_seconds.unwrap_or(3600))
}

impl Refs {
    fn config_map(&self, ns: &str, name: &str) -> Option<&api::ConfigMap> {
        self.config_maps.get(&(ns.to_string(), name.to_string()))
    }

    fn secret(&self, ns: &str, name: &str) -> Option<&api::Secret> {
        self.secrets.get(&(ns.to_string(), name.to_string()))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefKind {
    ConfigMap,
    Secret,
}

impl fmt::Display for RefKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RefKind::ConfigMap => "configmap",
            RefKind::Secret => "secret",
        })
    }
}

/// Why a pod cannot be sent to its node (the message of its
/// `CreateContainerConfigError` event).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodePodError {
    #[error("{kind} {ns}/{name} not found")]
    EnvSource { kind: RefKind, ns: String, name: String },
    #[error("key {key:?} of {kind} {ns}/{name} not found (env {env})")]
    EnvKey { kind: RefKind, ns: String, name: String, key: String, env: String },
    #[error("{kind} {ns}/{name} not found (volume)")]
    VolumeSource { kind: RefKind, ns: String, name: String },
    #[error("key {key:?} of {kind} {ns}/{name} not found (volume)")]
    VolumeKey { kind: RefKind, ns: String, name: String, key: String },
    #[error("{field}: unsupported value {value:?}")]
    Unsupported { field: String, value: String },
    #[error("persistentvolumeclaim {ns}/{name} not found")]
    ClaimMissing { ns: String, name: String },
    #[error("persistentvolumeclaim {ns}/{name} is not bound yet")]
    ClaimUnbound { ns: String, name: String },
    #[error("persistentvolume {name} (of claim {ns}/{claim}) not found")]
    VolumeMissing { ns: String, claim: String, name: String },
    #[error("persistentvolume {name} is pinned to node {pinned}, not to this node")]
    VolumeElsewhere { name: String, pinned: String },
    #[error("persistentvolume {name}: only hostPath, local and {driver} volumes can be mounted on a node", driver = crate::controllers::volume::LOCAL_PATH_DRIVER)]
    VolumeKind { name: String },
    #[error("serviceaccount {ns}/{name} not found (projected token of volume {volume})")]
    ServiceAccount { ns: String, name: String, volume: String },
}

fn unsupported(field: impl Into<String>, value: impl fmt::Display) -> NodePodError {
    NodePodError::Unsupported { field: field.into(), value: value.to_string() }
}

/// One API pod as its node runs it.
pub fn node_pod(pod: &api::Pod, node: &str, refs: &Refs) -> Result<wire::Pod, NodePodError> {
    let ns = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let no_spec = api::PodSpec::default();
    let spec = pod.spec.as_ref().unwrap_or(&no_spec);
    let cx = EnvContext { pod, ns: &ns, node, refs };
    let containers = |list: &[api::Container]| list.iter().map(|c| container(c, &cx)).collect::<Result<Vec<_>, _>>();
    let restart_policy = match spec.restart_policy.as_deref() {
        None | Some("Always") => wire::RestartPolicy::Always,
        Some("OnFailure") => wire::RestartPolicy::OnFailure,
        Some("Never") => wire::RestartPolicy::Never,
        Some(other) => return Err(unsupported("spec.restartPolicy", other)),
    };
    let dns_policy = match spec.dns_policy.as_deref() {
        None | Some("ClusterFirst") => wire::DnsPolicy::ClusterFirst,
        Some("ClusterFirstWithHostNet") => wire::DnsPolicy::ClusterFirstWithHostNet,
        Some("Default") => wire::DnsPolicy::Default,
        Some("None") => wire::DnsPolicy::None,
        Some(other) => return Err(unsupported("spec.dnsPolicy", other)),
    };
    Ok(wire::Pod {
        api_version: None,
        kind: None,
        metadata: wire::ObjectMeta {
            name: pod.metadata.name.clone().unwrap_or_default(),
            namespace: Some(ns.clone()),
            uid: pod.metadata.uid.clone(),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            // What the agent does not use stays off the wire.
            annotations: BTreeMap::new(),
            // Being deleted: the node stops the pod within this grace.
            deletion_grace_period_seconds: pod
                .metadata
                .deletion_timestamp
                .as_ref()
                .map(|_| pod.metadata.deletion_grace_period_seconds.unwrap_or(0).max(0)),
        },
        spec: wire::PodSpec {
            containers: containers(&spec.containers)?,
            init_containers: containers(spec.init_containers.as_deref().unwrap_or_default())?,
            restart_policy,
            host_network: spec.host_network.unwrap_or(false),
            host_ipc: spec.host_ipc.unwrap_or(false),
            hostname: spec.hostname.clone(),
            subdomain: spec.subdomain.clone(),
            dns_policy,
            dns_config: spec.dns_config.as_ref().map(|c| wire::PodDnsConfig {
                nameservers: c.nameservers.clone().unwrap_or_default(),
                searches: c.searches.clone().unwrap_or_default(),
                options: (c.options.iter().flatten())
                    .map(|o| wire::PodDnsConfigOption {
                        name: o.name.clone().unwrap_or_default(),
                        value: o.value.clone(),
                    })
                    .collect(),
            }),
            host_aliases: (spec.host_aliases.iter().flatten())
                .map(|a| wire::HostAlias { ip: a.ip.clone(), hostnames: a.hostnames.clone().unwrap_or_default() })
                .collect(),
            volumes: spec
                .volumes
                .iter()
                .flatten()
                .map(|v| volume(v, pod, &ns, node, refs))
                .collect::<Result<_, _>>()?,
            termination_grace_period_seconds: spec.termination_grace_period_seconds,
            security_context: spec
                .security_context
                .as_ref()
                .map(|s| wire::PodSecurityContext { run_as_user: s.run_as_user, run_as_group: s.run_as_group }),
        },
    })
}

// ------------------------------------------------------------------ volumes

/// One file of a ConfigMap or Secret.
enum Value<'a> {
    Text(&'a str),
    Bytes(&'a [u8]),
}

/// The files of a ConfigMap (`data` as text, `binaryData` as bytes) or a
/// Secret (`data`, bytes).
struct Source<'a> {
    text: Option<&'a BTreeMap<String, String>>,
    bytes: Option<&'a BTreeMap<String, k8s_openapi::ByteString>>,
}

impl<'a> Source<'a> {
    fn get(&self, key: &str) -> Option<Value<'a>> {
        self.text
            .and_then(|m| m.get(key))
            .map(|v| Value::Text(v))
            .or_else(|| self.bytes.and_then(|m| m.get(key)).map(|v| Value::Bytes(&v.0)))
    }

    fn all(&self) -> impl Iterator<Item = (&'a String, Value<'a>)> {
        let text = self.text.into_iter().flatten().map(|(k, v)| (k, Value::Text(v)));
        text.chain(self.bytes.into_iter().flatten().map(|(k, v)| (k, Value::Bytes(&v.0))))
    }
}

/// A claim's volume as the node mounts it: a `local-path` volume by its
/// handle, a static `hostPath` or `local` volume by its path.
fn claimed(claim: &str, ns: &str, node: &str, refs: &Refs) -> Result<wire::Volume, NodePodError> {
    let c = refs
        .claims
        .get(&(ns.to_owned(), claim.to_owned()))
        .ok_or_else(|| NodePodError::ClaimMissing { ns: ns.into(), name: claim.into() })?;
    let pv_name = c.spec.as_ref().and_then(|s| s.volume_name.clone()).unwrap_or_default();
    if pv_name.is_empty() {
        return Err(NodePodError::ClaimUnbound { ns: ns.into(), name: claim.into() });
    }
    let pv = refs.volumes.get(&pv_name).ok_or_else(|| NodePodError::VolumeMissing {
        ns: ns.into(),
        claim: claim.into(),
        name: pv_name.clone(),
    })?;
    if let Some(pinned) = crate::controllers::volume::pinned_node(pv).filter(|p| *p != node) {
        return Err(NodePodError::VolumeElsewhere { name: pv_name, pinned: pinned.into() });
    }
    let spec = pv.spec.as_ref();
    if let Some(handle) = crate::controllers::volume::local_path_handle(pv) {
        return Ok(wire::Volume {
            local_path: Some(wire::LocalPath { volume: handle.to_owned() }),
            ..Default::default()
        });
    }
    if let Some(h) = spec.and_then(|s| s.host_path.as_ref()) {
        let host_path = wire::HostPath { path: h.path.clone(), kind: h.type_.clone() };
        return Ok(wire::Volume { host_path: Some(host_path), ..Default::default() });
    }
    if let Some(l) = spec.and_then(|s| s.local.as_ref()) {
        let host_path = wire::HostPath { path: l.path.clone(), kind: Some("Directory".into()) };
        return Ok(wire::Volume { host_path: Some(host_path), ..Default::default() });
    }
    Err(NodePodError::VolumeKind { name: pv_name })
}

fn volume(v: &api::Volume, pod: &api::Pod, ns: &str, node: &str, refs: &Refs) -> Result<wire::Volume, NodePodError> {
    if let Some(c) = &v.persistent_volume_claim {
        return Ok(wire::Volume { name: v.name.clone(), ..claimed(&c.claim_name, ns, node, refs)? });
    }
    let config_map = match &v.config_map {
        Some(c) => {
            let source =
                refs.config_map(ns, &c.name).map(|m| Source { text: m.data.as_ref(), bytes: m.binary_data.as_ref() });
            let params = DataParams { kind: RefKind::ConfigMap, ns, name: &c.name, volume: &v.name };
            Some(data_volume(params, source, c.items.as_deref(), c.optional, c.default_mode)?)
        }
        None => None,
    };
    let secret = match &v.secret {
        Some(s) => {
            let name = s.secret_name.as_deref().unwrap_or_default();
            let source = refs.secret(ns, name).map(|s| Source { text: None, bytes: s.data.as_ref() });
            let params = DataParams { kind: RefKind::Secret, ns, name, volume: &v.name };
            Some(data_volume(params, source, s.items.as_deref(), s.optional, s.default_mode)?)
        }
        None => None,
    };
    let secret = match (&v.projected, secret) {
        (Some(p), None) => Some(projected(p, v, ns, node, pod, refs)?),
        (_, s) => s,
    };
    Ok(wire::Volume {
        name: v.name.clone(),
        empty_dir: v.empty_dir.as_ref().map(|e| wire::EmptyDir {
            medium: e.medium.clone(),
            size_limit: e.size_limit.as_ref().map(|q| q.0.clone()),
        }),
        host_path: v.host_path.as_ref().map(|h| wire::HostPath { path: h.path.clone(), kind: h.type_.clone() }),
        config_map,
        secret,
        local_path: None,
    })
}

/// A projected volume's files (its tokens, ConfigMap and Secret keys and
/// pod fields), travelling as one secret volume: the node writes them as
/// it writes a Secret's, tokens being secrets.
fn projected(
    p: &api::ProjectedVolumeSource,
    v: &api::Volume,
    ns: &str,
    node: &str,
    pod: &api::Pod,
    refs: &Refs,
) -> Result<wire::DataVolume, NodePodError> {
    let field = || format!("spec.volumes[{}].projected.defaultMode", v.name);
    let default_mode = p.default_mode.map(|m| u32::try_from(m).map_err(|_| unsupported(field(), m))).transpose()?;
    let mut out = wire::DataVolume { name: None, default_mode, data: BTreeMap::new(), binary_data: BTreeMap::new() };
    let mut merge = |d: wire::DataVolume| {
        out.data.extend(d.data);
        out.binary_data.extend(d.binary_data);
    };
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    for src in p.sources.iter().flatten() {
        if let Some(t) = &src.service_account_token {
            let sa = pod.spec.as_ref().and_then(|s| s.service_account_name.clone()).unwrap_or_else(|| "default".into());
            let token = refs.tokens.get(&token_key(&uid, t)).ok_or_else(|| NodePodError::ServiceAccount {
                ns: ns.into(),
                name: sa,
                volume: v.name.clone(),
            })?;
            let mut d = wire::DataVolume::default();
            d.data.insert(t.path.clone(), token.clone());
            merge(d);
        }
        if let Some(c) = &src.config_map {
            let source =
                refs.config_map(ns, &c.name).map(|m| Source { text: m.data.as_ref(), bytes: m.binary_data.as_ref() });
            let params = DataParams { kind: RefKind::ConfigMap, ns, name: &c.name, volume: &v.name };
            merge(data_volume(params, source, c.items.as_deref(), c.optional, None)?);
        }
        if let Some(sec) = &src.secret {
            let source = refs.secret(ns, &sec.name).map(|s| Source { text: None, bytes: s.data.as_ref() });
            let params = DataParams { kind: RefKind::Secret, ns, name: &sec.name, volume: &v.name };
            merge(data_volume(params, source, sec.items.as_deref(), sec.optional, None)?);
        }
        if let Some(d) = &src.downward_api {
            let mut files = wire::DataVolume::default();
            for item in d.items.iter().flatten() {
                let value = match (&item.field_ref, &item.resource_field_ref) {
                    (Some(f), _) => downward_file(pod, ns, node, &f.field_path),
                    (None, Some(r)) => {
                        return Err(unsupported(
                            format!("spec.volumes[{}].projected.downwardAPI", v.name),
                            &r.resource,
                        ));
                    }
                    (None, None) => String::new(),
                };
                files.data.insert(item.path.clone(), value);
            }
            merge(files);
        }
        if src.cluster_trust_bundle.is_some() {
            return Err(unsupported(format!("spec.volumes[{}].projected.sources", v.name), "clusterTrustBundle"));
        }
    }
    Ok(out)
}

/// A downward API file: a field's value, or for all labels or annotations
/// one `key="value"` line each, as the kubelet writes them.
fn downward_file(pod: &api::Pod, ns: &str, node: &str, path: &str) -> String {
    let lines = |m: Option<&BTreeMap<String, String>>| -> String {
        m.into_iter().flatten().map(|(k, v)| format!("{k}={v:?}\n")).collect()
    };
    match path {
        "metadata.labels" => lines(pod.metadata.labels.as_ref()),
        "metadata.annotations" => lines(pod.metadata.annotations.as_ref()),
        _ => field_value(pod, ns, node, path),
    }
}

struct DataParams<'a> {
    kind: RefKind,
    ns: &'a str,
    name: &'a str,
    volume: &'a str,
}

/// The files of a ConfigMap or Secret volume, after `items`.
fn data_volume(
    p: DataParams<'_>,
    source: Option<Source<'_>>,
    items: Option<&[api::KeyToPath]>,
    optional: Option<bool>,
    default_mode: Option<i32>,
) -> Result<wire::DataVolume, NodePodError> {
    let optional = optional.unwrap_or(false);
    let default_mode = default_mode
        .map(|m| {
            let field = || format!("spec.volumes[{}].defaultMode", p.volume);
            u32::try_from(m).map_err(|_| unsupported(field(), m))
        })
        .transpose()?;
    let mut out = wire::DataVolume {
        name: Some(p.name.to_string()),
        default_mode,
        data: BTreeMap::new(),
        binary_data: BTreeMap::new(),
    };
    let mut put = |path: &str, value: Value<'_>| match value {
        Value::Text(t) => {
            out.binary_data.remove(path);
            out.data.insert(path.to_string(), t.to_string());
        }
        Value::Bytes(b) => {
            out.data.remove(path);
            out.binary_data.insert(path.to_string(), Bytes(b.to_vec()));
        }
    };
    let Some(source) = source else {
        if optional {
            return Ok(out);
        }
        return Err(NodePodError::VolumeSource { kind: p.kind, ns: p.ns.into(), name: p.name.into() });
    };
    match items {
        Some(items) => {
            for it in items {
                match source.get(&it.key) {
                    Some(v) => put(&it.path, v),
                    None if optional => {}
                    None => {
                        return Err(NodePodError::VolumeKey {
                            kind: p.kind,
                            ns: p.ns.into(),
                            name: p.name.into(),
                            key: it.key.clone(),
                        });
                    }
                }
            }
        }
        None => source.all().for_each(|(k, v)| put(k, v)),
    }
    Ok(out)
}

// ---------------------------------------------------------------- containers

struct EnvContext<'a> {
    pod: &'a api::Pod,
    ns: &'a str,
    node: &'a str,
    refs: &'a Refs,
}

fn container(c: &api::Container, cx: &EnvContext<'_>) -> Result<wire::Container, NodePodError> {
    let image_pull_policy = match c.image_pull_policy.as_deref() {
        None => None,
        Some("Always") => Some(wire::PullPolicy::Always),
        Some("IfNotPresent") => Some(wire::PullPolicy::IfNotPresent),
        Some("Never") => Some(wire::PullPolicy::Never),
        Some(other) => return Err(unsupported(format!("container {}: imagePullPolicy", c.name), other)),
    };
    let quantities = |m: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>| {
        m.into_iter().flatten().map(|(k, q)| (k.clone(), q.0.clone())).collect::<BTreeMap<_, _>>()
    };
    let resources = c.resources.as_ref();
    Ok(wire::Container {
        name: c.name.clone(),
        image: c.image.clone().unwrap_or_default(),
        command: c.command.clone().unwrap_or_default(),
        args: c.args.clone().unwrap_or_default(),
        env: env(c, cx)?,
        working_dir: c.working_dir.clone(),
        stdin: c.stdin.unwrap_or(false),
        stdin_once: c.stdin_once.unwrap_or(false),
        tty: c.tty.unwrap_or(false),
        ports: c
            .ports
            .iter()
            .flatten()
            .map(|p| wire::ContainerPort {
                container_port: p.container_port,
                name: p.name.clone(),
                protocol: p.protocol.clone(),
                host_port: p.host_port,
            })
            .collect(),
        resources: wire::Resources {
            limits: quantities(resources.and_then(|r| r.limits.as_ref())),
            requests: quantities(resources.and_then(|r| r.requests.as_ref())),
        },
        volume_mounts: c
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| wire::VolumeMount {
                name: m.name.clone(),
                mount_path: m.mount_path.clone(),
                read_only: m.read_only.unwrap_or(false),
                sub_path: m.sub_path.clone(),
            })
            .collect(),
        security_context: c.security_context.as_ref().map(|s| wire::SecurityContext {
            run_as_user: s.run_as_user,
            run_as_group: s.run_as_group,
            read_only_root_filesystem: s.read_only_root_filesystem,
            allow_privilege_escalation: s.allow_privilege_escalation,
            privileged: s.privileged,
            capabilities: s.capabilities.as_ref().map(|c| wire::Capabilities {
                add: c.add.clone().unwrap_or_default(),
                drop: c.drop.clone().unwrap_or_default(),
            }),
        }),
        image_pull_policy,
        liveness_probe: c.liveness_probe.as_ref().map(probe),
        readiness_probe: c.readiness_probe.as_ref().map(probe),
        startup_probe: c.startup_probe.as_ref().map(probe),
        lifecycle: c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref()).map(|h| wire::Lifecycle {
            pre_stop: Some(wire::LifecycleHandler {
                exec: h.exec.as_ref().map(|e| wire::ExecAction { command: e.command.clone().unwrap_or_default() }),
                http_get: h.http_get.as_ref().map(http_get),
                sleep: h.sleep.as_ref().map(|s| wire::SleepAction { seconds: s.seconds }),
            }),
        }),
    })
}

fn port(p: &IntOrString) -> wire::PortRef {
    match p {
        IntOrString::Int(n) => wire::PortRef::Number(*n),
        IntOrString::String(s) => wire::PortRef::Name(s.clone()),
    }
}

fn http_get(h: &api::HTTPGetAction) -> wire::HttpGetAction {
    wire::HttpGetAction {
        path: h.path.clone(),
        port: port(&h.port),
        host: h.host.clone(),
        scheme: h.scheme.clone(),
        http_headers: h
            .http_headers
            .iter()
            .flatten()
            .map(|h| wire::EnvVar { name: h.name.clone(), value: h.value.clone() })
            .collect(),
    }
}

/// The handlers the node runs (exec, httpGet, tcpSocket); a probe with
/// another (grpc) arrives without one, and the node refuses the pod naming it.
fn probe(p: &api::Probe) -> wire::Probe {
    wire::Probe {
        exec: p.exec.as_ref().map(|e| wire::ExecAction { command: e.command.clone().unwrap_or_default() }),
        http_get: p.http_get.as_ref().map(http_get),
        tcp_socket: p.tcp_socket.as_ref().map(|t| wire::TcpSocketAction { port: port(&t.port), host: t.host.clone() }),
        initial_delay_seconds: p.initial_delay_seconds,
        timeout_seconds: p.timeout_seconds,
        period_seconds: p.period_seconds,
        success_threshold: p.success_threshold,
        failure_threshold: p.failure_threshold,
    }
}

/// A Secret value as an environment variable: the bytes as they are, which a
/// CRI string holds only as UTF-8 (module docs).
fn secret_text(v: &k8s_openapi::ByteString) -> String {
    String::from_utf8_lossy(&v.0).into_owned()
}

/// `envFrom`, then `env` (a later name replaces an earlier one).
fn env(c: &api::Container, cx: &EnvContext<'_>) -> Result<Vec<wire::EnvVar>, NodePodError> {
    let EnvContext { pod, ns, node, refs } = *cx;
    let mut out: Vec<(String, String)> = Vec::new();
    // The API's Service, in every container whatever `enableServiceLinks`
    // says, as the kubelet does; the pod's own `env` may override them.
    if let Some(ip) = &refs.master {
        let url = format!("tcp://{ip}:443");
        for (k, v) in [
            ("KUBERNETES_SERVICE_HOST", ip.clone()),
            ("KUBERNETES_SERVICE_PORT", "443".to_owned()),
            ("KUBERNETES_SERVICE_PORT_HTTPS", "443".to_owned()),
            ("KUBERNETES_PORT", url.clone()),
            ("KUBERNETES_PORT_443_TCP", url),
            ("KUBERNETES_PORT_443_TCP_PROTO", "tcp".to_owned()),
            ("KUBERNETES_PORT_443_TCP_PORT", "443".to_owned()),
            ("KUBERNETES_PORT_443_TCP_ADDR", ip.clone()),
        ] {
            out.push((k.to_owned(), v));
        }
    }
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.as_deref().unwrap_or_default();
        let missing = |kind, name: &str| NodePodError::EnvSource { kind, ns: ns.into(), name: name.into() };
        if let Some(r) = &from.config_map_ref {
            match refs.config_map(ns, &r.name) {
                Some(m) => out.extend(m.data.iter().flatten().map(|(k, v)| (format!("{prefix}{k}"), v.clone()))),
                None if r.optional == Some(true) => {}
                None => return Err(missing(RefKind::ConfigMap, &r.name)),
            }
        } else if let Some(r) = &from.secret_ref {
            match refs.secret(ns, &r.name) {
                Some(s) => out.extend(s.data.iter().flatten().map(|(k, v)| (format!("{prefix}{k}"), secret_text(v)))),
                None if r.optional == Some(true) => {}
                None => return Err(missing(RefKind::Secret, &r.name)),
            }
        }
    }
    for e in c.env.iter().flatten() {
        let value = match &e.value_from {
            None => e.value.clone().unwrap_or_default(),
            Some(from) => {
                let key_error = |kind, name: &str, key: &str| NodePodError::EnvKey {
                    kind,
                    ns: ns.into(),
                    name: name.into(),
                    key: key.into(),
                    env: e.name.clone(),
                };
                if let Some(r) = &from.config_map_key_ref {
                    match refs.config_map(ns, &r.name).and_then(|m| m.data.as_ref()?.get(&r.key)) {
                        Some(v) => v.clone(),
                        None if r.optional == Some(true) => continue,
                        None => return Err(key_error(RefKind::ConfigMap, &r.name, &r.key)),
                    }
                } else if let Some(r) = &from.secret_key_ref {
                    match refs.secret(ns, &r.name).and_then(|s| s.data.as_ref()?.get(&r.key)) {
                        Some(v) => secret_text(v),
                        None if r.optional == Some(true) => continue,
                        None => return Err(key_error(RefKind::Secret, &r.name, &r.key)),
                    }
                } else if let Some(f) = &from.field_ref {
                    field_value(pod, ns, node, &f.field_path)
                } else {
                    String::new()
                }
            }
        };
        out.retain(|(k, _)| *k != e.name);
        out.push((e.name.clone(), value));
    }
    Ok(out.into_iter().map(|(name, value)| wire::EnvVar { name, value }).collect())
}

/// A `fieldRef` the controller knows; the node-only ones (`status.podIP`,
/// `status.hostIP`) are left empty.
fn field_value(pod: &api::Pod, ns: &str, node: &str, path: &str) -> String {
    let m = &pod.metadata;
    let map_key = |prefix: &str| path.strip_prefix(prefix).and_then(|k| k.strip_suffix("']"));
    match path {
        "metadata.name" => m.name.clone().unwrap_or_default(),
        "metadata.namespace" => ns.to_string(),
        "metadata.uid" => m.uid.clone().unwrap_or_default(),
        "spec.nodeName" => node.to_string(),
        "spec.serviceAccountName" => pod.spec.as_ref().and_then(|s| s.service_account_name.clone()).unwrap_or_default(),
        _ => {
            if let Some(k) = map_key("metadata.labels['") {
                m.labels.as_ref().and_then(|l| l.get(k).cloned()).unwrap_or_default()
            } else if let Some(k) = map_key("metadata.annotations['") {
                m.annotations.as_ref().and_then(|a| a.get(k).cloned()).unwrap_or_default()
            } else {
                String::new()
            }
        }
    }
}

#[cfg(test)]
mod tests;
