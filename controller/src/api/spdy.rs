//! The server's side of SPDY/3.1 as client-go speaks it (moby/spdystream):
//! what `kubectl port-forward` uses in every version (inside a WebSocket
//! from 1.31 on) and `kubectl exec` up to 1.29. Only what that client
//! needs: streams it opens (SYN_STREAM, answered at once with an empty
//! SYN_REPLY), data with FIN, RST_STREAM, PING (echoed) and GOAWAY. No flow
//! control: spdystream sends no WINDOW_UPDATE and ignores ours, so windows
//! are never waited for (a strict server would stall at 64 KiB).
//!
//! Header blocks are zlib-compressed with the SPDY/3 dictionary, one zlib
//! stream per direction for the whole connection. Ours need no
//! compression: after a zlib header each block is one stored deflate block
//! and a sync flush (as Go's inflater needs to hand the block out), which
//! any inflater reads. Research: docs/research/kubectl-streaming.md §2.

use std::collections::HashMap;
use std::io;

use flate2::{Decompress, FlushDecompress, Status};

/// The SPDY/3 header dictionary (1423 bytes, Adler-32 0xe3c6a7c2).
const DICTIONARY: &[u8] = include_bytes!("spdy3-dictionary.bin");
/// Largest frame taken (spdystream writes at most 16 MiB - 1, kubectl's
/// data frames are 32 KiB); more is a broken peer.
const MAX_FRAME: usize = 1 << 20;
/// Largest decompressed header block taken.
const MAX_HEADERS: usize = 64 * 1024;

const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const FLAG_FIN: u8 = 1;

/// RST_STREAM status: the stream is refused (a bad port, an unknown type).
pub const REFUSED_STREAM: u32 = 3;

/// Where the connection's bytes come from and go: an upgraded HTTP
/// connection, or the binary messages of a WebSocket tunnel.
pub trait Transport: Send {
    /// Appends what arrives to `buf`; `Ok(0)` at the end.
    fn read(&mut self, buf: &mut Vec<u8>) -> impl Future<Output = io::Result<usize>> + Send;
    /// Writes `data` whole.
    fn write(&mut self, data: Vec<u8>) -> impl Future<Output = io::Result<()>> + Send;
}

/// The answer that switches an HTTP connection to SPDY/3.1 with the
/// stream protocol `version` (client-go requires the header).
pub fn switching_protocols(version: &'static str) -> axum::response::Response {
    use axum::http::{HeaderValue, StatusCode, header};
    use axum::response::IntoResponse;
    let mut resp = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
    h.insert("x-stream-protocol-version", HeaderValue::from_static(version));
    resp
}

/// What the client did.
#[derive(Debug, PartialEq)]
pub enum Event {
    /// Opened a stream (already answered).
    Stream {
        id: u32,
        headers: HashMap<String, String>,
    },
    Data {
        id: u32,
        data: Vec<u8>,
        fin: bool,
    },
    Reset {
        id: u32,
    },
    GoAway,
    /// Something the connection took care of itself (a ping).
    Handled,
}

#[derive(Debug, thiserror::Error)]
pub enum SpdyError {
    #[error("SPDY: {0}")]
    Protocol(String),
    #[error("SPDY connection: {0}")]
    Io(#[from] io::Error),
}

fn protocol(m: impl Into<String>) -> SpdyError {
    SpdyError::Protocol(m.into())
}

/// One SPDY connection, server side. Reading ([`Conn::next`]) is cancel
/// safe; frames to send are queued and written by [`Conn::flush`].
pub struct Conn<T> {
    t: T,
    buf: Vec<u8>,
    inflate: Decompress,
    out: Vec<Vec<u8>>,
    /// Whether our zlib stream's header went out.
    zlib_started: bool,
    /// The highest stream id the client opened.
    last_stream: u32,
}

impl<T: Transport> Conn<T> {
    pub fn new(t: T) -> Conn<T> {
        Conn {
            t,
            buf: Vec::new(),
            inflate: Decompress::new(true),
            out: Vec::new(),
            zlib_started: false,
            last_stream: 0,
        }
    }

    /// The next thing the client did; `None` when it closed.
    pub async fn next(&mut self) -> Option<Result<Event, SpdyError>> {
        loop {
            match self.parse() {
                Ok(Some(ev)) => return Some(Ok(ev)),
                Ok(None) => {}
                Err(e) => return Some(Err(e)),
            }
            match self.t.read(&mut self.buf).await {
                Ok(0) => return None,
                Ok(_) => {}
                Err(e) => return Some(Err(e.into())),
            }
        }
    }

    /// Writes every queued frame.
    pub async fn flush(&mut self) -> Result<(), SpdyError> {
        for frame in std::mem::take(&mut self.out) {
            self.t.write(frame).await?;
        }
        Ok(())
    }

    /// Takes one whole frame off the buffer, if there is one.
    fn parse(&mut self) -> Result<Option<Event>, SpdyError> {
        if self.buf.len() < 8 {
            return Ok(None);
        }
        let len = usize::from(self.buf[5]) << 16 | usize::from(self.buf[6]) << 8 | usize::from(self.buf[7]);
        if len > MAX_FRAME {
            return Err(protocol(format!("a frame of {len} bytes (at most {MAX_FRAME})")));
        }
        if self.buf.len() < 8 + len {
            return Ok(None);
        }
        let frame: Vec<u8> = self.buf.drain(..8 + len).collect();
        let (head, body) = frame.split_at(8);
        let flags = head[4];
        if head[0] & 0x80 == 0 {
            let id = u32_at(head, 0) & 0x7fff_ffff;
            return Ok(Some(Event::Data { id, data: body.to_vec(), fin: flags & FLAG_FIN != 0 }));
        }
        let version = u16::from_be_bytes([head[0] & 0x7f, head[1]]);
        if version != 3 {
            return Err(protocol(format!("version {version} (this server speaks 3)")));
        }
        let short = || protocol(format!("a control frame of {len} bytes is too short"));
        match u16::from_be_bytes([head[2], head[3]]) {
            SYN_STREAM => {
                if body.len() < 10 {
                    return Err(short());
                }
                let id = u32_at(body, 0) & 0x7fff_ffff;
                let headers = self.headers(&body[10..])?;
                self.last_stream = self.last_stream.max(id);
                Ok(Some(Event::Stream { id, headers }))
            }
            RST_STREAM => {
                if body.len() < 8 {
                    return Err(short());
                }
                Ok(Some(Event::Reset { id: u32_at(body, 0) & 0x7fff_ffff }))
            }
            PING => {
                // Echoed as it came.
                self.out.push(frame);
                Ok(Some(Event::Handled))
            }
            GOAWAY => Ok(Some(Event::GoAway)),
            // SETTINGS, WINDOW_UPDATE, HEADERS, NOOP: nothing to do.
            _ => Ok(Some(Event::Handled)),
        }
    }

    /// Inflates and reads one header block (the zlib stream goes on across
    /// frames; it asks for the dictionary at its start).
    fn headers(&mut self, block: &[u8]) -> Result<HashMap<String, String>, SpdyError> {
        let mut plain = Vec::with_capacity(256);
        let mut input = block;
        loop {
            plain.reserve(1024);
            if plain.len() > MAX_HEADERS {
                return Err(protocol("a header block over 64 KiB"));
            }
            let before = self.inflate.total_in();
            let status = match self.inflate.decompress_vec(input, &mut plain, FlushDecompress::Sync) {
                Ok(s) => s,
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate.set_dictionary(DICTIONARY).map_err(|e| protocol(format!("header dictionary: {e}")))?;
                    Status::Ok
                }
                Err(e) => return Err(protocol(format!("header block: {e}"))),
            };
            let used = usize::try_from(self.inflate.total_in() - before).unwrap_or(input.len());
            input = &input[used.min(input.len())..];
            if input.is_empty() && plain.len() < plain.capacity() {
                break;
            }
            if status == Status::StreamEnd {
                return Err(protocol("the header zlib stream ended"));
            }
        }
        parse_headers(&plain)
    }

    /// Answers stream `id` (an empty header block).
    pub fn reply(&mut self, id: u32) {
        let mut body = id.to_be_bytes().to_vec();
        body.extend(self.header_block(&0u32.to_be_bytes()));
        self.control(SYN_REPLY, 0, &body);
    }

    /// Sends data on stream `id` (`fin`: the last).
    pub fn data(&mut self, id: u32, data: &[u8], fin: bool) {
        // Within the 24-bit length, in pieces kubectl's reader takes whole.
        let mut chunks = data.chunks(32 * 1024).peekable();
        if chunks.peek().is_none() {
            self.out.push(data_frame(id, &[], fin));
        }
        while let Some(c) = chunks.next() {
            let last = chunks.peek().is_none();
            self.out.push(data_frame(id, c, fin && last));
        }
    }

    /// Ends stream `id` abruptly.
    pub fn reset(&mut self, id: u32, status: u32) {
        let mut body = id.to_be_bytes().to_vec();
        body.extend(status.to_be_bytes());
        self.control(RST_STREAM, 0, &body);
    }

    /// Says the connection is done (after the streams' last frames).
    pub fn goaway(&mut self) {
        let mut body = self.last_stream.to_be_bytes().to_vec();
        body.extend(0u32.to_be_bytes());
        self.control(GOAWAY, 0, &body);
    }

    fn control(&mut self, kind: u16, flags: u8, body: &[u8]) {
        let mut f = vec![0x80, 3];
        f.extend(kind.to_be_bytes());
        f.push(flags);
        f.extend(&u24(body.len()));
        f.extend(body);
        self.out.push(f);
    }

    /// `plain` as the next block of our zlib stream: stored, uncompressed.
    fn header_block(&mut self, plain: &[u8]) -> Vec<u8> {
        let mut z = Vec::with_capacity(plain.len() + 7);
        if !self.zlib_started {
            // CMF 0x78 (deflate, 32 KiB window), FLG 0x01 (no dictionary; check bits).
            z.extend([0x78, 0x01]);
            self.zlib_started = true;
        }
        let len = u16::try_from(plain.len()).unwrap_or(u16::MAX);
        z.push(0x00); // a stored block, not the last
        z.extend(len.to_le_bytes());
        z.extend((!len).to_le_bytes());
        z.extend(&plain[..usize::from(len)]);
        // A sync flush (an empty stored block): Go's inflater hands out a
        // stored block's bytes only when it reaches the next block, so a
        // block without one would be read only with the next frame's.
        z.extend([0x00, 0x00, 0x00, 0xff, 0xff]);
        z
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u24(n: usize) -> [u8; 3] {
    [(n >> 16) as u8, (n >> 8) as u8, n as u8]
}

fn data_frame(id: u32, data: &[u8], fin: bool) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + data.len());
    f.extend((id & 0x7fff_ffff).to_be_bytes());
    f.push(if fin { FLAG_FIN } else { 0 });
    f.extend(&u24(data.len()));
    f.extend(data);
    f
}

/// A name/value block: count, then length-prefixed names and values
/// (several values of a name are joined by NUL; the first is kept).
fn parse_headers(b: &[u8]) -> Result<HashMap<String, String>, SpdyError> {
    let bad = || protocol("a malformed header block");
    let mut at = 0usize;
    let take_u32 = |at: &mut usize| -> Result<usize, SpdyError> {
        let v = b.get(*at..*at + 4).ok_or_else(bad)?;
        *at += 4;
        Ok(u32::from_be_bytes([v[0], v[1], v[2], v[3]]) as usize)
    };
    let count = take_u32(&mut at)?;
    let mut headers = HashMap::new();
    for _ in 0..count.min(256) {
        let n = take_u32(&mut at)?;
        let name = b.get(at..at + n).ok_or_else(bad)?;
        at += n;
        let n = take_u32(&mut at)?;
        let value = b.get(at..at + n).ok_or_else(bad)?;
        at += n;
        let value = value.split(|c| *c == 0).next().unwrap_or_default();
        headers.insert(String::from_utf8_lossy(name).to_ascii_lowercase(), String::from_utf8_lossy(value).into_owned());
    }
    Ok(headers)
}

/// An upgraded HTTP connection as a transport.
pub struct Upgraded(pub hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>);

impl Transport for Upgraded {
    async fn read(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
        use tokio::io::AsyncReadExt;
        buf.reserve(16 * 1024);
        self.0.read_buf(buf).await
    }

    async fn write(&mut self, data: Vec<u8>) -> io::Result<()> {
        use tokio::io::AsyncWriteExt;
        self.0.write_all(&data).await?;
        self.0.flush().await
    }
}

/// The binary messages of a WebSocket (`SPDY/3.1+portforward.k8s.io`),
/// concatenated, as the byte stream.
pub struct Tunnel(pub axum::extract::ws::WebSocket);

impl Transport for Tunnel {
    async fn read(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
        use axum::extract::ws::Message;
        loop {
            match self.0.recv().await {
                Some(Ok(Message::Binary(b))) if !b.is_empty() => {
                    buf.extend_from_slice(&b);
                    return Ok(b.len());
                }
                Some(Ok(Message::Close(_))) | None => return Ok(0),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(io::Error::other(e)),
            }
        }
    }

    async fn write(&mut self, data: Vec<u8>) -> io::Result<()> {
        use axum::extract::ws::Message;
        self.0.send(Message::Binary(data.into())).await.map_err(io::Error::other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Compress, Compression, FlushCompress};

    /// A transport that hands out scripted bytes and keeps what is written.
    struct Script {
        input: Vec<Vec<u8>>,
        written: Vec<Vec<u8>>,
    }

    impl Transport for Script {
        async fn read(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
            if self.input.is_empty() {
                return Ok(0);
            }
            let b = self.input.remove(0);
            buf.extend_from_slice(&b);
            Ok(b.len())
        }
        async fn write(&mut self, data: Vec<u8>) -> io::Result<()> {
            self.written.push(data);
            Ok(())
        }
    }

    /// A client's header block, compressed as spdystream does: level 9,
    /// the dictionary, a sync flush per block, one stream per connection.
    fn client_block(z: &mut Compress, headers: &[(&str, &str)]) -> Vec<u8> {
        let mut plain = (headers.len() as u32).to_be_bytes().to_vec();
        for (n, v) in headers {
            plain.extend((n.len() as u32).to_be_bytes());
            plain.extend(n.as_bytes());
            plain.extend((v.len() as u32).to_be_bytes());
            plain.extend(v.as_bytes());
        }
        let mut out = Vec::with_capacity(plain.len() + 64);
        z.compress_vec(&plain, &mut out, FlushCompress::Sync).expect("compress");
        out
    }

    fn syn_stream(z: &mut Compress, id: u32, headers: &[(&str, &str)]) -> Vec<u8> {
        let mut body = id.to_be_bytes().to_vec();
        body.extend([0, 0, 0, 0, 0, 0]);
        body.extend(client_block(z, headers));
        let mut f = vec![0x80, 3, 0, 1, 0];
        f.extend(u24(body.len()));
        f.extend(body);
        f
    }

    #[tokio::test]
    async fn streams_data_and_pings_as_spdystream_sends_them() {
        let mut z = Compress::new(Compression::best(), true);
        z.set_dictionary(DICTIONARY).expect("dictionary");
        let first = syn_stream(&mut z, 1, &[("streamtype", "error"), ("port", "8080"), ("requestid", "0")]);
        let second = syn_stream(&mut z, 3, &[("streamtype", "data"), ("port", "8080"), ("requestid", "0")]);
        assert_eq!(&first[18..22], &[0x78, 0xf9, 0xe3, 0xc6], "a zlib header naming the SPDY dictionary");
        // The first frame split as the Go framer writes it (a field at a time).
        let mut input: Vec<Vec<u8>> = vec![first[..4].to_vec(), first[4..8].to_vec(), first[8..].to_vec()];
        input.push(second);
        input.push(data_frame(3, b"GET / HTTP/1.0\r\n\r\n", true));
        input.push(vec![0x80, 3, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1]);
        input.push(vec![0x80, 3, 0, 3, 0, 0, 0, 8, 0, 0, 0, 1, 0, 0, 0, 5]);
        let mut c = Conn::new(Script { input, written: vec![] });
        let Some(Ok(Event::Stream { id: 1, headers })) = c.next().await else { panic!("a stream") };
        assert_eq!(headers.get("streamtype").map(String::as_str), Some("error"));
        let Some(Ok(Event::Stream { id: 3, headers })) = c.next().await else { panic!("a stream") };
        assert_eq!((headers["streamtype"].as_str(), headers["port"].as_str()), ("data", "8080"));
        assert_eq!(
            c.next().await.expect("data").expect("ok"),
            Event::Data { id: 3, data: b"GET / HTTP/1.0\r\n\r\n".to_vec(), fin: true }
        );
        assert_eq!(c.next().await.expect("ping").expect("ok"), Event::Handled);
        assert_eq!(c.next().await.expect("rst").expect("ok"), Event::Reset { id: 1 });
        assert!(c.next().await.is_none(), "closed");
        c.reply(1);
        c.reply(3);
        c.data(3, b"HTTP/1.0 200 OK\r\n", true);
        c.goaway();
        c.flush().await.expect("flush");
        let w = &c.t.written;
        assert_eq!(w[0], [0x80, 3, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1], "the ping echoed");
        // The replies as kubectl 1.32 reads them: a stored block, then a
        // sync flush (without it Go's inflater holds the block back).
        let flush = [0, 0, 0, 0xff, 0xff];
        assert_eq!(
            w[1],
            [&[0x80, 3, 0, 2, 0, 0, 0, 20, 0, 0, 0, 1, 0x78, 1, 0, 4, 0, 0xfb, 0xff, 0, 0, 0, 0][..], &flush].concat()
        );
        assert_eq!(
            w[2],
            [&[0x80, 3, 0, 2, 0, 0, 0, 18, 0, 0, 0, 3, 0, 4, 0, 0xfb, 0xff, 0, 0, 0, 0][..], &flush].concat()
        );
        assert_eq!(&w[3][..8], &[0, 0, 0, 3, 1, 0, 0, 17]);
        assert_eq!(w[4], [0x80, 3, 0, 7, 0, 0, 0, 8, 0, 0, 0, 3, 0, 0, 0, 0]);
        // Our header blocks inflate with any zlib reader.
        let mut d = Decompress::new(true);
        let mut plain = Vec::with_capacity(64);
        let blocks = [&w[1][12..], &w[2][12..]].concat();
        d.decompress_vec(&blocks, &mut plain, FlushDecompress::Sync).expect("inflate");
        assert_eq!(plain, [0u8; 8]);
    }

    #[tokio::test]
    async fn garbage_is_a_protocol_error_not_a_panic() {
        for bad in [
            vec![0x80, 2, 0, 1, 0, 0, 0, 0],
            vec![0x80, 3, 0, 1, 0, 0, 0, 2, 0, 0],
            vec![0x80, 3, 0, 1, 0, 0xff, 0xff, 0xff],
            [vec![0x80, 3, 0, 1, 0, 0, 0, 14, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0], b"nozlib".to_vec()].concat(),
        ] {
            let mut c = Conn::new(Script { input: vec![bad.clone()], written: vec![] });
            assert!(matches!(c.next().await, Some(Err(SpdyError::Protocol(_)))), "{bad:?}");
        }
    }
}
