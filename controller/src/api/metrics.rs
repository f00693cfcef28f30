//! `metrics.k8s.io/v1beta1` (NodeMetrics, PodMetrics): what `kubectl top`
//! reads, as metrics-server serves it. There is no metrics-server to run:
//! the controller asks each node concerned through a session over the
//! fleet link ([`crate::fleet::relay::Relay::usage`]) when a client asks,
//! and keeps the answer a few seconds; nodes send nothing while nobody
//! asks. A node that is offline is left out, as metrics-server leaves out
//! a node it cannot scrape.

use std::collections::HashMap;
use std::sync::Arc;

use axum::http::{Method, StatusCode};
use axum::response::Response;
use kedge_common::session::{Sample, Usage};
use serde_json::{Value, json};

use super::error::ApiError;
use super::{ApiState, json as respond};
use crate::selector::LabelSelector;
use crate::store::Key;

pub const GROUP: &str = "metrics.k8s.io";
pub const VERSION: &str = "v1beta1";

/// The resource list discovery shows for the group.
pub fn resource_list() -> Value {
    let r = |name: &str, kind: &str, namespaced: bool| json!({"name": name, "singularName": "", "namespaced": namespaced, "kind": kind, "verbs": ["get", "list"]});
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": format!("{GROUP}/{VERSION}"),
        "resources": [r("nodes", "NodeMetrics", false), r("pods", "PodMetrics", true)],
    })
}

fn usage(s: &Sample) -> Value {
    json!({"cpu": format!("{}n", s.cpu_nanocores), "memory": format!("{}Ki", s.memory_bytes / 1024)})
}

fn meta(obj: &Value, now: &str) -> Value {
    let mut m = json!({"name": obj["metadata"]["name"], "creationTimestamp": now});
    if let Some(ns) = obj["metadata"]["namespace"].as_str() {
        m["namespace"] = json!(ns);
    }
    if let Some(l) = obj["metadata"].get("labels") {
        m["labels"] = l.clone();
    }
    m
}

fn node_metrics(node: &Value, u: &Usage, now: &str) -> Value {
    json!({
        "kind": "NodeMetrics",
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "metadata": meta(node, now),
        "timestamp": u.timestamp,
        "window": format!("{}ms", u.window_ms),
        "usage": usage(&u.node),
    })
}

/// The pod's metrics in its node's answer (by uid, else by name).
fn pod_metrics(pod: &Value, u: &Usage, now: &str) -> Option<Value> {
    let (ns, name, uid) = (
        pod["metadata"]["namespace"].as_str().unwrap_or_default(),
        pod["metadata"]["name"].as_str().unwrap_or_default(),
        pod["metadata"]["uid"].as_str().unwrap_or_default(),
    );
    let p =
        u.pods.iter().find(|p| if p.uid.is_empty() { p.namespace == ns && p.name == name } else { p.uid == uid })?;
    let containers: Vec<Value> = p.containers.iter().map(|(n, s)| json!({"name": n, "usage": usage(s)})).collect();
    Some(json!({
        "kind": "PodMetrics",
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "metadata": meta(pod, now),
        "timestamp": u.timestamp,
        "window": format!("{}ms", u.window_ms),
        "containers": containers,
    }))
}

fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({"kind": format!("{kind}List"), "apiVersion": format!("{GROUP}/{VERSION}"), "metadata": {}, "items": items})
}

/// Asks every node in `nodes` at once; those that do not answer are left
/// out (logged).
async fn ask(
    st: &Arc<ApiState>,
    nodes: impl IntoIterator<Item = String>,
) -> Result<HashMap<String, Arc<Usage>>, ApiError> {
    let relay = st.relay.clone().ok_or_else(|| {
        ApiError::unavailable("this controller runs no fleet link: usage comes from the nodes through it")
    })?;
    let mut nodes: Vec<String> = nodes.into_iter().filter(|n| !n.is_empty()).collect();
    nodes.sort();
    nodes.dedup();
    let answers = futures_util::future::join_all(nodes.iter().map(|n| relay.usage(n))).await;
    let mut got = HashMap::new();
    for (n, a) in nodes.into_iter().zip(answers) {
        match a {
            Ok(u) => {
                got.insert(n, u);
            }
            Err(e) => tracing::debug!(node = %n, error = %e, "no usage from node"),
        }
    }
    Ok(got)
}

/// `GET /apis/metrics.k8s.io/v1beta1/…`.
pub async fn serve(
    st: &Arc<ApiState>,
    method: &Method,
    selector: Option<&str>,
    rest: &[&str],
    path: &str,
) -> Result<Response, ApiError> {
    if method != Method::GET {
        return Err(ApiError::method_not_allowed(method.as_str(), path));
    }
    let ls = LabelSelector::parse(selector.unwrap_or_default()).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let now = jiff::Timestamp::now().to_string();
    let nodes_rt = crate::resources::find("", "v1", "nodes").ok_or_else(|| ApiError::internal("no node type"))?;
    let pods_rt = crate::resources::find("", "v1", "pods").ok_or_else(|| ApiError::internal("no pod type"))?;
    match rest {
        ["nodes"] | ["nodes", _] => {
            let (nodes, _) = st.store.list(nodes_rt.id, None, None)?;
            let nodes: Vec<Value> = match rest {
                ["nodes", name] => {
                    let n = nodes.into_iter().find(|n| n["metadata"]["name"] == *name);
                    vec![n.ok_or_else(|| ApiError::not_found("nodemetrics.metrics.k8s.io", name))?]
                }
                _ => nodes.into_iter().filter(|n| ls.matches(n)).collect(),
            };
            let names = nodes.iter().filter_map(|n| n["metadata"]["name"].as_str().map(str::to_owned));
            let got = ask(st, names).await?;
            let items: Vec<Value> = nodes
                .iter()
                .filter_map(|n| Some(node_metrics(n, got.get(n["metadata"]["name"].as_str()?)?, &now)))
                .collect();
            match rest {
                ["nodes", name] => {
                    let one = items.into_iter().next();
                    Ok(respond(
                        StatusCode::OK,
                        &one.ok_or_else(|| ApiError::not_found("nodemetrics.metrics.k8s.io", name))?,
                    ))
                }
                _ => Ok(respond(StatusCode::OK, &list("NodeMetrics", items))),
            }
        }
        ["pods"] | ["namespaces", _, "pods"] | ["namespaces", _, "pods", _] => {
            let ns = match rest {
                ["namespaces", ns, ..] => Some(*ns),
                _ => None,
            };
            let one = match rest {
                ["namespaces", _, "pods", name] => Some(*name),
                _ => None,
            };
            let pods: Vec<Value> = match (ns, one) {
                (Some(ns), Some(name)) => {
                    let p = st.store.get(&Key::new(pods_rt.id, ns, name))?;
                    vec![p.ok_or_else(|| ApiError::not_found("podmetrics.metrics.k8s.io", name))?]
                }
                _ => st.store.list(pods_rt.id, ns, None)?.0.into_iter().filter(|p| ls.matches(p)).collect(),
            };
            let got = ask(st, pods.iter().filter_map(|p| p["spec"]["nodeName"].as_str().map(str::to_owned))).await?;
            let items: Vec<Value> =
                pods.iter().filter_map(|p| pod_metrics(p, got.get(p["spec"]["nodeName"].as_str()?)?, &now)).collect();
            match one {
                Some(name) => {
                    let m = items.into_iter().next();
                    Ok(respond(
                        StatusCode::OK,
                        &m.ok_or_else(|| ApiError::not_found("podmetrics.metrics.k8s.io", name))?,
                    ))
                }
                None => Ok(respond(StatusCode::OK, &list("PodMetrics", items))),
            }
        }
        _ => Err(ApiError::no_route(path)),
    }
}
