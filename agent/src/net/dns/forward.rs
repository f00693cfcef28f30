//! Asking the node's upstream resolvers: UDP from a fresh socket per
//! question (a random source port), over TCP when the answer came back
//! truncated and the asker needs all of it; each try and the whole
//! exchange bounded in time, so an asker gets SERVFAIL rather than silence.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hickory_proto::op::{Header, Message, MessageType, Query, ResponseCode};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::{Instant, timeout};

/// Largest UDP answer read from an upstream: the questions sent ask for at
/// most [`super::UPSTREAM_PAYLOAD`] bytes.
const UDP_BUFFER: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("no upstream resolver configured")]
    NoUpstream,
    #[error("upstream {upstream}: {source}")]
    Io {
        upstream: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("upstream {upstream} did not answer in time")]
    Timeout { upstream: SocketAddr },
    #[error("upstream {upstream} answered another question")]
    Mismatch { upstream: SocketAddr },
}

/// The upstream resolvers, tried in turn from the last one that answered.
#[derive(Debug)]
pub struct Upstreams {
    addrs: Vec<SocketAddr>,
    preferred: AtomicUsize,
    /// Longest wait for one upstream.
    attempt: Duration,
    /// Longest wait in all.
    deadline: Duration,
}

impl Upstreams {
    pub fn new(addrs: Vec<SocketAddr>, attempt: Duration, deadline: Duration) -> Self {
        Upstreams { addrs, preferred: AtomicUsize::new(0), attempt, deadline }
    }

    /// Sends `query` (an encoded question with id `id` asking `question`)
    /// and returns the upstream's answer as it came. A truncated UDP answer
    /// is asked again over TCP when `whole` (the asker came over TCP).
    pub async fn exchange(
        &self,
        query: &[u8],
        id: u16,
        question: &Query,
        whole: bool,
    ) -> Result<Vec<u8>, ForwardError> {
        let start = Instant::now();
        let n = self.addrs.len();
        let first = self.preferred.load(Ordering::Relaxed) % n.max(1);
        let mut last = ForwardError::NoUpstream;
        for k in 0..n {
            let i = (first + k) % n;
            let Some(&upstream) = self.addrs.get(i) else { break };
            let left = self.deadline.saturating_sub(start.elapsed());
            if left.is_zero() {
                break;
            }
            match timeout(left.min(self.attempt), ask(upstream, query, id, question, whole)).await {
                Ok(Ok(answer)) => {
                    self.preferred.store(i, Ordering::Relaxed);
                    return Ok(answer);
                }
                Ok(Err(e)) => last = e,
                Err(_) => last = ForwardError::Timeout { upstream },
            }
            tracing::debug!(upstream = %upstream, error = %last, "upstream resolver failed");
        }
        Err(last)
    }
}

async fn ask(
    upstream: SocketAddr,
    query: &[u8],
    id: u16,
    question: &Query,
    whole: bool,
) -> Result<Vec<u8>, ForwardError> {
    let io = |source| ForwardError::Io { upstream, source };
    let local: SocketAddr =
        if upstream.is_ipv4() { (Ipv4Addr::UNSPECIFIED, 0).into() } else { (Ipv6Addr::UNSPECIFIED, 0).into() };
    let socket = UdpSocket::bind(local).await.map_err(io)?;
    socket.connect(upstream).await.map_err(io)?;
    socket.send(query).await.map_err(io)?;
    let mut buf = vec![0u8; UDP_BUFFER];
    let answer = loop {
        let len = socket.recv(&mut buf).await.map_err(io)?;
        let Some(answer) = buf.get(..len) else { continue };
        // Anything else arriving on this port (a late or forged datagram) is not the answer.
        match check(answer, id, question) {
            Some(truncated) => break (answer.to_vec(), truncated),
            None => continue,
        }
    };
    match answer {
        (_, true) if whole => ask_tcp(upstream, query, id, question).await,
        (bytes, _) => Ok(bytes),
    }
}

async fn ask_tcp(upstream: SocketAddr, query: &[u8], id: u16, question: &Query) -> Result<Vec<u8>, ForwardError> {
    let io = |source| ForwardError::Io { upstream, source };
    let len = u16::try_from(query.len()).map_err(|_| io(io::Error::other("question too long for TCP")))?;
    let mut stream = TcpStream::connect(upstream).await.map_err(io)?;
    let mut framed = Vec::with_capacity(query.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(query);
    stream.write_all(&framed).await.map_err(io)?;
    let len = stream.read_u16().await.map_err(io)?;
    let mut answer = vec![0u8; usize::from(len)];
    stream.read_exact(&mut answer).await.map_err(io)?;
    match check(&answer, id, question) {
        Some(_) => Ok(answer),
        None => Err(ForwardError::Mismatch { upstream }),
    }
}

/// Whether `answer` answers `question` asked with `id`: Some(truncated) if so.
/// An error answer may leave the question out.
fn check(answer: &[u8], id: u16, question: &Query) -> Option<bool> {
    let mut decoder = BinDecoder::new(answer);
    let header = Header::read(&mut decoder).ok()?;
    if header.id != id || header.message_type != MessageType::Response {
        return None;
    }
    let queries = Message::read_queries(&mut decoder, usize::from(header.counts.queries)).ok()?;
    let same = match queries.as_slice() {
        [q] => q == question,
        [] => header.response_code != ResponseCode::NoError,
        _ => false,
    };
    same.then_some(header.truncation)
}
