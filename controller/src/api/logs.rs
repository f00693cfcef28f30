//! `GET pods/{name}/log`: `kubectl logs`, served from the node's CRI log
//! files through a session over the fleet link ([`crate::fleet::relay`]).
//! The options and the errors are the API server's (`PodLogOptions`,
//! `LogLocation`); the node answers what the kubelet would.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kedge_common::session::{Frame, LogsRequest, Request};
use serde_json::Value;

use super::error::ApiError;
use super::{ApiState, Req, Target};
use crate::fleet::relay::RelayError;
use crate::store::Key;

/// A numeric query parameter, as `PodLogOptions` validates it.
fn number(r: &Req, name: &str, least: i64) -> Result<Option<u64>, ApiError> {
    let Some(text) = r.param(name) else { return Ok(None) };
    let n: i64 = text.parse().map_err(|_| ApiError::bad_request(format!("{name}: invalid value {text:?}")))?;
    if n < least {
        let what = if least == 0 { "greater than or equal to 0" } else { "greater than 0" };
        return Err(ApiError::bad_request(format!("{name}: Invalid value: {n}: must be {what}")));
    }
    Ok(u64::try_from(n).ok())
}

fn names(list: &Value) -> Vec<String> {
    list.as_array().into_iter().flatten().filter_map(|c| c["name"].as_str()).map(str::to_owned).collect()
}

/// The container the request names, or the pod's only one.
pub(super) fn container(pod: &Value, name: &str, asked: Option<&str>) -> Result<String, ApiError> {
    let spec = &pod["spec"];
    let containers = names(&spec["containers"]);
    let all: Vec<String> = [&spec["initContainers"], &spec["ephemeralContainers"]]
        .into_iter()
        .flat_map(names)
        .chain(containers.clone())
        .collect();
    match asked.filter(|c| !c.is_empty()) {
        Some(c) if all.iter().any(|n| n == c) => Ok(c.to_owned()),
        Some(c) => Err(ApiError::bad_request(format!("container {c} is not valid for pod {name}"))),
        None if containers.len() == 1 => Ok(containers[0].clone()),
        None if containers.is_empty() => {
            Err(ApiError::bad_request(format!("a container name must be specified for pod {name}")))
        }
        None => {
            let mut m =
                format!("a container name must be specified for pod {name}, choose one of: [{}]", containers.join(" "));
            let init = names(&spec["initContainers"]);
            if !init.is_empty() {
                m.push_str(&format!(" or one of the init containers: [{}]", init.join(" ")));
            }
            Err(ApiError::bad_request(m))
        }
    }
}

impl From<RelayError> for ApiError {
    fn from(e: RelayError) -> Self {
        match e {
            RelayError::Node { code: 400, message } => ApiError::bad_request(message),
            RelayError::Node { code: 404, message } => ApiError::not_found_message(message),
            RelayError::Internal(m) => ApiError::internal(m),
            other => ApiError::unavailable(other.to_string()),
        }
    }
}

/// The node to ask and what to ask it, from the request and the stored pod.
pub fn prepare(st: &Arc<ApiState>, t: &Target, r: &Req) -> Result<(String, LogsRequest), ApiError> {
    let (ns, name) = (t.namespace.as_deref().unwrap_or_default(), t.name.as_deref().unwrap_or_default());
    let pod = st.store.get(&Key::new(t.rt.id, ns, name))?.ok_or_else(|| ApiError::not_found("pods", name))?;
    let tail_lines = number(r, "tailLines", 0)?;
    let since_seconds = number(r, "sinceSeconds", 1)?;
    let limit_bytes = number(r, "limitBytes", 1)?;
    let since_time = r.param("sinceTime").map(str::to_owned);
    if since_seconds.is_some() && since_time.is_some() {
        return Err(ApiError::bad_request("at most one of `sinceTime` or `sinceSeconds` may be specified"));
    }
    if let Some(t) = &since_time
        && t.parse::<jiff::Timestamp>().is_err()
    {
        return Err(ApiError::bad_request(format!("sinceTime: invalid value {t:?}: not an RFC 3339 time")));
    }
    let container = container(&pod, name, r.param("container"))?;
    let node = pod["spec"]["nodeName"].as_str().unwrap_or_default();
    if node.is_empty() {
        return Err(ApiError::bad_request(format!("pod {name} does not have a host assigned")));
    }
    let request = LogsRequest {
        namespace: ns.to_owned(),
        pod: name.to_owned(),
        uid: pod["metadata"]["uid"].as_str().unwrap_or_default().to_owned(),
        container,
        follow: r.flag("follow"),
        previous: r.flag("previous"),
        timestamps: r.flag("timestamps"),
        tail_lines,
        since_seconds,
        since_time,
        limit_bytes,
    };
    Ok((node.to_owned(), request))
}

/// Opens the session and streams what the node sends.
pub async fn serve(st: &Arc<ApiState>, node: String, request: LogsRequest) -> Result<Response, ApiError> {
    let relay = st.relay.as_ref().ok_or_else(|| {
        ApiError::unavailable("this controller runs no fleet link: logs come from the nodes through it")
    })?;
    let session = relay.open(&node, Request::Logs(request)).await?;
    let shutdown = st.shutdown.clone();
    let body = futures_util::stream::unfold((session, shutdown), |(mut s, mut shutdown)| async move {
        loop {
            let frame = tokio::select! {
                f = s.recv() => f?,
                _ = shutdown.wait_for(|v| *v) => return None,
            };
            match frame {
                Frame::Data { data, .. } => {
                    s.consumed(data.0.len()).await;
                    return Some((Ok::<_, std::io::Error>(Bytes::from(data.0)), (s, shutdown)));
                }
                Frame::Error { message, .. } => {
                    // The status line went long ago: say it in the stream, as
                    // the API server does when a kubelet stream breaks.
                    tracing::info!(%message, "log stream ended by an error");
                    let text = format!("\nerror: {message}\n");
                    return Some((Ok(Bytes::from(text)), (s, shutdown)));
                }
                f if f.is_last() => return None,
                _ => continue,
            }
        }
    });
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"))], Body::from_stream(body))
        .into_response())
}
