//! Control loops that run inside the controller process. Each reacts to
//! watched state and re-checks the store; none is told what to do directly.

pub mod crd;
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod disruption;
pub mod endpoints;
mod error;
pub mod events;
pub mod eventttl;
pub mod gc;
pub mod job;
pub mod master;
pub mod namespace;
pub mod nodelifecycle;
pub mod podutil;
pub mod replicaset;
pub mod runner;
pub mod serviceaccount;
pub mod statefulset;
pub mod volume;
pub mod watched;

pub use error::ControllerError;

/// A write to something that is already gone is no failure for a control
/// loop: the world already moved where the write would have taken it.
pub fn ignore_not_found<T>(r: Result<T, ControllerError>) -> Result<(), ControllerError> {
    match r {
        Ok(_) | Err(ControllerError::NotFound(_)) => Ok(()),
        Err(e) => Err(e),
    }
}
