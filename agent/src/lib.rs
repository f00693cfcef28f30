//! `kedge-agent`: the node agent. Today it is the runtime half: a CRI
//! implementation over youki's libcontainer (`runtime`, served over gRPC by
//! `grpc`), the image store (`images`), and the pod workers that run static
//! pods (`pods`).

pub mod cache;
pub mod forklock;
pub mod fsutil;
#[cfg(feature = "cri-grpc")]
pub mod grpc;
pub mod images;
pub mod instance;
pub mod logs_cli;
pub mod pods;
pub mod runtime;
