//! Field-level problems, as Kubernetes reports them in `details.causes`.

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
