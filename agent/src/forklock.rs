//! Forks against file writes. A container's init is forked from the agent
//! and keeps copies of the agent's descriptors until it execs — which, for a
//! created container, is when it is started. If that fork happens while the
//! agent is writing an executable (unpacking a layer, copying a root), the
//! copy stays open for writing in the waiting init, and anything that execs
//! the file meanwhile fails with ETXTBSY ("Text file busy"). Writers hold
//! [`writing`] (shared among themselves), forks hold [`forking`] (exclusive).

use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

static LOCK: RwLock<()> = RwLock::new(());

/// Held while writing files a container may execute.
pub fn writing() -> RwLockReadGuard<'static, ()> {
    LOCK.read().unwrap_or_else(|p| p.into_inner())
}

/// Held while forking a container process.
pub fn forking() -> RwLockWriteGuard<'static, ()> {
    LOCK.write().unwrap_or_else(|p| p.into_inner())
}
