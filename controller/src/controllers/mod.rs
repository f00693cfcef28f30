//! Control loops that run inside the controller process. Each reacts to
//! watched state and re-checks the store; none is told what to do directly.

pub mod daemonset;
pub mod deployment;
pub mod endpoints;
pub mod events;
pub mod eventttl;
pub mod gc;
pub mod namespace;
pub mod nodelifecycle;
pub mod podutil;
pub mod replicaset;
pub mod runner;

use crate::api::ApiError;

/// A write to something that is already gone is no failure for a control
/// loop: the world already moved where the write would have taken it.
pub fn ignore_not_found<T>(r: Result<T, ApiError>) -> Result<(), ApiError> {
    match r {
        Ok(_) => Ok(()),
        Err(e) if e.code == axum::http::StatusCode::NOT_FOUND => Ok(()),
        Err(e) => Err(e),
    }
}
