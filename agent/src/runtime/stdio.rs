//! A container's own stdin and terminal, for `kubectl attach`.
//!
//! `stdin: true` gives the container a FIFO as its stdin (`DIR/stdin`); an
//! attach writes into it. With `stdinOnce` the container holds it read-only
//! and the agent keeps the one other writer here until the first attach
//! ends: then the container reads end of file, as on Kubernetes. Without,
//! the container holds it read-write and never sees an end.
//! `tty: true` runs the process on a terminal whose master the container
//! sends the agent at create: its output goes to the log (as stdout), an
//! attach writes to it and resizes it.
//!
//! What the container writes is also tapped live, unbuffered (a prompt
//! has no newline), for attaches: [`tap`]; the log gets it line by line.
//!
//! Both live in the agent's memory: an agent restart closes them (the
//! container's stdin ends; its terminal hangs up), where containerd keeps
//! them in a shim process per container. One agent runs per machine, so
//! this registry is the process's.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::broadcast;

/// A piece of output: 1 stdout (or the terminal), 2 stderr.
pub type Chunk = (u8, Arc<[u8]>);

/// Chunks an attach may fall behind by before it loses some.
const TAP_CHUNKS: usize = 64;

#[derive(Default)]
struct Held {
    /// The agent's writer of a `stdinOnce` stdin.
    keeper: Option<OwnedFd>,
    terminal: Option<Arc<OwnedFd>>,
    /// The output pumps hold the senders: the channel closes when they end.
    tap: Option<broadcast::WeakSender<Chunk>>,
}

static HELD: Mutex<Option<HashMap<String, Held>>> = Mutex::new(None);

fn with<R>(f: impl FnOnce(&mut HashMap<String, Held>) -> R) -> R {
    let mut g = HELD.lock().unwrap_or_else(PoisonError::into_inner);
    f(g.get_or_insert_with(HashMap::new))
}

/// Keeps the agent's writer of container `id`'s `stdinOnce` stdin.
pub fn keep_stdin(id: &str, writer: OwnedFd) {
    with(|m| m.entry(id.to_owned()).or_default().keeper = Some(writer));
}

/// Closes the agent's writer: once the attach's closes too, the container
/// reads end of file.
pub fn close_stdin(id: &str) {
    let _dropped = with(|m| m.get_mut(id).and_then(|h| h.keeper.take()));
}

/// Whether the agent still holds container `id`'s `stdinOnce` writer (no
/// attach has ended yet, and the agent has not restarted).
pub fn stdin_once_open(id: &str) -> bool {
    with(|m| m.get(id).is_some_and(|h| h.keeper.is_some()))
}

/// Where container `id`'s output pumps tap what they read (the pumps hold
/// it: once they have ended, attaches see the channel closed).
pub fn tap(id: &str) -> broadcast::Sender<Chunk> {
    with(|m| {
        let held = m.entry(id.to_owned()).or_default();
        if let Some(s) = held.tap.as_ref().and_then(broadcast::WeakSender::upgrade) {
            return s;
        }
        let s = broadcast::channel(TAP_CHUNKS).0;
        held.tap = Some(s.downgrade());
        s
    })
}

/// Container `id`'s output from now on; closed at once when no pump runs.
pub fn watch(id: &str) -> broadcast::Receiver<Chunk> {
    match with(|m| m.get(id).and_then(|h| h.tap.as_ref()?.upgrade())) {
        Some(s) => s.subscribe(),
        None => broadcast::channel(1).1,
    }
}

pub fn set_terminal(id: &str, master: Arc<OwnedFd>) {
    with(|m| m.entry(id.to_owned()).or_default().terminal = Some(master));
}

/// The master of container `id`'s terminal, if it has one this agent holds.
pub fn terminal(id: &str) -> Option<Arc<OwnedFd>> {
    with(|m| m.get(id).and_then(|h| h.terminal.clone()))
}

/// Lets go of what container `id` had (it was removed).
pub fn forget(id: &str) {
    let _dropped = with(|m| m.remove(id));
}
