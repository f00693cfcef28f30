//! The Kubernetes-shaped HTTP API: routing, content negotiation and the
//! discovery/OpenAPI documents kubectl needs before it sends anything.

mod discovery;
pub mod error;
mod eviction;
mod exec;
mod logs;
mod metrics;
mod objects;
mod portforward;
mod proto;
#[rustfmt::skip]
mod proto_schema;
mod openapi;
mod spdy;
mod table;
mod watch;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tokio::sync::watch as signal;

use crate::resources::{self, ResourceType};
use crate::store::SharedStore;
use crate::write::Writer;
pub use error::ApiError;

/// Largest request body accepted (Kubernetes uses 3 MiB).
pub const DEFAULT_MAX_BODY: usize = 3 * 1024 * 1024;

pub struct ApiConfig {
    pub max_body: usize,
    /// Bearer token every request must carry (`None`: no authentication, for
    /// loopback-only listeners).
    pub token: Option<String>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig { max_body: DEFAULT_MAX_BODY, token: None }
    }
}

pub struct ApiState {
    /// Reads.
    pub store: SharedStore,
    /// Writes: the same path the control loops take.
    pub writer: Writer,
    pub config: ApiConfig,
    /// Flips to `true` on shutdown so open watch streams end.
    pub shutdown: signal::Receiver<bool>,
    /// Sessions to nodes through the fleet link (`pods/log`); `None`
    /// without one.
    pub relay: Option<Arc<crate::fleet::relay::Relay>>,
    /// `/metrics`, and the API's own counters.
    pub telemetry: Arc<crate::telemetry::Telemetry>,
    /// The fleet's liveness, in memory: the `renewTime` of the nodes'
    /// Leases is read from it (`None` without a fleet link).
    pub liveness: Option<Arc<dyn crate::controllers::nodelifecycle::Liveness>>,
}

pub fn router(state: Arc<ApiState>) -> Router {
    Router::new().fallback(dispatch).with_state(state)
}

async fn dispatch(State(st): State<Arc<ApiState>>, req: Request) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let verb = verb(&method, req.headers(), req.uri().query().unwrap_or_default());
    let resp = match route(&st, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    let elapsed = started.elapsed();
    let code = resp.status().as_u16();
    st.telemetry.api.request(labels(verb, &path, code), elapsed);
    tracing::debug!(%method, %path, status = code, elapsed_us = elapsed.as_micros() as u64, "request");
    resp
}

/// The request's verb as the API server's metrics name it.
fn verb(method: &Method, headers: &HeaderMap, query: &str) -> &'static str {
    let apply =
        || headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("apply-patch"));
    let watch = || {
        form_urlencoded::parse(query.as_bytes())
            .any(|(k, v)| k == "watch" && v != "0" && !v.eq_ignore_ascii_case("false"))
    };
    match *method {
        Method::GET if watch() => "WATCH",
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH if apply() => "APPLY",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        _ => "OTHER",
    }
}

/// Labels for the request counters: the resource the path names, if any,
/// and the verb refined by it (a GET of a collection is a LIST, exec and
/// port-forward are CONNECT). Paths naming no known resource get empty
/// labels, so made-up paths cannot grow the metrics.
fn labels(verb: &'static str, path: &str, code: u16) -> crate::telemetry::RequestLabels {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => ("", "", &[][..]),
    };
    let rest = match rest {
        ["namespaces", _, r @ ..] if !r.is_empty() => r,
        r => r,
    };
    let found = rest.first().and_then(|p| resources::find(group, version, p));
    let (resource, named, sub) = match (found, rest) {
        // Only the subresources served: a made-up one cannot grow the metrics.
        (Some(rt), [_, _, s]) => {
            let known = ["status", "scale", "binding", "eviction", "log", "exec", "attach", "portforward"];
            (rt.plural, true, known.iter().find(|k| *k == s).copied().unwrap_or(""))
        }
        (Some(rt), [_, _]) => (rt.plural, true, ""),
        (Some(rt), _) => (rt.plural, false, ""),
        (None, _) => ("", false, ""),
    };
    let verb = match (verb, named, sub) {
        ("GET", false, _) if !resource.is_empty() => "LIST",
        ("DELETE", false, _) if !resource.is_empty() => "DELETECOLLECTION",
        (_, _, "exec" | "attach" | "portforward") => "CONNECT",
        (v, _, _) => v,
    };
    let known = !resource.is_empty();
    crate::telemetry::RequestLabels {
        verb,
        group: if known { group.to_owned() } else { String::new() },
        version: if known { version.to_owned() } else { String::new() },
        resource: resource.to_owned(),
        subresource: if known { sub.to_owned() } else { String::new() },
        code,
    }
}

/// The request as the object handlers see it.
pub(crate) struct Req {
    pub method: Method,
    pub query: HashMap<String, String>,
    /// The query as sent (for parameters given more than once).
    pub raw_query: String,
    pub headers: HeaderMap,
    /// The connection's upgrade, for the streaming subresources.
    pub extensions: axum::http::Extensions,
    pub body: Body,
}

impl Req {
    pub fn param(&self, k: &str) -> Option<&str> {
        self.query.get(k).map(String::as_str)
    }

    /// A boolean parameter as Kubernetes reads one: absent, `0` or `false`
    /// (any case) is false, anything else true (Python's client sends `True`).
    pub fn flag(&self, k: &str) -> bool {
        self.param(k).is_some_and(|v| v != "0" && !v.eq_ignore_ascii_case("false"))
    }

    /// Whether the request asks to upgrade to `proto` (`websocket`, `SPDY/3.1`).
    pub fn upgrades_to(&self, proto: &str) -> bool {
        self.headers
            .get_all(header::UPGRADE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.eq_ignore_ascii_case(proto))
    }

    /// Every value of a parameter, in order (`command=sh&command=-c`).
    pub fn params(&self, k: &str) -> Vec<String> {
        form_urlencoded::parse(self.raw_query.as_bytes()).filter(|(n, _)| n == k).map(|(_, v)| v.into_owned()).collect()
    }

    pub fn wants_table(&self) -> bool {
        self.headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').next().is_some_and(|first| first.contains("as=Table")))
    }

    /// Reads the body, refusing more than `limit` bytes with 413.
    pub async fn bytes(self, limit: usize) -> Result<(Bytes, HeaderMap, HashMap<String, String>), ApiError> {
        let declared = self
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n > limit) {
            return Err(ApiError::too_large(limit));
        }
        let b = axum::body::to_bytes(self.body, limit).await.map_err(|e| {
            if declared.is_none() {
                ApiError::too_large(limit)
            } else {
                ApiError::bad_request(format!("reading request body: {e}"))
            }
        })?;
        Ok((b, self.headers, self.query))
    }
}

/// Which object(s) a resource path names.
#[derive(Debug)]
pub(crate) struct Target {
    pub rt: &'static ResourceType,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub sub: Option<String>,
}

async fn route(st: &Arc<ApiState>, req: Request) -> Result<Response, ApiError> {
    // Health and version stay public, as Kubernetes' public-info role.
    let public = matches!(req.uri().path(), "/healthz" | "/livez" | "/readyz" | "/version");
    if let Some(token) = st.config.token.as_ref().filter(|_| !public) {
        let ok = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|t| kedge_common::sign::same_secret(t.as_bytes(), token.as_bytes()));
        if !ok {
            return Err(ApiError::unauthorized());
        }
    }
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().trim_end_matches('/').to_owned();
    let query: HashMap<String, String> =
        axum::extract::Query::try_from_uri(&parts.uri).map(|q| q.0).unwrap_or_default();
    let raw_query = parts.uri.query().unwrap_or_default().to_owned();
    let r = Req { method: parts.method, query, raw_query, headers: parts.headers, extensions: parts.extensions, body };
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let get = r.method == Method::GET;
    match segs.as_slice() {
        ["version"] if get => Ok(json(StatusCode::OK, &discovery::version())),
        ["healthz" | "livez" | "readyz"] if get => Ok((StatusCode::OK, "ok").into_response()),
        ["metrics"] if get => metrics_text(st, &r.headers),
        ["api"] if get => Ok(json(StatusCode::OK, &discovery::api_versions())),
        ["apis"] if get => Ok(json(StatusCode::OK, &discovery::api_groups())),
        ["apis", g] if get && discovery::group(g).is_some() => {
            Ok(json(StatusCode::OK, &discovery::group(g).unwrap_or(Value::Null)))
        }
        ["api", "v1"] if get => Ok(json(StatusCode::OK, &discovery::resource_list("", "v1"))),
        ["apis", metrics::GROUP] if get => {
            Ok(json(StatusCode::OK, &discovery::group_of(metrics::GROUP, metrics::VERSION)))
        }
        ["apis", metrics::GROUP, metrics::VERSION] if get => Ok(json(StatusCode::OK, &metrics::resource_list())),
        ["apis", metrics::GROUP, metrics::VERSION, rest @ ..] => {
            metrics::serve(st, &r.method, r.param("labelSelector"), rest, &path).await
        }
        ["apis", g, v] if get && resources::GROUPS.contains(&(*g, *v)) => {
            Ok(json(StatusCode::OK, &discovery::resource_list(g, v)))
        }
        ["openapi", "v3"] if get => Ok(json(StatusCode::OK, &openapi::root())),
        ["openapi", "v3", rest @ ..] if get => match openapi::document(&rest.join("/")) {
            Some(doc) => Ok(json(StatusCode::OK, &doc)),
            None => Err(ApiError::no_route(&path)),
        },
        ["api", "v1", rest @ ..] => resource(st, r, "", "v1", rest, &path).await,
        ["apis", g, v, rest @ ..] => resource(st, r, g, v, rest, &path).await,
        _ => Err(ApiError::no_route(&path)),
    }
}

async fn resource(
    st: &Arc<ApiState>,
    r: Req,
    group: &str,
    version: &str,
    rest: &[&str],
    path: &str,
) -> Result<Response, ApiError> {
    // `namespaces/{ns}/{plural}/…` addresses namespaced objects; anything else
    // is `{plural}[/{name}[/{sub}]]` (cluster-scoped, or all namespaces).
    let (namespace, rest) = match rest {
        ["namespaces", ns, plural, tail @ ..]
            if resources::find(group, version, plural).is_some_and(|rt| rt.namespaced) =>
        {
            (Some((*ns).to_owned()), {
                let mut v = vec![*plural];
                v.extend_from_slice(tail);
                v
            })
        }
        other => (None, other.to_vec()),
    };
    let (plural, name, sub) = match rest.as_slice() {
        [p] => (*p, None, None),
        [p, n] => (*p, Some((*n).to_owned()), None),
        [p, n, s] => (*p, Some((*n).to_owned()), Some((*s).to_owned())),
        _ => return Err(ApiError::no_route(path)),
    };
    let rt = resources::find(group, version, plural).ok_or_else(|| ApiError::no_route(path))?;
    if rt.namespaced && name.is_some() && namespace.is_none() {
        return Err(ApiError::no_route(path));
    }
    if let Some(s) = sub.as_deref() {
        let known = (s == "status" && rt.status)
            || (s == "scale" && rt.scale)
            || (matches!(s, "binding" | "eviction" | "log" | "exec" | "attach" | "portforward")
                && rt.kind == "Pod"
                && rt.group.is_empty());
        if !known {
            return Err(ApiError::no_route(path));
        }
    }
    let t = Target { rt, namespace, name, sub };
    let m = r.method.clone();
    match (&m, t.name.is_some()) {
        (&Method::GET, false) if r.flag("watch") => watch::serve(st, &t, &r),
        (&Method::GET, false) => objects::list(st, &t, &r),
        (&Method::POST, false) => objects::create(st, &t, r).await,
        (&Method::DELETE, false) => objects::delete_collection(st, &t, r).await,
        (&Method::GET, true) if t.sub.as_deref() == Some("log") => {
            // The request's body is not held across the wait for the node.
            let (node, request) = logs::prepare(st, &t, &r)?;
            drop(r);
            logs::serve(st, node, request).await
        }
        (_, true) if t.sub.as_deref() == Some("log") => Err(ApiError::method_not_allowed(m.as_str(), path)),
        (&Method::GET | &Method::POST, true) if matches!(t.sub.as_deref(), Some("exec" | "attach")) => {
            exec::serve(st, &t, r).await
        }
        (&Method::GET | &Method::POST, true) if t.sub.as_deref() == Some("portforward") => {
            portforward::serve(st, &t, r).await
        }
        (_, true) if matches!(t.sub.as_deref(), Some("exec" | "attach" | "portforward")) => {
            Err(ApiError::method_not_allowed(m.as_str(), path))
        }
        (&Method::GET, true) => objects::get(st, &t, &r),
        (&Method::POST, true) if t.sub.as_deref() == Some("binding") => objects::bind(st, &t, r).await,
        (&Method::POST, true) if t.sub.as_deref() == Some("eviction") => eviction::evict(st, &t, r).await,
        (&Method::PUT, true) => objects::replace(st, &t, r).await,
        (&Method::PATCH, true) => objects::patch(st, &t, r).await,
        (&Method::DELETE, true) if t.sub.is_none() => objects::delete(st, &t, r).await,
        _ => Err(ApiError::method_not_allowed(m.as_str(), path)),
    }
}

/// `/metrics`: OpenMetrics for a scraper that asks for it, else the
/// Prometheus text format.
fn metrics_text(st: &ApiState, headers: &HeaderMap) -> Result<Response, ApiError> {
    let accept = headers.get_all(header::ACCEPT).iter().filter_map(|v| v.to_str().ok());
    let (ctype, body) =
        st.telemetry.render(accept).map_err(|e| ApiError::internal(format!("encoding metrics: {e}")))?;
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, HeaderValue::from_static(ctype))], body).into_response())
}

/// Resolves once the server is stopping (ends streaming subresources).
pub(crate) async fn stopping(shutdown: &mut signal::Receiver<bool>) {
    let _ = shutdown.wait_for(|v| *v).await;
}

/// A JSON response.
pub(crate) fn json(code: StatusCode, v: &Value) -> Response {
    let body = serde_json::to_vec(v).unwrap_or_default();
    (code, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response()
}

/// A JSON response with Kubernetes `Warning` headers.
pub(crate) fn json_warn(code: StatusCode, v: &Value, warnings: &[String]) -> Response {
    let mut resp = json(code, v);
    for w in warnings {
        let text = format!("299 - \"{}\"", w.replace('"', "\\\""));
        if let Ok(h) = HeaderValue::from_str(&text) {
            resp.headers_mut().append("warning", h);
        }
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(method: Method, content_type: Option<&str>, path_and_query: &str, code: u16) -> (String, String, String) {
        let (path, query) = path_and_query.split_once('?').unwrap_or((path_and_query, ""));
        let mut h = HeaderMap::new();
        if let Some(ct) = content_type {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_str(ct).expect("header"));
        }
        let x = labels(verb(&method, &h, query), path, code);
        (x.verb.to_owned(), format!("{}/{}/{}", x.group, x.version, x.resource), x.subresource)
    }

    #[test]
    fn requests_are_labelled_as_the_api_server_labels_them() {
        let s = |v: &str, r: &str, sub: &str| (v.to_owned(), r.to_owned(), sub.to_owned());
        assert_eq!(l(Method::GET, None, "/api/v1/namespaces/default/pods", 200), s("LIST", "/v1/pods", ""));
        assert_eq!(l(Method::GET, None, "/api/v1/pods?watch=true", 200), s("WATCH", "/v1/pods", ""));
        assert_eq!(l(Method::GET, None, "/api/v1/pods?watch=false", 200), s("LIST", "/v1/pods", ""));
        assert_eq!(l(Method::GET, None, "/api/v1/namespaces/default/pods/web", 200), s("GET", "/v1/pods", ""));
        assert_eq!(l(Method::GET, None, "/api/v1/namespaces/default/pods/web/log", 200), s("GET", "/v1/pods", "log"));
        assert_eq!(
            l(Method::POST, None, "/api/v1/namespaces/default/pods/web/exec", 101),
            s("CONNECT", "/v1/pods", "exec")
        );
        assert_eq!(
            l(Method::PATCH, Some("application/apply-patch+yaml"), "/apis/apps/v1/namespaces/x/deployments/d", 200),
            s("APPLY", "apps/v1/deployments", "")
        );
        assert_eq!(
            l(Method::DELETE, None, "/api/v1/namespaces/x/configmaps", 200),
            s("DELETECOLLECTION", "/v1/configmaps", "")
        );
        assert_eq!(l(Method::GET, None, "/api/v1/namespaces/kube-system", 200), s("GET", "/v1/namespaces", ""));
        assert_eq!(l(Method::GET, None, "/api/v1/nodes", 200), s("LIST", "/v1/nodes", ""));
        // Paths naming no resource, or no subresource served, cannot grow the label sets.
        assert_eq!(l(Method::GET, None, "/api/v1/namespaces/a/pods/b/x8f3k", 401), s("GET", "/v1/pods", ""));
        assert_eq!(l(Method::GET, None, "/apis/made.up/v1/things/x", 404), s("GET", "//", ""));
        assert_eq!(l(Method::GET, None, "/openapi/v3", 200), s("GET", "//", ""));
    }
}
