//! `kedge-agent`: the node agent: a CRI implementation over youki's
//! libcontainer (`runtime`, served over gRPC by `grpc`), the image store
//! (`images`), the pod workers (`pods`) that run static pods and the
//! controller's pods, and the fleet link to the controller over MQTT
//! (`link` for the session, `fleet` for snapshots and events, `report` for
//! what the node tells the controller), and `node`, the loop that ties the
//! sources of desired pods, the pod workers and the link together.

pub mod cache;
pub mod config;
pub mod fleet;
pub mod forklock;
pub mod fsutil;
#[cfg(feature = "cri-grpc")]
pub mod grpc;
pub mod identity;
pub mod images;
pub mod instance;
pub mod libm_shim;
pub mod link;
pub mod logs_cli;
pub mod metrics;
pub mod net;
pub mod node;
pub mod pin;
pub mod pods;
pub mod relocs;
pub mod report;
pub mod runtime;
pub mod sessions;
