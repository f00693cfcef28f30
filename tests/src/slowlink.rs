//! A slow link between clients and a server: a TCP proxy on loopback that
//! holds every chunk it forwards, each way, for a delay with jitter, in
//! order. This machine's kernel has no `netem`, so latency is made here; a
//! TCP stream cannot lose data, so loss is not.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Result;

pub struct SlowLink {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    /// Every stream opened, to close them all when the link goes.
    streams: Arc<Mutex<Vec<TcpStream>>>,
}

impl SlowLink {
    /// Forwards connections made to [`SlowLink::addr`] to `upstream`, each
    /// chunk `delay` ± `jitter` late (never overtaking the one before).
    pub fn start(upstream: SocketAddr, delay: Duration, jitter: Duration) -> Result<SlowLink> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let streams = Arc::new(Mutex::new(Vec::new()));
        let (stop2, streams2) = (stop.clone(), streams.clone());
        thread::spawn(move || {
            for client in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(upstream) else { continue };
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else { continue };
                if let (Ok(c3), Ok(s3)) = (client.try_clone(), server.try_clone()) {
                    streams2.lock().unwrap_or_else(|p| p.into_inner()).extend([c3, s3]);
                }
                pump(client, s2, delay, jitter);
                pump(server, c2, delay, jitter);
            }
        });
        Ok(SlowLink { addr, stop, streams })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for SlowLink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop, which then sees the stop.
        let _ = TcpStream::connect(self.addr);
        for s in self.streams.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

/// A small pseudo-random spread in `-jitter..=jitter` (no `rand` here).
fn spread(jitter: Duration, n: u64) -> i128 {
    let j = jitter.as_micros() as i128;
    if j == 0 {
        return 0;
    }
    let x = n.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407) >> 33;
    (x as i128 % (2 * j + 1)) - j
}

/// Reads `from` and writes to `to` what it read, each chunk once its time
/// has come.
fn pump(mut from: TcpStream, mut to: TcpStream, delay: Duration, jitter: Duration) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        let mut n = 0u64;
        let mut last = Instant::now();
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(len) => {
                    n += 1;
                    let late = (delay.as_micros() as i128 + spread(jitter, n)).max(0) as u64;
                    let due = (Instant::now() + Duration::from_micros(late)).max(last);
                    last = due;
                    if tx.send((due, buf[..len].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
    });
    thread::spawn(move || {
        for (due, chunk) in rx {
            thread::sleep(due.saturating_duration_since(Instant::now()));
            if to.write_all(&chunk).is_err() {
                return;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}
