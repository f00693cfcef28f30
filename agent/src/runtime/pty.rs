//! The terminal of a `kubectl exec -t`: libcontainer makes the pty in the
//! container and sends its master through a console socket (as runc does);
//! the agent takes it there, reads and writes it, and sets its size.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
use rustix::termios::Winsize;
use tokio::net::UnixListener;
use tokio::net::unix::pipe;

/// A listening console socket. A unix socket path is at most 107 bytes and
/// data dirs are deep, so it is bound through the directory's descriptor
/// (`/proc/self/fd/N/name`); the helper is given the full path (libcontainer
/// connects through a short symlink of its own).
pub struct ConsoleSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ConsoleSocket {
    pub fn bind(dir: &Path, name: &str) -> io::Result<ConsoleSocket> {
        let d = std::fs::File::open(dir)?;
        let short = format!("/proc/self/fd/{}/{name}", std::os::fd::AsRawFd::as_raw_fd(&d));
        let listener = UnixListener::bind(&short)?;
        Ok(ConsoleSocket { listener, path: dir.join(name) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The pty master the container's process sends.
    pub async fn master(&self) -> io::Result<OwnedFd> {
        let (stream, _) = self.listener.accept().await?;
        loop {
            stream.readable().await?;
            match stream.try_io(tokio::io::Interest::READABLE, || recv_fd(&stream)) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => return other,
            }
        }
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn recv_fd(socket: impl AsFd) -> io::Result<OwnedFd> {
    let mut name = [0u8; 256];
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut iov = [io::IoSliceMut::new(&mut name)];
    rustix::net::recvmsg(&socket, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC)?;
    for msg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(mut fds) = msg
            && let Some(fd) = fds.next()
        {
            return Ok(fd);
        }
    }
    Err(io::Error::new(io::ErrorKind::InvalidData, "the console socket sent no terminal"))
}

/// The master as a reader and a writer for tokio.
pub fn split(master: OwnedFd) -> io::Result<(pipe::Receiver, pipe::Sender)> {
    use rustix::fs::{OFlags, fcntl_getfl, fcntl_setfl};
    fcntl_setfl(&master, fcntl_getfl(&master)? | OFlags::NONBLOCK)?;
    let writer = master.try_clone()?;
    Ok((pipe::Receiver::from_owned_fd_unchecked(master)?, pipe::Sender::from_owned_fd_unchecked(writer)?))
}

/// Sets the terminal's size (the process gets SIGWINCH).
pub fn resize(master: impl AsFd, width: u16, height: u16) -> io::Result<()> {
    let size = Winsize { ws_row: height, ws_col: width, ws_xpixel: 0, ws_ypixel: 0 };
    rustix::termios::tcsetwinsize(master, size).map_err(io::Error::from)
}
