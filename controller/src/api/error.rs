//! API errors, answered as Kubernetes `Status` objects.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::store::StoreError;

/// One field-level problem, as Kubernetes reports it in `details.causes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// `FieldValueRequired`, `FieldValueInvalid`, …
    pub reason: &'static str,
    pub field: String,
    /// The full text, e.g. `spec.containers[0].image: Required value`.
    pub message: String,
}

impl FieldError {
    pub fn required(field: impl Into<String>) -> Self {
        let field = field.into();
        FieldError { reason: "FieldValueRequired", message: format!("{field}: Required value"), field }
    }

    pub fn invalid(field: impl Into<String>, value: impl std::fmt::Display, detail: &str) -> Self {
        let field = field.into();
        FieldError {
            reason: "FieldValueInvalid",
            message: format!("{field}: Invalid value: \"{value}\": {detail}"),
            field,
        }
    }

    pub fn not_supported(field: impl Into<String>, value: &str, supported: &[&str]) -> Self {
        let field = field.into();
        let list: Vec<String> = supported.iter().map(|s| format!("\"{s}\"")).collect();
        FieldError {
            reason: "FieldValueNotSupported",
            message: format!("{field}: Unsupported value: \"{value}\": supported values: {}", list.join(", ")),
            field,
        }
    }

    pub fn duplicate(field: impl Into<String>, value: &str) -> Self {
        let field = field.into();
        FieldError { reason: "FieldValueDuplicate", message: format!("{field}: Duplicate value: \"{value}\""), field }
    }

    pub fn not_found(field: impl Into<String>, value: &str) -> Self {
        let field = field.into();
        FieldError { reason: "FieldValueNotFound", message: format!("{field}: Not found: \"{value}\""), field }
    }

    pub fn forbidden(field: impl Into<String>, detail: &str) -> Self {
        let field = field.into();
        FieldError { reason: "FieldValueForbidden", message: format!("{field}: Forbidden: {detail}"), field }
    }

    /// Adds Kubernetes' trailing explanation (`…: Required value: must specify a volume type`).
    pub fn with_detail(mut self, detail: &str) -> Self {
        self.message = format!("{}: {detail}", self.message);
        self
    }

    pub fn too_long(field: impl Into<String>, max: usize) -> Self {
        let field = field.into();
        FieldError {
            reason: "FieldValueTooLong",
            message: format!("{field}: Too long: may not be more than {max} bytes"),
            field,
        }
    }
}

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
    fn new(code: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
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
        let list: Vec<&str> = errors.iter().map(|e| e.message.as_str()).collect();
        let summary = if list.len() == 1 { list[0].to_owned() } else { format!("[{}]", list.join(", ")) };
        let causes: Vec<Value> = errors
            .iter()
            .map(|e| json!({"reason": e.reason, "message": e.message.split_once(": ").map_or(e.message.as_str(), |(_, m)| m), "field": e.field}))
            .collect();
        let mut err =
            Self::new(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", format!("{kind} \"{name}\" is invalid: {summary}"));
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

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", message)
    }

    /// The `Status` object sent to the client.
    pub fn status(&self) -> Value {
        let mut v = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code.as_u16(),
        });
        if let Some(d) = &self.details {
            v["details"] = d.clone();
        }
        v
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

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = self.status().to_string();
        (self.code, [(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response()
    }
}
