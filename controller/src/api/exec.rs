//! `pods/{name}/exec`: `kubectl exec` (and `kubectl cp`, which is tar over
//! exec), relayed to the pod's node through a session over the fleet link
//! ([`crate::fleet::relay`]).
//!
//! Spoken as the API server speaks it to kubectl 1.30+ and the Python
//! client: a WebSocket with the `v5.channel.k8s.io` or `v4.channel.k8s.io`
//! subprotocol, each message a channel byte (0 stdin, 1 stdout, 2 stderr,
//! 3 status, 4 terminal size, 255 close — v5) and its data; the exit code
//! goes as a `Status` on channel 3, then a normal close. kubectl up to 1.29
//! speaks SPDY/3.1 instead ([`super::spdy`]), with a stream per channel and
//! the same `Status` on the error stream. The request is
//! checked and the node's session opened before the upgrade, so a missing
//! pod or a stopped container is an HTTP error with a `Status`, as
//! kubectl expects. Research: docs/research/kubectl-streaming.md.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::response::{IntoResponse, Response};
use kedge_common::session::{ExecRequest, Frame, Request};
use serde_json::{Value, json};

use super::error::ApiError;
use super::{ApiState, Req, Target, spdy, stopping};
use crate::fleet::relay::Session;
use crate::store::Key;

/// The channel protocols served, in the order preferred.
const PROTOCOLS: [&str; 2] = [V5, V4];
const V5: &str = "v5.channel.k8s.io";
const V4: &str = "v4.channel.k8s.io";

const STDIN: u8 = 0;
const STATUS: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;

/// The node to ask and what to ask it, from the request and the stored
/// pod, checked as the API server checks `PodExecOptions`.
fn prepare(st: &Arc<ApiState>, t: &Target, r: &Req) -> Result<(String, ExecRequest), ApiError> {
    let (ns, name) = (t.namespace.as_deref().unwrap_or_default(), t.name.as_deref().unwrap_or_default());
    let attach = t.sub.as_deref() == Some("attach");
    let pod = st.store.get(&Key::new(t.rt.id, ns, name))?.ok_or_else(|| ApiError::not_found("pods", name))?;
    let command = if attach { Vec::new() } else { r.params("command") };
    if !attach && command.is_empty() {
        return Err(ApiError::bad_request("you must specify at least one command for the container"));
    }
    let (stdin, stdout, tty) = (r.flag("stdin"), r.flag("stdout"), r.flag("tty"));
    // A terminal has one output: stderr is ignored with it, as the kubelet does.
    let stderr = r.flag("stderr") && !tty;
    if !stdin && !stdout && !stderr {
        return Err(ApiError::bad_request("you must specify at least 1 of stdin, stdout, stderr"));
    }
    let container = super::logs::container(&pod, name, r.param("container"))?;
    let phase = pod["status"]["phase"].as_str().unwrap_or_default();
    if matches!(phase, "Succeeded" | "Failed") {
        let verb = if attach { "attach to" } else { "exec into" };
        return Err(ApiError::bad_request(format!(
            "cannot {verb} a container in a completed pod; current phase is {phase}"
        )));
    }
    let node = pod["spec"]["nodeName"].as_str().unwrap_or_default();
    if node.is_empty() {
        return Err(ApiError::bad_request(format!("pod {name} does not have a host assigned")));
    }
    let request = ExecRequest {
        namespace: ns.to_owned(),
        pod: name.to_owned(),
        uid: pod["metadata"]["uid"].as_str().unwrap_or_default().to_owned(),
        container,
        command,
        stdin,
        stdout,
        stderr,
        tty,
    };
    Ok((node.to_owned(), request))
}

pub async fn serve(st: &Arc<ApiState>, t: &Target, r: Req) -> Result<Response, ApiError> {
    let (node, request) = prepare(st, t, &r)?;
    let relay = st.relay.clone().ok_or_else(|| {
        ApiError::unavailable("this controller runs no fleet link: exec reaches the nodes through it")
    })?;
    let what = format!("{}/{} {:?}", request.namespace, request.pod, request.command);
    let shutdown = st.shutdown.clone();
    let streams = Streams { stdin: request.stdin, stdout: request.stdout, stderr: request.stderr, tty: request.tty };
    let spdy = r.upgrades_to("SPDY/3.1");
    if !spdy && !r.upgrades_to("websocket") {
        return Err(ApiError::bad_request("Upgrade request required"));
    }
    let mut head = axum::http::Request::new(());
    *head.method_mut() = axum::http::Method::GET;
    *head.headers_mut() = r.headers;
    *head.extensions_mut() = r.extensions;
    if spdy {
        // kubectl up to 1.29 (or with KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false).
        let offered = head.headers().get_all("x-stream-protocol-version").iter().any(|v| v.as_bytes() == V4.as_bytes());
        if !offered {
            return Err(ApiError::forbidden(format!("exec over SPDY speaks the {V4} stream protocol only")));
        }
        let on_upgrade = hyper::upgrade::on(&mut head);
        let session = relay.open(&node, Request::Exec(request)).await?;
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(io) => {
                    tracing::debug!(%what, "exec streaming over SPDY");
                    let conn = spdy::Conn::new(spdy::Upgraded(hyper_util::rt::TokioIo::new(io)));
                    bridge_spdy(conn, session, streams, shutdown).await;
                }
                Err(e) => tracing::info!(error = %e, "exec: the SPDY upgrade failed"),
            }
        });
        return Ok(spdy::switching_protocols(V4));
    }
    let (mut parts, ()) = head.into_parts();
    let upgrade = WebSocketUpgrade::from_request_parts(&mut parts, &())
        .await
        .map_err(|e| ApiError::bad_request(format!("cannot upgrade to a WebSocket: {}", e.body_text())))?
        .protocols(PROTOCOLS);
    let v5 = match upgrade.selected_protocol().and_then(|p| p.to_str().ok()) {
        Some(V5) => true,
        Some(_) => false,
        None => {
            return Err(ApiError::bad_request(format!(
                "none of the offered WebSocket subprotocols is served; offer one of {}",
                PROTOCOLS.join(", ")
            )));
        }
    };
    let session = relay.open(&node, Request::Exec(request)).await?;
    Ok(upgrade
        .on_failed_upgrade(|e| tracing::info!(error = %e, "exec: the WebSocket upgrade failed"))
        .on_upgrade(move |socket| async move {
            tracing::debug!(%what, v5, "exec streaming");
            bridge(socket, session, v5, shutdown).await;
        })
        .into_response())
}

/// Which streams an exec has (a SPDY client opens one per stream).
#[derive(Debug, Clone, Copy)]
struct Streams {
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
}

impl Streams {
    /// How many streams the client opens: error, then the asked ones, and
    /// resize with a terminal.
    fn count(self) -> usize {
        1 + usize::from(self.stdin) + usize::from(self.stdout) + usize::from(self.stderr) + usize::from(self.tty)
    }
}

/// Relays between a SPDY client (kubectl up to 1.29) and the node's
/// session: the client opens a stream per channel (`streamtype`: error,
/// stdin, stdout, stderr, resize); output waits until all are open. The
/// end: the status on the error stream, every stream finished, GOAWAY.
async fn bridge_spdy<T: spdy::Transport>(
    mut conn: spdy::Conn<T>,
    mut session: Session,
    streams: Streams,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    use spdy::Event;
    let mut ids: HashMap<String, u32> = HashMap::new();
    let mut resize_buf = Vec::new();
    let last = loop {
        if conn.flush().await.is_err() {
            return;
        }
        let ready = ids.len() >= streams.count();
        tokio::select! {
            ev = conn.next(), if session.can_send_data() => match ev {
                None | Some(Err(_)) | Some(Ok(Event::GoAway)) => return,
                Some(Ok(Event::Handled | Event::Reset { .. })) => {}
                Some(Ok(Event::Stream { id, headers })) => {
                    conn.reply(id);
                    if let Some(kind) = headers.get("streamtype") {
                        ids.insert(kind.clone(), id);
                    }
                }
                Some(Ok(Event::Data { id, data, fin })) => {
                    let kind = ids.iter().find(|(_, v)| **v == id).map(|(k, _)| k.as_str());
                    let ok = match kind {
                        Some("stdin") => {
                            let mut ok = data.is_empty() || session.send_data(STDIN, &data).await;
                            if fin {
                                ok &= session.send(&Frame::Close { stream: STDIN }).await;
                            }
                            ok
                        }
                        Some("resize") => {
                            resize_buf.extend_from_slice(&data);
                            let mut ok = true;
                            let mut sizes = serde_json::Deserializer::from_slice(&resize_buf).into_iter::<Value>();
                            let mut used = 0;
                            while let Some(Ok(v)) = sizes.next() {
                                used = sizes.byte_offset();
                                let dim = |k: &str| v[k].as_u64().and_then(|n| u16::try_from(n).ok()).unwrap_or(0);
                                ok &= session.send(&Frame::Resize { width: dim("Width"), height: dim("Height") }).await;
                            }
                            resize_buf.drain(..used);
                            ok
                        }
                        _ => true,
                    };
                    if !ok {
                        break Some(Frame::Error { code: 503, message: "the fleet link refused a frame".into() });
                    }
                }
            },
            f = session.recv(), if ready => match f {
                Some(Frame::Data { stream, data }) => {
                    let kind = if stream == 2 { "stderr" } else { "stdout" };
                    if let Some(id) = ids.get(kind) {
                        conn.data(*id, &data.0, false);
                    }
                    session.consumed(data.0.len()).await;
                }
                Some(f) if f.is_last() => break Some(f),
                Some(_) => {}
                None => break None,
            },
            () = stopping(&mut shutdown) => break None,
        }
    };
    for kind in ["stdout", "stderr"] {
        if let Some(id) = ids.get(kind) {
            conn.data(*id, &[], true);
        }
    }
    if let Some(id) = ids.get("error") {
        conn.data(*id, status(last.as_ref()).to_string().as_bytes(), true);
    }
    conn.goaway();
    let _ = conn.flush().await;
}

/// The `Status` kubectl reads on channel 3: `Success`, the exit code, or
/// why the command could not run.
fn status(frame: Option<&Frame>) -> Value {
    match frame {
        Some(Frame::Exit(0)) => json!({"metadata": {}, "status": "Success"}),
        Some(Frame::Exit(code)) => {
            let code = (*code).clamp(0, 255);
            json!({
                "metadata": {},
                "status": "Failure",
                "message": format!("command terminated with non-zero exit code: exit status {code}"),
                "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
            })
        }
        other => {
            let message = match other {
                Some(Frame::Error { message, .. }) => message.clone(),
                _ => "the node ended the session without an exit code".into(),
            };
            json!({
                "metadata": {},
                "status": "Failure",
                "message": format!("Internal error occurred: {message}"),
                "reason": "InternalError",
                "details": {"causes": [{"message": message}]},
                "code": 500,
            })
        }
    }
}

/// What a client's message asks of the node.
#[derive(Debug, PartialEq)]
enum FromClient {
    Stdin(Vec<u8>),
    CloseStdin,
    Resize(Vec<(u16, u16)>),
    /// Ignored (an empty message, an unknown channel, a close of another).
    Nothing,
    /// A message that breaks the protocol: the session ends.
    Broken(String),
}

/// Reads one data message of the channel protocol (binary, or text as the
/// Python client sends stdin).
fn parse(data: &[u8], v5: bool) -> FromClient {
    let Some((&channel, rest)) = data.split_first() else { return FromClient::Nothing };
    match channel {
        STDIN if !rest.is_empty() => FromClient::Stdin(rest.to_vec()),
        RESIZE => {
            // kubectl writes each size with a JSON encoder: a stream of
            // `{"Width":80,"Height":24}` objects.
            let mut sizes = Vec::new();
            for v in serde_json::Deserializer::from_slice(rest).into_iter::<Value>() {
                let Ok(v) = v else { return FromClient::Broken("a terminal size that is not JSON".into()) };
                let dim = |k: &str| v[k].as_u64().and_then(|n| u16::try_from(n).ok()).unwrap_or(0);
                sizes.push((dim("Width"), dim("Height")));
            }
            FromClient::Resize(sizes)
        }
        CLOSE if v5 => match rest {
            [STDIN] => FromClient::CloseStdin,
            [_] => FromClient::Nothing,
            _ => FromClient::Broken(format!("a close message of {} bytes (it is 2)", data.len())),
        },
        _ => FromClient::Nothing,
    }
}

/// Relays between the client's WebSocket and the node's session until the
/// command exits (its status, then a normal close), either end goes away,
/// or the controller stops.
async fn bridge(
    mut socket: WebSocket,
    mut session: Session,
    v5: bool,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let last = loop {
        tokio::select! {
            f = session.recv() => match f {
                Some(Frame::Data { stream, data }) => {
                    let n = data.0.len();
                    let mut msg = Vec::with_capacity(n + 1);
                    msg.push(stream);
                    msg.extend_from_slice(&data.0);
                    if socket.send(Message::Binary(msg.into())).await.is_err() {
                        return;
                    }
                    session.consumed(n).await;
                }
                Some(f) if f.is_last() => break Some(f),
                Some(_) => {}
                None => break None,
            },
            m = socket.recv(), if session.can_send_data() => {
                let data = match m {
                    Some(Ok(Message::Binary(b))) => b.to_vec(),
                    Some(Ok(Message::Text(t))) => t.as_bytes().to_vec(),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    // The client closed or dropped: dropping the session tells the node.
                    Some(Ok(Message::Close(_)) | Err(_)) | None => return,
                };
                let ok = match parse(&data, v5) {
                    FromClient::Stdin(d) => session.send_data(STDIN, &d).await,
                    FromClient::CloseStdin => session.send(&Frame::Close { stream: STDIN }).await,
                    FromClient::Resize(sizes) => {
                        let mut ok = true;
                        for (width, height) in sizes {
                            ok &= session.send(&Frame::Resize { width, height }).await;
                        }
                        ok
                    }
                    FromClient::Nothing => true,
                    FromClient::Broken(why) => {
                        tracing::info!(%why, "exec: protocol error from the client");
                        let _ = socket.send(close(close_code::PROTOCOL, why)).await;
                        return;
                    }
                };
                if !ok {
                    break Some(Frame::Error { code: 503, message: "the fleet link refused a frame".into() });
                }
            }
            () = stopping(&mut shutdown) => {
                let _ = socket.send(close(close_code::AWAY, "the controller is stopping".into())).await;
                return;
            }
        }
    };
    let mut msg = vec![STATUS];
    msg.extend_from_slice(status(last.as_ref()).to_string().as_bytes());
    if socket.send(Message::Binary(msg.into())).await.is_ok() {
        let _ = socket.send(close(close_code::NORMAL, String::new())).await;
        // Wait briefly for the client's close, so it reads everything first.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
            while let Some(Ok(m)) = socket.recv().await {
                if matches!(m, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
}

fn close(code: u16, reason: String) -> Message {
    Message::Close(Some(CloseFrame { code, reason: reason.into() }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_messages_are_read_as_the_channel_protocol_says() {
        assert_eq!(parse(b"\x00ls\n", true), FromClient::Stdin(b"ls\n".to_vec()));
        assert_eq!(parse(b"\x00", true), FromClient::Nothing);
        assert_eq!(parse(b"", true), FromClient::Nothing);
        assert_eq!(parse(&[255, 0], true), FromClient::CloseStdin);
        assert_eq!(parse(&[255, 0], false), FromClient::Nothing, "v4 has no close");
        assert_eq!(parse(&[255, 1], true), FromClient::Nothing);
        assert!(matches!(parse(&[255, 0, 0], true), FromClient::Broken(_)));
        assert_eq!(
            parse(b"\x04{\"Width\":81,\"Height\":25}\n{\"Width\":80,\"Height\":24}\n", true),
            FromClient::Resize(vec![(81, 25), (80, 24)])
        );
        assert!(matches!(parse(b"\x04{nope", true), FromClient::Broken(_)));
        assert_eq!(parse(b"\x07what", true), FromClient::Nothing);
    }

    #[test]
    fn the_status_carries_the_exit_code_as_kubectl_and_python_read_it() {
        assert_eq!(status(Some(&Frame::Exit(0))).to_string(), r#"{"metadata":{},"status":"Success"}"#);
        let s = status(Some(&Frame::Exit(3)));
        assert_eq!((s["status"].as_str(), s["reason"].as_str()), (Some("Failure"), Some("NonZeroExitCode")));
        // client-go takes the first cause whose reason is ExitCode; Python takes causes[0].
        assert_eq!(s["details"]["causes"][0], json!({"reason": "ExitCode", "message": "3"}));
        assert_eq!(status(Some(&Frame::Exit(300)))["details"]["causes"][0]["message"], "255");
        let e = status(Some(&Frame::Error { code: 404, message: "no such container".into() }));
        assert_eq!((e["reason"].as_str(), e["code"].as_u64()), (Some("InternalError"), Some(500)));
        assert!(e["message"].as_str().is_some_and(|m| m.ends_with("no such container")));
        assert_eq!(status(None)["reason"], "InternalError");
    }
}
