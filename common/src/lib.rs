//! Wire types and codecs shared by the kedge controller and agent.
//!
//! This crate is data and codecs only: no I/O, no async runtime, no MQTT client,
//! no Kubernetes API types (design.md §2): the versioned envelope, the topic
//! tree, the pod as a node runs it (with [`bytes::Bytes`] for file contents
//! that are not text), Kubernetes quantities, and the fleet-link messages
//! (`wire`) and the cluster's network table every node serves Services,
//! DNS and routes from (`network`); `duration` parses the durations both command lines take.

pub mod broker_tls;
pub mod bytes;
pub mod duration;
pub mod envelope;
pub mod exposition;
pub mod network;
pub mod pod;
pub mod quantity;
pub mod seal;
pub mod session;
pub mod sign;
pub mod topics;
pub mod wire;

/// Version of the kedge binaries, reported by `--version` and in node reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
