//! Control loops that run inside the controller process. Each reacts to
//! watched state and re-checks the store; none is told what to do directly.

pub mod daemonset;
pub mod deployment;
pub mod endpoints;
pub mod events;
pub mod gc;
pub mod namespace;
pub mod nodelifecycle;
pub mod podutil;
pub mod replicaset;
pub mod runner;
