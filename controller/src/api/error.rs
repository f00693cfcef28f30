//! API errors, answered as Kubernetes `Status` objects.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::store::StoreError;
use crate::validate::{self, AdmissionError, FieldError};
use crate::write::WriteError;

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub code: StatusCode,
    /// Kubernetes `StatusReason` (`NotFound`, `Invalid`, …).
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

impl ApiError {
    pub fn new(code: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError { code, reason, message: message.into(), details: None }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    pub fn not_found(qualified: &str, name: &str) -> Self {
        let mut e = Self::new(StatusCode::NOT_FOUND, "NotFound", format!("{qualified} \"{name}\" not found"));
        e.details = Some(json!({"name": name, "kind": kind_part(qualified), "group": group_part(qualified)}));
        e
    }

    pub fn no_route(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        )
    }

    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource ({method} {path})"),
        )
    }

    pub fn already_exists(qualified: &str, name: &str) -> Self {
        let mut e = Self::new(StatusCode::CONFLICT, "AlreadyExists", format!("{qualified} \"{name}\" already exists"));
        e.details = Some(json!({"name": name, "kind": kind_part(qualified), "group": group_part(qualified)}));
        e
    }

    pub fn conflict(qualified: &str, name: &str, why: &str) -> Self {
        let mut e = Self::new(
            StatusCode::CONFLICT,
            "Conflict",
            format!("Operation cannot be fulfilled on {qualified} \"{name}\": {why}"),
        );
        e.details = Some(json!({"name": name, "kind": kind_part(qualified), "group": group_part(qualified)}));
        e
    }

    pub fn stale(qualified: &str, name: &str) -> Self {
        Self::conflict(
            qualified,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    pub fn invalid(kind: &str, group: &str, name: &str, errors: Vec<FieldError>) -> Self {
        let summary = validate::summary(&errors);
        let causes: Vec<Value> = errors
            .iter()
            .map(|e| json!({"reason": e.reason, "message": e.message.split_once(": ").map_or(e.message.as_str(), |(_, m)| m), "field": e.field}))
            .collect();
        // (Kubernetes names the kind with its group: `Deployment.apps "web"`.)
        let qualified = if group.is_empty() { kind.to_owned() } else { format!("{kind}.{group}") };
        let mut err = Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            format!("{qualified} \"{name}\" is invalid: {summary}"),
        );
        err.details = Some(json!({"name": name, "group": group, "kind": kind, "causes": causes}));
        err
    }

    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(StatusCode::GONE, "Expired", message)
    }

    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            format!("Request entity too large: limit is {limit}"),
        )
    }

    pub fn unsupported_media(ct: &str) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format ({ct}) - accepted media types include: application/json"
            ),
        )
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "Forbidden", message)
    }

    pub fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized")
    }

    /// 404 with a message of its own (what a node answered).
    pub fn not_found_message(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NotFound", message)
    }

    /// 503: what is needed is not there now (an offline node).
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", message)
    }

    /// The `Status` object sent to the client. It always has `details`
    /// (empty when there are none): `kubectl debug` reads them from a 404
    /// without checking.
    pub fn status(&self) -> Value {
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code.as_u16(),
            "details": self.details.clone().unwrap_or_else(|| json!({})),
        })
    }
}

fn kind_part(qualified: &str) -> &str {
    qualified.split_once('.').map_or(qualified, |(k, _)| k)
}

fn group_part(qualified: &str) -> &str {
    qualified.split_once('.').map_or("", |(_, g)| g)
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "store failure");
        ApiError::internal(e.to_string())
    }
}

impl From<AdmissionError> for ApiError {
    fn from(e: AdmissionError) -> Self {
        match e {
            AdmissionError::Invalid { kind, group, name, causes } => ApiError::invalid(kind, group, &name, causes),
            AdmissionError::Strict { .. } | AdmissionError::Decode { .. } => ApiError::bad_request(e.to_string()),
            AdmissionError::Encode { source, .. } => ApiError::internal(source.to_string()),
            AdmissionError::StoredDecode { .. } | AdmissionError::NoAdmission { .. } => {
                ApiError::internal(e.to_string())
            }
        }
    }
}

/// Each refused write as Kubernetes answers it.
impl From<WriteError> for ApiError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::NotFound { resource, name } => ApiError::not_found(&resource, &name),
            WriteError::AlreadyExists { resource, name } => ApiError::already_exists(&resource, &name),
            WriteError::Stale { resource, name } => ApiError::stale(&resource, &name),
            WriteError::Precondition { resource, name, field, want, have } => ApiError::conflict(
                &resource,
                &name,
                &format!("Precondition failed: {field} in precondition: {want}, {field} in object meta: {have}"),
            ),
            WriteError::AlreadyBound { ref name, .. } => ApiError::conflict("pods", name, &e.to_string()),
            WriteError::BeingDeleted { name } => ApiError::conflict("pods", &name, "pod is being deleted"),
            WriteError::TypeMismatch { .. }
            | WriteError::NamespaceMismatch
            | WriteError::NameMismatch { .. }
            | WriteError::ResourceVersionOnCreate
            | WriteError::NotAnObject => ApiError::bad_request(e.to_string()),
            WriteError::NamespaceTerminating { .. } | WriteError::SystemNamespace { .. } => {
                ApiError::forbidden(e.to_string())
            }
            WriteError::NoServiceAccount { .. } => ApiError::forbidden(format!("pods is forbidden: {e}")),
            WriteError::Allocated { name, cause } => ApiError::invalid("Service", "", &name, vec![cause]),
            WriteError::NoClusterIp | WriteError::NoNodePort | WriteError::NotServed { .. } => {
                ApiError::internal(e.to_string())
            }
            WriteError::CrdTerminating => Self::new(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", e.to_string()),
            WriteError::Admission(a) => a.into(),
            WriteError::Store(s) => s.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = self.status().to_string();
        (self.code, [(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response()
    }
}
