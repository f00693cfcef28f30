//! `pods/{name}/portforward`: `kubectl port-forward`, relayed through the
//! fleet link. kubectl speaks SPDY/3.1 ([`super::spdy`]): directly
//! (`Upgrade: SPDY/3.1`, up to 1.30) or inside a WebSocket
//! (`SPDY/3.1+portforward.k8s.io`, 1.31 on). It opens a pair of streams
//! (error, data) per local connection, tagged with the port and a request
//! id; each pair becomes one session on the pod's node, which dials the
//! port on the pod's loopback. Many connections share the SPDY connection
//! at once; each has its own session, credit and end. The Python client
//! speaks the kubelet's older WebSocket protocol (`v4.channel.k8s.io`, a
//! channel pair per port of the query), served by [`relay_legacy`].

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::extract::ws::WebSocketUpgrade;
use axum::response::{IntoResponse, Response};
use kedge_common::session::{Frame, PortForwardRequest, Request};
use tokio::sync::mpsc;

use super::error::ApiError;
use super::spdy::{self, Conn, Event, Transport};
use super::{ApiState, Req, Target, stopping};
use crate::fleet::relay::{Relay, RelayError, Session};
use crate::store::Key;

/// The WebSocket subprotocol of SPDY tunnelled in a WebSocket (kubectl 1.31+).
const TUNNEL: &str = "SPDY/3.1+portforward.k8s.io";
/// The stream protocol of direct SPDY.
const PROTOCOL: &str = "portforward.k8s.io";
/// The WebSocket protocol of the kubelet's older port-forward, which the
/// Python client speaks: a channel pair per port named in the query.
const LEGACY: &str = "v4.channel.k8s.io";
/// Client data held for sessions that take no more yet; past this the
/// connection is not read until they do.
const MAX_PENDING: usize = 1 << 20;

/// What every connection of this port-forward shares.
#[derive(Clone)]
struct Forward {
    relay: Arc<Relay>,
    node: String,
    namespace: String,
    pod: String,
    uid: String,
}

pub async fn serve(st: &Arc<ApiState>, t: &Target, r: Req) -> Result<Response, ApiError> {
    let (ns, name) = (t.namespace.as_deref().unwrap_or_default(), t.name.as_deref().unwrap_or_default());
    let pod = st.store.get(&Key::new(t.rt.id, ns, name))?.ok_or_else(|| ApiError::not_found("pods", name))?;
    let phase = pod["status"]["phase"].as_str().unwrap_or_default();
    if phase != "Running" {
        return Err(ApiError::bad_request(format!(
            "unable to forward port because pod is not running. Current status={phase}"
        )));
    }
    let node = pod["spec"]["nodeName"].as_str().unwrap_or_default().to_owned();
    let relay = st.relay.clone().ok_or_else(|| {
        ApiError::unavailable("this controller runs no fleet link: port-forward reaches the nodes through it")
    })?;
    let target = Forward {
        relay,
        node,
        namespace: ns.to_owned(),
        pod: name.to_owned(),
        uid: pod["metadata"]["uid"].as_str().unwrap_or_default().to_owned(),
    };
    let shutdown = st.shutdown.clone();
    let (websocket, spdy) = (r.upgrades_to("websocket"), r.upgrades_to("SPDY/3.1"));
    let params = r.params("ports");
    let offered = r.headers.get_all("x-stream-protocol-version").iter().any(|v| v.as_bytes() == PROTOCOL.as_bytes());
    let mut head = axum::http::Request::new(());
    *head.headers_mut() = r.headers;
    *head.extensions_mut() = r.extensions;
    if websocket {
        let (mut parts, ()) = head.into_parts();
        parts.method = axum::http::Method::GET;
        let upgrade = WebSocketUpgrade::from_request_parts(&mut parts, &())
            .await
            .map_err(|e| ApiError::bad_request(format!("cannot upgrade to a WebSocket: {}", e.body_text())))?
            .protocols([TUNNEL, LEGACY]);
        match upgrade.selected_protocol().and_then(|p| p.to_str().ok()) {
            Some(TUNNEL) => {
                return Ok(upgrade
                    .on_upgrade(
                        move |ws| async move { relay_ports(Conn::new(spdy::Tunnel(ws)), target, shutdown).await },
                    )
                    .into_response());
            }
            Some(_) => {
                let ports = legacy_ports(&params)?;
                return Ok(upgrade
                    .on_upgrade(move |ws| async move { relay_legacy(ws, target, ports, shutdown).await })
                    .into_response());
            }
            None => {
                return Err(ApiError::bad_request(format!(
                    "none of the offered WebSocket subprotocols is served for port-forward; offer {TUNNEL} or {LEGACY}"
                )));
            }
        }
    }
    if !spdy {
        return Err(ApiError::bad_request("Upgrade request required"));
    }
    if !offered {
        return Err(ApiError::forbidden(format!("port-forward speaks only the {PROTOCOL} stream protocol")));
    }
    let on_upgrade = hyper::upgrade::on(&mut head);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(io) => {
                let t = spdy::Upgraded(hyper_util::rt::TokioIo::new(io));
                relay_ports(Conn::new(t), target, shutdown).await;
            }
            Err(e) => tracing::info!(error = %e, "port-forward: the SPDY upgrade failed"),
        }
    });
    Ok(spdy::switching_protocols(PROTOCOL))
}

/// One forwarded connection: its two streams and its session on the node.
#[derive(Default)]
struct Pair {
    port: u16,
    error: Option<u32>,
    data: Option<u32>,
    session: Option<Session>,
    opening: bool,
    /// Client data the session does not take yet, and whether the client
    /// finished writing after it.
    pending: VecDeque<Vec<u8>>,
    closing: bool,
}

impl Pair {
    fn pending_bytes(&self) -> usize {
        self.pending.iter().map(Vec::len).sum()
    }
}

/// The next frame of any open session.
async fn next_frame(pairs: &mut HashMap<String, Pair>) -> (String, Option<Frame>) {
    let futs: Vec<_> = pairs
        .iter_mut()
        .filter_map(|(k, p)| p.session.as_mut().map(|s| Box::pin(async move { (k.clone(), s.recv().await) })))
        .collect();
    if futs.is_empty() {
        return std::future::pending().await;
    }
    futures_util::future::select_all(futs).await.0
}

/// Serves one SPDY connection until the client closes it or the
/// controller stops. Sessions left open are cancelled when dropped.
async fn relay_ports<T: Transport>(
    mut conn: Conn<T>,
    target: Forward,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    let mut stream_of: HashMap<u32, String> = HashMap::new();
    let (opened_tx, mut opened) = mpsc::channel::<(String, Result<Session, RelayError>)>(16);
    loop {
        if let Err(e) = conn.flush().await {
            tracing::debug!(error = %e, "port-forward: the client is gone");
            return;
        }
        let pending: usize = pairs.values().map(Pair::pending_bytes).sum();
        tokio::select! {
            ev = conn.next(), if pending < MAX_PENDING => match ev {
                None | Some(Ok(Event::GoAway)) => break,
                Some(Err(e)) => {
                    tracing::info!(error = %e, "port-forward: connection ended");
                    break;
                }
                Some(Ok(Event::Handled)) => {}
                Some(Ok(Event::Stream { id, headers })) => {
                    let port = headers.get("port").and_then(|p| p.parse::<u16>().ok()).filter(|p| *p > 0);
                    let kind = headers.get("streamtype").map(String::as_str);
                    let (Some(port), Some(kind @ ("error" | "data"))) = (port, kind) else {
                        tracing::info!(?headers, "port-forward: a stream without a valid port or type; refused");
                        conn.reset(id, spdy::REFUSED_STREAM);
                        continue;
                    };
                    // Pairs by request id (kubectl sends one); else as the kubelet does.
                    let rid = headers.get("requestid").cloned().unwrap_or_else(|| {
                        (if kind == "error" { id } else { id.saturating_sub(2) }).to_string()
                    });
                    conn.reply(id);
                    stream_of.insert(id, rid.clone());
                    let pair = pairs.entry(rid.clone()).or_default();
                    pair.port = port;
                    if kind == "error" { pair.error = Some(id) } else { pair.data = Some(id) }
                    if pair.error.is_some() && pair.data.is_some() && !pair.opening {
                        pair.opening = true;
                        let (target, tx) = (target.clone(), opened_tx.clone());
                        tokio::spawn(async move {
                            let req = PortForwardRequest {
                                namespace: target.namespace,
                                pod: target.pod,
                                uid: target.uid,
                                port,
                            };
                            let opened = target.relay.open(&target.node, Request::PortForward(req)).await;
                            let _ = tx.send((rid, opened)).await;
                        });
                    }
                }
                Some(Ok(Event::Data { id, data, fin })) => {
                    let Some(pair) = stream_of.get(&id).and_then(|rid| pairs.get_mut(rid)) else { continue };
                    if pair.data == Some(id) {
                        if !data.is_empty() {
                            pair.pending.push_back(data);
                        }
                        pair.closing |= fin;
                        send_pending(pair).await;
                    }
                    // The error stream carries nothing from the client.
                }
                Some(Ok(Event::Reset { id })) => {
                    if let Some(rid) = stream_of.get(&id).cloned()
                        && pairs.get(&rid).is_some_and(|p| p.data == Some(id))
                    {
                        // kubectl resets the data stream once it read its end:
                        // the pair is done (its session, if open, is cancelled).
                        if let Some(p) = pairs.remove(&rid) {
                            forget(&mut stream_of, &p);
                            if p.session.is_some() {
                                if let Some(e) = p.error { conn.data(e, &[], true) }
                            }
                        }
                    }
                }
            },
            Some((rid, opened)) = opened.recv() => {
                let Some(pair) = pairs.get_mut(&rid) else { continue };
                match opened {
                    Ok(session) => {
                        pair.session = Some(session);
                        send_pending(pair).await;
                    }
                    Err(e) => {
                        let text = match e {
                            // The node's own words name the port and the pod.
                            RelayError::Node { message, .. } => message,
                            e => format!("error forwarding port {} to pod {}, uid {}: {e}", pair.port, target.pod, target.uid),
                        };
                        fail(&mut conn, pair, &text);
                        if let Some(p) = pairs.remove(&rid) { forget(&mut stream_of, &p) }
                    }
                }
            }
            (rid, frame) = next_frame(&mut pairs) => {
                let Some(pair) = pairs.get_mut(&rid) else { continue };
                match frame {
                    Some(Frame::Data { data, .. }) => {
                        let n = data.0.len();
                        if let Some(d) = pair.data { conn.data(d, &data.0, false) }
                        if let Some(s) = pair.session.as_mut() { s.consumed(n).await }
                    }
                    Some(Frame::Credit(_)) => send_pending(pair).await,
                    Some(Frame::End) => {
                        // The pod closed the connection: both streams end.
                        if let Some(d) = pair.data { conn.data(d, &[], true) }
                        if let Some(e) = pair.error { conn.data(e, &[], true) }
                        pair.session = None;
                    }
                    Some(Frame::Error { message, .. }) => {
                        fail(&mut conn, pair, &message);
                        if let Some(p) = pairs.remove(&rid) { forget(&mut stream_of, &p) }
                    }
                    None => {
                        fail(&mut conn, pair, "the node ended the connection");
                        if let Some(p) = pairs.remove(&rid) { forget(&mut stream_of, &p) }
                    }
                    Some(_) => {}
                }
            }
            () = stopping(&mut shutdown) => break,
        }
    }
    conn.goaway();
    let _ = conn.flush().await;
}

fn forget(stream_of: &mut HashMap<u32, String>, p: &Pair) {
    for id in [p.error, p.data].into_iter().flatten() {
        stream_of.remove(&id);
    }
}

/// Tells kubectl why a connection failed (on its error stream, as the
/// kubelet does; kubectl then ends the port-forward).
fn fail<T: Transport>(conn: &mut Conn<T>, pair: &mut Pair, text: &str) {
    tracing::info!(%text, "port-forward: a connection failed");
    if let Some(e) = pair.error {
        conn.data(e, text.as_bytes(), true);
    }
    if let Some(d) = pair.data {
        conn.data(d, &[], true);
    }
    pair.session = None;
}

/// Passes the client's data on as far as the node's credit goes, then its
/// end if it came.
async fn send_pending(pair: &mut Pair) {
    let Some(s) = pair.session.as_mut() else { return };
    while s.can_send_data() {
        let Some(d) = pair.pending.pop_front() else { break };
        if !s.send_data(0, &d).await {
            return;
        }
    }
    if pair.closing && pair.pending.is_empty() {
        pair.closing = false;
        s.send(&Frame::Close { stream: 0 }).await;
    }
}

/// The ports of a legacy WebSocket port-forward: `ports=8080,9090` or the
/// parameter repeated, as the API server reads it.
fn legacy_ports(params: &[String]) -> Result<Vec<u16>, ApiError> {
    let mut ports = Vec::new();
    for p in params.iter().flat_map(|p| p.split(',')).map(str::trim).filter(|p| !p.is_empty()) {
        match p.parse::<u16>() {
            Ok(n) if n > 0 => ports.push(n),
            _ => return Err(ApiError::bad_request(format!("ports: invalid port {p:?}"))),
        }
    }
    if ports.is_empty() {
        return Err(ApiError::bad_request("port-forward over a WebSocket needs the ports parameter"));
    }
    if ports.len() > 100 {
        return Err(ApiError::bad_request("at most 100 ports may be forwarded at once"));
    }
    Ok(ports)
}

/// The kubelet's older port-forward over a WebSocket (the Python client's):
/// for the i-th port, channel 2i carries data both ways and 2i+1 errors;
/// each starts with a message of the port (u16, little end first). One
/// connection per port, dialled at once; the WebSocket closes when all end.
async fn relay_legacy(
    mut ws: axum::extract::ws::WebSocket,
    target: Forward,
    ports: Vec<u16>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    use axum::extract::ws::Message;
    for (i, port) in ports.iter().enumerate() {
        for ch in [2 * i, 2 * i + 1] {
            let mut m = vec![ch as u8];
            m.extend(port.to_le_bytes());
            if ws.send(Message::Binary(m.into())).await.is_err() {
                return;
            }
        }
    }
    let opens = ports.iter().map(|port| {
        let req = PortForwardRequest {
            namespace: target.namespace.clone(),
            pod: target.pod.clone(),
            uid: target.uid.clone(),
            port: *port,
        };
        target.relay.open(&target.node, Request::PortForward(req))
    });
    let mut live: HashMap<String, Pair> = HashMap::new();
    for (i, opened) in futures_util::future::join_all(opens).await.into_iter().enumerate() {
        match opened {
            Ok(s) => {
                live.insert(i.to_string(), Pair { port: ports[i], session: Some(s), ..Pair::default() });
            }
            Err(e) => {
                let text = match e {
                    RelayError::Node { message, .. } => message,
                    e => format!("error forwarding port {} to pod {}: {e}", ports[i], target.pod),
                };
                let mut m = vec![(2 * i + 1) as u8];
                m.extend(text.as_bytes());
                let _ = ws.send(Message::Binary(m.into())).await;
            }
        }
    }
    while !live.is_empty() {
        let taking = live.values().filter_map(|p| p.session.as_ref()).all(Session::can_send_data);
        tokio::select! {
            m = ws.recv(), if taking => {
                let data = match m {
                    Some(Ok(Message::Binary(b))) => b.to_vec(),
                    Some(Ok(Message::Text(t))) => t.as_bytes().to_vec(),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Close(_)) | Err(_)) | None => return,
                };
                let Some((&ch, rest)) = data.split_first() else { continue };
                let i = usize::from(ch / 2);
                if ch % 2 == 0
                    && !rest.is_empty()
                    && let Some(s) = live.get_mut(&i.to_string()).and_then(|p| p.session.as_mut())
                {
                    s.send_data(0, rest).await;
                }
            }
            (key, frame) = next_frame(&mut live) => {
                let i: usize = key.parse().unwrap_or_default();
                match frame {
                    Some(Frame::Data { data, .. }) => {
                        let mut m = vec![(2 * i) as u8];
                        m.extend_from_slice(&data.0);
                        if ws.send(Message::Binary(m.into())).await.is_err() {
                            return;
                        }
                        if let Some(s) = live.get_mut(&key).and_then(|p| p.session.as_mut()) {
                            s.consumed(data.0.len()).await;
                        }
                    }
                    Some(Frame::End) => {
                        live.remove(&key);
                    }
                    Some(Frame::Error { message, .. }) => {
                        let mut m = vec![(2 * i + 1) as u8];
                        m.extend(message.as_bytes());
                        let _ = ws.send(Message::Binary(m.into())).await;
                        live.remove(&key);
                    }
                    None => {
                        live.remove(&key);
                    }
                    Some(_) => {}
                }
            }
            () = stopping(&mut shutdown) => break,
        }
    }
    let close = axum::extract::ws::CloseFrame { code: axum::extract::ws::close_code::NORMAL, reason: "".into() };
    let _ = ws.send(Message::Close(Some(close))).await;
}
