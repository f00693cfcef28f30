//! Why a write was refused. The API answers each as the Kubernetes `Status`
//! it would (`api/error.rs`); the control loops sort them into their own
//! error (`controllers::ControllerError`).

use crate::store::StoreError;
use crate::validate::{AdmissionError, FieldError};

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{resource} \"{name}\" not found")]
    NotFound { resource: String, name: String },
    #[error("{resource} \"{name}\" already exists")]
    AlreadyExists { resource: String, name: String },
    /// The `resourceVersion` sent is not the stored one.
    #[error("{resource} \"{name}\" has been modified since it was read")]
    Stale { resource: String, name: String },
    /// A delete precondition (`uid` or `resourceVersion`) does not hold.
    #[error(
        "precondition failed on {resource} \"{name}\": {field} in precondition: {want}, {field} in object meta: {have}"
    )]
    Precondition { resource: String, name: String, field: &'static str, want: String, have: String },
    #[error("pod {name} is already assigned to node \"{node}\"")]
    AlreadyBound { name: String, node: String },
    #[error("pod {name} is being deleted")]
    BeingDeleted { name: String },
    #[error("the {field} in the data ({have}) does not match the expected {field} ({want})")]
    TypeMismatch { field: &'static str, have: String, want: String },
    #[error("the namespace of the provided object does not match the namespace sent on the request")]
    NamespaceMismatch,
    #[error("the name of the object ({have}) does not match the name on the URL ({want})")]
    NameMismatch { have: String, want: String },
    #[error("resourceVersion should not be set on objects to be created")]
    ResourceVersionOnCreate,
    #[error("the object must be a JSON object")]
    NotAnObject,
    #[error("unable to create new content in namespace {namespace} because it is being terminated")]
    NamespaceTerminating { namespace: String },
    #[error("namespaces \"{name}\" is forbidden: this namespace may not be deleted")]
    SystemNamespace { name: String },
    /// A cluster IP or node port another Service holds.
    #[error("Service \"{name}\" is invalid: {}", .cause.message)]
    Allocated { name: String, cause: FieldError },
    #[error("no free cluster IP in the service range")]
    NoClusterIp,
    #[error("no free node port")]
    NoNodePort,
    /// A custom resource's CRD is being deleted.
    #[error("create not allowed while custom resource definition is terminating")]
    CrdTerminating,
    #[error("{plural} are not served")]
    NotServed { plural: &'static str },
    /// A pod names a ServiceAccount its namespace does not have.
    #[error("error looking up service account {namespace}/{name}: serviceaccount \"{name}\" not found")]
    NoServiceAccount { namespace: String, name: String },
    #[error(transparent)]
    Admission(#[from] AdmissionError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
}
