//! Admission: decoding into the `k8s-openapi` types (which also finds unknown
//! fields for `fieldValidation`), Kubernetes defaults, and field-level
//! validation with Kubernetes' own messages. A rejected object is never
//! stored: callers run this inside the store transaction before writing.

mod kinds;
pub mod names;
pub mod strict;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Endpoints, Event, Namespace, Node, Pod, Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

use crate::api::error::{ApiError, FieldError};
use crate::resources::ResourceType;

/// The `fieldValidation` query parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldValidation {
    Strict,
    Warn,
    Ignore,
}

impl FieldValidation {
    /// Kubernetes' default (no parameter) is `Warn`.
    pub fn parse(v: Option<&str>) -> Result<Self, ApiError> {
        match v {
            None | Some("") | Some("Warn") => Ok(FieldValidation::Warn),
            Some("Strict") => Ok(FieldValidation::Strict),
            Some("Ignore") => Ok(FieldValidation::Ignore),
            Some(other) => Err(ApiError::bad_request(format!(
                "fieldValidation parameter unsupported: {other:?}, must be one of Strict, Warn or Ignore"
            ))),
        }
    }
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
) -> Result<Admitted, ApiError> {
    let input = Input { rt, body, duplicates, mode, old };
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
        _ => Err(ApiError::internal(format!("no admission for kind {}", rt.kind))),
    }
}

struct Input<'a> {
    rt: &'a ResourceType,
    body: Value,
    duplicates: &'a [String],
    mode: FieldValidation,
    old: Option<&'a Value>,
}

type KindFn<T> = fn(&mut T, Option<&T>, &mut Vec<FieldError>);

fn run<T>(input: Input<'_>, kind_fn: KindFn<T>) -> Result<Admitted, ApiError>
where
    T: DeserializeOwned + Serialize + k8s_openapi::Metadata<Ty = ObjectMeta>,
{
    let Input { rt, body, duplicates, mode, old } = input;
    let name = body.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_owned();
    let mut typed: T = decode(rt, &name, body.clone())?;
    let round = serde_json::to_value(&typed).map_err(|e| ApiError::internal(e.to_string()))?;
    let mut problems: Vec<String> =
        strict::unknown_fields(&body, &round).into_iter().map(|f| format!("unknown field \"{f}\"")).collect();
    problems.extend(duplicates.iter().map(|f| format!("duplicate field \"{f}\"")));
    let warnings = match mode {
        FieldValidation::Strict if !problems.is_empty() => {
            return Err(ApiError::bad_request(format!("strict decoding error: {}", problems.join(", "))));
        }
        FieldValidation::Ignore => Vec::new(),
        _ => problems,
    };
    let old_typed: Option<T> = match old {
        Some(o) => Some(
            serde_json::from_value(o.clone())
                .map_err(|e| ApiError::internal(format!("stored {} {name:?} does not decode: {e}", rt.kind)))?,
        ),
        None => None,
    };
    let mut errs = Vec::new();
    kinds::metadata(rt, typed.metadata(), &mut errs);
    kind_fn(&mut typed, old_typed.as_ref(), &mut errs);
    if !errs.is_empty() {
        return Err(ApiError::invalid(rt.kind, rt.group, &name, errs));
    }
    let object = serde_json::to_value(&typed).map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(Admitted { object, warnings })
}

/// Decodes into the typed struct; a missing required field becomes a 422
/// naming it, any other mismatch a 400 naming the field.
fn decode<T: DeserializeOwned>(rt: &ResourceType, name: &str, body: Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(body).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.inner().to_string();
        if let Some(field) = inner.strip_prefix("missing field `").and_then(|r| r.strip_suffix('`')) {
            let full = if path == "." || path.is_empty() { field.to_owned() } else { format!("{path}.{field}") };
            return ApiError::invalid(rt.kind, rt.group, name, vec![FieldError::required(full)]);
        }
        ApiError::bad_request(format!(
            "{kind} in version \"{v}\" cannot be handled as a {kind}: {path}: {inner}",
            kind = rt.kind,
            v = rt.version
        ))
    })
}

#[cfg(test)]
mod tests;
