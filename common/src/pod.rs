//! The pod as a node sees it: the subset of a Kubernetes Pod that an agent
//! runs. Field names follow the Kubernetes JSON/YAML spelling, so a static-pod
//! manifest (`kind: Pod`) parses straight into [`Pod`], and the fleet link
//! carries the same structure in CBOR. Fields the agent does not act on are
//! ignored when parsing, as the kubelet ignores fields it does not know.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::bytes::Bytes;
use crate::quantity;

mod dns;
pub use dns::{
    DnsPolicy, HostAlias, MAX_DNS_NAMESERVERS, MAX_DNS_SEARCH_CHARS, MAX_DNS_SEARCHES, PodDnsConfig, PodDnsConfigOption,
};

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pod {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: PodSpec,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Set when the pod is being deleted: the node stops it within this
    /// many seconds (preStop hooks, SIGTERM, then SIGKILL), reports it
    /// stopped, and the controller then removes the object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_grace_period_seconds: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum RestartPolicy {
    #[default]
    Always,
    OnFailure,
    Never,
}

impl RestartPolicy {
    /// Whether a container that exited with `exit_code` is started again.
    pub fn restarts(self, exit_code: i32) -> bool {
        match self {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => exit_code != 0,
            RestartPolicy::Never => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    #[serde(default)]
    pub containers: Vec<Container>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub init_containers: Vec<Container>,
    #[serde(default)]
    pub restart_policy: RestartPolicy,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub host_network: bool,
    /// Kubernetes spells it `hostIPC`; `hostIpc` is what earlier builds
    /// wrote (and so ignored `hostIPC`), still read from the agent's cache.
    #[serde(default, rename = "hostIPC", alias = "hostIpc", skip_serializing_if = "std::ops::Not::not")]
    pub host_ipc: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// With `hostname`, the pod's FQDN is `HOSTNAME.SUBDOMAIN.NS.svc.DOMAIN`
    /// (in its `/etc/hosts`; cluster DNS answers it when a headless Service
    /// named SUBDOMAIN selects the pod).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subdomain: Option<String>,
    #[serde(default, skip_serializing_if = "DnsPolicy::is_default")]
    pub dns_policy: DnsPolicy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_config: Option<PodDnsConfig>,
    /// Extra `/etc/hosts` entries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_aliases: Vec<HostAlias>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination_grace_period_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<PodSecurityContext>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSecurityContext {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as_user: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as_group: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub image: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ContainerPort>,
    #[serde(default)]
    pub resources: Resources,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_mounts: Vec<VolumeMount>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<SecurityContext>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness_probe: Option<Probe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness_probe: Option<Probe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_probe: Option<Probe>,
    /// Keep a stdin open for `kubectl attach -i`; with `stdin_once`, it
    /// closes (end of file) when the first attach ends.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stdin: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stdin_once: bool,
    /// Run the process on a terminal (`kubectl run -it`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tty: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<Lifecycle>,
}

/// `lifecycle`: the hook run before the container is stopped (`postStart`
/// is not run by this agent).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Lifecycle {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_stop: Option<LifecycleHandler>,
}

/// One hook: a command in the container, an HTTP GET, or a pause.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LifecycleHandler {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_get: Option<HttpGetAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sleep: Option<SleepAction>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SleepAction {
    pub seconds: i64,
}

/// A container port by number or by the name of one of its `ports`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PortRef {
    Number(i32),
    Name(String),
}

impl PortRef {
    /// The port number, looking names up in the container's ports.
    pub fn resolve(&self, c: &Container) -> Option<u16> {
        let n = match self {
            PortRef::Number(n) => *n,
            PortRef::Name(name) => match name.parse::<i32>() {
                Ok(n) => n,
                Err(_) => c.ports.iter().find(|p| p.name.as_deref() == Some(name))?.container_port,
            },
        };
        u16::try_from(n).ok().filter(|p| *p > 0)
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecAction {
    #[serde(default)]
    pub command: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpGetAction {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    pub port: PortRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http_headers: Vec<EnvVar>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TcpSocketAction {
    pub port: PortRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// A liveness, readiness or startup probe, with the kubelet's defaults.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Probe {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_get: Option<HttpGetAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_socket: Option<TcpSocketAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_delay_seconds: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_seconds: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_threshold: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<i32>,
}

impl Probe {
    fn secs(v: Option<i32>, default: i32, min: i32) -> std::time::Duration {
        std::time::Duration::from_secs(v.unwrap_or(default).max(min).unsigned_abs().into())
    }

    pub fn initial_delay(&self) -> std::time::Duration {
        Self::secs(self.initial_delay_seconds, 0, 0)
    }

    pub fn timeout(&self) -> std::time::Duration {
        Self::secs(self.timeout_seconds, 1, 1)
    }

    pub fn period(&self) -> std::time::Duration {
        Self::secs(self.period_seconds, 10, 1)
    }

    pub fn success_threshold(&self) -> u32 {
        self.success_threshold.unwrap_or(1).max(1).unsigned_abs()
    }

    pub fn failure_threshold(&self) -> u32 {
        self.failure_threshold.unwrap_or(3).max(1).unsigned_abs()
    }

    fn check(&self, at: &str, c: &Container) -> Result<(), FieldError> {
        let handlers = [self.exec.is_some(), self.http_get.is_some(), self.tcp_socket.is_some()];
        if handlers.iter().filter(|h| **h).count() != 1 {
            return Err(field_error(at, "exactly one of exec, httpGet, tcpSocket must be set"));
        }
        if let Some(e) = &self.exec {
            if e.command.is_empty() {
                return Err(field_error(format!("{at}.exec.command"), "Required value"));
            }
        }
        let port = self
            .http_get
            .as_ref()
            .map(|h| (&h.port, "httpGet"))
            .or(self.tcp_socket.as_ref().map(|t| (&t.port, "tcpSocket")));
        if let Some((p, kind)) = port {
            if p.resolve(c).is_none() {
                return Err(field_error(format!("{at}.{kind}.port"), format!("{p:?} is not a port of this container")));
            }
        }
        if let Some(h) = &self.http_get {
            if h.scheme.as_deref().is_some_and(|s| !s.eq_ignore_ascii_case("http")) {
                return Err(field_error(format!("{at}.httpGet.scheme"), "only HTTP is supported by this agent"));
            }
        }
        Ok(())
    }
}

impl LifecycleHandler {
    fn check(&self, at: &str, c: &Container) -> Result<(), FieldError> {
        let handlers = [self.exec.is_some(), self.http_get.is_some(), self.sleep.is_some()];
        if handlers.iter().filter(|h| **h).count() != 1 {
            return Err(field_error(at, "exactly one of exec, httpGet, sleep must be set"));
        }
        if self.exec.as_ref().is_some_and(|e| e.command.is_empty()) {
            return Err(field_error(format!("{at}.exec.command"), "Required value"));
        }
        if let Some(h) = &self.http_get {
            if h.port.resolve(c).is_none() {
                return Err(field_error(
                    format!("{at}.httpGet.port"),
                    format!("{:?} is not a port of this container", h.port),
                ));
            }
            if h.scheme.as_deref().is_some_and(|s| !s.eq_ignore_ascii_case("http")) {
                return Err(field_error(format!("{at}.httpGet.scheme"), "only HTTP is supported by this agent"));
            }
        }
        if self.sleep.as_ref().is_some_and(|s| s.seconds < 0) {
            return Err(field_error(format!("{at}.sleep.seconds"), "must be non-negative"));
        }
        Ok(())
    }
}

impl Container {
    /// The pull policy Kubernetes defaults to: `Always` for `:latest` or an
    /// untagged image, `IfNotPresent` otherwise.
    pub fn pull_policy(&self) -> PullPolicy {
        if let Some(p) = self.image_pull_policy {
            return p;
        }
        let name = self.image.rsplit('/').next().unwrap_or(&self.image);
        if self.image.contains('@') {
            PullPolicy::IfNotPresent
        } else {
            match name.split_once(':') {
                None | Some((_, "latest")) => PullPolicy::Always,
                Some(_) => PullPolicy::IfNotPresent,
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvVar {
    pub name: String,
    #[serde(default)]
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPort {
    pub container_port: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_port: Option<i32>,
}

/// Quantities as written (`"64Mi"`, `"500m"`); [`Resources::memory_limit`]
/// and friends parse them.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub limits: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub requests: BTreeMap<String, String>,
}

impl Resources {
    fn milli(map: &BTreeMap<String, String>, key: &str) -> Result<Option<i128>, quantity::QuantityError> {
        map.get(key).map(|q| quantity::parse_milli(q)).transpose()
    }

    /// Memory limit in bytes.
    pub fn memory_limit(&self) -> Result<Option<i64>, quantity::QuantityError> {
        Ok(Self::milli(&self.limits, "memory")?.map(|m| i64::try_from((m + 999) / 1000).unwrap_or(i64::MAX)))
    }

    /// CPU limit in millicores.
    pub fn cpu_limit_milli(&self) -> Result<Option<i64>, quantity::QuantityError> {
        Ok(Self::milli(&self.limits, "cpu")?.map(|m| i64::try_from(m).unwrap_or(i64::MAX)))
    }

    /// CPU request in millicores; Kubernetes uses the limit when only a limit is set.
    pub fn cpu_request_milli(&self) -> Result<Option<i64>, quantity::QuantityError> {
        match Self::milli(&self.requests, "cpu")? {
            Some(m) => Ok(Some(i64::try_from(m).unwrap_or(i64::MAX))),
            None => self.cpu_limit_milli(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeMount {
    pub name: String,
    pub mount_path: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_path: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecurityContext {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as_user: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as_group: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only_root_filesystem: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_privilege_escalation: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privileged: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Capabilities>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Capabilities {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drop: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Volume {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty_dir: Option<EmptyDir>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_path: Option<HostPath>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<DataVolume>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<DataVolume>,
    /// A node-local persistent volume (a claim bound to a `local-path`
    /// volume): a directory of the node's storage dir that outlives the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_path: Option<LocalPath>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalPath {
    /// The volume's handle (its PersistentVolume's name): one path component.
    pub volume: String,
}

impl LocalPath {
    /// A handle names one directory of the storage dir, nothing outside it.
    pub fn is_valid_handle(h: &str) -> bool {
        !h.is_empty() && h.len() <= 253 && h != "." && h != ".." && !h.contains(['/', '\0'])
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EmptyDir {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub medium: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_limit: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostPath {
    pub path: String,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

/// A ConfigMap or Secret volume. The node has no API server to ask, so the
/// controller inlines the referenced object's files (after `items`); a static
/// pod can only use inline files. Each file is in one of two maps, as in a
/// ConfigMap: `data` for text, `binaryData` for bytes (base64 in YAML and
/// JSON, a byte string in CBOR). The controller puts a Secret's values in
/// `binaryData`: they are bytes, and must reach the node unchanged.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DataVolume {
    /// `configMap.name` or `secret.secretName`.
    #[serde(default, alias = "secretName", skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_mode: Option<u32>,
    /// File name → text contents.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, String>,
    /// File name → contents, byte for byte.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub binary_data: BTreeMap<String, Bytes>,
}

impl DataVolume {
    /// Every file of the volume: name → contents.
    pub fn files(&self) -> impl Iterator<Item = (&str, &[u8])> {
        let text = self.data.iter().map(|(k, v)| (k.as_str(), v.as_bytes()));
        text.chain(self.binary_data.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
    }

    fn check(&self, at: &str) -> Result<(), FieldError> {
        for (what, key) in
            self.data.keys().map(|k| ("data", k)).chain(self.binary_data.keys().map(|k| ("binaryData", k)))
        {
            if key.is_empty() || key.contains('/') || key.starts_with("..") {
                return Err(field_error(format!("{at}.{what}"), format!("invalid key {key:?}")));
            }
        }
        if let Some(key) = self.data.keys().find(|k| self.binary_data.contains_key(*k)) {
            return Err(field_error(format!("{at}.data"), format!("{key:?}: duplicate of key present in binaryData")));
        }
        Ok(())
    }
}

/// A manifest problem, naming the field as `kubectl` would.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

fn field_error(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError { field: field.into(), message: message.into() }
}

/// A DNS-1123 label: what Kubernetes requires of container and volume names.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

impl Pod {
    /// The checks the kubelet makes of a static pod before running it.
    pub fn validate(&self) -> Result<(), FieldError> {
        if let Some(kind) = &self.kind {
            if kind != "Pod" {
                return Err(field_error("kind", format!("must be Pod, not {kind}")));
            }
        }
        let name = &self.metadata.name;
        if name.is_empty() {
            return Err(field_error("metadata.name", "Required value"));
        }
        if name.len() > 253 || !name.split('.').all(is_dns_label) {
            return Err(field_error("metadata.name", format!("invalid name {name:?}: must be a DNS subdomain")));
        }
        let spec = &self.spec;
        if spec.containers.is_empty() {
            return Err(field_error("spec.containers", "Required value"));
        }
        if !spec.init_containers.is_empty() {
            return Err(field_error("spec.initContainers", "not supported by this agent yet"));
        }
        let mut volumes = std::collections::BTreeSet::new();
        for (i, v) in spec.volumes.iter().enumerate() {
            let at = format!("spec.volumes[{i}]");
            if !is_dns_label(&v.name) {
                return Err(field_error(format!("{at}.name"), format!("invalid volume name {:?}", v.name)));
            }
            if !volumes.insert(v.name.as_str()) {
                return Err(field_error(format!("{at}.name"), format!("Duplicate value: {:?}", v.name)));
            }
            let sources = [
                v.empty_dir.is_some(),
                v.host_path.is_some(),
                v.config_map.is_some(),
                v.secret.is_some(),
                v.local_path.is_some(),
            ];
            if sources.iter().filter(|s| **s).count() != 1 {
                return Err(field_error(
                    at,
                    "exactly one of emptyDir, hostPath, configMap, secret, localPath must be set (the only types this agent supports)",
                ));
            }
            if let Some(l) = &v.local_path {
                if !LocalPath::is_valid_handle(&l.volume) {
                    return Err(field_error(
                        format!("{at}.localPath.volume"),
                        format!("invalid volume handle {:?}", l.volume),
                    ));
                }
            }
            if let Some(h) = &v.host_path {
                if !h.path.starts_with('/') {
                    return Err(field_error(format!("{at}.hostPath.path"), "must be an absolute path"));
                }
            }
            if let Some(c) = &v.config_map {
                c.check(&format!("{at}.configMap"))?;
            }
            if let Some(s) = &v.secret {
                s.check(&format!("{at}.secret"))?;
            }
        }
        self.validate_dns()?;
        let mut names = std::collections::BTreeSet::new();
        for (i, c) in spec.containers.iter().enumerate() {
            let at = format!("spec.containers[{i}]");
            if !is_dns_label(&c.name) {
                return Err(field_error(format!("{at}.name"), format!("invalid container name {:?}", c.name)));
            }
            if !names.insert(c.name.as_str()) {
                return Err(field_error(format!("{at}.name"), format!("Duplicate value: {:?}", c.name)));
            }
            if c.image.trim().is_empty() {
                return Err(field_error(format!("{at}.image"), "Required value"));
            }
            for (kind, p) in [
                ("livenessProbe", &c.liveness_probe),
                ("readinessProbe", &c.readiness_probe),
                ("startupProbe", &c.startup_probe),
            ] {
                if let Some(p) = p {
                    p.check(&format!("{at}.{kind}"), c)?;
                }
            }
            if let Some(h) = c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref()) {
                h.check(&format!("{at}.lifecycle.preStop"), c)?;
            }
            for key in ["memory", "cpu"] {
                for (what, map) in [("limits", &c.resources.limits), ("requests", &c.resources.requests)] {
                    if let Some(q) = map.get(key) {
                        quantity::parse_milli(q).map_err(|e| {
                            field_error(format!("{at}.resources.{what}.{key}"), format!("invalid value {q:?}: {e}"))
                        })?;
                    }
                }
            }
            for (j, m) in c.volume_mounts.iter().enumerate() {
                if !volumes.contains(m.name.as_str()) {
                    return Err(field_error(
                        format!("{at}.volumeMounts[{j}].name"),
                        format!("Not found: {:?}", m.name),
                    ));
                }
                if !m.mount_path.starts_with('/') {
                    return Err(field_error(format!("{at}.volumeMounts[{j}].mountPath"), "must be an absolute path"));
                }
            }
        }
        Ok(())
    }

    pub fn namespace(&self) -> &str {
        self.metadata.namespace.as_deref().unwrap_or("default")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(containers: Vec<Container>) -> Pod {
        Pod {
            metadata: ObjectMeta { name: "web".into(), ..Default::default() },
            spec: PodSpec { containers, ..Default::default() },
            ..Default::default()
        }
    }

    fn container(name: &str, image: &str) -> Container {
        Container { name: name.into(), image: image.into(), ..Default::default() }
    }

    #[test]
    fn validation_names_the_field() {
        assert!(pod(vec![container("a", "busybox")]).validate().is_ok());
        let err = pod(vec![container("a", "busybox"), container("a", "x")]).validate().expect_err("invalid");
        assert_eq!(err.field, "spec.containers[1].name");
        let err = pod(vec![container("a", " ")]).validate().expect_err("invalid");
        assert_eq!(err.field, "spec.containers[0].image");
        let mut p = pod(vec![container("a", "busybox")]);
        p.spec.containers[0].resources.limits.insert("memory".into(), "lots".into());
        assert_eq!(p.validate().expect_err("invalid").field, "spec.containers[0].resources.limits.memory");
        let mut p = pod(vec![container("a", "busybox")]);
        p.spec.containers[0].volume_mounts.push(VolumeMount {
            name: "data".into(),
            mount_path: "/data".into(),
            ..Default::default()
        });
        assert_eq!(
            p.validate().expect_err("invalid").to_string(),
            "spec.containers[0].volumeMounts[0].name: Not found: \"data\""
        );
    }

    #[test]
    fn probes_parse_with_kubelet_defaults_and_are_checked() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "image": "i", "ports": [{"name": "http", "containerPort": 8080}],
                "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 2},
                "readinessProbe": {"tcpSocket": {"port": 8080}},
                "startupProbe": {"exec": {"command": ["true"]}, "failureThreshold": 30}}]}
        }))
        .expect("pod");
        assert_eq!(pod.validate(), Ok(()));
        let c = &pod.spec.containers[0];
        let live = c.liveness_probe.as_ref().expect("liveness");
        assert_eq!(live.http_get.as_ref().and_then(|h| h.port.resolve(c)), Some(8080));
        assert_eq!((live.period().as_secs(), live.timeout().as_secs(), live.failure_threshold()), (2, 1, 3));
        assert_eq!(c.startup_probe.as_ref().map(Probe::failure_threshold), Some(30));
        let mut bad = pod.clone();
        bad.spec.containers[0].readiness_probe = Some(Probe::default());
        assert_eq!(bad.validate().map_err(|e| e.field), Err("spec.containers[0].readinessProbe".to_string()));
        let mut bad = pod;
        bad.spec.containers[0].liveness_probe = Some(Probe {
            tcp_socket: Some(TcpSocketAction { port: PortRef::Name("nope".into()), host: None }),
            ..Default::default()
        });
        assert!(bad.validate().is_err_and(|e| e.field == "spec.containers[0].livenessProbe.tcpSocket.port"));
    }

    #[test]
    fn resources_parse_to_bytes_and_millicores() {
        let mut r = Resources::default();
        r.limits.insert("memory".into(), "64Mi".into());
        r.limits.insert("cpu".into(), "500m".into());
        assert_eq!(r.memory_limit(), Ok(Some(64 << 20)));
        assert_eq!(r.cpu_limit_milli(), Ok(Some(500)));
        assert_eq!(r.cpu_request_milli(), Ok(Some(500)), "request defaults to the limit");
    }

    #[test]
    fn pull_policy_defaults_like_kubernetes() {
        assert_eq!(container("a", "busybox").pull_policy(), PullPolicy::Always);
        assert_eq!(container("a", "busybox:latest").pull_policy(), PullPolicy::Always);
        assert_eq!(container("a", "localhost:5000/busybox").pull_policy(), PullPolicy::Always);
        assert_eq!(container("a", "localhost:5000/busybox:1.36").pull_policy(), PullPolicy::IfNotPresent);
        assert_eq!(container("a", "busybox@sha256:ab").pull_policy(), PullPolicy::IfNotPresent);
    }

    /// A pod with a Secret volume whose file is not UTF-8 (a DER key, say).
    fn binary_secret_pod() -> (Pod, Vec<u8>) {
        let key: Vec<u8> = (0..=255u8).rev().chain([0xc3, 0x28, 0xff, 0x00]).collect();
        let mut p = pod(vec![container("a", "busybox")]);
        p.spec.volumes.push(Volume {
            name: "tls".into(),
            secret: Some(DataVolume {
                name: Some("tls".into()),
                default_mode: Some(0o400),
                data: BTreeMap::from([("note.txt".into(), "text stays text".into())]),
                binary_data: BTreeMap::from([("key.der".into(), Bytes(key.clone()))]),
            }),
            ..Default::default()
        });
        (p, key)
    }

    #[test]
    fn binary_volume_data_crosses_the_wire_and_json_byte_for_byte() {
        let (p, key) = binary_secret_pod();
        let cbor = crate::envelope::encode(&p).expect("encode");
        let back: Pod = crate::envelope::decode(&cbor, usize::MAX).expect("decode");
        assert_eq!(back, p);
        let json = serde_json::to_vec(&p).expect("json");
        let back: Pod = serde_json::from_slice(&json).expect("from json");
        assert_eq!(back, p);
        let s = back.spec.volumes[0].secret.as_ref().expect("secret");
        let files: BTreeMap<&str, &[u8]> = s.files().collect();
        assert_eq!(files.get("key.der"), Some(&key.as_slice()));
        assert_eq!(files.get("note.txt"), Some(&&b"text stays text"[..]));
    }

    #[test]
    fn a_manifest_carries_text_data_and_base64_binary_data() {
        let p: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "image": "i"}],
                "volumes": [{"name": "v", "configMap": {"name": "cfg",
                    "data": {"greeting": "aGVsbG8="},
                    "binaryData": {"blob": "AP/+"}}}]}
        }))
        .expect("pod");
        assert_eq!(p.validate(), Ok(()));
        let v = p.spec.volumes[0].config_map.as_ref().expect("configMap");
        assert_eq!(v.data.get("greeting").map(String::as_str), Some("aGVsbG8="), "data is text, never decoded");
        assert_eq!(v.binary_data.get("blob"), Some(&Bytes(vec![0x00, 0xff, 0xfe])));
    }

    #[test]
    fn host_ipc_has_the_kubernetes_spelling() {
        let p: Pod = serde_json::from_value(serde_json::json!({"spec": {"hostIPC": true}})).expect("pod");
        assert!(p.spec.host_ipc);
        assert_eq!(serde_json::to_value(&p.spec).expect("json")["hostIPC"], true);
        let cached: PodSpec = serde_json::from_value(serde_json::json!({"hostIpc": true})).expect("older cache");
        assert!(cached.host_ipc);
    }

    #[test]
    fn volume_keys_are_checked() {
        let (mut p, _) = binary_secret_pod();
        assert_eq!(p.validate(), Ok(()));
        let s = p.spec.volumes[0].secret.as_mut().expect("secret");
        s.data.insert("key.der".into(), "clash".into());
        assert_eq!(
            p.validate().map_err(|e| e.to_string()),
            Err("spec.volumes[0].secret.data: \"key.der\": duplicate of key present in binaryData".into())
        );
        let (mut p, _) = binary_secret_pod();
        let s = p.spec.volumes[0].secret.as_mut().expect("secret");
        s.binary_data.insert("../escape".into(), Bytes::default());
        assert_eq!(p.validate().map_err(|e| e.field), Err("spec.volumes[0].secret.binaryData".into()));
    }

    #[test]
    fn restart_policy_decides_on_exit_code() {
        assert!(RestartPolicy::Always.restarts(0));
        assert!(!RestartPolicy::OnFailure.restarts(0));
        assert!(RestartPolicy::OnFailure.restarts(1));
        assert!(!RestartPolicy::Never.restarts(1));
    }
}
