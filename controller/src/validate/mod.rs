//! Admission: decoding into the `k8s-openapi` types (which also finds unknown
//! fields for `fieldValidation`), Kubernetes defaults, and field-level
//! validation with Kubernetes' own messages. A rejected object is never
//! stored: callers run this inside the store transaction before writing.

mod crd;
mod field;
mod kinds;
pub mod names;
pub mod schema;
pub mod strict;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Endpoints, Event, Namespace, Node, Pod, Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

pub use field::FieldError;

use crate::resources::ResourceType;

/// The `fieldValidation` query parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldValidation {
    Strict,
    Warn,
    Ignore,
}

impl FieldValidation {
    /// The query parameter's value; Kubernetes' default (none) is `Warn`.
    /// `None`: not a value Kubernetes knows.
    pub fn parse(v: Option<&str>) -> Option<Self> {
        match v {
            None | Some("") | Some("Warn") => Some(FieldValidation::Warn),
            Some("Strict") => Some(FieldValidation::Strict),
            Some("Ignore") => Some(FieldValidation::Ignore),
            Some(_) => None,
        }
    }
}

/// Why an object was not admitted.
#[derive(Debug, thiserror::Error)]
pub enum AdmissionError {
    /// Field-level problems (Kubernetes' 422 `Invalid`).
    #[error("{kind} \"{name}\" is invalid: {}", summary(.causes))]
    Invalid { kind: &'static str, group: &'static str, name: String, causes: Vec<FieldError> },
    /// Unknown or duplicated fields under `fieldValidation=Strict`.
    #[error("strict decoding error: {}", .problems.join(", "))]
    Strict { problems: Vec<String> },
    /// The body does not decode into the kind's type.
    #[error("{kind} in version \"{version}\" cannot be handled as a {kind}: {path}: {source}")]
    Decode { kind: &'static str, version: &'static str, path: String, source: serde_json::Error },
    /// The stored object an update starts from does not decode.
    #[error("stored {kind} {name:?} does not decode: {source}")]
    StoredDecode { kind: &'static str, name: String, source: serde_json::Error },
    #[error("{kind} does not encode: {source}")]
    Encode { kind: &'static str, source: serde_json::Error },
    #[error("no admission for kind {kind}")]
    NoAdmission { kind: &'static str },
}

/// Kubernetes' summary of field errors: the one message, or all in brackets.
pub fn summary(causes: &[FieldError]) -> String {
    let list: Vec<&str> = causes.iter().map(|e| e.message.as_str()).collect();
    if list.len() == 1 { list[0].to_owned() } else { format!("[{}]", list.join(", ")) }
}

/// An object that passed admission, normalised through its typed form.
#[derive(Debug)]
pub struct Admitted {
    pub object: Value,
    /// Unknown or duplicated fields under `fieldValidation=Warn`, sent back as
    /// `Warning` headers.
    pub warnings: Vec<String>,
}

/// Admits `body` as an object of `rt` (`old` is the stored object on update).
pub fn admit(
    rt: &ResourceType,
    body: Value,
    duplicates: &[String],
    mode: FieldValidation,
    old: Option<&Value>,
) -> Result<Admitted, AdmissionError> {
    let input = Input { rt, body, duplicates, mode, old };
    if let Some(c) = &rt.custom {
        return custom(input, c.schema.as_ref());
    }
    match (rt.group, rt.kind) {
        ("", "Pod") => run::<Pod>(input, kinds::pod),
        ("", "Service") => run::<Service>(input, kinds::service),
        ("", "Namespace") => run::<Namespace>(input, kinds::namespace),
        ("", "Node") => run::<Node>(input, kinds::node),
        ("", "ConfigMap") => run::<ConfigMap>(input, kinds::config_map),
        ("", "Secret") => run::<Secret>(input, kinds::secret),
        ("", "Endpoints") => run::<Endpoints>(input, kinds::endpoints),
        ("", "Event") => run::<Event>(input, kinds::event),
        ("apps", "Deployment") => run::<Deployment>(input, kinds::deployment),
        ("apps", "ReplicaSet") => run::<ReplicaSet>(input, kinds::replica_set),
        ("apps", "DaemonSet") => run::<DaemonSet>(input, kinds::daemon_set),
        ("batch", "Job") => run::<k8s_openapi::api::batch::v1::Job>(input, kinds::job),
        ("coordination.k8s.io", "Lease") => run::<k8s_openapi::api::coordination::v1::Lease>(input, kinds::lease),
        ("batch", "CronJob") => run::<k8s_openapi::api::batch::v1::CronJob>(input, kinds::cron_job),
        ("policy", "PodDisruptionBudget") => {
            run::<k8s_openapi::api::policy::v1::PodDisruptionBudget>(input, kinds::pod_disruption_budget)
        }
        ("apps", "StatefulSet") => run::<k8s_openapi::api::apps::v1::StatefulSet>(input, kinds::stateful_set),
        ("apps", "ControllerRevision") => {
            run::<k8s_openapi::api::apps::v1::ControllerRevision>(input, kinds::controller_revision)
        }
        ("", "PersistentVolumeClaim") => {
            run::<k8s_openapi::api::core::v1::PersistentVolumeClaim>(input, kinds::persistent_volume_claim)
        }
        ("", "PersistentVolume") => {
            run::<k8s_openapi::api::core::v1::PersistentVolume>(input, kinds::persistent_volume)
        }
        ("storage.k8s.io", "StorageClass") => {
            run::<k8s_openapi::api::storage::v1::StorageClass>(input, kinds::storage_class)
        }
        ("", "ServiceAccount") => run::<k8s_openapi::api::core::v1::ServiceAccount>(input, kinds::service_account),
        ("rbac.authorization.k8s.io", "Role") => run::<k8s_openapi::api::rbac::v1::Role>(input, kinds::role),
        ("rbac.authorization.k8s.io", "ClusterRole") => {
            run::<k8s_openapi::api::rbac::v1::ClusterRole>(input, kinds::cluster_role)
        }
        ("rbac.authorization.k8s.io", "RoleBinding") => {
            run::<k8s_openapi::api::rbac::v1::RoleBinding>(input, kinds::role_binding)
        }
        ("rbac.authorization.k8s.io", "ClusterRoleBinding") => {
            run::<k8s_openapi::api::rbac::v1::ClusterRoleBinding>(input, kinds::cluster_role_binding)
        }
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
            run::<CustomResourceDefinition>(input, crd::custom_resource_definition)
        }
        _ => Err(AdmissionError::NoAdmission { kind: rt.kind }),
    }
}

/// A custom resource: its metadata as any object's, the rest pruned,
/// defaulted and checked against its CRD's schema.
fn custom(input: Input<'_>, schema: Option<&Value>) -> Result<Admitted, AdmissionError> {
    let Input { rt, mut body, duplicates, mode, old: _ } = input;
    let name = body.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_owned();
    let raw_meta = body.get("metadata").cloned().unwrap_or_else(|| Value::Object(Default::default()));
    let decode_err = |path: String, source| AdmissionError::Decode { kind: rt.kind, version: rt.version, path, source };
    let meta: ObjectMeta = serde_path_to_error::deserialize(raw_meta.clone()).map_err(|e| {
        let path = format!("metadata.{}", e.path());
        decode_err(path, e.into_inner())
    })?;
    let encoded = serde_json::to_value(&meta).map_err(|source| AdmissionError::Encode { kind: rt.kind, source })?;
    let mut problems: Vec<String> = strict::unknown_fields(&raw_meta, &encoded)
        .into_iter()
        .map(|f| format!("unknown field \"metadata.{f}\""))
        .collect();
    body["metadata"] = encoded;
    if let Some(schema) = schema {
        problems.extend(schema::normalize(schema, &mut body).into_iter().map(|f| format!("unknown field \"{f}\"")));
    }
    problems.extend(duplicates.iter().map(|f| format!("duplicate field \"{f}\"")));
    let warnings = match mode {
        FieldValidation::Strict if !problems.is_empty() => return Err(AdmissionError::Strict { problems }),
        FieldValidation::Ignore => Vec::new(),
        _ => problems,
    };
    let mut errs = Vec::new();
    kinds::metadata(rt, &meta, &mut errs);
    if let Some(schema) = schema {
        errs.extend(schema::validate(schema, &body));
    }
    if !errs.is_empty() {
        return Err(AdmissionError::Invalid { kind: rt.kind, group: rt.group, name, causes: errs });
    }
    Ok(Admitted { object: body, warnings })
}

struct Input<'a> {
    rt: &'a ResourceType,
    body: Value,
    duplicates: &'a [String],
    mode: FieldValidation,
    old: Option<&'a Value>,
}

type KindFn<T> = fn(&mut T, Option<&T>, &mut Vec<FieldError>);

fn run<T>(input: Input<'_>, kind_fn: KindFn<T>) -> Result<Admitted, AdmissionError>
where
    T: DeserializeOwned + Serialize + k8s_openapi::Metadata<Ty = ObjectMeta>,
{
    let Input { rt, body, duplicates, mode, old } = input;
    let name = body.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_owned();
    let mut typed: T = decode(rt, &name, body.clone())?;
    let encode = |source| AdmissionError::Encode { kind: rt.kind, source };
    let round = serde_json::to_value(&typed).map_err(encode)?;
    let mut problems: Vec<String> =
        strict::unknown_fields(&body, &round).into_iter().map(|f| format!("unknown field \"{f}\"")).collect();
    problems.extend(duplicates.iter().map(|f| format!("duplicate field \"{f}\"")));
    let warnings = match mode {
        FieldValidation::Strict if !problems.is_empty() => {
            return Err(AdmissionError::Strict { problems });
        }
        FieldValidation::Ignore => Vec::new(),
        _ => problems,
    };
    let old_typed: Option<T> = match old {
        Some(o) => Some(serde_json::from_value(o.clone()).map_err(|source| AdmissionError::StoredDecode {
            kind: rt.kind,
            name: name.clone(),
            source,
        })?),
        None => None,
    };
    let mut errs = Vec::new();
    kinds::metadata(rt, typed.metadata(), &mut errs);
    kind_fn(&mut typed, old_typed.as_ref(), &mut errs);
    if !errs.is_empty() {
        return Err(AdmissionError::Invalid { kind: rt.kind, group: rt.group, name, causes: errs });
    }
    let object = serde_json::to_value(&typed).map_err(encode)?;
    Ok(Admitted { object, warnings })
}

/// Decodes into the typed struct; a missing required field becomes a 422
/// naming it, any other mismatch a 400 naming the field.
fn decode<T: DeserializeOwned>(rt: &ResourceType, name: &str, body: Value) -> Result<T, AdmissionError> {
    serde_path_to_error::deserialize(body).map_err(|e| {
        let path = e.path().to_string();
        let source = e.into_inner();
        let inner = source.to_string();
        if let Some(field) = inner.strip_prefix("missing field `").and_then(|r| r.strip_suffix('`')) {
            let full = if path == "." || path.is_empty() { field.to_owned() } else { format!("{path}.{field}") };
            let causes = vec![FieldError::required(full)];
            return AdmissionError::Invalid { kind: rt.kind, group: rt.group, name: name.to_owned(), causes };
        }
        AdmissionError::Decode { kind: rt.kind, version: rt.version, path, source }
    })
}

#[cfg(test)]
mod tests;
