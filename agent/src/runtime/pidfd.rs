//! Waiting for a process to exit through a pidfd: works for any process,
//! our child or one adopted from an earlier agent.
#![allow(unsafe_code)]

use std::io;

use rustix::process::{Pid, PidfdFlags, pidfd_open};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// Resolves once process `pid` has exited (at once if it is already gone).
pub async fn exited(pid: i32) -> io::Result<()> {
    let Some(pid) = Pid::from_raw(pid) else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "pid must be positive"));
    };
    let fd = match pidfd_open(pid, PidfdFlags::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::SRCH) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    // SAFETY: `fd` is an OwnedFd moved into the AsyncFd, so it stays open and
    // names the same pidfd for the AsyncFd's whole life.
    let afd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.map_err(|e| e.into_parts().1)?;
    let _ready = afd.readable().await?;
    Ok(())
}
