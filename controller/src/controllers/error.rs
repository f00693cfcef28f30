//! The control loops' error: what a reconcile can run into, sorted so a
//! loop can tell "already gone" and "changed meanwhile" from real failures
//! without knowing how the HTTP API would answer them.

use std::sync::Arc;

use crate::store::StoreError;
use crate::write::WriteError;

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// The object (or its namespace) does not exist.
    #[error(transparent)]
    NotFound(WriteError),
    /// Someone else changed or took it meanwhile: it exists already, it is
    /// stale, bound or being deleted, or a precondition no longer holds.
    #[error(transparent)]
    Conflict(WriteError),
    /// Any other refused write (admission, allocation, …).
    #[error(transparent)]
    Write(WriteError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("kind {kind} is not served")]
    NotServed { kind: &'static str },
    #[error("stored {kind} does not decode: {source}")]
    Decode { kind: &'static str, source: serde_json::Error },
    #[error("{kind} does not encode: {source}")]
    Encode { kind: &'static str, source: serde_json::Error },
    #[error(
        "the cluster CIDR {cluster} has no free /{mask} left: its {blocks} node ranges are all taken (widen --cluster-cidr, or raise --node-cidr-mask-size for smaller ranges)"
    )]
    NoPodCidr { cluster: String, mask: u8, blocks: u64 },
    #[error("the reconcile panicked: {0}")]
    Panicked(String),
    #[error("encoding the snapshot of {node}: {source}")]
    Snapshot { node: String, source: kedge_common::envelope::EnvelopeError },
    #[error("queueing the snapshot of {node}: {source}")]
    Publish { node: String, source: rumqttc::ClientError },
    #[error("encoding the cluster network table: {source}")]
    NetworkTable { source: kedge_common::envelope::EnvelopeError },
    #[error("queueing the cluster network table: {source}")]
    PublishNetwork { source: rumqttc::ClientError },
    /// A batch written (or published) together failed: every key of it
    /// carries the one failure.
    #[error("batch failed: {0}")]
    Batch(#[source] Arc<ControllerError>),
}

impl From<WriteError> for ControllerError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::NotFound { .. } => ControllerError::NotFound(e),
            WriteError::AlreadyExists { .. }
            | WriteError::Stale { .. }
            | WriteError::Precondition { .. }
            | WriteError::AlreadyBound { .. }
            | WriteError::BeingDeleted { .. } => ControllerError::Conflict(e),
            WriteError::Store(s) => ControllerError::Store(s),
            _ => ControllerError::Write(e),
        }
    }
}
